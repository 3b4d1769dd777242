//! Rule changes without a recompile: a compiled base [`Classifier`] (shared,
//! never changed) plus a small delta — rules added since it was compiled and
//! the set of its rules removed since.
//!
//! Indices: base rules keep their base evaluation index `0..B`; an added rule
//! gets `B + k` (the k-th rule added since the base). Indices are stable until
//! the next recompile ([`LiveClassifier::recompiled`]), which renumbers (and
//! returns the renumbering). Removed rules keep their index (it is never
//! returned again) so per-index counters stay put.
//!
//! Order: a rule's place is its priority class (explicit priority, then
//! `None`) and, among equal priorities, its insertion order. New rules are
//! inserted after every *inline* rule of their priority and before every
//! non-inline one (the dataplane: inline `[[acl.rule]]` rules come before
//! rule-file rules, and `rule add` appends an inline rule). Every index has an
//! order key (`u128`): base index `i` is `i << 96 | (2^96 - 1)`, an added rule
//! is `after << 96 | prio << 40 | seq` where `after` is the number of base
//! rules before it, so "a comes before b" is one compare, for base and added
//! rules alike.
//!
//! Lookup = the base's answer, corrected twice: if it is a removed rule, the
//! base rules after it are scanned in order (skipping removed ones: the base
//! tree may have left out rules that the removed one shadowed, so the tree
//! cannot be asked again); then the added rules, in evaluation order, are
//! tried up to the base answer's place. The result is exactly what compiling
//! the changed rule set from scratch would match (property-tested against
//! [`crate::LinearClassifier`]).
//!
//! Result caches: every change has a version, and the last [`CHANGE_LOG`]
//! changes are kept, so a cached answer computed at version `v` is brought up
//! to date by [`LiveClassifier::revalidate`]: a few versions behind, with one
//! rule match per added rule since `v`; further behind, with one lookup in
//! the added rules' own classifier (a removal only matters to answers that
//! were the removed rule). Only a new base ([`LiveClassifier::base_id`])
//! makes cached indices meaningless.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::classifier::Classifier;
use crate::rule::{Action, Key, Prefix, Rule, RuleSet, NO_MATCH};

/// How many recent changes a [`LiveClassifier`] keeps for
/// [`LiveClassifier::revalidate`].
pub const CHANGE_LOG: usize = 64;

/// Changes behind at most which [`LiveClassifier::revalidate`] walks the log;
/// further behind, one delta lookup costs less than the rule matches (a storm
/// of rule changes had every cached answer a few versions old).
pub const WALK_AT_MOST: u64 = 2;

static BASE_IDS: AtomicU64 = AtomicU64::new(1);

/// The compiled part, shared by every snapshot until the next recompile.
#[derive(Debug)]
struct Base {
    id: u64,
    classifier: Classifier,
    /// Per base index: an inline rule (new rules go after inline rules of
    /// their priority, before the others).
    inline: Vec<bool>,
    /// Insertion position (in the set it was built from) → base index.
    pos_to_idx: Vec<u32>,
    default_action: Action,
    vni_defaults: BTreeMap<u32, Action>,
}

#[derive(Clone, Debug)]
struct Added {
    rule: Rule,
    key: u128,
    live: bool,
}

#[derive(Clone, Debug)]
struct Logged {
    version: u64,
    idx: u32,
    /// The added rule and its order key; `None` for a removal.
    added: Option<(Rule, u128)>,
}

/// A compiled classifier plus the rule changes made since it was compiled.
/// Cheap to clone (the compiled part is shared); a change is made on a clone
/// ([`Self::add`], [`Self::remove`]) which is then published whole.
#[derive(Clone, Debug)]
pub struct LiveClassifier {
    base: Arc<Base>,
    /// Removed base indices (bitmap).
    deleted: Vec<u64>,
    n_deleted: usize,
    /// Rules added since the base: index `B + k` is `added[k]`.
    added: Vec<Added>,
    /// Live entries of `added`, in evaluation order.
    order: Vec<u32>,
    /// The live added rules compiled on their own (in `order`, priorities
    /// dropped so that index `i` is `order[i]`): a lookup finds the first
    /// added rule that matches in a few tree steps instead of a scan.
    delta: Option<Arc<Classifier>>,
    /// What keys some live added rule may match: a key it rules out skips
    /// the delta for a few loads and tests.
    filter: Prefilter,
    /// Changes since the base.
    version: u64,
    log: VecDeque<Logged>,
}

/// A summary of a few rules by what they can match, one 256-bit map per
/// field: bit `h(x)` of a field's map is set when some rule matches a key
/// whose field is `x`. A key with a clear bit in any map matches none of the
/// rules (a set bit proves nothing). Field hashes: the VNI and the
/// destination port modulo 256; an address by its first 16 bits (IPv4) or 32
/// bits (IPv6), the granularity of a tenant or service subnet, so a rule on
/// a /24 of another subnet rules out a flow's address. Rules with wide
/// ranges (no VNI, more than 256 ports, a prefix shorter than /8 or /24)
/// set every bit of that field's map.
#[derive(Clone, Copy, Debug)]
struct Prefilter {
    vni: [u64; 4],
    dst: [u64; 4],
    src: [u64; 4],
    dport: [u64; 4],
}

#[inline(always)]
fn bit_set(map: &[u64; 4], b: usize) -> bool {
    map[b >> 6] & (1 << (b & 63)) != 0
}

#[inline(always)]
fn set_bit(map: &mut [u64; 4], b: usize) {
    map[b >> 6] |= 1 << (b & 63);
}

/// The address map's bit for the first 16 (IPv4) or 32 (IPv6) bits `x` of
/// an address.
#[inline(always)]
fn addr_bit(x: u32) -> usize {
    (x.wrapping_mul(0x9e37_79b1) >> 24) as usize
}

/// The leading bits [`addr_bit`] hashes: of a key's address.
#[inline(always)]
fn addr_head(addr: u128, v6: bool) -> u32 {
    if v6 {
        (addr >> 96) as u32
    } else {
        (addr as u32) >> 16
    }
}

impl Prefilter {
    /// Rules out every key.
    const NONE: Prefilter = Prefilter {
        vni: [0; 4],
        dst: [0; 4],
        src: [0; 4],
        dport: [0; 4],
    };

    /// Lets through every key `rule` matches.
    fn admit(&mut self, rule: &Rule) {
        match rule.vni {
            Some(v) => set_bit(&mut self.vni, (v & 255) as usize),
            None => self.vni = [u64::MAX; 4],
        }
        Self::admit_prefix(&mut self.dst, &rule.dst);
        Self::admit_prefix(&mut self.src, &rule.src);
        let p = rule.dst_ports;
        if p.hi - p.lo >= 255 {
            self.dport = [u64::MAX; 4];
        } else {
            for port in p.lo..=p.hi {
                set_bit(&mut self.dport, usize::from(port & 255));
            }
        }
    }

    fn admit_prefix(map: &mut [u64; 4], p: &Prefix) {
        // The prefix's first address's head, and how many heads it spans
        // (as a power of two).
        let (head, head_bits, len) = match *p {
            Prefix::Any => return *map = [u64::MAX; 4],
            Prefix::V4 { addr, len } => (u32::from(addr) >> 16, 16u8, len),
            Prefix::V6 { addr, len } => ((u128::from(addr) >> 96) as u32, 32u8, len),
        };
        let spread = head_bits.saturating_sub(len);
        if spread > 8 {
            return *map = [u64::MAX; 4];
        }
        for h in head..=head | ((1u32 << spread) - 1) {
            set_bit(map, addr_bit(h));
        }
    }

    /// False when no admitted rule matches `key`.
    #[inline(always)]
    fn may_match(&self, key: &Key) -> bool {
        bit_set(&self.dport, usize::from(key.dport & 255))
            && bit_set(&self.dst, addr_bit(addr_head(key.dst, key.v6)))
            && bit_set(&self.vni, (key.vni & 255) as usize)
            && bit_set(&self.src, addr_bit(addr_head(key.src, key.v6)))
    }
}

fn prio_key(r: &Rule) -> u64 {
    r.priority.map_or(1 << 32, u64::from)
}

const BASE_LOW: u128 = (1u128 << 96) - 1;

impl LiveClassifier {
    /// Compile `set`; its first `inline` rules (insertion order) are inline
    /// (rules added later go after them), the rest are not (e.g. rules from
    /// files).
    pub fn new(set: &RuleSet, inline: usize) -> LiveClassifier {
        let flags: Vec<bool> = (0..set.len()).map(|i| i < inline).collect();
        Self::from_parts(set, &flags)
    }

    fn from_parts(set: &RuleSet, inline_by_pos: &[bool]) -> LiveClassifier {
        let classifier = Classifier::new(set);
        // The same stable sort as `RuleSet::ordered`.
        let mut perm: Vec<usize> = (0..set.len()).collect();
        perm.sort_by_key(|&i| set.rules()[i].priority.map_or((1u8, 0u32), |p| (0, p)));
        let mut pos_to_idx = vec![0u32; set.len()];
        let mut inline = vec![false; set.len()];
        for (idx, &pos) in perm.iter().enumerate() {
            pos_to_idx[pos] = idx as u32;
            inline[idx] = inline_by_pos.get(pos).copied().unwrap_or(false);
        }
        let n = classifier.len();
        LiveClassifier {
            base: Arc::new(Base {
                id: BASE_IDS.fetch_add(1, Ordering::Relaxed),
                classifier,
                inline,
                pos_to_idx,
                default_action: set.default_action,
                vni_defaults: set.vni_defaults.clone(),
            }),
            deleted: vec![0; n.div_ceil(64)],
            n_deleted: 0,
            added: Vec::new(),
            order: Vec::new(),
            delta: None,
            filter: Prefilter::NONE,
            version: 0,
            log: VecDeque::new(),
        }
    }

    /// Identifies the compiled base: indices (and cached answers) are only
    /// comparable between values with the same base id.
    pub fn base_id(&self) -> u64 {
        self.base.id
    }

    /// Number of changes since the base (each add or remove is one).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The compiled base.
    pub fn base(&self) -> &Classifier {
        &self.base.classifier
    }

    /// Base index of the rule at insertion position `pos` of the set the base
    /// was built from.
    pub fn base_index_of(&self, pos: usize) -> Option<u32> {
        self.base.pos_to_idx.get(pos).copied()
    }

    fn base_len(&self) -> usize {
        self.base.classifier.len()
    }

    #[inline(always)]
    fn is_deleted(&self, i: u32) -> bool {
        self.deleted[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Order key of an index ([`NO_MATCH`] sorts last).
    #[inline(always)]
    fn key_of(&self, idx: u32) -> u128 {
        let b = self.base_len() as u32;
        if idx == NO_MATCH {
            u128::MAX
        } else if idx < b {
            u128::from(idx) << 96 | BASE_LOW
        } else {
            self.added
                .get((idx - b) as usize)
                .map_or(u128::MAX, |a| a.key)
        }
    }

    /// Adds `rule` (after every rule of its priority that is already there,
    /// and before non-inline rules of the base of equal priority); returns
    /// its index. The rule must be valid ([`Rule::validate`]).
    pub fn add(&mut self, rule: Rule) -> u32 {
        let pk = prio_key(&rule);
        let rules = self.base.classifier.rules();
        let inline = &self.base.inline;
        // Base rules before it: lower priority key, or equal and inline.
        let (mut lo, mut hi) = (0usize, rules.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let pm = prio_key(&rules[mid]);
            if pm < pk || (pm == pk && inline[mid]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.version += 1;
        let key = (lo as u128) << 96 | u128::from(pk) << 40 | u128::from(self.version);
        let k = self.added.len() as u32;
        let idx = self.base_len() as u32 + k;
        self.log_change(idx, Some((rule.clone(), key)));
        self.added.push(Added {
            rule,
            key,
            live: true,
        });
        let at = self
            .order
            .partition_point(|&o| self.added[o as usize].key < key);
        self.order.insert(at, k);
        self.compile_delta();
        idx
    }

    /// Recompiles the (small) classifier over the live added rules.
    fn compile_delta(&mut self) {
        self.filter = Prefilter::NONE;
        if self.order.is_empty() {
            self.delta = None;
            return;
        }
        let mut set = RuleSet::new(Action::Allow);
        for &o in &self.order {
            self.filter.admit(&self.added[o as usize].rule);
            let r = Rule {
                priority: None,
                ..self.added[o as usize].rule.clone()
            };
            // Valid: `add`'s contract.
            set.push(r).ok();
        }
        self.delta = Some(Arc::new(Classifier::new(&set)));
    }

    /// Removes the rule at `idx`; false if there is none (or it was removed).
    pub fn remove(&mut self, idx: u32) -> bool {
        let b = self.base_len() as u32;
        if idx < b {
            if self.is_deleted(idx) {
                return false;
            }
            self.deleted[(idx / 64) as usize] |= 1 << (idx % 64);
            self.n_deleted += 1;
        } else {
            let k = idx - b;
            match self.added.get_mut(k as usize) {
                Some(a) if a.live => a.live = false,
                _ => return false,
            }
            self.order.retain(|&o| o != k);
            self.compile_delta();
        }
        self.version += 1;
        self.log_change(idx, None);
        true
    }

    fn log_change(&mut self, idx: u32, added: Option<(Rule, u128)>) {
        if self.log.len() == CHANGE_LOG {
            self.log.pop_front();
        }
        self.log.push_back(Logged {
            version: self.version,
            idx,
            added,
        });
    }

    /// Rules added and removed since the base (0 = the base alone).
    pub fn delta_len(&self) -> usize {
        self.n_deleted + self.order.len()
    }

    /// The base's answer `b` for `key`, corrected for removed base rules.
    #[inline]
    fn base_result(&self, key: &Key, b: u32) -> u32 {
        if b == NO_MATCH || self.n_deleted == 0 || !self.is_deleted(b) {
            return b;
        }
        let rules = self.base.classifier.rules();
        (b + 1..rules.len() as u32)
            .find(|&i| !self.is_deleted(i) && rules[i as usize].matches(key))
            .unwrap_or(NO_MATCH)
    }

    /// `b` (a live index or [`NO_MATCH`]) or the first added rule before it
    /// that matches.
    #[inline]
    fn with_added(&self, key: &Key, b: u32) -> u32 {
        let Some(delta) = &self.delta else {
            return b;
        };
        if !self.filter.may_match(key) {
            return b;
        }
        // The first added rule that matches; if it does not come before
        // `b`, no added rule does (they are in order).
        let d = delta.classify(key);
        let Some(&o) = self.order.get(d as usize) else {
            return b;
        };
        if self.added[o as usize].key < self.key_of(b) {
            self.base_len() as u32 + o
        } else {
            b
        }
    }

    /// Index of the first matching rule in evaluation order, or [`NO_MATCH`].
    #[inline]
    pub fn classify(&self, key: &Key) -> u32 {
        let b = self.base.classifier.classify(key);
        self.with_added(key, self.base_result(key, b))
    }

    /// [`Self::classify`] for each key (extra entries of the longer slice are
    /// left alone).
    pub fn classify_burst(&self, keys: &[Key], out: &mut [u32]) {
        self.base.classifier.classify_burst(keys, out);
        if self.delta_len() == 0 {
            return;
        }
        for (k, o) in keys.iter().zip(out.iter_mut()) {
            *o = self.with_added(k, self.base_result(k, *o));
        }
    }

    /// Brings `matched`, the answer for `key` at version `since` (of the same
    /// base), up to date: `Some(answer now)`, or `None` when the answer's
    /// rule was removed and `key` must be classified again.
    ///
    /// Up to [`WALK_AT_MOST`] changes behind, the change log is walked (one
    /// rule match per rule added since `since`); further behind, the delta
    /// classifier is asked once, whatever the number of changes. Both are
    /// exact: within a base, base rules are only removed, never added, and a
    /// removal changes only answers that were the removed rule; so a live
    /// answer can only be displaced by a live added rule before it, which is
    /// what the delta finds.
    #[inline]
    pub fn revalidate(&self, key: &Key, mut matched: u32, since: u64) -> Option<u32> {
        if since == self.version {
            return Some(matched);
        }
        if since > self.version || (matched != NO_MATCH && !self.is_live(matched)) {
            return None;
        }
        // No live added rule can match: the answer stands (the common case
        // in a storm of changes to other tenants' or subnets' rules).
        if !self.filter.may_match(key) {
            return Some(matched);
        }
        let first = self.log.front()?.version;
        if self.version - since > WALK_AT_MOST || since + 1 < first {
            return Some(self.with_added(key, matched));
        }
        let live = matched;
        let mut mk = self.key_of(matched);
        for l in self.log.iter().skip((since + 1 - first) as usize) {
            match &l.added {
                // An added rule that displaced `live` in this walk, removed
                // since: back to `live`, which still stands.
                None if l.idx == matched => return Some(self.with_added(key, live)),
                Some((r, k)) if *k < mk && r.matches(key) => {
                    matched = l.idx;
                    mk = *k;
                }
                _ => {}
            }
        }
        Some(matched)
    }

    /// The action for a classification result: the rule's action, else the
    /// VNI's default, else the set's default.
    #[inline]
    pub fn action(&self, matched: u32, vni: u32) -> Action {
        match self.get(matched) {
            Some(r) => r.action,
            None => self.base.classifier.action(NO_MATCH, vni),
        }
    }

    /// Number of indices (live and removed): the size of per-index tables.
    pub fn len(&self) -> usize {
        self.base_len() + self.added.len()
    }

    /// No indices at all?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of rules in force.
    pub fn rule_count(&self) -> usize {
        self.base_len() - self.n_deleted + self.order.len()
    }

    /// Rule at index `idx` (a removed rule's index still names it). Panics
    /// if `idx >= len()`.
    pub fn rule(&self, idx: u32) -> &Rule {
        self.get(idx).expect("rule index out of range")
    }

    /// Rule at index `idx`, or `None` (e.g. for [`NO_MATCH`]).
    #[inline]
    pub fn get(&self, idx: u32) -> Option<&Rule> {
        let b = self.base_len() as u32;
        if idx < b {
            self.base.classifier.get(idx)
        } else {
            self.added
                .get(idx.checked_sub(b)? as usize)
                .map(|a| &a.rule)
        }
    }

    /// Is `idx` a rule in force?
    pub fn is_live(&self, idx: u32) -> bool {
        let b = self.base_len() as u32;
        if idx < b {
            !self.is_deleted(idx)
        } else {
            self.added.get((idx - b) as usize).is_some_and(|a| a.live)
        }
    }

    /// The rules in force in evaluation order, with their indices.
    pub fn rules_in_order(&self) -> Vec<(u32, &Rule)> {
        let b = self.base_len() as u32;
        let rules = self.base.classifier.rules();
        let mut v = Vec::with_capacity(self.rule_count());
        let mut ai = self.order.iter().peekable();
        for i in 0..b {
            let bk = u128::from(i) << 96 | BASE_LOW;
            while let Some(&&o) = ai.peek() {
                if self.added[o as usize].key < bk {
                    v.push((b + o, &self.added[o as usize].rule));
                    ai.next();
                } else {
                    break;
                }
            }
            if !self.is_deleted(i) {
                v.push((i, &rules[i as usize]));
            }
        }
        for &o in ai {
            v.push((b + o, &self.added[o as usize].rule));
        }
        v
    }

    /// The rules in force, compiled into a new base (no delta). Returns it
    /// and the renumbering: `remap[old index]` is the new index of a live
    /// rule ([`NO_MATCH`] for removed ones). The answers are the same.
    pub fn recompiled(&self) -> (LiveClassifier, Vec<u32>) {
        let order = self.rules_in_order();
        let mut set = RuleSet::new(self.base.default_action);
        set.vni_defaults = self.base.vni_defaults.clone();
        let mut inline = Vec::with_capacity(order.len());
        let mut remap = vec![NO_MATCH; self.len()];
        let b = self.base_len() as u32;
        for (new, &(old, r)) in order.iter().enumerate() {
            // Valid already (it was in a set or passed `add`'s contract).
            if set.push(r.clone()).is_err() {
                continue;
            }
            inline.push(old >= b || self.base.inline[old as usize]);
            remap[old as usize] = new as u32;
        }
        (Self::from_parts(&set, &inline), remap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::SplitMix64;
    use crate::rule::{PortRange, Prefix, ProtoMatch};
    use crate::LinearClassifier;
    use std::net::Ipv4Addr;

    /// Rules from a small space, so that they overlap, shadow and duplicate
    /// one another.
    fn random_rule(rng: &mut SplitMix64, id: u32) -> Rule {
        let pfx = |rng: &mut SplitMix64| {
            let len = [0u8, 8, 16, 24, 32][(rng.next_u64() % 5) as usize];
            let a =
                0x0a00_0000u32 | ((rng.next_u64() % 4) as u32) << 8 | (rng.next_u64() % 4) as u32;
            Prefix::v4(Ipv4Addr::from(a), len).unwrap()
        };
        let ports = |rng: &mut SplitMix64| match rng.next_u64() % 3 {
            0 => PortRange::ANY,
            1 => PortRange::single((rng.next_u64() % 4) as u16),
            _ => PortRange::new(1, 2).unwrap(),
        };
        Rule {
            id: Some(id),
            vni: rng
                .next_u64()
                .is_multiple_of(3)
                .then_some((rng.next_u64() % 2) as u32),
            src: pfx(rng),
            dst: pfx(rng),
            proto: match rng.next_u64() % 3 {
                0 => ProtoMatch::ANY,
                1 => ProtoMatch::exact(6),
                _ => ProtoMatch::exact(17),
            },
            src_ports: PortRange::ANY,
            dst_ports: ports(rng),
            action: if rng.next_u64().is_multiple_of(2) {
                Action::Allow
            } else {
                Action::Deny
            },
            priority: match rng.next_u64() % 4 {
                0 | 1 => None,
                p => Some(p as u32 * 5 + (rng.next_u64() % 3) as u32),
            },
            stateful: None,
        }
    }

    fn random_key(rng: &mut SplitMix64) -> Key {
        let a = |rng: &mut SplitMix64| {
            u128::from(
                0x0a00_0000u32 | ((rng.next_u64() % 5) as u32) << 8 | (rng.next_u64() % 5) as u32,
            )
        };
        Key {
            vni: (rng.next_u64() % 3) as u32,
            src: a(rng),
            dst: a(rng),
            sport: 1000,
            dport: (rng.next_u64() % 5) as u16,
            proto: [6u8, 17, 1][(rng.next_u64() % 3) as usize],
            v6: false,
        }
    }

    /// The reference: inline rules then file rules, compiled from scratch.
    fn reference(inline: &[Rule], files: &[Rule]) -> LinearClassifier {
        let mut set = RuleSet::new(Action::Deny);
        set.set_vni_default(1, Action::Allow);
        set.extend(inline.iter().chain(files).cloned()).unwrap();
        LinearClassifier::new(&set)
    }

    /// Random add/remove sequences on a layered classifier (with recompiles
    /// in between) give exactly the rule a fresh compile gives, for every
    /// key; cached answers brought up to date by `revalidate` do too.
    #[test]
    fn test_live_equals_recompile() {
        let mut rng = SplitMix64::new(0x11fe);
        // Revalidations that kept the answer, changed it, or gave up.
        let mut outcomes = [0usize; 3];
        for round in 0..40 {
            let mut next_id = 0u32;
            let mut id = || {
                next_id += 1;
                next_id
            };
            let n_inline = (rng.next_u64() % 30) as usize;
            let n_file = (rng.next_u64() % 10) as usize;
            let mut inline: Vec<Rule> =
                (0..n_inline).map(|_| random_rule(&mut rng, id())).collect();
            let files: Vec<Rule> = (0..n_file)
                .map(|_| Rule {
                    id: Some(1000 + id()),
                    ..random_rule(&mut rng, 0)
                })
                .collect();
            let mut set = RuleSet::new(Action::Deny);
            set.set_vni_default(1, Action::Allow);
            set.extend(inline.iter().chain(&files).cloned()).unwrap();
            let mut live = LiveClassifier::new(&set, n_inline);
            // Index of each rule id in `live`.
            let mut idx_of: BTreeMap<u32, u32> = BTreeMap::new();
            for (p, r) in set.rules().iter().enumerate() {
                idx_of.insert(r.id.unwrap(), live.base_index_of(p).unwrap());
            }
            let keys: Vec<Key> = (0..300).map(|_| random_key(&mut rng)).collect();
            // (answer, version) per key, as a result cache would hold them.
            let mut cached: Vec<(u32, u64)> = keys.iter().map(|k| (live.classify(k), 0)).collect();
            for step in 0..60 {
                let del = !inline.is_empty() && rng.next_u64() % 5 < 2;
                if del {
                    let at = (rng.next_u64() % inline.len() as u64) as usize;
                    let r = inline.remove(at);
                    let idx = idx_of.remove(&r.id.unwrap()).unwrap();
                    assert!(live.remove(idx));
                    assert!(!live.remove(idx), "removed twice");
                } else {
                    let r = random_rule(&mut rng, id());
                    idx_of.insert(r.id.unwrap(), live.add(r.clone()));
                    inline.push(r);
                }
                if step % 23 == 22 {
                    let (fresh, remap) = live.recompiled();
                    for v in idx_of.values_mut() {
                        *v = remap[*v as usize];
                    }
                    live = fresh;
                    assert_eq!(live.delta_len(), 0);
                    cached = keys.iter().map(|k| (live.classify(k), 0)).collect();
                }
                let lin = reference(&inline, &files);
                assert_eq!(live.rule_count(), lin.len());
                let order: Vec<_> = live.rules_in_order().iter().map(|(_, r)| r.id).collect();
                let want_order: Vec<_> = (0..lin.len()).map(|i| lin.rule(i as u32).id).collect();
                assert_eq!(order, want_order, "round {round} step {step}");
                let mut burst = vec![0u32; keys.len()];
                live.classify_burst(&keys, &mut burst);
                for (j, k) in keys.iter().enumerate() {
                    let want = lin.classify(k);
                    let got = live.classify(k);
                    assert_eq!(burst[j], got);
                    assert_eq!(
                        live.get(got).map(|r| r.id),
                        (want != NO_MATCH).then(|| lin.rule(want).id),
                        "round {round} step {step} key {k:?}"
                    );
                    assert!(got == NO_MATCH || live.is_live(got));
                    assert_eq!(live.action(got, k.vni), lin.action(want, k.vni));
                    let (m, v) = cached[j];
                    match live.revalidate(k, m, v) {
                        Some(x) => {
                            assert_eq!(x, got, "revalidated");
                            outcomes[usize::from(x != m)] += 1;
                        }
                        None => outcomes[2] += 1,
                    }
                    // Refresh some entries only, so that older ones age.
                    if (j + step) % 3 == 0 {
                        cached[j] = (got, live.version());
                    }
                }
            }
        }
        assert!(outcomes.iter().all(|&n| n > 100), "{outcomes:?}");
    }

    /// The prefilter never rules out a key a rule it admitted matches (keys
    /// drawn inside and around random IPv4 and IPv6 prefixes of every
    /// length), and it does rule out keys of other subnets, VNIs and ports.
    #[test]
    fn test_prefilter_admits_every_match() {
        use std::net::Ipv6Addr;
        let mut rng = SplitMix64::new(0x9f11);
        let mut ruled_out = 0;
        for _ in 0..300 {
            let v6 = rng.next_u64().is_multiple_of(2);
            let pfx = |rng: &mut SplitMix64| {
                let x = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
                if rng.next_u64().is_multiple_of(8) {
                    Prefix::Any
                } else if v6 {
                    Prefix::v6(Ipv6Addr::from(x), (rng.next_u64() % 129) as u8).unwrap()
                } else {
                    Prefix::v4(Ipv4Addr::from(x as u32), (rng.next_u64() % 33) as u8).unwrap()
                }
            };
            let lo = (rng.next_u64() % 65536) as u16;
            let width = [0u16, 3, 255, 300, u16::MAX][(rng.next_u64() % 5) as usize];
            let rules: Vec<Rule> = (0..1 + rng.next_u64() % 3)
                .map(|_| Rule {
                    vni: (rng.next_u64().is_multiple_of(2)).then(|| (rng.next_u64() % 1000) as u32),
                    src: pfx(&mut rng),
                    dst: pfx(&mut rng),
                    dst_ports: PortRange::new(lo, lo.saturating_add(width)).unwrap(),
                    ..Rule::default()
                })
                .collect();
            let mut f = Prefilter::NONE;
            rules.iter().for_each(|r| f.admit(r));
            for _ in 0..200 {
                // Inside a rule's prefixes (random host bits), or anywhere.
                let r = &rules[(rng.next_u64() % rules.len() as u64) as usize];
                let near = rng.next_u64().is_multiple_of(2);
                let addr = |p: &Prefix, rng: &mut SplitMix64| {
                    let x = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
                    let x = if v6 { x } else { x & u128::from(u32::MAX) };
                    let (a, b) = p.range();
                    if near {
                        a | (x & (b - a))
                    } else {
                        x
                    }
                };
                let key = Key {
                    vni: if near {
                        r.vni.unwrap_or(7)
                    } else {
                        (rng.next_u64() % 1000) as u32
                    },
                    src: addr(&r.src, &mut rng),
                    dst: addr(&r.dst, &mut rng),
                    sport: 1,
                    dport: if near {
                        r.dst_ports.lo.saturating_add((rng.next_u64() % 4) as u16)
                    } else {
                        (rng.next_u64() % 65536) as u16
                    },
                    proto: 6,
                    v6,
                };
                let m = rules.iter().any(|r| r.matches(&key));
                assert!(
                    !m || f.may_match(&key),
                    "{rules:?} match {key:?}, ruled out"
                );
                ruled_out += usize::from(!f.may_match(&key));
            }
        }
        assert!(
            ruled_out > 10_000,
            "the prefilter ruled out only {ruled_out} of 60000 keys"
        );
        // The control-storm case: a rule on a /24 of another /16.
        let mut f = Prefilter::NONE;
        f.admit(&Rule {
            dst: Prefix::v4(Ipv4Addr::new(10, 200, 7, 0), 24).unwrap(),
            dst_ports: PortRange::single(80),
            ..Rule::default()
        });
        let key = |dst: Ipv4Addr| Key {
            dst: u128::from(u32::from(dst)),
            dport: 80,
            proto: 6,
            ..Key::default()
        };
        assert!(f.may_match(&key(Ipv4Addr::new(10, 200, 9, 9))));
        assert!(!f.may_match(&key(Ipv4Addr::new(10, 99, 0, 1))));
    }

    #[test]
    fn test_revalidate_window() {
        let mut set = RuleSet::new(Action::Deny);
        set.push(Rule::default()).unwrap();
        let mut live = LiveClassifier::new(&set, 1);
        let k = Key::default();
        assert_eq!(live.classify(&k), 0);
        let idx = live.add(Rule {
            priority: Some(1),
            ..Rule::default()
        });
        assert_eq!(live.revalidate(&k, 0, 0), Some(idx));
        assert!(live.remove(idx));
        assert_eq!(live.revalidate(&k, idx, 1), None, "its rule went");
        assert_eq!(live.revalidate(&k, 0, 1), Some(0));
        for _ in 0..CHANGE_LOG {
            live.add(Rule {
                dst_ports: PortRange::single(9),
                ..Rule::default()
            });
        }
        // Older than the log, or a few changes behind: the delta answers.
        assert_eq!(live.revalidate(&k, 0, 0), Some(0), "older than the log");
        assert_eq!(live.revalidate(&k, 0, live.version() - 3), Some(0));
        assert_eq!(live.revalidate(&k, 0, live.version() - 1), Some(0));
        let before = live.add(Rule {
            priority: Some(1),
            ..Rule::default()
        });
        assert_eq!(live.revalidate(&k, 0, 0), Some(before), "via the delta");
        assert_eq!(
            live.revalidate(&k, 0, live.version() - 1),
            Some(before),
            "walked"
        );
        assert!(live.remove(before));
        assert_eq!(
            live.revalidate(&k, 0, live.version() - 2),
            Some(0),
            "added, then removed"
        );
        assert_eq!(
            live.revalidate(&k, before, live.version() - 1),
            None,
            "its rule went"
        );
        assert_eq!(live.classify(&k), 0);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    #[test]
    #[ignore = "prints timings"]
    fn print_change_costs() {
        let text =
            std::fs::read_to_string("../../shared/testdata/classbench/neurocuts/acl1_10k").unwrap();
        let rules = crate::parse_classbench(&text, "x", Action::Deny).unwrap();
        let mut set = RuleSet::new(Action::Allow);
        set.extend(rules.iter().cloned()).unwrap();
        let t = std::time::Instant::now();
        let mut live = LiveClassifier::new(&set, set.len());
        eprintln!("base {:?}", t.elapsed());
        for i in 0..64u32 {
            let t = std::time::Instant::now();
            let c = live.clone();
            let t1 = t.elapsed();
            live = c;
            live.add(rules[(i * 97) as usize].clone());
            if i % 8 == 0 {
                eprintln!("add #{i}: clone {t1:?} total {:?}", t.elapsed());
            }
        }
        let keys: Vec<Key> = crate::generate_trace(&rules, 4096, 3)
            .into_iter()
            .map(|e| e.key)
            .collect();
        let mut out = [0u32; 32];
        for (name, l) in [
            ("delta 64", live.clone()),
            ("base only", live.recompiled().0),
        ] {
            let t = std::time::Instant::now();
            for _ in 0..50 {
                for c in keys.chunks(32) {
                    l.classify_burst(c, &mut out[..c.len()]);
                }
            }
            eprintln!(
                "{name}: {:.1} ns/key",
                t.elapsed().as_nanos() as f64 / (50.0 * keys.len() as f64)
            );
        }
    }
}
