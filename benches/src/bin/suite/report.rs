//! report.md and the structural check of results.json.

use std::fmt::Write as _;

use crate::workload::ReplayResult;
use crate::Results;

/// Checks that results.json has every part a reader (and CI) relies on, and
/// that every number in it is finite.
pub fn check_json(v: &serde_json::Value) -> Result<(), String> {
    for key in [
        "schema",
        "machine",
        "settings",
        "replay",
        "line_rate",
        "peers",
        "plots",
    ] {
        if v.get(key).is_none() {
            return Err(format!("missing key {key:?}"));
        }
    }
    for key in ["cpu_model", "cores", "tsc_ghz", "git_commit", "date_utc"] {
        if v["machine"].get(key).is_none() {
            return Err(format!("missing key machine.{key}"));
        }
    }
    let rows = v["replay"].as_array().ok_or("replay is not an array")?;
    if rows.is_empty() {
        return Err("no replay results".into());
    }
    for r in rows {
        for key in ["mpps", "cycles_per_packet", "ns_per_packet"] {
            let s = &r[key];
            for f in ["median", "min", "max"] {
                if !s[f].is_number() {
                    return Err(format!(
                        "replay row {}: {key}.{f} is not a number",
                        r["scenario"]["label"]
                    ));
                }
            }
        }
    }
    // A peer is either measured (its figures are numbers) or failed (with a
    // reason and no figures): never a failed run's numbers presented as figures.
    for (kind, figure) in [("testpmd", "mpps"), ("acl", "peer_cycles_per_packet")] {
        let list = v["peers"][kind]
            .as_array()
            .ok_or(format!("peers.{kind} is not an array"))?;
        for (i, p) in list.iter().enumerate() {
            let at = format!("peers.{kind}[{i}]");
            match p["status"].as_str() {
                Some("ok") if p[figure].is_number() => {}
                Some("ok") => return Err(format!("{at}: status ok without {figure}")),
                Some("failed")
                    if p["reason"].as_str().is_some_and(|r| !r.is_empty())
                        && p[figure].is_null() => {}
                Some("failed") => {
                    return Err(format!("{at}: failed needs a reason and a null {figure}"))
                }
                other => return Err(format!("{at}: status {other:?} is not ok or failed")),
            }
        }
    }
    fn walk(v: &serde_json::Value, path: &str) -> Result<(), String> {
        match v {
            serde_json::Value::Number(n) if !matches!(n.as_f64(), Some(x) if x.is_finite()) => {
                Err(format!("{path}: not a finite number"))
            }
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, x)| walk(x, &format!("{path}[{i}]"))),
            serde_json::Value::Object(o) => o
                .iter()
                .try_for_each(|(k, x)| walk(x, &format!("{path}.{k}"))),
            _ => Ok(()),
        }
    }
    walk(v, "$")
}

fn rows<'a>(r: &'a Results, group: &str) -> impl Iterator<Item = &'a ReplayResult> + 'a {
    let g = group.to_string();
    r.replay.iter().filter(move |x| x.scenario.group == g)
}

fn replay_table(
    out: &mut String,
    r: &Results,
    group: &str,
    first: &str,
    col: &dyn Fn(&ReplayResult) -> String,
) {
    let _ = writeln!(
        out,
        "| {first} | Mpps (all workers) | on-CPU cycles/packet | wall cycles/packet | CPU share | Gbit/s (outer) | drops |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for x in rows(r, group) {
        let drops = if x.drops.is_empty() {
            "0".to_string()
        } else {
            x.drops
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {} | {} |",
            col(x),
            x.mpps.show(3),
            x.cpu_cycles_per_packet.show(1),
            x.cycles_per_packet.show(1),
            x.cpu_share.median,
            x.gbps.show(2),
            drops
        );
    }
    out.push('\n');
}

/// One-paragraph summary for the terminal.
pub fn summary_lines(r: &Results) -> String {
    let mut s = String::new();
    if let Some(t) = &r.target {
        let _ = writeln!(
            s,
            "target: {:.1} on-CPU cycles/packet (budget {:.0}: {}); top costs: {}",
            t.cycles_per_packet.median,
            t.budget_cycles,
            if t.met { "met" } else { "NOT met" },
            t.top_costs
                .iter()
                .map(|(n, c)| format!("{n} {c:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for x in r.replay.iter().filter(|x| x.scenario.group == "frame_size") {
        let _ = writeln!(s, "  {:<16} {:>7.3} Mpps", x.scenario.label, x.mpps.median);
    }
    for t in &r.peers.testpmd {
        if let Some(why) = &t.reason {
            let _ = writeln!(s, "peer testpmd {}: FAILED: {why}", t.mode);
        }
    }
    match io_ratio(r) {
        Some(Ok(q)) => {
            let _ = writeln!(s, "ratio dpgw io_only / testpmd io (on-CPU cycles): {q:.2}");
        }
        Some(Err(na)) => {
            let _ = writeln!(s, "ratio dpgw io_only / testpmd io (on-CPU cycles): {na}");
        }
        None => {}
    }
    for a in r.peers.acl.iter() {
        if let Some(why) = &a.reason {
            let _ = writeln!(s, "peer rte_acl on {}: FAILED: {why}", a.set);
        }
    }
    if let Some(v) = &r.peers.veth {
        match (&v.reason, v.per_core_ratio) {
            (Some(why), _) => {
                let _ = writeln!(s, "peer kernel on veth: FAILED: {why}");
            }
            (None, Some(q)) => {
                let _ = writeln!(
                    s,
                    "ratio kernel / dpgw AF_PACKET on veth (ns per forwarded packet): {q:.2}"
                );
                if let Some(x) = v.afxdp_per_core_ratio {
                    let _ = writeln!(
                        s,
                        "ratio kernel / dpgw AF_XDP on veth (ns per forwarded packet): {x:.2}"
                    );
                }
            }
            _ => {}
        }
    }
    s
}

/// The ratio of our `io_only` row to testpmd io (on-CPU cycles per packet),
/// or why there is none (`n/a (peer failed: …)`); `None` when testpmd io was
/// not run.
fn io_ratio(r: &Results) -> Option<Result<f64, String>> {
    let io = r.peers.testpmd.iter().find(|t| t.mode == "io")?;
    Some(match (&io.reason, r.peers.io_ratio) {
        (Some(why), _) => Err(format!("n/a (peer failed: {why})")),
        (None, Some(q)) => Ok(q),
        (None, None) => Err("n/a (no `io_only` row)".into()),
    })
}

pub fn markdown(r: &Results) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(o, "# dpgw benchmark report ({} mode)\n", r.settings.mode);
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| date (UTC) | {} |", m.date_utc);
    let _ = writeln!(
        o,
        "| commit | `{}`{} |",
        m.git_commit,
        if m.git_dirty {
            " (uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(o, "| cores available | {} |", m.cores);
    let _ = writeln!(o, "| TSC | {:.3} GHz |", m.tsc_ghz);
    let _ = writeln!(o, "| kernel | {} |", m.kernel);
    let _ = writeln!(
        o,
        "| load average (start → end) | {:.1} → {:.1} |",
        m.load_avg_start, r.load_avg_end
    );
    let _ = writeln!(
        o,
        "| settings | {} repeats per cell, {} packets per run and worker, burst {}, {} stage passes, {} s per latency point |",
        r.settings.repeats,
        r.settings.packets_per_run,
        r.settings.burst,
        r.settings.stage_passes,
        r.settings.latency_seconds_per_point
    );
    if let Some(io) = r.peers.testpmd.iter().find(|t| t.mode == "io") {
        let _ = match (io.cpu_cycles_per_packet, io.mpps, &io.reason) {
            (Some(c), Some(m), _) => writeln!(
                o,
                "| calibration | `dpdk-testpmd` io on `net_null`, same run: {c:.1} on-CPU cycles/packet ({m:.2} Mpps) |"
            ),
            (_, _, why) => writeln!(
                o,
                "| calibration | `dpdk-testpmd` io on `net_null` failed: {} |",
                why.as_deref().unwrap_or("no figures")
            ),
        };
    }
    let _ = writeln!(o, "| duration | {:.0} s |\n", r.duration_s);
    let _ = writeln!(
        o,
        "Figures are `median (min–max)` over the repeats. Cycles are TSC ticks (constant rate, \
         not the core clock). A load average above the core count means other work shared the \
         cores during the run: treat the minima as the less disturbed figures.\n"
    );

    if let Some(t) = &r.target {
        let _ = writeln!(o, "## Target\n");
        let _ = writeln!(
            o,
            "{}: budget ≤ {:.1}× the calibration, `dpdk-testpmd` io on `net_null` in the same run \
             (≤ {:.0} cycles/packet where the calibration costs about 30; the absolute budget decides \
             when the calibration did not run).\n",
            t.description, t.budget_ratio, t.budget_cycles
        );
        let versus = match (t.ratio_to_calibration, t.calibration_cycles) {
            (Some(q), Some(c)) => {
                format!("**{q:.2}×** the calibration ({c:.1} on-CPU cycles/packet)")
            }
            _ => "no calibration in this run".to_string(),
        };
        let _ = writeln!(
            o,
            "**Measured: {} on-CPU cycles/packet, {versus} — {}** (wall clock: {}). \
             Top three costs (per-stage, below): {}.\n",
            t.cycles_per_packet.show(1),
            if t.met { "met" } else { "not met" },
            t.wall_cycles_per_packet.show(1),
            t.top_costs
                .iter()
                .map(|(n, c)| format!("{n} {c:.1}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    if let Some(st) = &r.stages {
        let _ = writeln!(o, "## Cost per stage (target pipeline, in process)\n");
        let _ = writeln!(
            o,
            "{} packets per pass, {} passes after a warm-up pass, stages timed burst by burst with the TSC \
             (timer cost {:.0} cycles per reading pair subtracted; {} interrupted bursts left out). \
             Flow-table hit ratio {:.3}.\n",
            st.packets_per_pass, st.passes, st.timer_cycles_per_burst, st.skipped_bursts, st.flow_hit_ratio
        );
        let _ = writeln!(o, "| stage | cycles/packet | ns/packet |\n|---|---:|---:|");
        for b in &st.rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                b.stage,
                b.cycles_per_packet.show(1),
                b.ns_per_packet.show(1)
            );
        }
        let _ = writeln!(
            o,
            "| **Σ stages (in process)** | **{:.1}** | |",
            st.in_process_cycles
        );
        let _ = writeln!(
            o,
            "| engine loop (replay − Σ stages) | {:.1} | |",
            st.engine_residual_cycles
        );
        let _ = writeln!(
            o,
            "| **`dpgw replay`, same pipeline (on CPU)** | **{:.1}** | (wall: {:.1}) |\n",
            st.replay_cycles, st.replay_wall_cycles
        );
        let _ = writeln!(
            o,
            "LB stage with flow misses (1M uniform flows through a 4 Ki-entry flow table, miss ratio {:.3}: \
             Maglev pick + insert/evict + encap): {} cycles/packet.\n",
            st.lb_miss_ratio,
            st.lb_miss_cycles.show(1)
        );
        let _ = writeln!(o, "![cycles per stage](plots/stage_cycles.svg)\n");
    }

    let _ = writeln!(o, "## Frame size (1 worker)\n");
    let _ = writeln!(
        o,
        "`full` = the target pipeline; `route` = decap + inner parse + route to the next hop (no ACL, no service).\n"
    );
    replay_table(&mut o, r, "frame_size", "inner frame", &|x| {
        format!(
            "{} B ({})",
            x.scenario.frame,
            if x.scenario.label.ends_with("_full") {
                "full"
            } else {
                "route"
            }
        )
    });
    let _ = writeln!(o, "![Mpps vs frame size](plots/mpps_vs_frame.svg)\n");

    let _ = writeln!(o, "## Line rate (1 worker, full pipeline)\n");
    let _ = writeln!(
        o,
        "Share of each link's packet rate one dedicated worker core reaches (TSC rate / on-CPU cycles per packet), for the outer frame on the wire \
         (inner + 50 B VXLAN/UDP/IPv4/Ethernet, padded to 60 B, + 24 B FCS, preamble and gap), \
         and workers needed for line rate at the measured per-worker rate.\n"
    );
    let _ = writeln!(o, "| inner frame | wire B | Mpps/worker | 10G | 25G | 40G | 100G |\n|---|---:|---:|---:|---:|---:|---:|");
    for l in &r.line_rate {
        let cells: Vec<String> = l
            .links
            .iter()
            .map(|k| format!("{:.1}% ({} w)", k.pct_one_worker, k.workers_needed))
            .collect();
        let _ = writeln!(
            o,
            "| {} B | {} | {:.3} | {} |",
            l.inner_frame,
            l.wire_bytes,
            l.mpps_one_worker,
            cells.join(" | ")
        );
    }
    o.push('\n');

    let _ = writeln!(o, "## Flows (64 B, full pipeline, 1 worker)\n");
    replay_table(&mut o, r, "flows", "flows", &|x| {
        format!("{} {}", x.scenario.flows, x.scenario.dist.name())
    });

    let _ = writeln!(
        o,
        "## ACL rules (64 B, ClassBench sets, every rule `allow`, 1 worker)\n"
    );
    replay_table(&mut o, r, "acl", "rule set", &|x| match &x.scenario.acl {
        Some(a) => format!("{} ({} rules)", a.name, a.rules),
        None => "none (0 rules)".into(),
    });
    let _ = writeln!(o, "![Mpps vs rule count](plots/mpps_vs_rules.svg)\n");

    let _ = writeln!(o, "## Services × backends (64 B, 1 worker)\n");
    replay_table(&mut o, r, "services", "services × backends", &|x| {
        format!("{} × {}", x.scenario.services, x.scenario.backends)
    });

    let _ = writeln!(
        o,
        "## Address families (1 worker; 64 B inner frames, 74 B with an IPv6 inner header — the smallest IPv6 + TCP frame)\n"
    );
    replay_table(&mut o, r, "family", "inner / outer (inner frame)", &|x| {
        format!(
            "IPv{} / IPv{} ({} B)",
            if x.scenario.inner_v6 { 6 } else { 4 },
            if x.scenario.outer_v6 { 6 } else { 4 },
            x.scenario.frame
        )
    });

    let _ = writeln!(o, "## Scaling with workers (64 B, full pipeline)\n");
    replay_table(&mut o, r, "workers", "workers", &|x| {
        x.scenario.workers.to_string()
    });
    let mpps_of = |w: usize| {
        r.replay
            .iter()
            .find(|x| x.scenario.group == "workers" && x.scenario.workers == w)
            .map(|x| x.mpps.median)
    };
    if let (Some(one), Some(two)) = (mpps_of(1), mpps_of(2)) {
        let _ = writeln!(
            o,
            "2 workers / 1 worker, Mpps: **{:.2}×** (each worker pinned to its own core; a machine with fewer \
             than 2 free cores cannot show it; the capture's flows dealt out to equal packet counts, \
             `[pcap] split = \"balanced\"`, since a replay lasts as long as its largest share).\n",
            two / one
        );
    }
    let _ = writeln!(o, "![scaling](plots/scaling_workers.svg)\n");

    if let Some(l) = &r.latency {
        let _ = writeln!(
            o,
            "## Latency vs offered load (target pipeline, 1 core, in process)\n"
        );
        let _ = writeln!(
            o,
            "Load is a share of {:.3} Mpps, the unpaced rate of the same in-process loop. Latency = \
             completion of the packet's burst − its scheduled arrival (see *How to read*).\n",
            l.max_mpps
        );
        let _ = writeln!(
            o,
            "| load | offered Mpps | achieved Mpps | mean burst | p50 ns | p99 ns | p99.9 ns | max ns |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for p in &l.points {
            let _ = writeln!(
                o,
                "| {:.0}% | {:.3} | {:.3} | {:.1} | {} | {} | {} | {} |",
                p.load_pct,
                p.offered_mpps,
                p.achieved_mpps,
                p.mean_burst,
                p.p50_ns,
                p.p99_ns,
                p.p999_ns,
                p.max_ns
            );
        }
        let _ = writeln!(o, "\n![latency](plots/latency_vs_load.svg)\n");
    }

    let _ = writeln!(o, "## Peers (same machine, same run)\n");
    if let Some(s) = &r.peers.skipped {
        let _ = writeln!(o, "{s}\n");
    }
    if !r.peers.testpmd.is_empty() {
        let io = r.replay.iter().find(|x| x.scenario.group == "io_only");
        let _ = writeln!(o, "I/O ceiling: `dpdk-testpmd` on one `net_null` port (a device that costs nothing: no DMA, no wire), forwarding core 1.\n");
        let _ = writeln!(
            o,
            "| forwarder | Mpps (wall) | on-CPU cycles/packet | wall cycles/packet | CPU share | note |\n|---|---:|---:|---:|---:|---|"
        );
        let f =
            |x: Option<f64>, p: usize| x.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "–".into());
        for t in &r.peers.testpmd {
            match &t.reason {
                Some(why) => {
                    let _ = writeln!(o, "| testpmd {} | **failed** | – | – | – | {why} |", t.mode);
                }
                None => {
                    let _ = writeln!(
                        o,
                        "| testpmd {} | {} | {} | {} | {} | {} |",
                        t.mode,
                        f(t.mpps, 2),
                        f(t.cpu_cycles_per_packet, 1),
                        f(t.cycles_per_packet, 1),
                        f(t.cpu_share, 2),
                        t.note
                    );
                }
            }
        }
        if let Some(x) = io {
            let _ = writeln!(
                o,
                "| dpgw replay loop, all dropped at the outer check (`io_only`) | {} | {} | {} | {:.2} | pcap replay: copies every frame |",
                x.mpps.show(2),
                x.cpu_cycles_per_packet.show(1),
                x.cycles_per_packet.show(1),
                x.cpu_share.median
            );
        }
        match io_ratio(r) {
            Some(Ok(q)) => {
                let _ = writeln!(
                    o,
                    "\nRatio dpgw `io_only` / testpmd io, on-CPU cycles per packet: **{q:.2}×** (above 1: we spend more per packet)."
                );
            }
            Some(Err(na)) => {
                let _ = writeln!(
                    o,
                    "\nRatio dpgw `io_only` / testpmd io, on-CPU cycles per packet: {na}."
                );
            }
            None => {}
        }
        o.push('\n');
    }
    if !r.peers.acl.is_empty() {
        let _ = writeln!(o, "ACL lookup: our classifier vs DPDK `rte_acl` (`dpdk-test-acl`, best of scalar/sse/avx2), same rules and trace, via `acl-bench --peer`.\n");
        let _ = writeln!(o, "| set | rules | ours cycles/pkt | rte_acl cycles/pkt | ratio ours/rte_acl | note |\n|---|---:|---:|---:|---:|---|");
        for a in &r.peers.acl {
            let f = |x: Option<f64>, p: usize| {
                x.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "–".into())
            };
            if let Some(why) = &a.reason {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | **failed** | n/a (peer failed) | {why} |",
                    a.set,
                    a.rules.map(|x| x.to_string()).unwrap_or_else(|| "–".into()),
                    f(a.ours_cycles_per_packet, 1),
                );
                continue;
            }
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} ({}) | {} | {} |",
                a.set,
                a.rules.map(|x| x.to_string()).unwrap_or_else(|| "–".into()),
                f(a.ours_cycles_per_packet, 1),
                f(a.peer_cycles_per_packet, 1),
                a.peer_alg.as_deref().unwrap_or("–"),
                f(a.ratio, 2),
                a.note
            );
        }
        o.push('\n');
    }
    if let Some(v) = &r.peers.veth {
        let _ = writeln!(o, "AF_PACKET and AF_XDP vs the Linux kernel on veth (`{}`): the same job (VXLAN decap, one deny rule, IPv4 forwarding) by a kernel vxlan device + nftables + ip_forward and by dpgw on AF_PACKET and on AF_XDP (one worker on CPU 1), driven by `trafgen` on CPU 0; cost = (CPU 1 busy + CPU 0 irq/softirq) per packet delivered to the sink.\n", v.command);
        let f =
            |x: Option<f64>, p: usize| x.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "–".into());
        match &v.reason {
            Some(why) => {
                let _ = writeln!(o, "| gateway | ns/packet | zero-loss pps |\n|---|---:|---:|\n| veth-bench | **failed** | – |\n\n{why}\n");
            }
            None => {
                let _ = writeln!(
                    o,
                    "| gateway | ns/packet | zero-loss pps |\n|---|---:|---:|\n| Linux kernel | {} | {} |\n| dpgw AF_PACKET | {} | {} |\n| dpgw AF_XDP | {} | {} |\n\nPer-core ratio kernel/dpgw: AF_PACKET {}, AF_XDP {} (issue 19's goal: 3).\n",
                    f(v.kernel_ns_per_packet, 0),
                    f(v.kernel_zero_loss_pps, 0),
                    f(v.dpgw_ns_per_packet, 0),
                    f(v.dpgw_zero_loss_pps, 0),
                    f(v.afxdp_ns_per_packet, 0),
                    f(v.afxdp_zero_loss_pps, 0),
                    f(v.per_core_ratio, 2),
                    f(v.afxdp_per_core_ratio, 2)
                );
            }
        }
    }
    let _ = writeln!(o, "### Published figures (not measured here)\n");
    let target = r.target.as_ref().map(|t| t.cycles_per_packet.median);
    let _ = writeln!(
        o,
        "| system | what | cycles/packet (published) | dpgw target / published | source |\n|---|---|---:|---:|---|"
    );
    for p in &r.peers.published {
        let ratio = target
            .filter(|_| p.cycles_mid > 0.0)
            .map(|t| format!("{:.2}", t / p.cycles_mid))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            o,
            "| {} | {} | {} | {ratio} | {} |",
            p.system, p.what, p.cycles_per_packet, p.source
        );
    }
    if let Some(t) = target {
        let _ = writeln!(
            o,
            "| **dpgw (measured here)** | target pipeline, see above | **{t:.1}** | | this run |"
        );
    }
    o.push('\n');

    if !r.errors.is_empty() {
        let _ = writeln!(o, "## Problems during the run\n");
        for e in &r.errors {
            let _ = writeln!(o, "- {e}");
        }
        o.push('\n');
    }
    let _ = writeln!(o, "## Reproducing a row\n");
    let _ = writeln!(
        o,
        "Every matrix row has its config in `configs/<label>.toml`; the capture is written by the command in \
         `results.json` (`replay[].gen_command`). Then `dpgw replay --config configs/<label>.toml --json`.\n"
    );
    o.push_str(HOW_TO_READ);
    o
}

/// Appended to every report (and quoted in docs/benchmarks.md).
pub const HOW_TO_READ: &str = "## How to read this report

* **Mpps** is received packets per second over the run (wall clock), all workers together.
  **Wall cycles/packet** is per worker core: the worker loop's TSC ticks divided by the packets it received.
  **On-CPU cycles/packet** is the process's CPU time (user + system, all threads, `CLOCK_PROCESS_CPUTIME_ID`,
  less the CPU time of the runner's setup — table build, capture load and split — measured alone)
  × the TSC rate / packets: what the packets cost while the workers were actually running. On an idle machine
  with pinned workers the two agree and **CPU share** (CPU time / (wall time × workers)) is 1.0; on a shared
  machine wall figures include other processes' time slices and on-CPU figures are the ones to compare
  (they still include cache and TLB damage from the neighbours). Both include the pcap backend copying every
  frame into a packet buffer (a NIC's DMA would do that work), so they are an upper bound for real hardware.
* **Matrix rows** go through `dataplane::runner::run`, the code behind `dpgw replay --json`: captures
  preloaded in memory, replayed until the row's packet count is reached, workers pinned to cores 0, 1, ...
* **Per-stage costs** run the stages of `pipeline::Pipeline` directly on preloaded `HeapBuf` packets, one burst
  at a time, reading the TSC between stages. `lb lookup` is `LbTables::process_burst_with` (with the prefetch instruction, as the LB stage calls it) alone on the same keys
  (its own warm flow table); `encap + bookkeeping` is the LB stage minus that. `engine loop` is what
  `dpgw replay` costs beyond the sum of the stages (queue, counters, transmit, snapshot check).
* **Latency** is measured in process, not on a wire: packet *i* is scheduled to arrive at
  `t0 + i / rate` (constant spacing, TSC). The loop polls like a worker, takes every packet that has arrived
  (up to one burst), copies them into buffers, runs the pipeline, and records for each packet
  `burst completion − scheduled arrival` in an HDR histogram (ns, 3 significant digits). It therefore
  includes waiting in the (virtual) RX ring, batching with the packets of the same burst, the copy and the
  processing; it excludes NIC, PCIe and wire time. On a shared machine the maxima (and p99.9) show
  preemptions by other processes, not the pipeline.
* **Line rate** uses the outer frame (inner + 50 B) + FCS + preamble + gap; `workers needed` is
  `ceil(link packet rate / one worker's rate)` and assumes linear scaling, which the workers table checks.
* **Peers** are run on the same machine in the same run; ratios are ours / theirs (below 1 is better for
  cycles). testpmd on `net_null` is an upper bound on any forwarding loop on this CPU, not a NIC figure.
  Published figures come from other machines and other traffic; they are context, not measurements.
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::TestpmdResult;
    use benches::sanity::Status;

    fn results(testpmd: Vec<TestpmdResult>, io_ratio: Option<f64>) -> Results {
        Results {
            schema: 2,
            machine: crate::machine::Machine {
                cpu_model: "test".into(),
                cores: 2,
                tsc_ghz: 2.5,
                kernel: "test".into(),
                git_commit: "0".into(),
                git_dirty: false,
                date_utc: "2026-01-01T00:00:00Z".into(),
                load_avg_start: 0.0,
                hostname: String::new(),
            },
            settings: crate::Settings {
                mode: "quick",
                repeats: 1,
                packets_per_run: 1,
                burst: 32,
                stage_passes: 1,
                latency_seconds_per_point: 0.1,
                testpmd_seconds: 1.0,
            },
            replay: Vec::new(),
            stages: None,
            target: None,
            latency: None,
            line_rate: Vec::new(),
            peers: crate::Peers {
                testpmd,
                io_ratio,
                acl: Vec::new(),
                published: Vec::new(),
                veth: None,
                skipped: None,
            },
            plots: Vec::new(),
            errors: Vec::new(),
            load_avg_end: 0.0,
            duration_s: 1.0,
        }
    }

    fn io(mpps: Option<f64>, reason: Option<&str>) -> TestpmdResult {
        TestpmdResult {
            mode: "io".into(),
            command: "dpdk-testpmd ...".into(),
            status: if reason.is_some() {
                Status::Failed
            } else {
                Status::Ok
            },
            reason: reason.map(String::from),
            mpps,
            cycles_per_packet: mpps.map(|m| 2500.0 / m),
            cpu_cycles_per_packet: mpps.map(|m| 2500.0 / m),
            cpu_share: mpps.map(|_| 1.0),
            note: String::new(),
        }
    }

    /// results.json as written, with one replay row so the rest is checked.
    fn json(r: &Results) -> serde_json::Value {
        let mut v = serde_json::to_value(r).unwrap();
        let stat = serde_json::json!({"median": 1.0, "min": 1.0, "max": 1.0, "n": 1});
        v["replay"] = serde_json::json!([{
            "scenario": {"label": "x"},
            "mpps": stat, "cycles_per_packet": stat, "ns_per_packet": stat
        }]);
        v
    }

    #[test]
    fn test_failed_peer_is_no_figure_and_no_ratio() {
        let r = results(vec![io(None, Some("0.0039 Mpps is below 0.5 Mpps"))], None);
        let md = markdown(&r);
        assert!(md.contains("| testpmd io | **failed** |"), "{md}");
        assert!(
            md.contains(
                "on-CPU cycles per packet: n/a (peer failed: 0.0039 Mpps is below 0.5 Mpps)."
            ),
            "{md}"
        );
        assert!(!md.contains("×**"), "a ratio against a failed peer: {md}");
        assert!(summary_lines(&r).contains("peer testpmd io: FAILED: 0.0039 Mpps"));
        let v = json(&r);
        assert_eq!(v["peers"]["testpmd"][0]["status"], "failed");
        assert!(v["peers"]["testpmd"][0]["mpps"].is_null());
        assert!(v["peers"]["io_ratio"].is_null());
        assert_eq!(check_json(&v), Ok(()));
    }

    #[test]
    fn test_measured_peer_has_figure_and_ratio() {
        let r = results(vec![io(Some(18.0), None)], Some(1.11));
        let md = markdown(&r);
        assert!(md.contains("| testpmd io | 18.00 |"), "{md}");
        assert!(md.contains("**1.11×**"), "{md}");
        let v = json(&r);
        assert_eq!(v["peers"]["testpmd"][0]["status"], "ok");
        assert!(v["peers"]["testpmd"][0].get("reason").is_none());
        assert_eq!(check_json(&v), Ok(()));
    }

    #[test]
    fn test_check_json_rejects_failed_peer_with_figures() {
        let mut bad = io(Some(0.0039), None);
        bad.status = Status::Failed;
        let v = json(&results(vec![bad.clone()], None));
        assert!(check_json(&v).unwrap_err().contains("reason"));
        bad.reason = Some("why".into());
        let v = json(&results(vec![bad], None));
        assert!(check_json(&v).is_err(), "figures of a failed run accepted");
        let v = json(&results(vec![io(None, None)], None));
        assert!(check_json(&v).unwrap_err().contains("without mpps"));
    }
}
