//! SIGHUP: re-read the config file the daemon was started with and make the
//! running state equal to it, as one snapshot.
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
    if file.pcap != cur.pcap || file.afpacket != cur.afpacket || file.dpdk != cur.dpdk {
        ignored.push("I/O (pcap/afpacket/dpdk)");
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
