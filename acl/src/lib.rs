//! ACL micro-segmentation: rule model, rule parsers, a compiled classifier and
//! a linear reference classifier.
//!
//! Each tenant (VNI) gets rules saying which inner flows may pass; the first
//! matching rule (in priority order) wins, and flows that match no rule get the
//! VNI's default action or the rule set's default.
//!
//! * [`Rule`], [`RuleSet`], [`Key`]: the model. A rule has an optional VNI,
//!   source and destination prefixes (IPv4 or IPv6, any length, or `any`), a
//!   protocol (value/mask), source and destination port ranges, an action, an
//!   optional priority (lower first; rules without one come after all explicit
//!   priorities, in insertion order) and an optional id. A rule whose `src` and
//!   `dst` are both [`Prefix::Any`] matches both families; any other rule
//!   matches only keys of its prefixes' family.
//! * Parsers: [`parse_classbench`] (errors carry file, line and token),
//!   [`parse_classbench_trace`], and the TOML/CLI field forms [`parse_prefix`],
//!   [`parse_ports`], [`parse_proto`], [`parse_action`]; serde forms
//!   [`RuleSpec`], [`FileSpec`], [`AclSpec`].
//! * [`Classifier`]: the compiled, immutable classifier; [`LinearClassifier`]:
//!   the reference it is tested against. Both return the index of the first
//!   matching rule in evaluation order ([`RuleSet::ordered`]) or [`NO_MATCH`].
//! * [`LiveClassifier`]: a compiled [`Classifier`] plus a delta (rules added
//!   and removed since), for rule changes without a recompile; its answers
//!   are exactly a recompile's, and [`LiveClassifier::recompiled`] folds the
//!   delta into a new base.
//! * [`generate_trace`]: seedable test traffic (random points inside rules).
//! * [`conntrack`]: connection tracking for stateful rules ([`Rule::stateful`]):
//!   per-worker tables every worker reads without a lock, and the stateful
//!   classification ([`conntrack::decide`]) on top of a [`Classifier`].
//!
//! # Algorithm
//!
//! Chosen by measurement against a linear scan, a lockstep multi-key walk and
//! `rte_acl` on the ClassBench sets (see `benches/src/bin/acl-bench.rs`):
//!
//! * Rules are split per family into up to four groups by which of their
//!   addresses are specific (prefix ≥ `split_len`; CutSplit's idea), so that
//!   wildcard-heavy rules do not get replicated across the cuts of specific
//!   ones. Each group gets one decision tree.
//! * A tree node cuts one dimension into `2^k` aligned parts (HiCuts with bit
//!   cuts): the child is a shift and a mask of one key field, and the link to a
//!   node carries its cut, so a level costs one dependent load. Cuts are
//!   bounded by a space factor; rules after a rule that covers the node's
//!   whole region are dropped; identical leaves are shared.
//! * Leaves hold at most `binth` rules in priority order, each as an inline
//!   48-byte (IPv4) match row with its index, so a leaf is one contiguous run
//!   (this measured 5–25% faster than indices into a shared rule table). An
//!   IPv4 row is the rule as eight 16-bit ranges that two SSE2 compares test
//!   at once (safe code; 9–14 % fewer cycles than field-by-field tests).
//!   Lookup walks the trees in order of their best rule and skips any tree
//!   whose best rule cannot beat the match found so far. Rules that match
//!   exactly what an earlier rule matches are left out.
//! * [`Classifier::new`] first tries generous cuts ([`BuildParams::compact`])
//!   and keeps them if the result fits in [`COMPACT_BUDGET`] (8 MiB), else
//!   builds with [`BuildParams::default`]. Sets of 256 to 2048 rules are also
//!   built as a single tree with large leaves ([`BuildParams::single_tree`]:
//!   `spfac` 32, `binth` 32; abandoned past 8 MiB), kept when a deterministic
//!   work model on a generated trace says it is cheaper: every tree visited
//!   costs a walk.
//! * [`Classifier::classify_burst`] walks in one of three ways ([`Walk`]):
//!   one key at a time; eight keys in lock step ([`Walk::Group`]: every
//!   round advances each unfinished descent by one node, so eight dependent
//!   load chains overlap, and a finished one waits on its leaf by a select,
//!   not a branch; then the leaves are scanned); or eight walks interleaved
//!   round-robin (AMAC). Structures over 1 MiB time the three on a
//!   generated trace and keep the fastest; smaller ones walk in groups when
//!   each family has one tree, else one key at a time. The answers are the
//!   same either way. The lock-step walk is what made large leaves pay: a
//!   node costs less than a handful of SSE2 row tests once the descents
//!   overlap.
//!
//! Measured here (2-core VM, production build, `acl-bench`, pinned, medians
//! of 3 rounds, 2026-12-04): build time and memory (lookup structures plus
//! the rule list) are 13–24 ms and 1.4–1.8 MiB for acl_1k and ipc_1k (one
//! tree, grouped walk), 70 ms and 0.3 MiB for fw_1k (grouped trees: its one
//! tree passes 8 MiB), and 0.02–0.04 s and 2.8–6.8 MiB for the 10k sets
//! (acl1, fw1, ipc1). Per packet the lookup visits 1.0–3.0 trees, 2.5–5
//! nodes and 1.5–5 rules. Against `rte_acl` (best of its scalar/SSE/AVX2,
//! same run, same trace) that is 0.83–0.86× on acl_1k, 0.67× on fw_1k,
//! 0.92–0.98× on ipc_1k, 0.85× on acl1_10k, 0.14–0.16× on fw1_10k and
//! 0.67–0.76× on ipc1_10k; `docs/benchmarks.md` has the table.
//!
//! # Rule changes
//!
//! Compiling 10k rules takes 0.1–0.15 s, too long for a rule change that
//! should be live in a millisecond. [`LiveClassifier`] keeps the compiled
//! base unchanged (shared) and adds a delta: added rules (a short list in
//! evaluation order, each with an order key that places it among the base
//! rules by priority and insertion order) and a bitmap of removed base rules.
//! A lookup asks the base, and if its answer was removed scans the base rules
//! after it (the trees may have pruned rules a removed rule shadowed, so the
//! tree is not asked again); then it asks the added rules (compiled into a
//! small classifier of their own, behind a 256-bit destination-port filter)
//! and keeps the first one if it is placed before that answer. So an add
//! costs the lookups that miss a result cache one small lookup (none when
//! the key's port is in no added rule), and a removal costs only the keys
//! whose answer it was. The caller (the dataplane's control thread)
//! recompiles in the background and swaps in the new base. Chosen over
//! recompiling on every change (0.1 s per change, the cache emptied each
//! time) and over an incremental tree update (the compiled trees drop
//! shadowed and duplicate rules and share leaves, so removing a rule from
//! them is not local). Exactness is property-tested against
//! [`LinearClassifier`] on random add/remove sequences with recompiles in
//! between.
//!
//! # Example
//!
//! ```
//! use acl::{Action, Classifier, Key, RuleSet, RuleSpec, NO_MATCH};
//!
//! let spec: RuleSpec = RuleSpec {
//!     vni: Some(100),
//!     src: "10.0.0.0/8".into(),
//!     dst: "any".into(),
//!     proto: "tcp".into(),
//!     src_ports: "any".into(),
//!     dst_ports: "443".into(),
//!     action: Action::Allow,
//!     priority: None,
//!     id: Some(1),
//!     stateful: None,
//! };
//! let mut set = RuleSet::new(Action::Deny);
//! set.push(spec.to_rule().unwrap()).unwrap();
//! let c = Classifier::new(&set);
//! let key = Key {
//!     vni: 100,
//!     src: u32::from(std::net::Ipv4Addr::new(10, 1, 2, 3)).into(),
//!     dst: 0x0a00_0001,
//!     sport: 40000,
//!     dport: 443,
//!     proto: 6,
//!     v6: false,
//! };
//! let mut out = [0u32; 1];
//! c.classify_burst(&[key], &mut out);
//! assert_eq!(out[0], 0);
//! assert_eq!(c.action(out[0], key.vni), Action::Allow);
//! let other = Key { vni: 7, ..key };
//! assert_eq!(c.classify(&other), NO_MATCH);
//! assert_eq!(c.action(NO_MATCH, 7), Action::Deny);
//! ```
#![forbid(unsafe_code)]

mod classifier;
pub mod conntrack;
mod error;
mod gen;
mod linear;
mod live;
mod parse;
mod rule;
mod spec;

pub use classifier::{BuildParams, BuildStats, Classifier, Walk, COMPACT_BUDGET};
pub use error::{FieldError, ParseError, RuleError, SpecError};
pub use gen::{generate_trace, SplitMix64};
pub use linear::LinearClassifier;
pub use live::{LiveClassifier, CHANGE_LOG};
pub use parse::{
    format_classbench_trace_line, parse_action, parse_classbench, parse_classbench_trace,
    parse_ports, parse_prefix, parse_proto, proto_name, TraceEntry,
};
pub use rule::{Action, Family, Key, PortRange, Prefix, ProtoMatch, Rule, RuleSet, NO_MATCH};
pub use spec::{AclSpec, AclSpecError, FileFormat, FileSpec, RuleSpec, VniDefaultSpec};
