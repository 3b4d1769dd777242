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
    /// Shared with the next snapshot when a change leaves the ACL alone.
    pub acl: Option<Arc<AclTables>>,
    /// The ACL section `acl` was compiled from.
    pub acl_spec: Option<acl::AclSpec>,
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
    /// The ACL has a rule that can be stateful ([`ct_active`]): only then
    /// do the conntrack stages run (one test per burst otherwise).
    pub ct_active: bool,
    /// `[conntrack]` idle timeouts.
    pub ct_timeouts: acl::conntrack::Timeouts,
    /// `[conntrack] capacity` (entries per worker; used when the tables are
    /// created, at start).
    pub ct_capacity: usize,
}

/// Can a rule of `c` (compiled from `spec`) be stateful for some packet:
/// explicitly, or by default (an `allow` without `stateful` in a VNI whose
/// default is `deny`)?
pub fn ct_active(spec: &acl::AclSpec, c: &acl::Classifier) -> bool {
    use acl::Action::{Allow, Deny};
    let some_deny = spec.default == Deny || spec.vni.iter().any(|v| v.default == Deny);
    c.rules().iter().any(|r| {
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
#[derive(Debug)]
pub struct AclTables {
    pub classifier: acl::Classifier,
    /// Counter key per rule index: the rule's id, or `FILE_RULE | index` for
    /// rules without one (rules loaded from files).
    pub counter_ids: Vec<u32>,
    pub build_ms: f64,
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
        let classifier = acl::Classifier::new(&set);
        let build_ms = t0.elapsed().as_secs_f64() * 1e3;
        let counter_ids = (0..classifier.len())
            .map(|i| classifier.rule(i as u32).id.unwrap_or(FILE_RULE | i as u32))
            .collect();
        Ok(AclTables {
            classifier,
            counter_ids,
            build_ms,
        })
    }
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
        Ok(Tables {
            generation,
            decap: self.decap.clone(),
            local_mac: self.local_mac,
            next_hop_mac: self.next_hop_mac,
            non_vip: self.non_vip,
            acl: self.acl.clone(),
            acl_spec: self.acl_spec.clone(),
            lb,
            services: self.services.clone(),
            health: Arc::new(health),
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
            ct_active: self.ct_active,
            ct_timeouts: self.ct_timeouts,
            ct_capacity: self.ct_capacity,
        })
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
        let reusable =
            prev.and_then(|p| (p.acl_spec.as_ref() == cfg.acl.as_ref()).then(|| p.acl.clone()));
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
            acl_spec: cfg.acl.clone(),
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
        match (&self.acl, &self.acl_spec) {
            (Some(a), Some(spec)) => {
                h.str(&format!("acl|{:?}|{:?}", spec.default, spec.vni));
                for r in a.classifier.rules() {
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
            _ => h.str("acl|none"),
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
