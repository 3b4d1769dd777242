//! The rule model: prefixes, port ranges, protocol matches, rules, rule sets
//! and the lookup key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::error::RuleError;

/// The value `classify` returns when no rule matches.
pub const NO_MATCH: u32 = u32::MAX;

/// What happens to a flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the packet pass.
    #[default]
    Allow,
    /// Drop the packet.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// The lookup key: the inner flow of a packet plus its tenant.
///
/// IPv4 addresses are `u32::from(Ipv4Addr)` zero-extended to `u128` with
/// `v6 == false`; for such keys only the low 32 bits of `src`/`dst` are looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Key {
    /// VXLAN network identifier (tenant).
    pub vni: u32,
    /// Source address (host order).
    pub src: u128,
    /// Destination address (host order).
    pub dst: u128,
    /// Source port (0 for protocols without ports).
    pub sport: u16,
    /// Destination port (0 for protocols without ports).
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `true` for IPv6, `false` for IPv4.
    pub v6: bool,
}

/// An address prefix of one family, or `Any` (matches both families).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prefix {
    /// Any address of any family.
    Any,
    /// An IPv4 prefix; `len` is 0..=32 and the address has no bits past `len`.
    V4 {
        /// Network address (host bits are zero).
        addr: Ipv4Addr,
        /// Prefix length.
        len: u8,
    },
    /// An IPv6 prefix; `len` is 0..=128 and the address has no bits past `len`.
    V6 {
        /// Network address (host bits are zero).
        addr: Ipv6Addr,
        /// Prefix length.
        len: u8,
    },
}

/// Address family of a prefix or a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Matches keys of both families.
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

impl Prefix {
    /// An IPv4 prefix; host bits of `addr` are cleared. `None` if `len > 32`.
    pub fn v4(addr: Ipv4Addr, len: u8) -> Option<Prefix> {
        if len > 32 {
            return None;
        }
        let a = u32::from(addr) & mask32(len);
        Some(Prefix::V4 {
            addr: Ipv4Addr::from(a),
            len,
        })
    }

    /// An IPv6 prefix; host bits of `addr` are cleared. `None` if `len > 128`.
    pub fn v6(addr: Ipv6Addr, len: u8) -> Option<Prefix> {
        if len > 128 {
            return None;
        }
        let a = u128::from(addr) & mask128(len);
        Some(Prefix::V6 {
            addr: Ipv6Addr::from(a),
            len,
        })
    }

    /// The family this prefix belongs to.
    pub fn family(&self) -> Family {
        match self {
            Prefix::Any => Family::Any,
            Prefix::V4 { .. } => Family::V4,
            Prefix::V6 { .. } => Family::V6,
        }
    }

    /// The prefix as an inclusive range of `u128` addresses (IPv4 zero-extended).
    /// `Any` gives the full range.
    pub fn range(&self) -> (u128, u128) {
        match *self {
            Prefix::Any => (0, u128::MAX),
            Prefix::V4 { addr, len } => {
                let lo = u32::from(addr) & mask32(len);
                (u128::from(lo), u128::from(lo | !mask32(len)))
            }
            Prefix::V6 { addr, len } => {
                let lo = u128::from(addr) & mask128(len);
                (lo, lo | !mask128(len))
            }
        }
    }

    /// Does `addr` (of a key whose family is `v6`) fall into this prefix?
    pub fn contains(&self, addr: u128, v6: bool) -> bool {
        match *self {
            Prefix::Any => true,
            Prefix::V4 { addr: a, len } => !v6 && ((addr as u32) ^ u32::from(a)) & mask32(len) == 0,
            Prefix::V6 { addr: a, len } => v6 && (addr ^ u128::from(a)) & mask128(len) == 0,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::Any => f.write_str("any"),
            Prefix::V4 { addr, len } => write!(f, "{addr}/{len}"),
            Prefix::V6 { addr, len } => write!(f, "{addr}/{len}"),
        }
    }
}

pub(crate) fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

pub(crate) fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

/// An inclusive port range. `lo > hi` never occurs in a valid rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port in the range.
    pub lo: u16,
    /// Last port in the range (inclusive).
    pub hi: u16,
}

impl PortRange {
    /// All ports.
    pub const ANY: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    /// A range `lo..=hi`; `None` if `lo > hi`.
    pub fn new(lo: u16, hi: u16) -> Option<PortRange> {
        (lo <= hi).then_some(PortRange { lo, hi })
    }

    /// One port.
    pub fn single(p: u16) -> PortRange {
        PortRange { lo: p, hi: p }
    }

    /// Is `p` inside?
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }

    /// Does it cover every port?
    pub fn is_any(&self) -> bool {
        *self == PortRange::ANY
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange::ANY
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            f.write_str("any")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A protocol match: `proto & mask == value` (`value` has no bits outside `mask`).
/// `mask == 0` matches every protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProtoMatch {
    /// Protocol value (bits outside `mask` are zero).
    pub value: u8,
    /// Which bits of the protocol are compared.
    pub mask: u8,
}

impl ProtoMatch {
    /// Any protocol.
    pub const ANY: ProtoMatch = ProtoMatch { value: 0, mask: 0 };

    /// Exactly protocol `p`.
    pub fn exact(p: u8) -> ProtoMatch {
        ProtoMatch {
            value: p,
            mask: 0xff,
        }
    }

    /// `value/mask`; bits of `value` outside `mask` are cleared.
    pub fn new(value: u8, mask: u8) -> ProtoMatch {
        ProtoMatch {
            value: value & mask,
            mask,
        }
    }

    /// Does protocol `p` match?
    pub fn contains(&self, p: u8) -> bool {
        p & self.mask == self.value
    }

    /// Does it match every protocol?
    pub fn is_any(&self) -> bool {
        self.mask == 0
    }

    /// The smallest and largest matching protocol number.
    pub fn bounds(&self) -> (u8, u8) {
        (self.value, self.value | !self.mask)
    }

    /// Is the set of matching protocols exactly `bounds()` (mask is a run of
    /// leading ones)?
    pub fn is_range(&self) -> bool {
        self.mask.leading_ones() + self.mask.trailing_zeros() == 8
    }
}

impl fmt::Display for ProtoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            f.write_str("any")
        } else if self.mask == 0xff {
            f.write_str(&crate::parse::proto_name(self.value))
        } else {
            write!(f, "{}/0x{:02x}", self.value, self.mask)
        }
    }
}

/// One ACL rule. A key matches when every field matches.
///
/// Family: a rule whose `src` and `dst` are both [`Prefix::Any`] matches keys
/// of both families; otherwise it matches only keys of its prefixes' family
/// (IPv4 rules never match IPv6 keys and vice versa). Mixing an IPv4 and an
/// IPv6 prefix in one rule is rejected by [`Rule::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Identifier for counters and the control plane (not used for matching).
    pub id: Option<u32>,
    /// Tenant; `None` matches every VNI.
    pub vni: Option<u32>,
    /// Source prefix.
    pub src: Prefix,
    /// Destination prefix.
    pub dst: Prefix,
    /// Protocol.
    pub proto: ProtoMatch,
    /// Source ports.
    pub src_ports: PortRange,
    /// Destination ports.
    pub dst_ports: PortRange,
    /// What to do with matching flows.
    pub action: Action,
    /// Lower values are evaluated first; `None` sorts after every explicit
    /// priority. Ties keep insertion (file) order.
    pub priority: Option<u32>,
    /// Stateful (connection tracking, [`crate::conntrack`]): an allowed
    /// packet of no known connection creates one, whose packets (both
    /// directions) then pass without the rules. `None` = the default: an
    /// `allow` rule is stateful for packets of a VNI whose default action is
    /// `deny` ([`Rule::is_stateful`]). Not used for matching; meaningless on
    /// `deny` rules.
    pub stateful: Option<bool>,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            id: None,
            vni: None,
            src: Prefix::Any,
            dst: Prefix::Any,
            proto: ProtoMatch::ANY,
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
            action: Action::Allow,
            priority: None,
            stateful: None,
        }
    }
}

impl Rule {
    /// Does an allow by this rule create a connection, for a packet whose
    /// VNI's default action (the action of no match) is `vni_default`? An
    /// explicit `stateful` decides; unset, `allow` rules are stateful in VNIs
    /// whose default is `deny`. `deny` rules never are.
    #[inline]
    pub fn is_stateful(&self, vni_default: Action) -> bool {
        self.action == Action::Allow && self.stateful.unwrap_or(vni_default == Action::Deny)
    }

    /// The family of keys this rule can match.
    pub fn family(&self) -> Family {
        match (self.src.family(), self.dst.family()) {
            (Family::Any, f) | (f, Family::Any) => f,
            (f, _) => f,
        }
    }

    /// Check the invariants the classifiers rely on.
    pub fn validate(&self) -> Result<(), RuleError> {
        let fam_ok = matches!(
            (self.src.family(), self.dst.family()),
            (Family::Any, _)
                | (_, Family::Any)
                | (Family::V4, Family::V4)
                | (Family::V6, Family::V6)
        );
        if !fam_ok {
            return Err(RuleError::MixedFamily {
                src: self.src.to_string(),
                dst: self.dst.to_string(),
            });
        }
        if self.src_ports.lo > self.src_ports.hi {
            return Err(RuleError::EmptyPortRange(
                self.src_ports.lo,
                self.src_ports.hi,
            ));
        }
        if self.dst_ports.lo > self.dst_ports.hi {
            return Err(RuleError::EmptyPortRange(
                self.dst_ports.lo,
                self.dst_ports.hi,
            ));
        }
        Ok(())
    }

    /// Does `key` match this rule? This is the reference semantics.
    pub fn matches(&self, key: &Key) -> bool {
        let fam_ok = match self.family() {
            Family::Any => true,
            Family::V4 => !key.v6,
            Family::V6 => key.v6,
        };
        fam_ok
            && match self.vni {
                None => true,
                Some(v) => v == key.vni,
            }
            && self.src.contains(key.src, key.v6)
            && self.dst.contains(key.dst, key.v6)
            && self.proto.contains(key.proto)
            && self.src_ports.contains(key.sport)
            && self.dst_ports.contains(key.dport)
    }
}

/// Rules plus default actions: the input of the classifiers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Action when no rule matches and the VNI has no default of its own.
    pub default_action: Action,
    /// Per-VNI default actions.
    pub vni_defaults: BTreeMap<u32, Action>,
}

impl RuleSet {
    /// An empty set with the given default action.
    pub fn new(default_action: Action) -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            default_action,
            vni_defaults: BTreeMap::new(),
        }
    }

    /// Append a rule (after validating it).
    pub fn push(&mut self, rule: Rule) -> Result<(), RuleError> {
        rule.validate()?;
        self.rules.push(rule);
        Ok(())
    }

    /// Append many rules; stops at the first invalid one.
    pub fn extend<I: IntoIterator<Item = Rule>>(&mut self, rules: I) -> Result<(), RuleError> {
        for r in rules {
            self.push(r)?;
        }
        Ok(())
    }

    /// Set the default action of one VNI.
    pub fn set_vni_default(&mut self, vni: u32, action: Action) {
        self.vni_defaults.insert(vni, action);
    }

    /// Rules in insertion order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules?
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rules in evaluation order: stable sort by priority (`None` last). The
    /// index into this vector is what the classifiers return.
    pub fn ordered(&self) -> Vec<Rule> {
        let mut v = self.rules.clone();
        v.sort_by_key(|r| r.priority.map_or((1u8, 0u32), |p| (0, p)));
        v
    }
}

/// Defaults shared by both classifiers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Defaults {
    pub default_action: Action,
    pub vni: Vec<(u32, Action)>,
}

impl Defaults {
    pub(crate) fn from_set(set: &RuleSet) -> Defaults {
        Defaults {
            default_action: set.default_action,
            vni: set.vni_defaults.iter().map(|(&k, &v)| (k, v)).collect(),
        }
    }

    #[inline]
    pub(crate) fn action(&self, rules: &[Rule], matched: u32, vni: u32) -> Action {
        if let Some(r) = rules.get(matched as usize) {
            return r.action;
        }
        if self.vni.is_empty() {
            return self.default_action;
        }
        match self.vni.binary_search_by_key(&vni, |&(k, _)| k) {
            Ok(i) => self.vni[i].1,
            Err(_) => self.default_action,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_prefix_contains() {
        let p = Prefix::v4(Ipv4Addr::new(10, 1, 2, 3), 8).unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/8");
        assert!(p.contains(u128::from(u32::from(Ipv4Addr::new(10, 9, 9, 9))), false));
        assert!(!p.contains(u128::from(u32::from(Ipv4Addr::new(10, 9, 9, 9))), true));
        assert!(!p.contains(u128::from(u32::from(Ipv4Addr::new(11, 0, 0, 0))), false));
        let p6 = Prefix::v6("2001:db8::".parse().unwrap(), 32).unwrap();
        let a: u128 = "2001:db8:1::5".parse::<Ipv6Addr>().unwrap().into();
        assert!(p6.contains(a, true));
        assert!(!p6.contains(a, false));
        assert_eq!(Prefix::v4(Ipv4Addr::LOCALHOST, 33), None);
    }

    #[test]
    fn test_family() {
        let any = Rule::default();
        assert_eq!(any.family(), Family::Any);
        let k4 = Key::default();
        let k6 = Key {
            v6: true,
            ..Key::default()
        };
        assert!(any.matches(&k4) && any.matches(&k6));
        let r4 = Rule {
            dst: Prefix::v4(Ipv4Addr::UNSPECIFIED, 0).unwrap(),
            ..Rule::default()
        };
        assert!(r4.matches(&k4) && !r4.matches(&k6));
        let mixed = Rule {
            src: Prefix::v6(Ipv6Addr::UNSPECIFIED, 0).unwrap(),
            ..r4
        };
        assert!(mixed.validate().is_err());
    }

    #[test]
    fn test_proto_match() {
        let p = ProtoMatch::new(0x06, 0xfe);
        assert!(p.contains(6) && p.contains(7) && !p.contains(8));
        assert!(p.is_range());
        assert!(!ProtoMatch::new(1, 0x0f).is_range());
        assert!(ProtoMatch::ANY.is_range());
    }

    #[test]
    fn test_ordered_priorities() {
        let mut s = RuleSet::new(Action::Deny);
        for (i, p) in [None, Some(5), None, Some(1), Some(5)]
            .into_iter()
            .enumerate()
        {
            s.push(Rule {
                id: Some(i as u32),
                priority: p,
                ..Rule::default()
            })
            .unwrap();
        }
        let ids: Vec<_> = s.ordered().iter().map(|r| r.id.unwrap()).collect();
        assert_eq!(ids, vec![3, 1, 4, 0, 2]);
    }
}
