//! Backend schedulers: how a service chooses the backend of a *new* flow, and
//! the per-worker state the stateful ones keep.
//!
//! Every scheduler chooses for a flow's first packet only; later packets
//! follow the per-worker [`FlowTable`](crate::FlowTable) (and, in a fleet, the
//! shared flow state). Only *eligible* backends are chosen (admin `active`,
//! weight > 0, not unhealthy: [`Backend::eligible`](crate::Backend::eligible)).
//!
//! | `scheduler` | chooses | weights |
//! |---|---|---|
//! | `maglev` (default) | the Maglev table entry of the 5-tuple + VNI hash | table shares |
//! | `src_ip` | the Maglev table entry of a hash of the client address (+ VNI) only: every flow of a client goes to one backend, and removing one of N backends moves about 1/N of the clients | table shares |
//! | `round_robin` | smooth weighted round robin (nginx's): over every Σw new flows backend i gets exactly w_i, interleaved | shares |
//! | `least_conn` | the backend with the fewest active flows (IPVS `lc`) | only as eligibility (0 = none) |
//! | `weighted_least_conn` | the backend with the least (active + 1) / weight (IPVS `wlc`) | proportional |
//!
//! **Per worker, no sharing.** Round-robin positions and active-flow counts
//! belong to one worker's flow table: no atomics or cache lines shared between
//! cores on the fast path. Each worker balances its own share of the traffic
//! (RSS spreads flows over workers), so with W workers the gateway-wide
//! imbalance is at most W times a worker's: round robin is exact per worker
//! after every Σw of its new flows (in between, a backend is off its share
//! by what one unfinished cycle leaves, less than Σw; so gateway-wide by
//! less than W × Σw, and exactly 0 whenever every worker ends a cycle);
//! least_conn keeps each worker's counts within its own bound, hence the
//! sum within W times that. Which worker a flow lands on is the RSS hash's
//! choice, so a worker receiving more new flows simply balances more.
//!
//! **Active flows** are flow-table entries: a flow is counted when a
//! `least_conn`/`weighted_least_conn` service pins it and uncounted when its
//! entry ends — client RST, idle expiry found by a lookup, by the flow table's
//! incremental sweep (run a few sets per burst while such a service exists)
//! or when the way is reused, eviction, re-homing to another backend, or
//! [`FlowTable::clear`](crate::FlowTable::clear). The approximation: an entry
//! past its idle timeout counts until the sweep or a lookup reaches it (the
//! sweep visits every set within `sets / 4` bursts); a FIN does not end a
//! flow (its entry lives `fin_timeout` more). Counts are kept per (VIP, port,
//! protocol, backend address) and survive snapshot changes; a backend removed
//! and added back starts again from 0 (flows it still holds are then not
//! counted, and their ends do not drive the count below 0).
//!
//! **Selection cost.** `maglev` and `src_ip` are one table lookup;
//! `round_robin`, `least_conn` and `weighted_least_conn` scan the service's
//! backends once per new flow (O(N), as IPVS does), nothing per packet of an
//! established flow.
//!
//! **New-flow rate cap** (`new_flow_rate`, Katran's `MAX_CONN_RATE`): a token
//! bucket per worker and service, `new_flow_rate` tokens per second, holding
//! at most one second's worth. The rate is **per worker** (like Katran's
//! per-CPU limit): a gateway with W workers admits up to W × `new_flow_rate`.
//! A new flow over the cap is not refused: its packet goes to the backend the
//! Maglev hash of its 5-tuple (for `src_ip`, of its client) names, and nothing
//! is stored, so a flood reaches consistent backends without churning the
//! flow table. Counted as `rate_limited`. For the non-hash schedulers such a
//! flow's later packets may land elsewhere once tokens return (they are then
//! a new flow for the scheduler).

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a service chooses the backend of a new flow (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scheduler {
    /// Maglev consistent hashing of the 5-tuple + VNI.
    #[default]
    Maglev,
    /// Maglev consistent hashing of the client address (+ VNI): affinity.
    SrcIp,
    /// Smooth weighted round robin, per worker.
    RoundRobin,
    /// Fewest active flows, per worker (weights only gate eligibility).
    LeastConn,
    /// Least (active flows + 1) / weight, per worker.
    WeightedLeastConn,
}

impl Scheduler {
    /// Every scheduler, in documentation order.
    pub const ALL: [Scheduler; 5] = [
        Scheduler::Maglev,
        Scheduler::SrcIp,
        Scheduler::RoundRobin,
        Scheduler::LeastConn,
        Scheduler::WeightedLeastConn,
    ];

    /// The configuration word.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
            Scheduler::SrcIp => "src_ip",
            Scheduler::RoundRobin => "round_robin",
            Scheduler::LeastConn => "least_conn",
            Scheduler::WeightedLeastConn => "weighted_least_conn",
        }
    }

    /// Whether it keeps active-flow counts.
    pub const fn counts(self) -> bool {
        matches!(self, Scheduler::LeastConn | Scheduler::WeightedLeastConn)
    }

    /// Whether it is `maglev` (for `skip_serializing_if`).
    pub fn is_default(&self) -> bool {
        *self == Scheduler::Maglev
    }
}

impl TryFrom<String> for Scheduler {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scheduler::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scheduler::ALL.iter().map(|x| x.as_str()).collect();
                format!(
                    "scheduler: unknown value {s:?} (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

impl From<Scheduler> for String {
    fn from(v: Scheduler) -> String {
        v.as_str().to_string()
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counter identity: (VIP, backend address, `v6 << 24 | proto << 16 | port`).
pub(crate) type ConnKey = (u128, u128, u32);

pub(crate) const NO_COUNTER: u32 = u32::MAX;

/// An eligible backend of a service, as the non-hash schedulers scan them
/// (contiguous, so a scan reads 12 bytes per backend).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cand {
    /// Index of the backend in its service.
    pub idx: u16,
    pub weight: u32,
    /// Index into `counts`, or `NO_COUNTER`.
    pub counter: u32,
}

/// Per-service state of one worker.
#[derive(Clone, Debug, Default)]
pub(crate) struct SvcState {
    pub name: String,
    /// The service's eligible backends: `cands[cand_start..][..cand_len]`
    /// (and their round-robin weights at the same positions of `rr`).
    pub cand_start: u32,
    pub cand_len: u32,
    /// Token bucket in thousandths of a token (a new flow costs 1000).
    pub tokens: u64,
    /// Time of the last refill (caller's ms); `u64::MAX` = never.
    pub last: u64,
    /// New flows over `new_flow_rate` since the last [`take`](SchedState::take_rate_limited).
    pub rate_limited: u64,
}

/// The schedulers' per-worker state, kept inside the worker's
/// [`FlowTable`](crate::FlowTable) (whose entries' ends drive the counts).
/// Re-synced with a snapshot when the snapshot changes (off the per-packet
/// path: once per snapshot).
#[derive(Clone, Debug, Default)]
pub struct SchedState {
    /// Id of the [`LbTables`](crate::LbTables) this state follows (0 = none).
    pub(crate) snap: u64,
    pub(crate) svcs: Vec<SvcState>,
    /// Eligible backends of every service (see [`SvcState::cand_start`]).
    pub(crate) cands: Vec<Cand>,
    /// Smooth-WRR current weight of each of `cands`.
    pub(crate) rr: Vec<i64>,
    /// Counter identities, sorted; `counts[i]` belongs to `keys[i]`.
    pub(crate) keys: Vec<ConnKey>,
    pub(crate) counts: Vec<u32>,
    /// Some service of the snapshot counts active flows.
    pub(crate) counting: bool,
    /// `rate_limited` counts of services a re-sync removed, not yet taken.
    pub(crate) retired: Vec<(String, u64)>,
}

impl SchedState {
    /// One flow more on counter `c`.
    #[inline]
    pub(crate) fn acquire(&mut self, c: u32) {
        if let Some(n) = self.counts.get_mut(c as usize) {
            *n += 1;
        }
    }

    /// One flow less on the counter of `key` (if it still exists).
    #[inline]
    pub(crate) fn release(&mut self, key: ConnKey) {
        if let Ok(i) = self.keys.binary_search(&key) {
            let n = &mut self.counts[i];
            *n = n.saturating_sub(1);
        }
    }

    pub(crate) fn reset_counts(&mut self) {
        self.counts.fill(0);
    }

    /// Takes a token of service `si` at time `now` (ms); false if its bucket
    /// is empty. `rate` is new flows per second.
    #[inline]
    pub(crate) fn admit(&mut self, si: usize, rate: u32, now: u64) -> bool {
        let Some(s) = self.svcs.get_mut(si) else {
            return true;
        };
        let cap = u64::from(rate) * 1000;
        if s.last == u64::MAX {
            s.tokens = cap;
        } else {
            // At most a second's worth: the bucket is full by then anyway.
            let dt = now.saturating_sub(s.last).min(1000);
            s.tokens = (s.tokens + dt * u64::from(rate)).min(cap);
        }
        s.last = now;
        if s.tokens >= 1000 {
            s.tokens -= 1000;
            true
        } else {
            s.rate_limited += 1;
            false
        }
    }

    /// Hands out and zeroes the per-service `rate_limited` counts:
    /// `f(service name, count)` for every non-zero one.
    pub fn take_rate_limited(&mut self, mut f: impl FnMut(&str, u64)) {
        for (name, n) in self.retired.drain(..) {
            f(&name, n);
        }
        for s in &mut self.svcs {
            if s.rate_limited != 0 {
                f(&s.name, std::mem::take(&mut s.rate_limited));
            }
        }
    }

    /// Whether the state follows snapshot `id`.
    #[inline]
    pub(crate) fn synced(&self, id: u64) -> bool {
        self.snap == id
    }
}
