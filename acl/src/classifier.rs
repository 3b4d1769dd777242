//! The compiled classifier: a few decision trees (bit-cut HiCuts/HyperCuts
//! style) over rule groups split by address specificity (as CutSplit does),
//! with short priority-ordered leaves.
//!
//! Every field becomes one or more 32-bit dimensions: IPv4 keys use
//! `[src, dst, sport, dport, proto, vni]`, IPv6 keys split each address into
//! four 32-bit words (a 128-bit prefix is exactly the conjunction of per-word
//! ranges). A node cuts its region into `2^k` equal aligned parts on one
//! dimension, so the child is `(key[dim] >> shift) & mask`: no comparisons on
//! the way down, and the link to a node carries its cut so each level is one
//! dependent load. Leaves are runs of at most `binth` match rows in priority
//! order, stored inline (48 bytes per IPv4 rule: the rule as eight 16-bit
//! ranges tested with two SSE2 compares, see [`Row4`]; rule index; the
//! protocol mask and VNI for the rare rules the ranges only bound).
//!
//! Build: at each node, rules after the first rule covering the whole region
//! are dropped; every dimension is tried with 1..=`max_bits` cut bits while the
//! children's total rule count stays within `spfac * n`, and the cut with the
//! smallest largest child wins. Identical leaves are stored once.
//! [`Classifier::new`] builds the grouped trees and, for small sets, also a
//! single tree over all rules, and keeps the one a work model says is
//! cheaper (see [`BuildParams::single_tree`]); [`Walk`] says how a burst of
//! keys goes down the trees.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::rule::{Action, Defaults, Family, Key, Prefix, Rule, RuleSet, NO_MATCH};

/// A link (tree root or child entry) is a `u64`. With this bit set it is a
/// leaf whose low 32 bits index its first entry in `list`; otherwise the low
/// 32 bits are the offset of the node's child array in `mem` and the high
/// bits say how that node cuts: dimension (bits 32..36), shift (36..41) and
/// the mask of its cut bits (41..63, so at most [`MAX_CUT_BITS`] bits). The
/// parent's link thus carries everything needed to pick the next child: one
/// dependent load per level, and a stored mask rather than a bit count saves
/// the walk a second variable shift.
const LEAF: u64 = 1 << 63;
/// A leaf with no rules (its index is past the end of `list`).
const EMPTY: u64 = LEAF | u32::MAX as u64;

fn node_link(offset: usize, dim: usize, shift: u32, k: u32) -> u64 {
    offset as u64 | (dim as u64) << 32 | u64::from(shift) << 36 | u64::from(low_mask(k)) << 41
}

/// Most bits one node can cut (the width of a link's mask field).
const MAX_CUT_BITS: u32 = 22;

/// The child link `key` leads to from the node behind link `w` (not a leaf).
#[inline(always)]
fn child_slot<const D: usize>(w: u64, k: &[u32; D]) -> usize {
    let dim = (w >> 32) as usize & 15;
    let shift = (w >> 36) as u32 & 31;
    let mask = (w >> 41) as u32 & low_mask(MAX_CUT_BITS);
    let v = (k[dim % D] >> shift) & mask;
    (w as u32 as usize) + v as usize
}
/// Row flag: last row of its leaf.
const LAST: u32 = 1 << 31;

/// Build parameters (exposed for benchmarking and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildParams {
    /// A node with at most this many rules becomes a leaf.
    pub binth: usize,
    /// Space factor: a cut into `c` children is allowed while the children's
    /// rule counts plus `c` stay within `spfac * n`.
    pub spfac: usize,
    /// Most bits one node may cut (at most `2^max_bits` children; at most 22).
    pub max_bits: u32,
    /// An address is "small" (specific) when its prefix is at least this long
    /// (IPv4; IPv6 uses four times it); rules are grouped by which addresses
    /// are small and each group gets its own tree.
    pub split_len: u8,
    /// How `classify_burst` walks the trees ([`Walk`]); `None`: decide at
    /// build time. Structures over 1 MiB time the three walks on a generated
    /// trace and keep the fastest; smaller ones walk in groups when each
    /// family has one tree, else one key at a time (which measured faster
    /// there: with several trees a group waits for its deepest walk in each).
    pub walk: Option<Walk>,
}

/// How [`Classifier::classify_burst`] walks the trees. The answers are the
/// same whichever it is; only the speed differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Walk {
    /// One key after another, each to its leaf and through its leaf.
    #[default]
    One,
    /// Groups of eight keys whose descents advance in lock step, one node
    /// of every walk per round, so their dependent loads overlap; then each
    /// key's leaf is scanned. Best for one shallow tree.
    Group,
    /// Eight walks in flight, each advanced by one node or leaf scan in turn
    /// (AMAC-style), so cache misses of different keys overlap: for large
    /// structures with deep trees.
    Interleave,
}

/// Largest structure [`Classifier::new`] accepts from [`BuildParams::compact`].
/// Chosen by measurement on the 10k ClassBench sets: up to this size the
/// extra memory still paid for itself in fewer rules checked.
pub const COMPACT_BUDGET: usize = 8 << 20;

/// Largest set [`Classifier::new`] also tries as one tree
/// ([`BuildParams::single_tree`]); above it such a tree grows too large
/// (tens of MiB and seconds of build on the 10k ClassBench sets).
pub const SINGLE_TREE_MAX_RULES: usize = 2048;

/// Smallest set [`Classifier::new`] tries as one tree: below it the grouped
/// trees are small anyway, and the second build and the work model (about a
/// millisecond) would be most of the cost of a live rule change's delta
/// classifier (see [`crate::LiveClassifier`]).
pub const SINGLE_TREE_MIN_RULES: usize = 256;

impl BuildParams {
    /// One tree over all rules (no grouping by address length) with generous
    /// cuts (`spfac` 32) and large leaves (`binth` 32): the least work per
    /// lookup for small sets. With the lock-step walk ([`Walk::Group`]) on
    /// the 1k ClassBench sets this beat `spfac` 8–64 × `binth` 4–48 within the
    /// 8 MiB budget, and is a third of the memory of `spfac` 16, `binth` 8.
    pub fn single_tree() -> BuildParams {
        BuildParams {
            spfac: 32,
            binth: 32,
            split_len: 0,
            ..BuildParams::default()
        }
    }

    /// More generous cuts (`spfac` 8) and fewer groups (`split_len` 8): fewer
    /// rules checked per lookup at some memory cost.
    pub fn compact() -> BuildParams {
        BuildParams {
            spfac: 8,
            split_len: 8,
            ..BuildParams::default()
        }
    }
}

impl Default for BuildParams {
    fn default() -> Self {
        BuildParams {
            binth: 8,
            spfac: 4,
            max_bits: 16,
            split_len: 16,
            walk: None,
        }
    }
}

/// What a build produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Number of trees over both families.
    pub trees: usize,
    /// Internal nodes.
    pub nodes: usize,
    /// Distinct leaves.
    pub leaves: usize,
    /// Match rows stored in leaves (with replication).
    pub rows: usize,
    /// Deepest path (internal nodes).
    pub max_depth: usize,
    /// Heap bytes of the lookup structures (excluding the `Rule` list).
    pub memory_bytes: usize,
    /// Build time in microseconds (including the walk calibration).
    pub build_us: u64,
    /// How `classify_burst` walks the trees.
    pub walk: Walk,
}

/// A rule's exact match test, stored once per rule: leaves hold rule indices,
/// so replication in the trees costs four bytes per copy, not a whole rule.
trait MatchRow: Copy + Default + std::fmt::Debug {
    /// What the key becomes once per lookup for the rows' test.
    type Prep: Copy + Default;
    fn from_rule(r: &Rule) -> Self;
    fn prep(k: &Key) -> Self::Prep;
    fn matches(&self, p: &Self::Prep, k: &Key) -> bool;
    /// Rule index, with [`LAST`] on the last row of a leaf.
    fn idx(&self) -> u32;
    fn set_idx(&mut self, idx: u32);
}

fn vni_match(r: &Rule) -> (u32, u32) {
    r.vni.map_or((0, 0), |v| (v, u32::MAX))
}

/// IPv4 match row, stored inline in the leaves: the rule as eight 16-bit
/// ranges, tested all at once (`(lo <= k) & (k <= hi)` on eight lanes, which
/// the compiler turns into two SSE2 compares and a mask: no unsafe, no
/// runtime detection). Lanes: source high/low half, destination high/low
/// half (a prefix is exactly a range on the high half and a range on the low
/// half), source port, destination port, `proto << 8 | vni >> 16` and the
/// VNI's low half (VNIs are 24 bits). Values are stored biased by `0x8000`
/// so a signed compare orders them as unsigned.
///
/// The two protocol/VNI lanes are exact for a protocol range with any VNI
/// and for an exact protocol with an exact VNI; for the rest (any protocol
/// with an exact VNI, a non-range protocol mask, a VNI over 24 bits) the
/// lanes hold a superset and `exact` is false, and a match is confirmed
/// against `proto`/`vni`. 48 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(16))]
struct Row4 {
    lo: [i16; 8],
    hi: [i16; 8],
    idx: u32,
    vni: u32,
    proto: u8,
    proto_m: u8,
    vni_any: bool,
    exact: bool,
}

/// A key as [`Row4`] lanes, and whether its VNI is wider than the lanes.
#[derive(Clone, Copy, Debug, Default)]
struct Lanes4 {
    k: [i16; 8],
    wide: bool,
}

const BIAS: u16 = 0x8000;

fn biased(v: u16) -> i16 {
    (v ^ BIAS) as i16
}

impl MatchRow for Row4 {
    type Prep = Lanes4;

    fn from_rule(r: &Rule) -> Self {
        let (slo, shi) = range4(&r.src);
        let (dlo, dhi) = range4(&r.dst);
        // A 32-bit range from a prefix: exact as (high-half range, low-half
        // range) because the low half is free whenever the high half varies.
        let halves = |lo: u32, hi: u32| -> [(u16, u16); 2] {
            [
                ((lo >> 16) as u16, (hi >> 16) as u16),
                (lo as u16, hi as u16),
            ]
        };
        let [s_h, s_l] = halves(slo, shi);
        let [d_h, d_l] = halves(dlo, dhi);
        let (plo, phi) = r.proto.bounds();
        // Any VNI, or one wider than the lanes (then only bounded): free.
        let (pv, vlo) = match r.vni {
            Some(v) if v <= 0xff_ffff => {
                let vh = (v >> 16) as u16;
                (
                    (u16::from(plo) << 8 | vh, u16::from(phi) << 8 | vh),
                    (v as u16, v as u16),
                )
            }
            _ => (
                (u16::from(plo) << 8, u16::from(phi) << 8 | 0xff),
                (0, u16::MAX),
            ),
        };
        let exact = r.proto.is_range()
            && match r.vni {
                None => true,
                Some(v) => v <= 0xff_ffff && plo == phi,
            };
        let ranges = [
            s_h,
            s_l,
            d_h,
            d_l,
            (r.src_ports.lo, r.src_ports.hi),
            (r.dst_ports.lo, r.dst_ports.hi),
            pv,
            vlo,
        ];
        let mut row = Row4 {
            idx: 0,
            vni: r.vni.unwrap_or(0),
            vni_any: r.vni.is_none(),
            proto: r.proto.value,
            proto_m: r.proto.mask,
            exact,
            ..Row4::default()
        };
        for (n, (lo, hi)) in ranges.into_iter().enumerate() {
            row.lo[n] = biased(lo);
            row.hi[n] = biased(hi);
        }
        row
    }

    #[inline(always)]
    fn prep(k: &Key) -> Lanes4 {
        let (src, dst) = (k.src as u32, k.dst as u32);
        let v = [
            (src >> 16) as u16,
            src as u16,
            (dst >> 16) as u16,
            dst as u16,
            k.sport,
            k.dport,
            u16::from(k.proto) << 8 | (k.vni >> 16 & 0xff) as u16,
            k.vni as u16,
        ];
        let mut out = [0i16; 8];
        for (o, x) in out.iter_mut().zip(v) {
            *o = biased(x);
        }
        Lanes4 {
            k: out,
            wide: k.vni > 0xff_ffff,
        }
    }

    #[inline(always)]
    fn matches(&self, p: &Lanes4, k: &Key) -> bool {
        let mut ok = true;
        for n in 0..8 {
            ok &= (p.k[n] >= self.lo[n]) & (p.k[n] <= self.hi[n]);
        }
        // Rare: lanes that only bound the rule, or a key VNI over 24 bits.
        ok && ((self.exact && !p.wide)
            || ((k.proto & self.proto_m == self.proto) && (self.vni_any || k.vni == self.vni)))
    }

    #[inline(always)]
    fn idx(&self) -> u32 {
        self.idx
    }

    fn set_idx(&mut self, idx: u32) {
        self.idx = idx;
    }
}

/// The addresses an IPv4 prefix covers, as an inclusive range (anything
/// else, `Any` included, covers every IPv4 address).
fn range4(p: &Prefix) -> (u32, u32) {
    match p {
        Prefix::V4 { .. } => {
            let (lo, hi) = p.range();
            (lo as u32, hi as u32)
        }
        _ => (0, u32::MAX),
    }
}

fn pfx128(p: &Prefix) -> (u128, u128) {
    match *p {
        Prefix::V6 { addr, len } => (u128::from(addr), crate::rule::mask128(len)),
        _ => (0, 0),
    }
}

/// IPv6 match row.
#[derive(Clone, Copy, Debug, Default)]
struct Row6 {
    src: u128,
    src_m: u128,
    dst: u128,
    dst_m: u128,
    vni: u32,
    vni_m: u32,
    idx: u32,
    sp_lo: u16,
    sp_w: u16,
    dp_lo: u16,
    dp_w: u16,
    proto: u8,
    proto_m: u8,
}

impl MatchRow for Row6 {
    type Prep = ();

    fn from_rule(r: &Rule) -> Self {
        let (src, src_m) = pfx128(&r.src);
        let (dst, dst_m) = pfx128(&r.dst);
        let (vni, vni_m) = vni_match(r);
        Row6 {
            src,
            src_m,
            dst,
            dst_m,
            vni,
            vni_m,
            idx: 0,
            sp_lo: r.src_ports.lo,
            sp_w: r.src_ports.hi.wrapping_sub(r.src_ports.lo),
            dp_lo: r.dst_ports.lo,
            dp_w: r.dst_ports.hi.wrapping_sub(r.dst_ports.lo),
            proto: r.proto.value,
            proto_m: r.proto.mask,
        }
    }

    #[inline(always)]
    fn prep(_: &Key) {}

    #[inline(always)]
    fn matches(&self, _: &(), k: &Key) -> bool {
        ((k.src ^ self.src) & self.src_m == 0)
            & ((k.dst ^ self.dst) & self.dst_m == 0)
            & ((k.vni ^ self.vni) & self.vni_m == 0)
            & (k.sport.wrapping_sub(self.sp_lo) <= self.sp_w)
            & (k.dport.wrapping_sub(self.dp_lo) <= self.dp_w)
            & (k.proto & self.proto_m == self.proto)
    }

    #[inline(always)]
    fn idx(&self) -> u32 {
        self.idx
    }

    fn set_idx(&mut self, idx: u32) {
        self.idx = idx;
    }
}

/// Structures larger than this may interleave walks (see [`BuildParams`]).
const CALIBRATE_BYTES: usize = 1 << 20;

/// Keys walked in lock step by [`Forest::classify_group`].
const GROUP: usize = 8;

/// Walks in flight in [`Forest::classify_interleaved`].
const SLOTS: usize = 8;

/// One in-flight walk: key (as dimensions and as the rows want it), its
/// position, tree, cursor, best.
#[derive(Clone, Copy)]
struct Slot<const D: usize, P> {
    k: [u32; D],
    p: P,
    i: usize,
    t: usize,
    cur: u64,
    best: u32,
}

#[derive(Clone, Copy, Debug)]
struct Tree {
    root: u64,
    min_idx: u32,
}

/// One family's trees. `mem` holds the nodes' child arrays (links, see
/// [`LEAF`]). A leaf is a run of `list` match rows in priority order, the
/// last one's index flagged [`LAST`].
#[derive(Clone, Debug)]
struct Forest<const D: usize, R> {
    trees: Vec<Tree>,
    mem: Vec<u64>,
    list: Vec<R>,
}

impl<const D: usize, R: MatchRow> Forest<D, R> {
    fn empty() -> Self {
        Forest {
            trees: Vec::new(),
            mem: Vec::new(),
            list: Vec::new(),
        }
    }

    /// Classify keys of this family with [`SLOTS`] walks in flight: each
    /// step advances one walk by one node (or scans its leaf), round-robin,
    /// so the cache misses of different keys overlap (AMAC-style).
    fn classify_interleaved(&self, keys: &[Key], out: &mut [u32], conv: fn(&Key) -> [u32; D]) {
        let n = keys.len().min(out.len());
        let Some(first) = self.trees.first() else {
            out[..n].fill(NO_MATCH);
            return;
        };
        let mut slots = [Slot {
            k: [0u32; D],
            p: R::Prep::default(),
            i: 0,
            t: 0,
            cur: EMPTY,
            best: NO_MATCH,
        }; SLOTS];
        let mut next = 0;
        let mut live = 0;
        for s in slots.iter_mut() {
            if next < n {
                *s = Slot {
                    k: conv(&keys[next]),
                    p: R::prep(&keys[next]),
                    i: next,
                    t: 0,
                    cur: first.root,
                    best: NO_MATCH,
                };
                next += 1;
                live += 1;
            } else {
                s.i = usize::MAX;
            }
        }
        let mut checked = 0;
        while live > 0 {
            for s in slots.iter_mut() {
                if s.i == usize::MAX {
                    continue;
                }
                let r = s.cur;
                if r & LEAF == 0 {
                    s.cur = self.mem[child_slot(r, &s.k)];
                    continue;
                }
                s.best = self.scan(r, &s.p, &keys[s.i], s.best, &mut checked);
                s.t += 1;
                match self.trees.get(s.t) {
                    Some(t) if t.min_idx < s.best => s.cur = t.root,
                    _ => {
                        out[s.i] = s.best;
                        if next < n {
                            *s = Slot {
                                k: conv(&keys[next]),
                                p: R::prep(&keys[next]),
                                i: next,
                                t: 0,
                                cur: first.root,
                                best: NO_MATCH,
                            };
                            next += 1;
                        } else {
                            s.i = usize::MAX;
                            live -= 1;
                        }
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn descend(&self, root: u64, k: &[u32; D]) -> u64 {
        let mut r = root;
        while r & LEAF == 0 {
            r = self.mem[child_slot(r, k)];
        }
        r
    }

    /// First rule of `leaf` matching `key` if it beats `best`, else `best`.
    /// [`EMPTY`] points past `list` and finds nothing.
    #[inline(always)]
    fn scan(&self, leaf: u64, p: &R::Prep, key: &Key, best: u32, checked: &mut usize) -> u32 {
        let mut i = leaf as u32 as usize;
        while let Some(row) = self.list.get(i) {
            let e = row.idx();
            let idx = e & !LAST;
            if idx >= best {
                break;
            }
            *checked += 1;
            if row.matches(p, key) {
                return idx;
            }
            if e & LAST != 0 {
                break;
            }
            i += 1;
        }
        best
    }

    #[inline(always)]
    fn classify(&self, k: &[u32; D], key: &Key) -> u32 {
        let mut best = NO_MATCH;
        let mut checked = 0;
        let p = R::prep(key);
        for t in &self.trees {
            if t.min_idx >= best {
                break;
            }
            let leaf = self.descend(t.root, k);
            best = self.scan(leaf, &p, key, best, &mut checked);
        }
        best
    }

    /// [`Self::classify`] for `G` keys at once: their descents advance in
    /// lock step, one node of every unfinished walk per round, so the `G`
    /// dependent load chains overlap instead of queueing; a finished walk
    /// stays on its leaf (a select, no branch per key) until the group's
    /// deepest walk is done. Then each key's leaf is scanned.
    #[inline(always)]
    fn classify_group<const G: usize>(
        &self,
        keys: &[Key],
        out: &mut [u32],
        conv: fn(&Key) -> [u32; D],
    ) {
        let k: [[u32; D]; G] = std::array::from_fn(|i| conv(&keys[i]));
        let mut best = [NO_MATCH; G];
        let mut checked = 0;
        for t in &self.trees {
            if best.iter().all(|&b| t.min_idx >= b) {
                break;
            }
            // A key whose match already beats this tree sits out (on the
            // empty leaf, which finds nothing).
            let mut r: [u64; G] =
                std::array::from_fn(|i| if t.min_idx < best[i] { t.root } else { EMPTY });
            while r.iter().any(|&x| x & LEAF == 0) {
                for i in 0..G {
                    let leaf = r[i] & LEAF != 0;
                    let slot = if leaf { 0 } else { child_slot(r[i], &k[i]) };
                    let next = self.mem.get(slot).copied().unwrap_or(r[i]);
                    r[i] = if leaf { r[i] } else { next };
                }
            }
            for i in 0..G {
                if r[i] != EMPTY {
                    best[i] = self.scan(r[i], &R::prep(&keys[i]), &keys[i], best[i], &mut checked);
                }
            }
        }
        out[..G].copy_from_slice(&best);
    }

    /// (trees visited, nodes walked, rules checked) for one key.
    fn cost(&self, k: &[u32; D], key: &Key) -> [usize; 3] {
        let mut best = NO_MATCH;
        let mut c = [0usize; 3];
        let p = R::prep(key);
        for t in &self.trees {
            if t.min_idx >= best {
                break;
            }
            c[0] += 1;
            let mut r = t.root;
            while r & LEAF == 0 {
                c[1] += 1;
                r = self.mem[child_slot(r, k)];
            }
            best = self.scan(r, &p, key, best, &mut c[2]);
        }
        c
    }

    fn memory(&self) -> usize {
        self.trees.len() * std::mem::size_of::<Tree>()
            + self.mem.len() * 8
            + self.list.len() * std::mem::size_of::<R>()
    }
}

/// A rule as per-dimension inclusive ranges.
#[derive(Clone, Copy, Debug)]
struct BRule<const D: usize> {
    lo: [u32; D],
    hi: [u32; D],
    pm: u32,
    idx: u32,
}

struct Builder<'a, const D: usize, R> {
    rules: &'a [BRule<D>],
    bits: [u32; D],
    params: BuildParams,
    forest: Forest<D, R>,
    /// Match rows by rule index, copied into the leaves.
    table: &'a [R],
    leaf_cache: HashMap<Vec<u32>, u64>,
    nodes: usize,
    max_depth: usize,
    /// Bytes of `mem` and `list` past which the build gives up (the rest of
    /// it becomes leaves and `over` is set: the result is to be discarded).
    limit: usize,
    over: bool,
}

/// A node's region: per dimension the lowest value and the number of free
/// low bits (the region is aligned, `2^bits` values wide).
#[derive(Clone, Copy)]
struct Region<const D: usize> {
    lo: [u32; D],
    bits: [u32; D],
}

impl<const D: usize> Region<D> {
    fn hi(&self, d: usize) -> u32 {
        self.lo[d] | low_mask(self.bits[d])
    }
}

const fn low_mask(bits: u32) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

impl<'a, const D: usize, R: MatchRow> Builder<'a, D, R> {
    fn leaf(&mut self, list: &[u32]) -> u64 {
        if list.is_empty() {
            return EMPTY;
        }
        if let Some(&r) = self.leaf_cache.get(list) {
            return r;
        }
        let start = self.forest.list.len() as u32;
        for (n, &ri) in list.iter().enumerate() {
            let last = if n + 1 == list.len() { LAST } else { 0 };
            let idx = self.rules[ri as usize].idx;
            let mut row = self.table.get(idx as usize).copied().unwrap_or_default();
            row.set_idx(idx | last);
            self.forest.list.push(row);
        }
        let r = LEAF | u64::from(start);
        self.leaf_cache.insert(list.to_vec(), r);
        r
    }

    fn covers(&self, r: &BRule<D>, reg: &Region<D>) -> bool {
        r.pm == 0 && (0..D).all(|d| r.lo[d] <= reg.lo[d] && r.hi[d] >= reg.hi(d))
    }

    /// Child counts for cutting `reg` on dimension `d` into `2^k` parts.
    fn counts(
        &self,
        list: &[u32],
        reg: &Region<D>,
        d: usize,
        k: u32,
        diff: &mut Vec<i64>,
    ) -> (usize, usize) {
        let shift = reg.bits[d] - k;
        let n = 1usize << k;
        diff.clear();
        diff.resize(n + 1, 0);
        let (rlo, rhi) = (reg.lo[d], reg.hi(d));
        for &ri in list {
            let r = &self.rules[ri as usize];
            let a = ((r.lo[d].max(rlo) - rlo) >> shift) as usize;
            let b = ((r.hi[d].min(rhi) - rlo) >> shift) as usize;
            diff[a] += 1;
            diff[b + 1] -= 1;
        }
        let (mut cur, mut sum, mut max) = (0i64, 0usize, 0usize);
        for &x in &diff[..n] {
            cur += x;
            sum += cur as usize;
            max = max.max(cur as usize);
        }
        (sum, max)
    }

    fn build(&mut self, mut list: Vec<u32>, reg: Region<D>, depth: usize) -> u64 {
        if self.over {
            return self.leaf(&list);
        }
        // Everything after the first rule covering the whole region is dead here.
        if let Some(p) = list
            .iter()
            .position(|&ri| self.covers(&self.rules[ri as usize], &reg))
        {
            list.truncate(p + 1);
        }
        if list.len() <= self.params.binth {
            return self.leaf(&list);
        }
        let n = list.len();
        let mut diff = Vec::new();
        // (max child, sum, dim, k)
        let mut best: Option<(usize, usize, usize, u32)> = None;
        for d in 0..D {
            let kmax = reg.bits[d].min(self.params.max_bits);
            let mut chosen = None;
            for k in 1..=kmax {
                let (sum, max) = self.counts(&list, &reg, d, k, &mut diff);
                if k > 1 && sum + (1 << k) > self.params.spfac * n {
                    break;
                }
                chosen = Some((max, sum, d, k));
                if max <= 1 {
                    break;
                }
            }
            if let Some(c) = chosen {
                let better = match best {
                    None => true,
                    Some(b) => (c.0, c.1) < (b.0, b.1),
                };
                if c.0 < n && better {
                    best = Some(c);
                }
            }
        }
        let Some((_, _, d, k)) = best else {
            return self.leaf(&list);
        };
        // Links hold 32-bit offsets; a set this large does not fit anyway.
        if self.forest.mem.len() + (1usize << k) >= u32::MAX as usize {
            return self.leaf(&list);
        }
        if self.forest.memory() > self.limit {
            self.over = true;
            return self.leaf(&list);
        }
        self.nodes += 1;
        self.max_depth = self.max_depth.max(depth + 1);
        let shift = reg.bits[d] - k;
        let nchild = 1usize << k;
        let o = self.forest.mem.len();
        self.forest.mem.resize(o + nchild, EMPTY);
        // Deal each rule into the children its range spans (keeps priority
        // order; linear in the output, unlike filtering per child).
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); nchild];
        let (rlo, rhi) = (reg.lo[d], reg.hi(d));
        for &ri in &list {
            let r = &self.rules[ri as usize];
            let a = ((r.lo[d].max(rlo) - rlo) >> shift) as usize;
            let b = ((r.hi[d].min(rhi) - rlo) >> shift) as usize;
            for l in &mut lists[a..=b] {
                l.push(ri);
            }
        }
        drop(list);
        for (c, cl) in lists.into_iter().enumerate() {
            let mut creg = reg;
            creg.lo[d] = reg.lo[d] | ((c as u32) << shift);
            creg.bits[d] = shift;
            let r = self.build(cl, creg, depth + 1);
            self.forest.mem[o + c] = r;
        }
        node_link(o, d, shift, k)
    }
}

fn build_forest<const D: usize, R: MatchRow>(
    rules: Vec<BRule<D>>,
    groups: Vec<Vec<u32>>,
    bits: [u32; D],
    rows: Vec<R>,
    params: BuildParams,
    limit: usize,
) -> (Forest<D, R>, [usize; 3], bool) {
    let mut b = Builder {
        rules: &rules,
        bits,
        params,
        forest: Forest::empty(),
        table: &rows,
        leaf_cache: HashMap::new(),
        nodes: 0,
        max_depth: 0,
        limit,
        over: false,
    };
    for g in groups {
        let Some(&min_idx) = g.iter().map(|&i| &rules[i as usize].idx).min() else {
            continue;
        };
        let reg = Region {
            lo: [0; D],
            bits: b.bits,
        };
        let root = b.build(g, reg, 0);
        b.forest.trees.push(Tree { root, min_idx });
    }
    b.forest.trees.sort_by_key(|t| t.min_idx);
    let st = [b.nodes, b.max_depth, b.leaf_cache.len()];
    (b.forest, st, b.over)
}

const D4: usize = 8;
const D6: usize = 16;
const V4_BITS: [u32; D4] = [32, 32, 16, 16, 8, 32, 0, 0];
const V6_BITS: [u32; D6] = [32, 32, 32, 32, 32, 32, 32, 32, 16, 16, 8, 32, 0, 0, 0, 0];

#[inline(always)]
fn key4(k: &Key) -> [u32; D4] {
    [
        k.src as u32,
        k.dst as u32,
        k.sport.into(),
        k.dport.into(),
        k.proto.into(),
        k.vni,
        0,
        0,
    ]
}

#[inline(always)]
fn key6(k: &Key) -> [u32; D6] {
    let s = k.src;
    let d = k.dst;
    [
        (s >> 96) as u32,
        (s >> 64) as u32,
        (s >> 32) as u32,
        s as u32,
        (d >> 96) as u32,
        (d >> 64) as u32,
        (d >> 32) as u32,
        d as u32,
        k.sport.into(),
        k.dport.into(),
        k.proto.into(),
        k.vni,
        0,
        0,
        0,
        0,
    ]
}

/// Ranges of the non-address fields, shared by both families.
fn common(r: &Rule) -> ([(u32, u32); 4], u32) {
    // A non-range mask is widened to its bounds for cutting; the leaf checks
    // the exact mask through `pm`.
    let (plo, phi) = r.proto.bounds();
    let pm = if r.proto.is_range() {
        0
    } else {
        u32::from(r.proto.mask) | u32::from(r.proto.value) << 8
    };
    let vni = r.vni.map_or((0, u32::MAX), |v| (v, v));
    (
        [
            (r.src_ports.lo.into(), r.src_ports.hi.into()),
            (r.dst_ports.lo.into(), r.dst_ports.hi.into()),
            (plo.into(), phi.into()),
            vni,
        ],
        pm,
    )
}

fn brule4(r: &Rule, idx: u32) -> BRule<D4> {
    let (c, pm) = common(r);
    let (slo, shi) = range4(&r.src);
    let (dlo, dhi) = range4(&r.dst);
    BRule {
        lo: [slo, dlo, c[0].0, c[1].0, c[2].0, c[3].0, 0, 0],
        hi: [shi, dhi, c[0].1, c[1].1, c[2].1, c[3].1, 0, 0],
        pm,
        idx,
    }
}

fn brule6(r: &Rule, idx: u32) -> BRule<D6> {
    let (c, pm) = common(r);
    let (s, d) = (r.src.range(), r.dst.range());
    let mut lo = [0u32; D6];
    let mut hi = [0u32; D6];
    for w in 0..4 {
        let sh = 96 - 32 * w as u32;
        lo[w] = (s.0 >> sh) as u32;
        hi[w] = (s.1 >> sh) as u32;
        lo[4 + w] = (d.0 >> sh) as u32;
        hi[4 + w] = (d.1 >> sh) as u32;
    }
    for (i, &(l, h)) in c.iter().enumerate() {
        lo[8 + i] = l;
        hi[8 + i] = h;
    }
    BRule { lo, hi, pm, idx }
}

fn prefix_len(p: &Prefix) -> u8 {
    match *p {
        Prefix::Any => 0,
        Prefix::V4 { len, .. } | Prefix::V6 { len, .. } => len,
    }
}

/// The compiled, immutable classifier. Build it off the fast path with
/// [`Classifier::new`]; share it (it is `Send + Sync`) and call
/// [`Classifier::classify_burst`] per burst.
#[derive(Clone, Debug)]
pub struct Classifier {
    rules: Vec<Rule>,
    defaults: Defaults,
    v4: Forest<D4, Row4>,
    v6: Forest<D6, Row6>,
    stats: BuildStats,
    walk: Walk,
}

impl Classifier {
    /// Compile, choosing parameters by size: first [`BuildParams::compact`]
    /// (more cuts, fewer trees: faster while the structure stays cache
    /// resident), and if that takes more than [`COMPACT_BUDGET`] bytes,
    /// [`BuildParams::default`] (less replication).
    pub fn new(set: &RuleSet) -> Classifier {
        let t0 = Instant::now();
        let c = Classifier::with_params(set, BuildParams::compact());
        let mut c = if c.stats.memory_bytes <= COMPACT_BUDGET {
            c
        } else {
            Classifier::with_params(set, BuildParams::default())
        };
        // Small sets: one tree over all rules often needs less work per
        // lookup than one per address group (every tree visited costs a
        // walk), at a memory cost that small sets can afford.
        if (SINGLE_TREE_MIN_RULES..=SINGLE_TREE_MAX_RULES).contains(&set.len()) {
            let (one, over) = Classifier::build(set, BuildParams::single_tree(), COMPACT_BUDGET);
            if !over {
                let keys: Vec<Key> = crate::generate_trace(&c.rules, 2048, 0x5eed)
                    .into_iter()
                    .map(|e| e.key)
                    .collect();
                if one.modelled_cost(&keys) * 20 < c.modelled_cost(&keys) * 19 {
                    c = one;
                }
            }
        }
        c.stats.build_us = t0.elapsed().as_micros() as u64;
        c
    }

    /// Lookup work on `keys` in rough cycles: each tree visited, node walked
    /// and leaf row checked weighted by what it cost in measurements on the
    /// ClassBench sets (`acl-bench`; a row is an SSE2 test of a contiguous
    /// 48-byte row, a fifth of a node). Deterministic, unlike a timing.
    fn modelled_cost(&self, keys: &[Key]) -> usize {
        keys.iter()
            .map(|k| {
                let [t, n, r] = self.lookup_cost(k);
                10 * t + 10 * n + 2 * r
            })
            .sum()
    }

    /// Compile with explicit parameters.
    pub fn with_params(set: &RuleSet, params: BuildParams) -> Classifier {
        Classifier::build(set, params, usize::MAX).0
    }

    /// [`Self::with_params`]; past `limit` bytes the build stops cutting and
    /// says so (`true`): that result is correct but not worth keeping.
    fn build(set: &RuleSet, params: BuildParams, limit: usize) -> (Classifier, bool) {
        let t0 = Instant::now();
        let params = BuildParams {
            binth: params.binth.max(1),
            spfac: params.spfac.max(2),
            max_bits: params.max_bits.clamp(1, MAX_CUT_BITS),
            split_len: params.split_len,
            walk: params.walk,
        };
        let rules = set.ordered();
        let mut r4 = Vec::new();
        let mut r6 = Vec::new();
        let mut g4: Vec<Vec<u32>> = vec![Vec::new(); 4];
        let mut g6: Vec<Vec<u32>> = vec![Vec::new(); 4];
        let t4 = params.split_len;
        let t6 = params.split_len.saturating_mul(4);
        // A rule matching exactly what an earlier rule matches never wins;
        // leaving it out keeps runs of duplicates from making huge leaves.
        let mut seen = HashSet::new();
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            if !seen.insert((r.vni, r.src, r.dst, r.proto, r.src_ports, r.dst_ports)) {
                continue;
            }
            let (sl, dl) = (prefix_len(&r.src), prefix_len(&r.dst));
            let fam = r.family();
            if fam != Family::V6 {
                let g = usize::from(sl >= t4) | usize::from(dl >= t4) << 1;
                g4[g].push(r4.len() as u32);
                r4.push(brule4(r, i));
            }
            if fam != Family::V4 {
                let g = usize::from(sl >= t6) | usize::from(dl >= t6) << 1;
                g6[g].push(r6.len() as u32);
                r6.push(brule6(r, i));
            }
        }
        let rows4: Vec<Row4> = rules.iter().map(Row4::from_rule).collect();
        let (v4, s4, over4) = build_forest(r4, g4, V4_BITS, rows4, params, limit);
        // Most sets are IPv4 only: keep the IPv6 table empty then.
        let rows6: Vec<Row6> = if g6.iter().all(Vec::is_empty) {
            Vec::new()
        } else {
            rules.iter().map(Row6::from_rule).collect()
        };
        let (v6, s6, over6) = build_forest(r6, g6, V6_BITS, rows6, params, limit);
        let over = over4 || over6;
        let stats = BuildStats {
            trees: v4.trees.len() + v6.trees.len(),
            nodes: s4[0] + s6[0],
            leaves: s4[2] + s6[2],
            rows: v4.list.len() + v6.list.len(),
            max_depth: s4[1].max(s6[1]),
            memory_bytes: v4.memory() + v6.memory(),
            build_us: 0,
            walk: Walk::One,
        };
        let mut c = Classifier {
            rules,
            defaults: Defaults::from_set(set),
            v4,
            v6,
            stats,
            walk: Walk::One,
        };
        c.walk = match params.walk {
            Some(w) => w,
            None if !over && c.stats.memory_bytes > CALIBRATE_BYTES => c.calibrate(),
            None if c.v4.trees.len() <= 1 && c.v6.trees.len() <= 1 => Walk::Group,
            None => Walk::One,
        };
        c.stats.walk = c.walk;
        c.stats.build_us = t0.elapsed().as_micros() as u64;
        (c, over)
    }

    /// The fastest walk: times each (best of three) on keys generated from
    /// the rules. The answers are the same whichever wins.
    fn calibrate(&self) -> Walk {
        let keys: Vec<Key> = crate::generate_trace(&self.rules, 4096, 0x5eed)
            .into_iter()
            .map(|e| e.key)
            .collect();
        let mut out = [0u32; 32];
        let time = |walk: Walk, out: &mut [u32; 32]| {
            let t = Instant::now();
            for chunk in keys.chunks(32) {
                self.burst(walk, chunk, &mut out[..chunk.len()]);
            }
            t.elapsed()
        };
        let walks = [Walk::One, Walk::Group, Walk::Interleave];
        let mut best = [Duration::MAX; 3];
        for _ in 0..3 {
            for (b, &w) in best.iter_mut().zip(&walks) {
                *b = (*b).min(time(w, &mut out));
            }
        }
        let i = (0..3).min_by_key(|&i| best[i]).unwrap_or(0);
        walks[i]
    }

    #[inline]
    fn burst(&self, walk: Walk, keys: &[Key], out: &mut [u32]) {
        // Interleaved and grouped walks take one family at a time.
        let one_family = |v6: bool| walk != Walk::One && keys.iter().all(|k| k.v6 == v6);
        if one_family(false) {
            if walk == Walk::Interleave {
                self.v4.classify_interleaved(keys, out, key4);
            } else {
                self.grouped(&self.v4, keys, out, key4);
            }
        } else if one_family(true) {
            if walk == Walk::Interleave {
                self.v6.classify_interleaved(keys, out, key6);
            } else {
                self.grouped(&self.v6, keys, out, key6);
            }
        } else {
            for (k, o) in keys.iter().zip(out.iter_mut()) {
                *o = self.classify(k);
            }
        }
    }

    /// Keys of one family in groups of [`GROUP`] walked in lock step, the
    /// rest one at a time.
    #[inline(always)]
    fn grouped<const D: usize, R: MatchRow>(
        &self,
        f: &Forest<D, R>,
        keys: &[Key],
        out: &mut [u32],
        conv: fn(&Key) -> [u32; D],
    ) {
        let n = keys.len().min(out.len());
        let mut i = 0;
        while i + GROUP <= n {
            f.classify_group::<GROUP>(&keys[i..i + GROUP], &mut out[i..i + GROUP], conv);
            i += GROUP;
        }
        for (k, o) in keys[i..n].iter().zip(out[i..n].iter_mut()) {
            *o = f.classify(&conv(k), k);
        }
    }

    /// Index (evaluation order) of the first matching rule, or [`NO_MATCH`].
    #[inline]
    pub fn classify(&self, key: &Key) -> u32 {
        if key.v6 {
            self.v6.classify(&key6(key), key)
        } else {
            self.v4.classify(&key4(key), key)
        }
    }

    /// [`Self::classify`] for each key; `out[i]` gets the answer for `keys[i]`
    /// (extra entries of the longer slice are left alone).
    pub fn classify_burst(&self, keys: &[Key], out: &mut [u32]) {
        self.burst(self.walk, keys, out);
    }

    /// The action for a classification result: the rule's action, else the
    /// VNI's default, else the set's default.
    #[inline]
    pub fn action(&self, matched: u32, vni: u32) -> Action {
        self.defaults.action(&self.rules, matched, vni)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules?
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule at evaluation index `idx` (what `classify` returns). Panics if
    /// `idx >= len()`.
    pub fn rule(&self, idx: u32) -> &Rule {
        &self.rules[idx as usize]
    }

    /// Rule at evaluation index `idx`, or `None` (e.g. for [`NO_MATCH`]).
    pub fn get(&self, idx: u32) -> Option<&Rule> {
        self.rules.get(idx as usize)
    }

    /// All rules in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Work done for one key: trees visited, tree nodes walked, leaf rows
    /// checked. For tuning; not part of the stable interface.
    #[doc(hidden)]
    pub fn lookup_cost(&self, key: &Key) -> [usize; 3] {
        if key.v6 {
            self.v6.cost(&key6(key), key)
        } else {
            self.v4.cost(&key4(key), key)
        }
    }

    /// Build statistics (time, memory, shape).
    pub fn stats(&self) -> BuildStats {
        self.stats
    }

    /// Bytes used: lookup structures plus the rule list.
    pub fn memory_bytes(&self) -> usize {
        self.stats.memory_bytes + self.rules.capacity() * std::mem::size_of::<Rule>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::ProtoMatch;
    use crate::LinearClassifier;

    fn tiny() -> BuildParams {
        BuildParams {
            binth: 1,
            spfac: 8,
            max_bits: 4,
            split_len: 16,
            walk: None,
        }
    }

    #[test]
    fn test_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Classifier>();
        check::<LinearClassifier>();
    }

    #[test]
    fn test_duplicates_dropped() {
        let mut set = RuleSet::new(Action::Deny);
        let r = Rule {
            src: crate::parse_prefix("10.1.2.3/32").unwrap(),
            dst_ports: crate::PortRange::single(80),
            ..Rule::default()
        };
        for _ in 0..5000 {
            set.push(r.clone()).unwrap();
        }
        let c = Classifier::new(&set);
        assert_eq!(c.len(), 5000);
        assert!(c.stats().rows <= 2, "{:?}", c.stats());
        let k = Key {
            src: 0x0a01_0203,
            dport: 80,
            ..Key::default()
        };
        assert_eq!(c.classify(&k), 0);
        assert_eq!(c.classify(&Key { dport: 81, ..k }), NO_MATCH);
    }

    #[test]
    fn test_empty_set() {
        let set = RuleSet::new(Action::Deny);
        let c = Classifier::new(&set);
        assert!(c.is_empty());
        assert_eq!(c.get(NO_MATCH), None);
        assert_eq!(c.classify(&Key::default()), NO_MATCH);
        let mut out = [7u32; 3];
        c.classify_burst(&[Key::default(); 3], &mut out);
        assert_eq!(out, [NO_MATCH; 3]);
        assert_eq!(c.action(NO_MATCH, 0), Action::Deny);
    }

    #[test]
    fn test_masked_proto_never_prunes() {
        // Rule 0's protocol bounds cover small regions of the protocol axis
        // but it does not match every protocol inside them.
        let mut set = RuleSet::new(Action::Deny);
        set.push(Rule {
            proto: ProtoMatch::new(1, 0x0f),
            ..Rule::default()
        })
        .unwrap();
        for p in 2..40 {
            set.push(Rule {
                proto: ProtoMatch::exact(p),
                ..Rule::default()
            })
            .unwrap();
        }
        let c = Classifier::with_params(&set, tiny());
        let lin = LinearClassifier::new(&set);
        for p in 0..=255u8 {
            for v6 in [false, true] {
                let k = Key {
                    proto: p,
                    v6,
                    ..Key::default()
                };
                assert_eq!(c.classify(&k), lin.classify(&k), "proto {p}");
            }
        }
        assert_eq!(
            c.classify(&Key {
                proto: 2,
                ..Key::default()
            }),
            1
        );
    }

    #[test]
    fn test_v6_and_vni() {
        let p = |s: &str| crate::parse_prefix(s).unwrap();
        let mut set = RuleSet::new(Action::Allow);
        set.set_vni_default(9, Action::Deny);
        set.push(Rule {
            vni: Some(9),
            dst: p("2001:db8::/32"),
            action: Action::Allow,
            ..Rule::default()
        })
        .unwrap();
        set.push(Rule {
            src: p("10.0.0.0/8"),
            action: Action::Deny,
            ..Rule::default()
        })
        .unwrap();
        let c = Classifier::with_params(&set, tiny());
        let k6 = Key {
            vni: 9,
            dst: u128::from("2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap()),
            v6: true,
            ..Key::default()
        };
        assert_eq!(c.classify(&k6), 0);
        assert_eq!(c.classify(&Key { vni: 8, ..k6 }), NO_MATCH);
        assert_eq!(c.action(NO_MATCH, 9), Action::Deny);
        assert_eq!(c.action(NO_MATCH, 8), Action::Allow);
        let k4 = Key {
            src: 0x0a01_0203,
            ..Key::default()
        };
        assert_eq!(c.classify(&k4), 1);
        assert_eq!(c.action(1, 0), Action::Deny);
        // The same bits as an IPv6 key do not match the IPv4 rule.
        assert_eq!(c.classify(&Key { v6: true, ..k4 }), NO_MATCH);
    }
}
