//! The gateway's route announcement, for ECMP behind a router: the anycast
//! VTEP address(es) and any other `[announce] prefixes` are put, as routes
//! through a TUN device of this process, into a kernel routing table that a
//! routing daemon beside dpgw (BIRD 2's `kernel` protocol with `learn`, FRR's
//! `ip import-table`) imports and announces over BGP. `contrib/bgp/` holds
//! the daemon configs and `docs/fleet.md` explains the setup.
//!
//! * **Announced only while the gateway can forward**: every worker has
//!   started and is running, the next hop is resolved (with
//!   `gateway.next_hop_ip`), at least one service has an eligible backend
//!   (with `require_healthy_service`), and the operator has not drained it
//!   (`dpgwctl gateway drain`). Checked every [`TICK`] by a thread of its own
//!   and at once on `drain` / `undrain`.
//! * **Fate-sharing**: the TUN device is not persistent, so when the process
//!   ends for any reason (SIGKILL, a crash, OOM), the kernel deletes the
//!   device and every route through it; the daemon sees the routes go and
//!   withdraws them. No cleanup hook is involved. A clean stop withdraws first.
//! * Never on the fast path: the workers are only read (flags, generations).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(test)]
use crate::config::parse_prefix;
use crate::config::{announce_prefixes as prefixes, AnnounceSection, Config, Prefix};
use crate::engine::Shared;
use crate::log::{self, Level};
use crate::netlink::{Netlink, Route, Tun};
use crate::punt::NextHop;

/// How often the conditions are evaluated.
pub const TICK: Duration = Duration::from_millis(100);

/// Why the gateway is (not) announcing: the first unmet condition.
pub fn readiness(shared: &Shared, cfg: &Config, require_healthy: bool) -> Result<(), String> {
    if shared.stop.load(Ordering::Relaxed) {
        return Err("stopping".into());
    }
    let started = shared
        .seen_generation
        .iter()
        .all(|g| g.load(Ordering::Acquire) > 0);
    if !started {
        return Err("workers starting".into());
    }
    if !shared.running.iter().all(|r| r.load(Ordering::Acquire)) {
        return Err("a worker stopped".into());
    }
    if cfg.gateway.next_hop_ip.is_some() {
        match NextHop::decode(shared.learned_next_hop.load(Ordering::Acquire)) {
            NextHop::Learned(_) => {}
            NextHop::Unresolved => return Err("next hop unresolved".into()),
            NextHop::Configured => return Err("next hop not resolved yet".into()),
        }
    }
    if require_healthy {
        let t = shared.tables.load();
        let healthy =
            t.lb.services()
                .any(|(_, s)| s.backends().iter().any(|b| b.eligible()));
        if !healthy {
            return Err("no healthy service".into());
        }
    }
    Ok(())
}

struct Inner {
    cfg: Config,
    section: AnnounceSection,
    prefixes: Vec<Prefix>,
    tun: Tun,
    nl: Netlink,
    drained: bool,
    announced: bool,
    reason: String,
    since: Instant,
    since_unix: f64,
    transitions: u64,
    /// The last failed route change (logged once per distinct error).
    last_error: Option<String>,
}

/// The running announcement (see the module doc).
pub struct Announcer {
    inner: Mutex<Inner>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Announcer")
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Announcer {
    /// Creates the device and starts the thread, if `cfg` has `[announce]`.
    /// Nothing is announced until [`readiness`] holds.
    pub fn start(cfg: &Config, shared: Arc<Shared>) -> Result<Option<Arc<Announcer>>, String> {
        let Some(section) = cfg.announce.clone() else {
            return Ok(None);
        };
        let prefixes = prefixes(cfg, &section)?;
        let tun = Tun::create(&section.device).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EBUSY) => " (is another dpgw running with this device?)",
                Some(libc::EPERM) => " (needs CAP_NET_ADMIN)",
                Some(libc::ENOENT) => " (no /dev/net/tun: load the tun module)",
                _ => "",
            };
            format!("announce.device {:?}: {e}{hint}", section.device)
        })?;
        let nl = Netlink::open().map_err(|e| format!("announce: rtnetlink socket: {e}"))?;
        let a = Arc::new(Announcer {
            inner: Mutex::new(Inner {
                cfg: cfg.clone(),
                section,
                prefixes,
                tun,
                nl,
                drained: false,
                announced: false,
                reason: "workers starting".into(),
                since: Instant::now(),
                since_unix: unix_now(),
                transitions: 0,
                last_error: None,
            }),
            shared: shared.clone(),
            thread: Mutex::new(None),
        });
        let me = a.clone();
        let h = std::thread::Builder::new()
            .name("dpgw-announce".into())
            .spawn(move || {
                while !me.shared.stop.load(Ordering::Relaxed) {
                    me.tick();
                    std::thread::sleep(TICK);
                }
                me.withdraw("stopping");
            })
            .map_err(|e| format!("announce: spawning its thread: {e}"))?;
        *a.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
        Ok(Some(a))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Evaluates the conditions and changes the routes if needed.
    pub fn tick(&self) {
        let mut g = self.lock();
        g.tun.discard_queued();
        let want = if g.drained {
            Err("drained by operator".to_string())
        } else {
            readiness(&self.shared, &g.cfg, g.section.require_healthy_service)
        };
        match want {
            Ok(()) => g.set(true, "forwarding".into()),
            Err(why) => g.set(false, why),
        }
    }

    /// Withdraws for good (at a clean stop).
    pub fn withdraw(&self, why: &str) {
        let mut g = self.lock();
        g.set(false, why.into());
    }

    /// `dpgwctl gateway drain` / `undrain`: takes effect before the answer.
    pub fn set_drained(&self, drained: bool) -> ctl::GatewayReport {
        self.lock().drained = drained;
        self.tick();
        self.status()
    }

    /// State, reason, since when.
    pub fn status(&self) -> ctl::GatewayReport {
        let g = self.lock();
        ctl::GatewayReport {
            configured: true,
            announced: g.announced,
            drained: g.drained,
            reason: match &g.last_error {
                Some(e) if !g.announced && g.reason == "forwarding" => {
                    format!("route change failed: {e}")
                }
                _ => g.reason.clone(),
            },
            since_s: g.since.elapsed().as_secs_f64(),
            since_unix: g.since_unix,
            prefixes: g.prefixes.iter().map(|p| p.to_string()).collect(),
            device: g.tun.name().to_string(),
            table: g.section.table,
            transitions: g.transitions,
        }
    }

    /// Stops the thread (which withdraws).
    pub fn stop(&self) {
        let h = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = h {
            let _ = h.join();
        } else {
            self.withdraw("stopping");
        }
    }
}

impl crate::engine::Announce for Announcer {
    fn status(&self) -> ctl::GatewayReport {
        Announcer::status(self)
    }
    fn set_drained(&self, drained: bool) -> ctl::GatewayReport {
        Announcer::set_drained(self, drained)
    }
}

impl Inner {
    fn routes(&self) -> Vec<Route> {
        self.prefixes
            .iter()
            .map(|p| Route {
                addr: p.addr,
                len: p.len,
                ifindex: self.tun.index(),
                table: self.section.table,
                metric: self.section.metric,
            })
            .collect()
    }

    fn set(&mut self, announce: bool, reason: String) {
        if announce == self.announced {
            if self.reason != reason {
                self.reason = reason;
            }
            // Re-assert announced routes (someone may have deleted one).
            if announce {
                self.apply(true);
            }
            return;
        }
        if self.apply(announce) || !announce {
            self.announced = announce;
            self.transitions += 1;
            self.since = Instant::now();
            self.since_unix = unix_now();
            let prefixes: Vec<String> = self.prefixes.iter().map(|p| p.to_string()).collect();
            log::event(
                Level::Info,
                if announce {
                    "announce_up"
                } else {
                    "announce_down"
                },
                &[
                    ("prefixes", &prefixes.join(",")),
                    ("table", &self.section.table),
                    ("device", &self.tun.name()),
                    ("reason", &reason),
                ],
            );
        }
        self.reason = reason;
    }

    /// Adds or removes every route; true if all succeeded.
    fn apply(&mut self, add: bool) -> bool {
        let mut ok = true;
        for r in self.routes() {
            let res = if add {
                self.nl.add_route(&r)
            } else {
                self.nl.del_route(&r)
            };
            if let Err(e) = res {
                ok = false;
                let msg = format!("{}/{} table {}: {e}", r.addr, r.len, r.table);
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    log::event(
                        Level::Error,
                        "announce_failed",
                        &[("route", &msg), ("op", &if add { "add" } else { "del" })],
                    );
                    self.last_error = Some(msg);
                }
            }
        }
        if ok {
            self.last_error = None;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_prefixes_parse_and_refuse_host_bits() {
        assert_eq!(
            parse_prefix("10.0.0.100/32").unwrap().to_string(),
            "10.0.0.100/32"
        );
        assert_eq!(parse_prefix("10.0.0.100").unwrap().len, 32);
        assert_eq!(parse_prefix("fd00::1").unwrap().len, 128);
        assert_eq!(parse_prefix("fd00::/64").unwrap().len, 64);
        let e = parse_prefix("10.0.0.1/24").unwrap_err();
        assert!(e.contains("10.0.0.0/24"), "{e}");
        assert!(parse_prefix("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(parse_prefix("fish").is_err());
    }

    #[test]
    fn test_default_prefixes_are_the_vteps() {
        let mut cfg = Config::default();
        cfg.gateway.vtep_ips = vec!["10.0.0.100".parse().unwrap(), "fd00::64".parse().unwrap()];
        let a = AnnounceSection::default();
        let p = prefixes(&cfg, &a).unwrap();
        assert_eq!(
            p.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            ["10.0.0.100/32", "fd00::64/128"]
        );
    }

    #[test]
    fn test_readiness_names_the_first_unmet_condition() {
        let mut cfg = Config::parse("[pcap]\ninput = [\"x.pcap\"]\n").unwrap();
        let tables = crate::tables::Tables::build(&cfg, 1).unwrap();
        let shared = Shared::new(tables, 1);
        assert_eq!(
            readiness(&shared, &cfg, false).unwrap_err(),
            "workers starting"
        );
        shared.seen_generation[0].store(1, Ordering::Release);
        assert_eq!(readiness(&shared, &cfg, false), Ok(()));
        assert_eq!(
            readiness(&shared, &cfg, true).unwrap_err(),
            "no healthy service"
        );
        cfg.gateway.next_hop_ip = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            readiness(&shared, &cfg, false).unwrap_err(),
            "next hop not resolved yet"
        );
        shared
            .learned_next_hop
            .store(NextHop::Unresolved.encode(), Ordering::Release);
        assert_eq!(
            readiness(&shared, &cfg, false).unwrap_err(),
            "next hop unresolved"
        );
        shared.learned_next_hop.store(
            NextHop::Learned([2, 0, 0, 0, 0, 1]).encode(),
            Ordering::Release,
        );
        assert_eq!(readiness(&shared, &cfg, false), Ok(()));
        shared.running[0].store(false, Ordering::Release);
        assert_eq!(
            readiness(&shared, &cfg, false).unwrap_err(),
            "a worker stopped"
        );
    }
}
