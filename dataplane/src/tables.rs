//! The immutable snapshot workers read once per burst.

use std::sync::Arc;

use crate::config::{Config, NonVip};

/// Everything the fast path needs, built off the fast path and published whole.
#[derive(Debug)]
pub struct Tables {
    /// Incremented by every published change.
    pub generation: u64,
    pub decap: vxlan::DecapConfig,
    pub local_mac: [u8; 6],
    pub next_hop_mac: [u8; 6],
    pub non_vip: NonVip,
    /// Compiled tenant ACL; `None` = no `[acl]` section (everything passes).
    /// Shared with the next snapshot when a change leaves the ACL alone
    /// ([`AclTables::represents`] tells whether it does).
    pub acl: Option<Arc<AclTables>>,
    /// Services, Maglev tables.
    pub lb: lb::LbTables,
    /// The desired service state the `lb` snapshot was built from.
    pub services: lb::Services,
    /// The backends' health the `lb` snapshot was built with (written by the
    /// health checker, [`crate::health`]; carried over by control changes).
    pub health: Arc<lb::HealthMap>,
    pub flow_cfg: lb::flow_table::FlowTableConfig,
    /// Entries of each worker's ACL result cache (0 = none).
    pub acl_cache: usize,
    pub underlay_v4: Option<std::net::Ipv4Addr>,
    pub underlay_v6: Option<std::net::Ipv6Addr>,
    pub vxlan_dst_port: u16,
    /// UDP destination port of `geneve` encapsulation to backends: the first
    /// of `geneve_ports`, else 6081.
    pub geneve_dst_port: u16,
    pub gue_port: u16,
    pub mtu: u16,
    /// Fragments of VIP traffic ([`crate::frag`]): table size, timeouts.
    pub frag: FragConfig,
    /// (address, v6, protocol, VNI or [`ANY_VNI`]) of every service, sorted:
    /// a later fragment (no ports) is VIP traffic when it matches one.
    pub frag_vips: Vec<(u128, bool, u8, u32)>,
    /// [`Tables::digest`], computed on first use.
    pub digest: std::sync::OnceLock<String>,
    /// Flow-state sharing with the fleet (`[fleet]`): the same link in every
    /// snapshot of a run.
    pub fleet: Option<Arc<crate::fleet::FleetLink>>,
    /// The tenant networks the outside reaches (`[[tenant]]`); `None`
    /// without any: plain IP packets are dropped as `not_vxlan`.
    pub overlay: Option<Arc<Overlay>>,
    /// Where tenant addresses were seen: the same table in every snapshot of
    /// a run (while `[fdb]` keeps its size and age).
    pub fdb: Option<Arc<FdbHandle>>,
    /// The ACL has a rule that can be stateful ([`ct_active`]): only then
    /// do the conntrack stages run (one test per burst otherwise).
    pub ct_active: bool,
    /// `[conntrack]` idle timeouts.
    pub ct_timeouts: acl::conntrack::Timeouts,
    /// `[conntrack] capacity` (entries per worker; used when the tables are
    /// created, at start).
    pub ct_capacity: usize,
}

/// The tenants of a snapshot: prefixes, encapsulation, static entries.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlay {
    /// Every tenant prefix with its VNI (prefixes of two tenants never overlap).
    pub prefixes: Vec<(crate::config::TenantPrefix, u32)>,
    /// (VNI, how to encapsulate to it), sorted by VNI.
    pub tenants: Vec<(u32, ctl::OverlayEncap)>,
    /// Static entries: ((VNI, address, v6), where), sorted.
    pub statics: Vec<((u32, u128, bool), vxlan::fdb::VtepEntry)>,
    /// Open-addressing index into `statics` (position + 1, 0 = empty; twice
    /// as many slots as entries, a power of two): one or two probes.
    pub static_index: Vec<u32>,
    /// Outer source addresses (the first VTEP address of the family, else the
    /// underlay one).
    pub src_v4: Option<std::net::Ipv4Addr>,
    pub src_v6: Option<std::net::Ipv6Addr>,
    /// New addresses a worker learns per second at most.
    pub learn_rate: u32,
}

impl Overlay {
    fn of(cfg: &Config) -> Option<Overlay> {
        if cfg.tenant.is_empty() {
            return None;
        }
        let g = &cfg.gateway;
        let mut prefixes = Vec::new();
        let mut tenants = Vec::new();
        let mut statics = Vec::new();
        for t in &cfg.tenant {
            tenants.push((t.vni, t.encap));
            for p in &t.prefixes {
                if let Ok(q) = crate::config::parse_tenant_prefix(p) {
                    prefixes.push((q, t.vni));
                }
            }
            for v in &t.vtep {
                let (a, v6) = crate::config::addr_key(v.addr);
                let (vtep, vtep_v6) = crate::config::addr_key(v.vtep);
                statics.push((
                    (t.vni, a, v6),
                    vxlan::fdb::VtepEntry {
                        vtep,
                        vtep_v6,
                        mac: v.mac.map_or([0xff; 6], |m| m.0),
                    },
                ));
            }
        }
        // Longest first: a test in order finds the most specific (they do
        // not overlap anyway).
        prefixes.sort_by_key(|(q, _)| std::cmp::Reverse(q.len));
        tenants.sort_by_key(|t| t.0);
        statics.sort_by_key(|s| s.0);
        let first = |v6: bool| {
            g.vtep_ips
                .iter()
                .chain(&g.underlay_ips)
                .copied()
                .find(|a| a.is_ipv6() == v6)
        };
        let slots = (statics.len() * 2).next_power_of_two().max(2);
        let mut static_index = vec![0u32; if statics.is_empty() { 0 } else { slots }];
        for (i, (k, _)) in statics.iter().enumerate() {
            let mut h = static_slot(k) & (slots - 1);
            while static_index[h] != 0 {
                h = (h + 1) & (slots - 1);
            }
            static_index[h] = i as u32 + 1;
        }
        Some(Overlay {
            prefixes,
            tenants,
            statics,
            static_index,
            src_v4: first(false).and_then(|a| match a {
                std::net::IpAddr::V4(v) => Some(v),
                _ => None,
            }),
            src_v6: first(true).and_then(|a| match a {
                std::net::IpAddr::V6(v) => Some(v),
                _ => None,
            }),
            learn_rate: cfg.fdb.learn_rate,
        })
    }

    /// The tenant (VNI) whose prefixes hold `a`.
    #[inline]
    pub fn tenant_of(&self, a: u128, v6: bool) -> Option<u32> {
        self.prefixes
            .iter()
            .find(|(q, _)| q.contains(a, v6))
            .map(|(_, v)| *v)
    }

    /// True when `a` is in one of tenant `vni`'s prefixes.
    #[inline]
    pub fn holds(&self, vni: u32, a: u128, v6: bool) -> bool {
        self.prefixes
            .iter()
            .any(|(q, v)| *v == vni && q.contains(a, v6))
    }

    /// How traffic into tenant `vni` is encapsulated (`None`: no such tenant).
    #[inline]
    pub fn encap_of(&self, vni: u32) -> Option<ctl::OverlayEncap> {
        self.tenants
            .binary_search_by_key(&vni, |t| t.0)
            .ok()
            .map(|i| self.tenants[i].1)
    }

    /// The static entry of `a` in tenant `vni`.
    #[inline]
    pub fn static_of(&self, vni: u32, a: u128, v6: bool) -> Option<&vxlan::fdb::VtepEntry> {
        let n = self.static_index.len();
        if n == 0 {
            return None;
        }
        let k = (vni, a, v6);
        let mut h = static_slot(&k) & (n - 1);
        loop {
            let i = self.static_index[h] as usize;
            if i == 0 {
                return None;
            }
            let (sk, e) = &self.statics[i - 1];
            if *sk == k {
                return Some(e);
            }
            h = (h + 1) & (n - 1);
        }
    }
}

/// The home slot of a static entry's key in [`Overlay::static_index`].
#[inline]
fn static_slot(k: &(u32, u128, bool)) -> usize {
    let a = (k.1 as u64) ^ ((k.1 >> 64) as u64).rotate_left(29);
    let h = (a ^ (u64::from(k.0) << 33) ^ u64::from(k.2)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 32) as usize
}

/// The learned table and the clock its entries are stamped with.
#[derive(Debug)]
pub struct FdbHandle {
    pub fdb: vxlan::fdb::Fdb,
    origin: std::time::Instant,
    capacity: usize,
}

impl FdbHandle {
    pub fn new(f: &crate::config::FdbSection) -> FdbHandle {
        FdbHandle {
            fdb: vxlan::fdb::Fdb::new(f.capacity, f.age_s),
            origin: std::time::Instant::now(),
            capacity: f.capacity,
        }
    }

    /// Seconds since the table was made, from 1.
    #[inline]
    pub fn now_s(&self) -> u32 {
        self.origin.elapsed().as_secs() as u32 + 1
    }

    fn fits(&self, f: &crate::config::FdbSection) -> bool {
        self.capacity == f.capacity && self.fdb.age_s() == f.age_s
    }
}

/// Can a rule of `c` (compiled from `spec`) be stateful for some packet:
/// explicitly, or by default (an `allow` without `stateful` in a VNI whose
/// default is `deny`)?
pub fn ct_active(spec: &acl::AclSpec, c: &acl::LiveClassifier) -> bool {
    ct_active_with(spec.default, &spec.vni, c)
}

/// [`ct_active`] from the defaults (what a rule change's snapshot has).
fn ct_active_with(
    default: acl::Action,
    vni: &[acl::VniDefaultSpec],
    c: &acl::LiveClassifier,
) -> bool {
    use acl::Action::{Allow, Deny};
    let some_deny = default == Deny || vni.iter().any(|v| v.default == Deny);
    c.rules_in_order().into_iter().any(|(_, r)| {
        r.action == Allow
            && match (r.stateful, r.vni) {
                (Some(s), _) => s,
                (None, Some(v)) => c.action(acl::NO_MATCH, v) == Deny,
                (None, None) => some_deny,
            }
    })
}

/// The `[dataplane]` keys of the fragment path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragConfig {
    /// Entries of each worker's association table.
    pub table_entries: usize,
    /// Lifetime of an association after the last fragment that used it, ms.
    pub timeout_ms: u64,
    /// How long a fragment waits for its first fragment, ms.
    pub hold_ms: u64,
    /// Fragments each worker holds at most (0 = none: drop at once).
    pub hold_slots: usize,
}

impl FragConfig {
    fn of(d: &crate::config::DataplaneSection) -> FragConfig {
        FragConfig {
            table_entries: d.frag_table_size,
            timeout_ms: d.frag_timeout_ms,
            hold_ms: d.frag_hold_ms,
            hold_slots: d.frag_hold_slots,
        }
    }
}

/// A service scoped to no VNI, in [`Tables::frag_vips`].
pub const ANY_VNI: u32 = u32::MAX;

/// [`Tables::frag_vips`] of `lb`.
fn frag_vips(lb: &lb::LbTables) -> Vec<(u128, bool, u8, u32)> {
    let mut v: Vec<_> = lb
        .services()
        .map(|(_, s)| {
            let (a, v6) = match s.vip {
                std::net::IpAddr::V4(a) => (u128::from(u32::from(a)), false),
                std::net::IpAddr::V6(a) => (u128::from(a), true),
            };
            (a, v6, s.proto.number(), s.vni.unwrap_or(ANY_VNI))
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The compiled ACL and what the counters need to name its rules.
///
/// A rule change ([`AclTables::with_change`]) does not recompile: the
/// classifier is a compiled base plus a delta ([`acl::LiveClassifier`]), and
/// the control plane folds the delta into a new base in the background
/// ([`AclTables::recompiled`]).
#[derive(Debug)]
pub struct AclTables {
    pub classifier: acl::LiveClassifier,
    /// Counter key per rule index: the rule's id, or `FILE_RULE | index` for
    /// rules without one (rules loaded from files).
    pub counter_ids: Vec<u32>,
    /// Time the base took to compile.
    pub build_ms: f64,
    /// The ACL section the base was compiled from.
    src: Arc<AclSource>,
    /// Per inline rule of `src`: still in force?
    inline_live: Vec<bool>,
    /// Inline rules added since the base, in order, with their indices.
    added: Vec<(acl::RuleSpec, u32)>,
}

/// The parts of an ACL section a base was compiled from.
#[derive(Debug)]
struct AclSource {
    default: acl::Action,
    vni: Vec<acl::VniDefaultSpec>,
    file: Vec<acl::FileSpec>,
    /// Inline rules and their classifier indices.
    inline: Vec<acl::RuleSpec>,
    inline_idx: Vec<u32>,
}

/// A rule-only change of the ACL: what `rule add` and `rule del` do.
#[derive(Clone, Debug)]
pub enum RuleChange {
    /// Append an inline rule (already validated).
    Add(acl::RuleSpec),
    /// Remove the inline rule with this id.
    Del(u32),
}

/// One reason a configuration does not make tables.
#[derive(Debug, thiserror::Error)]
pub enum BuildProblem {
    /// A problem `Config::validate` found (the message names the key).
    #[error("{0}")]
    Config(String),
    /// A rule file named in `[[acl.file]]` cannot be read.
    #[error("acl.file[{index}]: cannot read {path}: {source}")]
    AclFile {
        index: usize,
        path: String,
        source: std::io::Error,
    },
    /// The ACL section does not make a rule set.
    #[error("{0}")]
    Acl(#[from] acl::AclSpecError),
    /// The services do not make a snapshot.
    #[error("service: {0}")]
    Service(#[from] lb::LbError),
}

/// Every problem that keeps a configuration from being built into tables.
#[derive(Debug)]
pub struct BuildError(pub Vec<BuildProblem>);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BuildError {}

impl BuildError {
    /// The problems, one message each.
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(|p| p.to_string()).collect()
    }

    /// The control protocol's code: an unreadable rule file is the daemon's
    /// problem (`internal`), everything else an invalid configuration.
    pub fn code(&self) -> ctl::ErrorCode {
        if self
            .0
            .iter()
            .all(|p| matches!(p, BuildProblem::AclFile { .. }))
        {
            ctl::ErrorCode::Internal
        } else {
            ctl::ErrorCode::Invalid
        }
    }
}

/// Marks counter ids of rules that have no id of their own.
pub const FILE_RULE: u32 = 0x8000_0000;

impl AclTables {
    /// Reads the rule files the spec names and compiles the rule set.
    pub fn build(spec: &acl::AclSpec) -> Result<AclTables, Vec<BuildProblem>> {
        let mut problems = Vec::new();
        let mut texts = Vec::new();
        for (index, f) in spec.file.iter().enumerate() {
            match std::fs::read_to_string(&f.path) {
                Ok(t) => texts.push(t),
                Err(source) => {
                    problems.push(BuildProblem::AclFile {
                        index,
                        path: f.path.clone(),
                        source,
                    });
                    texts.push(String::new());
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let set = spec
            .to_rule_set(&texts)
            .map_err(|e| vec![BuildProblem::Acl(e)])?;
        let t0 = std::time::Instant::now();
        let classifier = acl::LiveClassifier::new(&set, spec.rule.len());
        let build_ms = t0.elapsed().as_secs_f64() * 1e3;
        let inline_idx = (0..spec.rule.len())
            .map(|p| classifier.base_index_of(p).unwrap_or(acl::NO_MATCH))
            .collect();
        Ok(AclTables {
            counter_ids: counter_ids(&classifier),
            build_ms,
            src: Arc::new(AclSource {
                default: spec.default,
                vni: spec.vni.clone(),
                file: spec.file.clone(),
                inline: spec.rule.clone(),
                inline_idx,
            }),
            inline_live: vec![true; spec.rule.len()],
            added: Vec::new(),
            classifier,
        })
    }

    /// The inline rules in force, in order.
    fn inline_rules(&self) -> impl Iterator<Item = &acl::RuleSpec> + '_ {
        self.src
            .inline
            .iter()
            .zip(&self.inline_live)
            .filter(|(_, live)| **live)
            .map(|(r, _)| r)
            .chain(self.added.iter().map(|(r, _)| r))
    }

    /// Is this exactly the ACL `spec` describes (so it can be reused)?
    pub fn represents(&self, spec: &acl::AclSpec) -> bool {
        self.src.default == spec.default
            && self.src.vni == spec.vni
            && self.src.file == spec.file
            && self.inline_rules().eq(spec.rule.iter())
    }

    /// The default and per-VNI defaults.
    pub fn defaults(&self) -> (acl::Action, &[acl::VniDefaultSpec]) {
        (self.src.default, &self.src.vni)
    }

    /// The tables after one rule change, without compiling: the change goes
    /// into the classifier's delta. `None` if `Del` names no inline rule or
    /// `Add`'s rule is invalid (the caller validates first).
    pub fn with_change(&self, change: &RuleChange) -> Option<AclTables> {
        let mut classifier = self.classifier.clone();
        let mut counter_ids = self.counter_ids.clone();
        let mut inline_live = self.inline_live.clone();
        let mut added = self.added.clone();
        match change {
            RuleChange::Add(spec) => {
                let rule = spec.to_rule().ok()?;
                let id = rule.id;
                let idx = classifier.add(rule);
                debug_assert_eq!(idx as usize, counter_ids.len());
                counter_ids.push(id.unwrap_or(FILE_RULE | idx));
                added.push((spec.clone(), idx));
            }
            RuleChange::Del(id) => {
                if let Some(at) = added.iter().position(|(r, _)| r.id == Some(*id)) {
                    let (_, idx) = added.remove(at);
                    classifier.remove(idx);
                } else {
                    let p = self
                        .src
                        .inline
                        .iter()
                        .zip(&inline_live)
                        .position(|(r, live)| *live && r.id == Some(*id))?;
                    inline_live[p] = false;
                    classifier.remove(self.src.inline_idx[p]);
                }
            }
        }
        Some(AclTables {
            classifier,
            counter_ids,
            build_ms: self.build_ms,
            src: self.src.clone(),
            inline_live,
            added,
        })
    }

    /// The same rules compiled into a new base (empty delta): what the
    /// control plane's background recompile publishes. No file is read.
    pub fn recompiled(&self) -> AclTables {
        let t0 = std::time::Instant::now();
        let (classifier, remap) = self.classifier.recompiled();
        let build_ms = t0.elapsed().as_secs_f64() * 1e3;
        let old_idx = self
            .src
            .inline_idx
            .iter()
            .zip(&self.inline_live)
            .filter(|(_, live)| **live)
            .map(|(i, _)| *i)
            .chain(self.added.iter().map(|(_, i)| *i));
        let inline_idx: Vec<u32> = old_idx
            .map(|i| remap.get(i as usize).copied().unwrap_or(acl::NO_MATCH))
            .collect();
        let inline: Vec<acl::RuleSpec> = self.inline_rules().cloned().collect();
        let n = inline.len();
        AclTables {
            counter_ids: counter_ids(&classifier),
            build_ms,
            src: Arc::new(AclSource {
                default: self.src.default,
                vni: self.src.vni.clone(),
                file: self.src.file.clone(),
                inline,
                inline_idx,
            }),
            inline_live: vec![true; n],
            added: Vec::new(),
            classifier,
        }
    }
}

/// Counter key per index of a freshly compiled classifier.
fn counter_ids(c: &acl::LiveClassifier) -> Vec<u32> {
    (0..c.len())
        .map(|i| c.rule(i as u32).id.unwrap_or(FILE_RULE | i as u32))
        .collect()
}

impl Tables {
    /// True if `k` (a later fragment's key: no ports) is addressed to the
    /// VIP of a service of its protocol (and VNI, for a scoped service).
    #[inline]
    pub fn is_frag_vip(&self, k: &vxlan::FlowKey) -> bool {
        let v = &self.frag_vips;
        let at = v.partition_point(|e| (e.0, e.1, e.2) < (k.dst, k.v6, k.proto));
        v[at..]
            .iter()
            .take_while(|e| (e.0, e.1, e.2) == (k.dst, k.v6, k.proto))
            .any(|e| e.3 == ANY_VNI || e.3 == k.vni)
    }

    /// Builds the tables a config describes (validating it first).
    pub fn build(cfg: &Config, generation: u64) -> Result<Tables, BuildError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(BuildError(
                problems.into_iter().map(BuildProblem::Config).collect(),
            ));
        }
        let services = lb::Services::from_specs(cfg.service.iter().cloned())
            .map_err(|e| BuildError(vec![BuildProblem::Service(e)]))?;
        Self::build_from(cfg, &services, None, Arc::default(), generation)
    }

    /// Builds the snapshot that follows `prev` after a control change. `cfg` and
    /// `services` are the desired state, already validated as a whole by the
    /// control plane (so neither is checked or converted again). Every Maglev
    /// table whose inputs did not change is taken over from `prev`, and so is the
    /// compiled ACL when the ACL section did not change (rule files are read
    /// when the ACL changes, not on every backend change).
    pub fn rebuild(
        cfg: &Config,
        services: &lb::Services,
        prev: &Tables,
        generation: u64,
    ) -> Result<Tables, BuildError> {
        Self::build_from(cfg, services, Some(prev), prev.health.clone(), generation)
    }

    /// The snapshot that follows `self` when only the backends' health changed:
    /// everything is shared or copied but the `lb` tables, which are rebuilt
    /// (reusing every Maglev table whose eligible backends did not change).
    pub fn with_health(
        &self,
        health: lb::HealthMap,
        generation: u64,
    ) -> Result<Tables, BuildError> {
        let lb = lb::LbTables::rebuild_with_health(&self.lb, &self.services, &health)
            .map_err(|e| BuildError(vec![BuildProblem::Service(e)]))?;
        Ok(self.derived(generation, self.acl.clone(), lb, Arc::new(health)))
    }

    /// The snapshot that follows `self` after a rule-only change (`rule add`,
    /// `rule del`): the ACL gets the change in its delta (no compile), and
    /// everything else is shared or copied. `None` when there is no ACL or
    /// the change does not apply to it (the caller then rebuilds).
    pub fn with_rule_change(&self, change: &RuleChange, generation: u64) -> Option<Tables> {
        let acl = self.acl.as_ref()?.with_change(change)?;
        Some(self.derived(
            generation,
            Some(Arc::new(acl)),
            self.lb.clone(),
            self.health.clone(),
        ))
    }

    /// The snapshot that follows `self` with another compiled ACL that means
    /// the same (the background recompile's result).
    pub fn with_acl(&self, acl: Arc<AclTables>, generation: u64) -> Tables {
        self.derived(generation, Some(acl), self.lb.clone(), self.health.clone())
    }

    fn derived(
        &self,
        generation: u64,
        acl: Option<Arc<AclTables>>,
        lb: lb::LbTables,
        health: Arc<lb::HealthMap>,
    ) -> Tables {
        // A rule change may add (or remove) the only stateful rule.
        let ct_active = match &self.acl {
            Some(old) if acl.as_ref().is_some_and(|a| Arc::ptr_eq(a, old)) => self.ct_active,
            _ => acl.as_ref().is_some_and(|a| {
                let (d, v) = a.defaults();
                ct_active_with(d, v, &a.classifier)
            }),
        };
        Tables {
            generation,
            decap: self.decap.clone(),
            local_mac: self.local_mac,
            next_hop_mac: self.next_hop_mac,
            non_vip: self.non_vip,
            acl,
            lb,
            services: self.services.clone(),
            health,
            flow_cfg: self.flow_cfg,
            acl_cache: self.acl_cache,
            underlay_v4: self.underlay_v4,
            underlay_v6: self.underlay_v6,
            vxlan_dst_port: self.vxlan_dst_port,
            geneve_dst_port: self.geneve_dst_port,
            gue_port: self.gue_port,
            mtu: self.mtu,
            frag: self.frag,
            frag_vips: self.frag_vips.clone(),
            digest: std::sync::OnceLock::new(),
            fleet: self.fleet.clone(),
            overlay: self.overlay.clone(),
            fdb: self.fdb.clone(),
            // A rule change may add (or remove) the only stateful rule.
            ct_active,
            ct_timeouts: self.ct_timeouts,
            ct_capacity: self.ct_capacity,
        }
    }

    fn build_from(
        cfg: &Config,
        services: &lb::Services,
        prev: Option<&Tables>,
        health: Arc<lb::HealthMap>,
        generation: u64,
    ) -> Result<Tables, BuildError> {
        let g = &cfg.gateway;
        let mut problems = Vec::new();
        let reusable = prev.and_then(|p| match (&p.acl, &cfg.acl) {
            (None, None) => Some(None),
            (Some(a), Some(spec)) if a.represents(spec) => Some(Some(a.clone())),
            _ => None,
        });
        let acl = match (reusable, &cfg.acl) {
            (Some(acl), _) => acl,
            (None, None) => None,
            (None, Some(spec)) => match AclTables::build(spec) {
                Ok(a) => Some(Arc::new(a)),
                Err(p) => {
                    problems.extend(p);
                    None
                }
            },
        };
        let empty = lb::LbTables::empty();
        let prev_lb = prev.map_or(&empty, |p| &p.lb);
        let mut lb = match lb::LbTables::rebuild_with_health(prev_lb, services, &health) {
            Ok(t) => t,
            Err(e) => {
                problems.push(BuildProblem::Service(e));
                lb::LbTables::empty()
            }
        };
        let fleet = prev.and_then(|p| p.fleet.clone()).or_else(|| {
            cfg.fleet
                .as_ref()
                .map(|f| Arc::new(crate::fleet::FleetLink::new(f)))
        });
        let max_age_ms =
            u64::from(cfg.dataplane.tcp_timeout_s.max(cfg.dataplane.udp_timeout_s)) * 1000;
        lb.set_shared_flows(fleet.as_ref().map(|f| f.store.clone()), max_age_ms);
        let underlay_v4 = g.underlay_v4().or_else(|| {
            g.vtep_ips.iter().find_map(|a| match a {
                std::net::IpAddr::V4(v) => Some(*v),
                _ => None,
            })
        });
        let underlay_v6 = g.underlay_v6().or_else(|| {
            g.vtep_ips.iter().find_map(|a| match a {
                std::net::IpAddr::V6(v) => Some(*v),
                _ => None,
            })
        });
        if !problems.is_empty() {
            return Err(BuildError(problems));
        }
        let overlay = Overlay::of(cfg);
        let fdb = overlay.as_ref().map(|_| {
            prev.and_then(|p| p.fdb.clone())
                .filter(|f| f.fits(&cfg.fdb))
                .unwrap_or_else(|| Arc::new(FdbHandle::new(&cfg.fdb)))
        });
        let overlay = match (overlay, prev.and_then(|p| p.overlay.as_ref())) {
            (Some(o), Some(p)) if **p == o => Some(p.clone()),
            (o, _) => o.map(Arc::new),
        };
        let frag_vips = frag_vips(&lb);
        let ct_active = match (&acl, &cfg.acl) {
            (Some(a), Some(spec)) => ct_active(spec, &a.classifier),
            _ => false,
        };
        Ok(Tables {
            generation,
            decap: vxlan::DecapConfig {
                vtep_v4: g.vtep_v4(),
                vtep_v6: g.vtep_v6(),
                ports: g.vxlan_ports.clone(),
                geneve_ports: g.geneve_ports.clone(),
            },
            local_mac: g.local_mac,
            next_hop_mac: g.next_hop_mac,
            non_vip: g.non_vip,
            acl,
            lb,
            services: services.clone(),
            health,
            flow_cfg: lb::flow_table::FlowTableConfig {
                capacity: cfg.dataplane.flow_capacity,
                tcp_timeout: cfg.dataplane.tcp_timeout_s.saturating_mul(1000),
                udp_timeout: cfg.dataplane.udp_timeout_s.saturating_mul(1000),
                fin_timeout: cfg.dataplane.fin_timeout_s.saturating_mul(1000),
            },
            acl_cache: cfg.dataplane.acl_cache,
            underlay_v4,
            underlay_v6,
            vxlan_dst_port: g.vxlan_ports.first().copied().unwrap_or(4789),
            geneve_dst_port: g
                .geneve_ports
                .first()
                .copied()
                .unwrap_or(vxlan::geneve::PORT),
            gue_port: g.gue_port,
            mtu: g.mtu,
            frag: FragConfig::of(&cfg.dataplane),
            frag_vips,
            digest: std::sync::OnceLock::new(),
            fleet,
            overlay,
            fdb,
            ct_active,
            ct_timeouts: cfg.conntrack.timeouts(),
            ct_capacity: cfg.conntrack.capacity,
        })
    }
}

/// 64-bit FNV-1a: stable across builds and machines (unlike `DefaultHasher`).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    /// Mixes 8 bytes at once (the Maglev tables are large).
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

impl Tables {
    /// A digest of what decides where packets go: the decap addresses and
    /// ports, every service with its backends' effective state and its
    /// Maglev table, and the compiled ACL (rules in evaluation order with
    /// their actions, and the defaults). Two gateways with the same digest
    /// send the same packet to the same backend; the snapshot generation and
    /// counters are not part of it. Printed by `dpgw check` and shown by
    /// `dpgwctl stats` and the metrics. Rule ids are not part of it (they
    /// name rules, they do not decide). Computed once per snapshot.
    pub fn digest(&self) -> &str {
        self.digest.get_or_init(|| self.compute_digest())
    }

    fn compute_digest(&self) -> String {
        let mut h = Fnv::new();
        h.str("dpgw-tables-v1");
        h.str(&format!(
            "{:?}|{:?}|{:?}|{:?}|{}|{:?}|{}|{}|{}",
            self.decap.vtep_v4,
            self.decap.vtep_v6,
            self.decap.ports,
            self.decap.geneve_ports,
            self.geneve_dst_port,
            self.non_vip,
            self.vxlan_dst_port,
            self.gue_port,
            self.mtu
        ));
        let mut services: Vec<_> = self.lb.services().collect();
        services.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        for (_, s) in services {
            h.str(&format!(
                "svc|{}|{}|{}|{:?}|{:?}|{:?}|{}",
                s.name, s.vip, s.port, s.proto, s.vni, s.encap, s.table_size
            ));
            // Only when not the default, so that the digests of existing
            // configurations stay what they were.
            if s.scheduler != lb::Scheduler::Maglev || s.new_flow_rate != 0 {
                h.str(&format!("sched|{}|{}", s.scheduler, s.new_flow_rate));
            }
            for b in s.backends() {
                h.str(&format!(
                    "be|{}|{}|{:?}|{:?}|{:?}|{}",
                    b.ip,
                    b.weight,
                    b.state,
                    b.health,
                    b.mac,
                    b.eligible()
                ));
            }
            let t = s.table();
            h.word(t.len() as u64);
            for c in t.chunks(4) {
                let mut w = 0u64;
                for (k, i) in c.iter().enumerate() {
                    w |= u64::from(*i) << (16 * k);
                }
                h.word(w);
            }
        }
        match &self.acl {
            Some(a) => {
                let (default, vni) = a.defaults();
                h.str(&format!("acl|{default:?}|{vni:?}"));
                for (_, r) in a.classifier.rules_in_order() {
                    h.str(&format!(
                        "rule|{:?}|{}|{}|{}|{}|{}|{:?}",
                        r.vni, r.src, r.dst, r.proto, r.src_ports, r.dst_ports, r.action
                    ));
                    // Only an explicit flag: digests of rule sets without
                    // one stay what they were.
                    if let Some(st) = r.stateful {
                        h.str(if st { "stateful" } else { "stateless" });
                    }
                }
            }
            None => h.str("acl|none"),
        }
        // Only with tenants, so that the digests of existing configurations
        // stay what they were.
        if let Some(o) = &self.overlay {
            for (q, v) in &o.prefixes {
                h.str(&format!("tenant|{v}|{q:?}"));
            }
            for (v, e) in &o.tenants {
                h.str(&format!("encap|{v}|{e:?}"));
            }
            for (k, e) in &o.statics {
                h.str(&format!("static|{k:?}|{e:?}"));
            }
        }
        format!("{:016x}", h.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn test_digest_covers_scheduler_and_rate_cap() {
        let d = |extra: &str| {
            let text = format!(
                "[pcap]\ninput = [\"x.pcap\"]\n[gateway]\nunderlay_ips = [\"10.0.0.1\"]\n\
                 [[service]]\nname = \"web\"\nvip = \"10.96.0.1\"\nport = 80\nproto = \"tcp\"\n\
                 {extra}\n[[service.backend]]\nip = \"10.9.0.1\"\n"
            );
            Tables::build(&Config::parse(&text).unwrap(), 1)
                .unwrap()
                .digest()
                .to_string()
        };
        let maglev = d("");
        assert_eq!(maglev, d("scheduler = \"maglev\"\nnew_flow_rate = 0"));
        let lc = d("scheduler = \"least_conn\"");
        assert_ne!(lc, maglev);
        assert_ne!(lc, d("scheduler = \"round_robin\""));
        assert_ne!(d("new_flow_rate = 100"), maglev);
        assert_ne!(d("new_flow_rate = 100"), d("new_flow_rate = 200"));
        let e = Config::parse(
            "[[service]]\nname = \"web\"\nvip = \"10.96.0.1\"\nport = 80\nproto = \"tcp\"\nscheduler = \"lc\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("scheduler") && e.contains("least_conn"), "{e}");
    }
}
