//! SIGHUP: re-read the config file the daemon was started with and make the
//! running state equal to it, as one snapshot. And `apply`: the same for a
//! desired file's services and ACL, with the difference reported
//! ([`prepare_apply`], [`diff`]).
//!
//! What is reloaded: `[[service]]` (with backends), `[acl]` and `[gateway]`;
//! the result is validated as a whole and built with `Tables::rebuild`, which
//! keeps every Maglev table whose service did not change (so flows of
//! unchanged services keep their backends) and the compiled ACL when the
//! ACL did not change. A file that does not parse or validate changes
//! nothing: the error is logged and the old state stays. Sections that need
//! a restart (`[dataplane]`, the I/O sections, `[control]`) are compared and
//! a difference is logged, not applied.

use std::collections::BTreeMap;
use std::path::Path;

use super::state::Desired;
use crate::config::Config;

/// What a reload changes, for the log line.
pub struct Reloaded {
    pub next: Desired,
    pub summary: String,
    /// Sections that differ but need a restart.
    pub ignored: Vec<&'static str>,
}

/// Reads `path` and computes the desired state it describes on top of
/// `current` (nothing is published here).
pub fn prepare(current: &Desired, path: &Path) -> Result<Reloaded, String> {
    let file = Config::load(path).map_err(|e| format!("{e:#}"))?;
    let problems = file.validate();
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let cur = current.config();
    let mut merged = cur.clone();
    merged.service = file.service.clone();
    merged.acl = file.acl.clone();
    merged.gateway = file.gateway.clone();
    let mut ignored = Vec::new();
    if file.dataplane != cur.dataplane {
        ignored.push("dataplane");
    }
    if file.pcap != cur.pcap
        || file.afpacket != cur.afpacket
        || file.afxdp != cur.afxdp
        || file.dpdk != cur.dpdk
    {
        ignored.push("I/O (pcap/afpacket/afxdp/dpdk)");
    }
    if file.control != cur.control {
        ignored.push("control");
    }
    let next = Desired::new(&merged).map_err(|e| e.to_string())?;
    let before: BTreeMap<&str, &lb::ServiceSpec> =
        cur.service.iter().map(|s| (s.name.as_str(), s)).collect();
    let after: BTreeMap<&str, &lb::ServiceSpec> = next
        .config()
        .service
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let added = after.keys().filter(|k| !before.contains_key(*k)).count();
    let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
    let changed = after
        .iter()
        .filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v))
        .count();
    let rules = |c: &Config| c.acl.as_ref().map_or(0, |a| a.rule.len());
    let summary = format!(
        "services +{added} -{removed} ~{changed}, inline rules {} -> {}, acl {}, gateway {}",
        rules(cur),
        rules(next.config()),
        if cur.acl == next.config().acl {
            "unchanged"
        } else {
            "changed"
        },
        if cur.gateway == file.gateway {
            "unchanged"
        } else {
            "changed"
        },
    );
    Ok(Reloaded {
        next,
        summary,
        ignored,
    })
}

/// What `apply` would change.
pub struct Applying {
    pub next: Desired,
    /// One line per mutation (empty = already equal).
    pub changes: Vec<String>,
    /// Top-level sections of the file `apply` does not set.
    pub ignored: Vec<String>,
}

/// `dpgwctl apply -f`: the desired file's `[[service]]` (with backends) and
/// `[acl]` replace the running ones; every other section is the daemon's own
/// config and is reported as ignored. The file is validated together with
/// the running config, so an error names the key and changes nothing. Rules
/// equal to running ones (compared without their ids) keep their ids.
pub fn prepare_apply(current: &Desired, content: &str, base: &Path) -> Result<Applying, String> {
    let value: toml::Table =
        toml::from_str(content).map_err(|e| e.to_string().trim_end().to_string())?;
    let mut ignored: Vec<String> = value
        .keys()
        .filter(|k| *k != "service" && *k != "acl")
        .map(|k| format!("[{k}]"))
        .collect();
    ignored.sort();
    let mut file = Config::parse(content)?;
    file.resolve_paths(base);
    let cur = current.config();
    let mut merged = cur.clone();
    merged.service = file.service.clone();
    merged.acl = file.acl.clone();
    if let (Some(want), Some(have)) = (&mut merged.acl, &cur.acl) {
        keep_rule_ids(&mut want.rule, &have.rule);
    }
    let problems = merged.validate();
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let next = Desired::new(&merged).map_err(|e| e.to_string())?;
    let changes = diff(cur, next.config());
    Ok(Applying {
        next,
        changes,
        ignored,
    })
}

fn rule_key(r: &acl::RuleSpec) -> String {
    let mut r = r.clone();
    r.id = None;
    serde_json::to_string(&r).unwrap_or_default()
}

/// Desired rules without an id take the id of an equal running rule (the
/// first one not taken yet), so an unchanged rule keeps its name.
fn keep_rule_ids(want: &mut [acl::RuleSpec], have: &[acl::RuleSpec]) {
    let taken: std::collections::HashSet<u32> = want.iter().filter_map(|r| r.id).collect();
    let mut by_key: BTreeMap<String, std::collections::VecDeque<u32>> = BTreeMap::new();
    for r in have {
        if let Some(id) = r.id.filter(|id| !taken.contains(id)) {
            by_key.entry(rule_key(r)).or_default().push_back(id);
        }
    }
    for r in want.iter_mut().filter(|r| r.id.is_none()) {
        if let Some(q) = by_key.get_mut(&rule_key(r)) {
            r.id = q.pop_front();
        }
    }
}

fn fields(v: &impl serde::Serialize, skip: &[&str]) -> BTreeMap<String, serde_json::Value> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `~ what: key a -> b` for every field that differs.
fn field_changes(
    out: &mut Vec<String>,
    what: &str,
    a: &impl serde::Serialize,
    b: &impl serde::Serialize,
    skip: &[&str],
) {
    let (fa, fb) = (fields(a, skip), fields(b, skip));
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    for k in keys {
        let (x, y) = (fa.get(k), fb.get(k));
        if x != y {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
            out.push(format!("~ {what}: {k} {} -> {}", show(x), show(y)));
        }
    }
}

/// The mutations that turn `cur` into `next` (services, backends, ACL).
pub fn diff(cur: &Config, next: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let before: BTreeMap<&str, &lb::ServiceSpec> =
        cur.service.iter().map(|s| (s.name.as_str(), s)).collect();
    let after: BTreeMap<&str, &lb::ServiceSpec> =
        next.service.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, s) in &before {
        if !after.contains_key(name) {
            out.push(format!("- service {name} ({} backends)", s.backends.len()));
        }
    }
    for (name, s) in &after {
        match before.get(name) {
            None => {
                let proto = format!("{:?}", s.proto).to_lowercase();
                out.push(format!("+ service {name} {}:{} {proto}", s.vip, s.port));
                for b in &s.backends {
                    out.push(format!("+ backend {name} {} weight {}", b.ip, b.weight));
                }
            }
            Some(old) => {
                field_changes(&mut out, &format!("service {name}"), *old, *s, &["backend"]);
                let ob: BTreeMap<std::net::IpAddr, &lb::BackendSpec> =
                    old.backends.iter().map(|b| (b.ip, b)).collect();
                let nb: BTreeMap<std::net::IpAddr, &lb::BackendSpec> =
                    s.backends.iter().map(|b| (b.ip, b)).collect();
                for ip in ob.keys().filter(|ip| !nb.contains_key(ip)) {
                    out.push(format!("- backend {name} {ip}"));
                }
                for (ip, b) in &nb {
                    match ob.get(ip) {
                        None => out.push(format!("+ backend {name} {ip} weight {}", b.weight)),
                        Some(o) => {
                            field_changes(&mut out, &format!("backend {name} {ip}"), *o, *b, &[])
                        }
                    }
                }
            }
        }
    }
    let empty = acl::AclSpec::default();
    let (a, b) = (
        cur.acl.as_ref().unwrap_or(&empty),
        next.acl.as_ref().unwrap_or(&empty),
    );
    field_changes(&mut out, "acl", a, b, &["rule"]);
    let next_ids: std::collections::HashSet<Option<u32>> = b.rule.iter().map(|r| r.id).collect();
    let cur_ids: std::collections::HashSet<Option<u32>> = a.rule.iter().map(|r| r.id).collect();
    for r in a.rule.iter().filter(|r| !next_ids.contains(&r.id)) {
        out.push(format!("- rule {} {}", r.id.unwrap_or(0), rule_key(r)));
    }
    for r in b.rule.iter().filter(|r| !cur_ids.contains(&r.id)) {
        out.push(format!("+ rule {} {}", r.id.unwrap_or(0), rule_key(r)));
    }
    // Rules kept under the same id but edited, or moved (order decides).
    let old_by_id: BTreeMap<u32, &acl::RuleSpec> =
        a.rule.iter().filter_map(|r| r.id.map(|i| (i, r))).collect();
    for r in &b.rule {
        if let Some(o) = r.id.and_then(|i| old_by_id.get(&i)) {
            if rule_key(o) != rule_key(r) {
                out.push(format!(
                    "~ rule {} {} -> {}",
                    r.id.unwrap_or(0),
                    rule_key(o),
                    rule_key(r)
                ));
            }
        }
    }
    let kept_old: Vec<u32> = a
        .rule
        .iter()
        .filter_map(|r| r.id)
        .filter(|i| next_ids.contains(&Some(*i)))
        .collect();
    let kept_new: Vec<u32> = b
        .rule
        .iter()
        .filter_map(|r| r.id)
        .filter(|i| cur_ids.contains(&Some(*i)))
        .collect();
    if kept_old != kept_new {
        out.push("~ acl: rule order changed (first match decides)".to_string());
    }
    out
}
