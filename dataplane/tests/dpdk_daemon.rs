//! `dpgw run` on DPDK with a control socket: the ports' own counters
//! (`rte_eth_stats`) reach `dpgwctl stats` and the Prometheus endpoint, and
//! agree with what the workers counted.
//!
//! The port is a `net_pcap` vdev replaying the demo capture forever
//! (`infinite_rx=1`) into `/dev/null`, without hugepages.
#![cfg(feature = "dpdk")]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use ctl::{Client, Command, Data, StatsReport};

const DPGW: &str = env!("CARGO_BIN_EXE_dpgw");
const DEMO_PCAP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../pcaps/demo.pcap");

/// A running `dpgw run`; SIGTERM'd and reaped on drop, whatever happens.
struct Daemon {
    child: Option<Child>,
    stderr: PathBuf,
}

impl Daemon {
    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM and wait; the exit status.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Proc::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn stats(sock: &Path) -> StatsReport {
    let mut c = Client::connect(sock, Duration::from_secs(10)).unwrap();
    match c.data(Command::Stats).unwrap() {
        Some(Data::Stats(s)) => *s,
        other => panic!("stats answered {other:?}"),
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the first sample line starting with `prefix`.
fn sample(body: &str, prefix: &str) -> u64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{body}"))
}

#[test]
fn port_counters_reach_stats_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let prefix = format!("dpgw-dpdk-daemon-{}", std::process::id());
    let cfg = dir.path().join("dpdk.toml");
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../pcaps/demo.toml"))
        .unwrap();
    // The demo config with its [dataplane] and [pcap] sections swapped for DPDK.
    let rest: String = demo
        .split("\n[")
        .filter(|s| !s.starts_with("dataplane]") && !s.starts_with("pcap]"))
        .filter(|s| !s.starts_with('#'))
        .map(|s| format!("\n[{s}"))
        .collect();
    let text = format!(
        "[dataplane]\nworkers = 1\nio = \"dpdk\"\n\n[dpdk]\neal_args = [\"--no-huge\", \"-m\", \"256\", \
         \"--no-pci\", \"--no-telemetry\", \"-l\", \"0\", \"--file-prefix={prefix}\", \
         \"--vdev=net_pcap0,rx_pcap={DEMO_PCAP},infinite_rx=1,tx_pcap=/dev/null\"]\n\
         rx_desc = 256\ntx_desc = 256\nmbufs = 2047\nmbuf_cache = 32\n\n\
         [control]\nsocket = \"{}\"\nmetrics = \"{metrics}\"\n{rest}",
        sock.display()
    );
    std::fs::write(&cfg, &text).unwrap();
    let stderr = dir.path().join("stderr");
    let child = Proc::new(DPGW)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child: Some(child),
        stderr,
    };

    // Wait until traffic flows and the port shows up in the report.
    let t0 = Instant::now();
    let first = loop {
        if let Ok(mut c) = Client::connect(&sock, Duration::from_secs(10)) {
            if let Ok(Some(Data::Stats(s))) = c.data(Command::Stats) {
                if s.total.rx > 1000 && !s.ports.is_empty() {
                    break *s;
                }
            }
        }
        if let Some(Ok(Some(st))) = d.child.as_mut().map(|c| c.try_wait()) {
            panic!("dpgw exited early ({st}): {}", d.stderr_text());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no traffic or no port counters after 60 s: {}",
            d.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(first.ports.len(), 1, "{:?}", first.ports);
    let p = &first.ports[0];
    assert_eq!((p.port, p.name.as_str()), (0, "net_pcap0"));
    // Port counters are read after the workers' (which count a burst once it
    // is processed), so the port has seen at least what the workers report.
    assert!(
        p.ipackets >= first.total.rx,
        "port rx {} < workers rx {}",
        p.ipackets,
        first.total.rx
    );
    assert!(p.ibytes >= first.total.rx_bytes);
    assert!(p.opackets <= p.ipackets);
    assert_eq!((p.ierrors, p.oerrors, p.rx_nombuf), (0, 0, 0), "{p:?}");

    // Counters move forward.
    std::thread::sleep(Duration::from_millis(300));
    let second = stats(&sock);
    assert!(second.ports[0].ipackets > p.ipackets);
    assert!(second.ports[0].opackets >= p.opackets);

    // Prometheus: one sample per counter, labelled with port and device.
    let body = http_get(metrics, "/metrics");
    let label = "{port=\"0\",device=\"net_pcap0\"}";
    for name in [
        "dpgw_port_rx_packets_total",
        "dpgw_port_tx_packets_total",
        "dpgw_port_rx_bytes_total",
        "dpgw_port_tx_bytes_total",
        "dpgw_port_rx_missed_total",
        "dpgw_port_rx_errors_total",
        "dpgw_port_tx_errors_total",
        "dpgw_port_rx_nombuf_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} counter")),
            "{name}: no TYPE line"
        );
        sample(&body, &format!("{name}{label} "));
    }
    assert!(sample(&body, &format!("dpgw_port_rx_packets_total{label} ")) >= second.total.rx);

    let st = d.terminate().expect("exit status");
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    assert!(st.success(), "{st}: {}", d.stderr_text());
}
