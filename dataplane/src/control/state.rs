//! The desired state the control plane owns, and the validated mutations of it.
//!
//! A [`Desired`] is always a configuration `dpgw run` accepts: every mutation is
//! applied to a copy, the copy is checked as a whole (the `lb` model's rules,
//! each rule's fields, [`Config::validate`], and finally [`Tables::build`] by the
//! caller), and only then replaces the current state.

use std::collections::HashSet;

use ctl::{BackendRow, Command, Data, ErrorCode, RuleFormat, RuleSpec};

use crate::config::Config;

/// Why a mutation (or the initial state) was refused. Nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The service model refused it (no such service, duplicate VIP, ...).
    #[error(transparent)]
    Lb(#[from] lb::LbError),
    #[error("rule.id: ids are assigned by the daemon; leave it out")]
    RuleIdGiven,
    #[error("rule {0}: no such rule")]
    NoSuchRule(u32),
    #[error("acl.rule: id {0} is used by more than one rule")]
    DuplicateRuleId(u32),
    #[error("{what}: id {id} is already in use")]
    RuleIdInUse { what: String, id: u32 },
    #[error("rule ids exhausted")]
    RuleIdsExhausted,
    #[error("{what}: field `vni`: {vni} does not fit 24 bits")]
    RuleVni { what: String, vni: u32 },
    #[error("vni: {0} does not fit 24 bits")]
    LoadVni(u32),
    /// A rule's field is malformed.
    #[error("{what}: {source}")]
    Rule {
        what: String,
        source: acl::SpecError,
    },
    /// A rule file given to `rule load` does not parse.
    #[error("rule file: {0}")]
    RuleFile(String),
    /// A ClassBench rule file given to `rule load` does not parse.
    #[error("{0}")]
    Classbench(String),
    /// The change would leave the configuration invalid (each problem names its key).
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("tenant {0}: no such tenant")]
    NoSuchTenant(u32),
    #[error("tenant {0}: already exists")]
    TenantExists(u32),
    #[error("vtep: tenant {0} has no static entry for {1}")]
    NoSuchVtep(u32, std::net::IpAddr),
    /// A read-only command was given where a mutation was expected.
    #[error("{0} is not a mutation")]
    NotAMutation(String),
}

impl StateError {
    /// The stable code the control protocol answers with.
    pub fn code(&self) -> ErrorCode {
        use lb::LbError as L;
        match self {
            StateError::Lb(L::NoSuchService(_) | L::NoSuchBackend { .. }) => ErrorCode::NotFound,
            StateError::Lb(
                L::DuplicateService(_) | L::DuplicateVip { .. } | L::DuplicateBackend { .. },
            ) => ErrorCode::AlreadyExists,
            StateError::NoSuchRule(_)
            | StateError::NoSuchTenant(_)
            | StateError::NoSuchVtep(..) => ErrorCode::NotFound,
            StateError::TenantExists(_) => ErrorCode::AlreadyExists,
            StateError::DuplicateRuleId(_) | StateError::RuleIdInUse { .. } => {
                ErrorCode::AlreadyExists
            }
            StateError::NotAMutation(_) => ErrorCode::BadRequest,
            StateError::RuleIdsExhausted => ErrorCode::Refused,
            _ => ErrorCode::Invalid,
        }
    }
}

/// Services, backends and inline ACL rules (each with a unique id), plus the
/// rest of the configuration they run in.
#[derive(Clone, Debug)]
pub struct Desired {
    cfg: Config,
    services: lb::Services,
    next_rule_id: u32,
}

/// A change that was validated and is ready to publish.
#[derive(Debug)]
pub struct Change {
    pub next: Desired,
    pub data: Option<Data>,
}

impl Desired {
    /// The state a configuration describes. Inline rules without an id get one
    /// (after the largest configured id); duplicate ids are refused.
    pub fn new(cfg: &Config) -> Result<Desired, StateError> {
        let services = lb::Services::from_specs(cfg.service.iter().cloned())?;
        let mut cfg = cfg.clone();
        let mut next_rule_id = 1u32;
        if let Some(a) = &mut cfg.acl {
            let mut seen = HashSet::new();
            for r in &a.rule {
                if let Some(id) = r.id {
                    if !seen.insert(id) {
                        return Err(StateError::DuplicateRuleId(id));
                    }
                    next_rule_id = next_rule_id.max(id.saturating_add(1));
                }
            }
            for r in &mut a.rule {
                if r.id.is_none() {
                    r.id = Some(next_rule_id);
                    next_rule_id = next_rule_id
                        .checked_add(1)
                        .ok_or(StateError::RuleIdsExhausted)?;
                }
            }
        }
        cfg.service = services.to_specs();
        Ok(Desired {
            cfg,
            services,
            next_rule_id,
        })
    }

    /// The whole configuration (services in name order, rules with ids).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn services(&self) -> &lb::Services {
        &self.services
    }

    /// Applies a mutation to a copy of the state. Read-only commands are not
    /// mutations and are refused here.
    pub fn apply(&self, cmd: &Command) -> Result<Change, StateError> {
        let mut next = self.clone();
        let mut data = None;
        match cmd {
            Command::ServiceAdd { service } => next.services.add_service(service.clone())?,
            Command::ServiceHealth { name, health } => {
                next.services.set_health(name, health.clone())?
            }
            Command::ServiceSet {
                name,
                scheduler,
                new_flow_rate,
            } => next
                .services
                .set_scheduler(name, *scheduler, *new_flow_rate)?,
            Command::ServiceDel { name } => {
                next.services.del_service(name)?;
            }
            Command::BackendAdd { service, backend } => {
                next.services.add_backend(service, backend.clone())?
            }
            Command::BackendDel { service, ip } => {
                next.services.del_backend(service, *ip)?;
            }
            Command::BackendState { service, ip, state } => {
                next.services.set_state(service, *ip, *state)?
            }
            Command::BackendWeight {
                service,
                ip,
                weight,
            } => next.services.set_weight(service, *ip, *weight)?,
            Command::RuleAdd { rule } => {
                if rule.id.is_some() {
                    return Err(StateError::RuleIdGiven);
                }
                let id = next.push_rules(vec![rule.clone()], false)?;
                data = Some(Data::RuleIds { ids: id });
            }
            Command::RuleDel { id } => {
                let rules = next.cfg.acl.as_mut().map(|a| &mut a.rule);
                let pos = rules
                    .as_ref()
                    .and_then(|r| r.iter().position(|x| x.id == Some(*id)))
                    .ok_or(StateError::NoSuchRule(*id))?;
                if let Some(r) = rules {
                    r.remove(pos);
                }
            }
            Command::RuleLoad {
                format,
                content,
                replace,
                action,
                vni,
            } => {
                let specs = match format {
                    RuleFormat::Toml => parse_toml_rules(content)?,
                    RuleFormat::Classbench => {
                        let rules = acl::parse_classbench(
                            content,
                            "<rule load>",
                            action.unwrap_or(acl::Action::Deny),
                        )
                        .map_err(|e| StateError::Classbench(e.to_string()))?;
                        if let Some(v) = vni {
                            if *v > 0x00FF_FFFF {
                                return Err(StateError::LoadVni(*v));
                            }
                        }
                        rules
                            .iter()
                            .map(|r| RuleSpec {
                                vni: *vni,
                                id: None,
                                ..RuleSpec::from(r)
                            })
                            .collect()
                    }
                };
                let ids = next.push_rules(specs, *replace)?;
                data = Some(Data::RuleIds { ids });
            }
            Command::TenantAdd { tenant } => {
                if next.cfg.tenant.iter().any(|t| t.vni == tenant.vni) {
                    return Err(StateError::TenantExists(tenant.vni));
                }
                next.cfg.tenant.push(tenant.clone());
                next.cfg.tenant.sort_by_key(|t| t.vni);
            }
            Command::TenantDel { vni } => {
                let pos = next
                    .cfg
                    .tenant
                    .iter()
                    .position(|t| t.vni == *vni)
                    .ok_or(StateError::NoSuchTenant(*vni))?;
                next.cfg.tenant.remove(pos);
            }
            Command::VtepAdd {
                vni,
                addr,
                vtep,
                mac,
            } => {
                let t = next.tenant_mut(*vni)?;
                t.vtep.retain(|v| v.addr != *addr);
                t.vtep.push(ctl::StaticVtep {
                    addr: *addr,
                    vtep: *vtep,
                    mac: *mac,
                });
                t.vtep.sort_by_key(|v| v.addr);
            }
            Command::VtepDel { vni, addr } => {
                let t = next.tenant_mut(*vni)?;
                let before = t.vtep.len();
                t.vtep.retain(|v| v.addr != *addr);
                if t.vtep.len() == before {
                    return Err(StateError::NoSuchVtep(*vni, *addr));
                }
            }
            other => return Err(StateError::NotAMutation(format!("{other:?}"))),
        }
        next.cfg.service = next.services.to_specs();
        let problems = next.cfg.validate();
        if !problems.is_empty() {
            return Err(StateError::Invalid(problems));
        }
        Ok(Change { next, data })
    }

    /// `rule add` and `rule del` checked without copying the state or
    /// validating the rest of the configuration again (it was valid, and a
    /// single rule changes nothing else): the change to publish and its
    /// answer. `None` for other commands. Nothing is applied here; call
    /// [`Desired::commit_rule_change`] once the change is published.
    pub fn rule_change(
        &self,
        cmd: &Command,
    ) -> Option<Result<(crate::tables::RuleChange, Option<Data>), StateError>> {
        use crate::tables::RuleChange;
        let rules = self.cfg.acl.as_ref().map_or(&[][..], |a| &a.rule[..]);
        Some(match cmd {
            Command::RuleAdd { rule } => (|| {
                if rule.id.is_some() {
                    return Err(StateError::RuleIdGiven);
                }
                let what = "rule".to_string();
                if let Some(v) = rule.vni {
                    if v > 0x00FF_FFFF {
                        return Err(StateError::RuleVni { what, vni: v });
                    }
                }
                if let Err(source) = rule.to_rule() {
                    return Err(StateError::Rule { what, source });
                }
                let mut id = self.next_rule_id;
                while rules.iter().any(|r| r.id == Some(id)) {
                    id = id.checked_add(1).ok_or(StateError::RuleIdsExhausted)?;
                }
                id.checked_add(1).ok_or(StateError::RuleIdsExhausted)?;
                let spec = RuleSpec {
                    id: Some(id),
                    ..rule.clone()
                };
                Ok((RuleChange::Add(spec), Some(Data::RuleIds { ids: vec![id] })))
            })(),
            Command::RuleDel { id } => {
                if rules.iter().any(|r| r.id == Some(*id)) {
                    Ok((RuleChange::Del(*id), None))
                } else {
                    Err(StateError::NoSuchRule(*id))
                }
            }
            _ => return None,
        })
    }

    /// Applies a change [`Desired::rule_change`] returned.
    pub fn commit_rule_change(&mut self, change: &crate::tables::RuleChange) {
        use crate::tables::RuleChange;
        match change {
            RuleChange::Add(spec) => {
                if let Some(id) = spec.id {
                    self.next_rule_id = self.next_rule_id.max(id.saturating_add(1));
                }
                let acl = self.cfg.acl.get_or_insert_with(Default::default);
                acl.rule.push(spec.clone());
            }
            RuleChange::Del(id) => {
                if let Some(a) = &mut self.cfg.acl {
                    if let Some(p) = a.rule.iter().position(|r| r.id == Some(*id)) {
                        a.rule.remove(p);
                    }
                }
            }
        }
    }

    /// The `[[tenant]]` of `vni`.
    fn tenant_mut(&mut self, vni: u32) -> Result<&mut ctl::TenantSpec, StateError> {
        self.cfg
            .tenant
            .iter_mut()
            .find(|t| t.vni == vni)
            .ok_or(StateError::NoSuchTenant(vni))
    }

    /// Validates and appends rules (after removing every inline rule if
    /// `replace`). Rules that carry an id keep it if it is free.
    fn push_rules(&mut self, specs: Vec<RuleSpec>, replace: bool) -> Result<Vec<u32>, StateError> {
        let acl = self.cfg.acl.get_or_insert_with(Default::default);
        if replace {
            acl.rule.clear();
        }
        let mut used: HashSet<u32> = acl.rule.iter().filter_map(|r| r.id).collect();
        let mut ids = Vec::with_capacity(specs.len());
        let single = specs.len() == 1;
        for (i, mut spec) in specs.into_iter().enumerate() {
            let what = if single {
                "rule".to_string()
            } else {
                format!("rule[{i}]")
            };
            if let Some(v) = spec.vni {
                if v > 0x00FF_FFFF {
                    return Err(StateError::RuleVni { what, vni: v });
                }
            }
            if let Err(source) = spec.to_rule() {
                return Err(StateError::Rule { what, source });
            }
            let id = match spec.id {
                Some(id) => {
                    if !used.insert(id) {
                        return Err(StateError::RuleIdInUse { what, id });
                    }
                    self.next_rule_id = self.next_rule_id.max(id.saturating_add(1));
                    id
                }
                None => {
                    let mut id = self.next_rule_id;
                    while used.contains(&id) {
                        id = id.checked_add(1).ok_or(StateError::RuleIdsExhausted)?;
                    }
                    used.insert(id);
                    self.next_rule_id = id.checked_add(1).ok_or(StateError::RuleIdsExhausted)?;
                    id
                }
            };
            spec.id = Some(id);
            ids.push(id);
            acl.rule.push(spec);
        }
        Ok(ids)
    }

    /// Answers the read-only listing commands.
    pub fn list(&self, cmd: &Command) -> Option<Result<Data, StateError>> {
        Some(match cmd {
            Command::ServiceList => Ok(Data::Services {
                services: self.services.to_specs(),
            }),
            Command::BackendList { service } => {
                let rows = |s: &lb::ServiceSpec| {
                    s.backends
                        .iter()
                        .map(|b| BackendRow {
                            service: s.name.clone(),
                            backend: b.clone(),
                            health: None,
                        })
                        .collect::<Vec<_>>()
                };
                match service {
                    Some(name) => match self.services.get(name) {
                        Some(s) => Ok(Data::Backends { backends: rows(s) }),
                        None => Err(lb::LbError::NoSuchService(name.clone()).into()),
                    },
                    None => Ok(Data::Backends {
                        backends: self.services.iter().flat_map(rows).collect(),
                    }),
                }
            }
            Command::RuleList => {
                let a = self.cfg.acl.clone().unwrap_or_default();
                Ok(Data::Rules {
                    default: a.default,
                    rules: a.rule,
                    files: a.file,
                })
            }
            Command::ConfigDump => Ok(Data::Config {
                toml: self.cfg.to_toml(),
            }),
            Command::TenantList => Ok(Data::Tenants {
                tenants: self.cfg.tenant.clone(),
            }),
            _ => return None,
        })
    }
}

/// `[[rule]]` or `[[acl.rule]]` tables.
fn parse_toml_rules(text: &str) -> Result<Vec<RuleSpec>, StateError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AclRules {
        #[serde(default)]
        rule: Vec<RuleSpec>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RuleFile {
        #[serde(default)]
        rule: Vec<RuleSpec>,
        #[serde(default)]
        acl: Option<AclRules>,
    }
    let f: RuleFile = toml::from_str(text)
        .map_err(|e| StateError::RuleFile(e.to_string().trim_end().to_string()))?;
    let mut v = f.rule;
    if let Some(a) = f.acl {
        v.extend(a.rule);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config::parse(
            r#"
[pcap]
input = ["x.pcap"]
[gateway]
underlay_ips = ["10.0.0.1"]
[acl]
[[acl.rule]]
src = "10.0.0.0/8"
action = "deny"
[[acl.rule]]
id = 5
action = "allow"
[[service]]
name = "web"
vip = "10.99.0.1"
port = 80
proto = "tcp"
[[service.backend]]
ip = "192.168.0.1"
"#,
        )
        .unwrap()
    }

    fn rule(src: &str, dport: &str) -> RuleSpec {
        RuleSpec {
            vni: None,
            src: src.into(),
            dst: "any".into(),
            proto: "any".into(),
            src_ports: "any".into(),
            dst_ports: dport.into(),
            action: acl::Action::Deny,
            priority: None,
            id: None,
            stateful: None,
        }
    }

    #[test]
    fn test_ids_assigned_and_stable() {
        let d = Desired::new(&base()).unwrap();
        let ids: Vec<_> = d
            .config()
            .acl
            .as_ref()
            .unwrap()
            .rule
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![Some(6), Some(5)]);
        let c = d
            .apply(&Command::RuleAdd {
                rule: rule("any", "80"),
            })
            .unwrap();
        assert_eq!(c.data, Some(Data::RuleIds { ids: vec![7] }));
        let d2 = c.next.apply(&Command::RuleDel { id: 7 }).unwrap().next;
        // A deleted id is not handed out again.
        let c = d2
            .apply(&Command::RuleAdd {
                rule: rule("any", "81"),
            })
            .unwrap();
        assert_eq!(c.data, Some(Data::RuleIds { ids: vec![8] }));
        // The dump gives the same state back.
        let again = Desired::new(&Config::parse(&c.next.config().to_toml()).unwrap()).unwrap();
        assert_eq!(again.config(), c.next.config());
    }

    #[test]
    fn test_invalid_mutations_change_nothing() {
        let d = Desired::new(&base()).unwrap();
        let ip = |s: &str| s.parse().unwrap();
        let bad = [
            (
                Command::BackendAdd {
                    service: "nope".into(),
                    backend: lb::BackendSpec::new(ip("192.168.0.2")),
                },
                "no such service",
            ),
            (
                Command::BackendAdd {
                    service: "web".into(),
                    backend: lb::BackendSpec::new(ip("192.168.0.1")),
                },
                "already exists",
            ),
            (
                Command::RuleAdd {
                    rule: rule("10.0.0.0/33", "80"),
                },
                "src",
            ),
            (
                Command::RuleAdd {
                    rule: rule("any", "90-80"),
                },
                "dst_ports",
            ),
            (Command::RuleDel { id: 99 }, "no such rule"),
            (
                Command::ServiceAdd {
                    service: lb::ServiceSpec {
                        table_size: 65536,
                        ..lb::ServiceSpec::new("x", ip("10.99.0.2"), 80, lb::Proto::Tcp)
                    },
                },
                "prime",
            ),
            (
                Command::RuleLoad {
                    format: RuleFormat::Toml,
                    content: "[[rule]]\naction = \"deny\"\nsrc = \"bogus\"\n".into(),
                    replace: true,
                    action: None,
                    vni: None,
                },
                "rule",
            ),
        ];
        for (cmd, want) in bad {
            let e = d.apply(&cmd).unwrap_err().to_string();
            assert!(e.contains(want), "{cmd:?}: {e}");
        }
    }

    #[test]
    fn test_service_set_scheduler() {
        let d = Desired::new(&base()).unwrap();
        let c = d
            .apply(&Command::ServiceSet {
                name: "web".into(),
                scheduler: Some(lb::Scheduler::WeightedLeastConn),
                new_flow_rate: Some(500),
            })
            .unwrap();
        let text = c.next.config().to_toml();
        assert!(
            text.contains("scheduler = \"weighted_least_conn\"")
                && text.contains("new_flow_rate = 500"),
            "{text}"
        );
        let again = Config::parse(&text).unwrap();
        assert_eq!(again.service[0].scheduler, lb::Scheduler::WeightedLeastConn);
        // Only what is given changes.
        let c = c
            .next
            .apply(&Command::ServiceSet {
                name: "web".into(),
                scheduler: None,
                new_flow_rate: Some(0),
            })
            .unwrap();
        let web = c.next.services().get("web").unwrap();
        assert_eq!(
            (web.scheduler, web.new_flow_rate),
            (lb::Scheduler::WeightedLeastConn, 0)
        );
        let e = d
            .apply(&Command::ServiceSet {
                name: "nope".into(),
                scheduler: Some(lb::Scheduler::SrcIp),
                new_flow_rate: None,
            })
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
    }

    #[test]
    fn test_service_health() {
        let d = Desired::new(&base()).unwrap();
        let tcp = lb::HealthSpec {
            kind: lb::HealthKind::Tcp,
            ..lb::HealthSpec::default()
        };
        for (h, key) in [
            (
                lb::HealthSpec {
                    rise: 0,
                    ..tcp.clone()
                },
                "health.rise",
            ),
            (
                lb::HealthSpec {
                    timeout_ms: 1000,
                    ..tcp.clone()
                },
                "health.timeout_ms",
            ),
            (
                lb::HealthSpec {
                    kind: lb::HealthKind::Udp,
                    ..tcp.clone()
                },
                "health.kind",
            ),
        ] {
            let e = d
                .apply(&Command::ServiceHealth {
                    name: "web".into(),
                    health: Some(h),
                })
                .unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
            assert_eq!(e.code(), ErrorCode::Invalid);
        }
        let e = d
            .apply(&Command::ServiceHealth {
                name: "nope".into(),
                health: Some(tcp.clone()),
            })
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        let c = d
            .apply(&Command::ServiceHealth {
                name: "web".into(),
                health: Some(tcp.clone()),
            })
            .unwrap();
        // The change is in the config (dump and save keep it).
        let text = c.next.config().to_toml();
        assert!(
            text.contains("[service.health]") && text.contains("kind = \"tcp\""),
            "{text}"
        );
        let again = Config::parse(&text).unwrap();
        assert_eq!(again.service[0].health, Some(tcp));
        // A config with a bad section names the key.
        let bad = text.replace("rise = 2", "rise = 0");
        let e = crate::tables::Tables::build(&Config::parse(&bad).unwrap(), 1).unwrap_err();
        assert!(e.to_string().contains("health.rise"), "{e}");
        let e = Config::parse(&text.replace("kind = \"tcp\"", "kind = \"tpc\"")).unwrap_err();
        assert!(e.to_string().contains("health.kind"), "{e}");
    }

    #[test]
    fn test_rule_load_formats() {
        let d = Desired::new(&base()).unwrap();
        let c = d
            .apply(&Command::RuleLoad {
                format: RuleFormat::Classbench,
                content: "@1.2.3.4/32\t0.0.0.0/0\t0 : 65535\t80 : 80\t0x06/0xFF\n@5.6.7.0/24\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x00/0x00\n".into(),
                replace: true,
                action: None,
                vni: Some(3),
            })
            .unwrap();
        assert_eq!(c.data, Some(Data::RuleIds { ids: vec![7, 8] }));
        let rules = &c.next.config().acl.as_ref().unwrap().rule;
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].vni, Some(3));
        assert_eq!(rules[0].action, acl::Action::Deny);
        let c = c
            .next
            .apply(&Command::RuleLoad {
                format: RuleFormat::Toml,
                content: "[[acl.rule]]\nid = 100\naction = \"allow\"\ndst_ports = \"443\"\n".into(),
                replace: false,
                action: None,
                vni: None,
            })
            .unwrap();
        assert_eq!(c.data, Some(Data::RuleIds { ids: vec![100] }));
    }
}
