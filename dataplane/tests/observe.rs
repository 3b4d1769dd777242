//! Seeing what the gateway does, on a live `dpgw run` replaying the demo
//! capture forever (two workers, control socket): `trace` and `capture`
//! select what their filter says (checked by tshark's own dissection, both
//! ways), pcapng output opens in tshark without a warning and carries the
//! comments, `-w -` pipes into `tshark -r -`, a reader that never reads does
//! not hold up the workers, malformed filters name the token; `flows list`
//! returns real entries that `explain` agrees with. Offline, `dpgw explain
//! --pcap` gives exactly what `dpgw replay --out` sends, packet for packet.

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use ctl::{CapturePoint, CaptureSpec, Client, Command, Data, ExplainPacket};

const DPGW: &str = env!("CARGO_BIN_EXE_dpgw");

fn dpgwctl() -> PathBuf {
    // Built by the workspace (ctl is a dependency of dataplane, its binary
    // sits beside dpgw).
    let p = Path::new(DPGW).with_file_name("dpgwctl");
    assert!(
        p.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        p.display()
    );
    p
}

fn demo(dir: &Path, loops: u64, workers: usize, control: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("pcaps/demo.toml")).unwrap();
    let pcap = root.join("pcaps/demo.pcap");
    let mut text = text
        .replace(
            "input = [\"demo.pcap\"]",
            &format!("input = [{:?}]", pcap.display().to_string()),
        )
        .replace("loops = 20000", &format!("loops = {loops}"))
        .replace(
            "workers = 1",
            &format!("workers = {workers}\nno_pin = true"),
        );
    if control {
        text.push_str(&format!(
            "\n[control]\nsocket = {:?}\n",
            dir.join("dpgw.sock").display().to_string()
        ));
    }
    let p = dir.join("dpgw.toml");
    std::fs::write(&p, text).unwrap();
    p
}

struct Daemon(Option<Child>, PathBuf);

impl Daemon {
    fn start(cfg: &Path, sock: &Path) -> Daemon {
        let err = cfg.with_extension("stderr");
        let child = Proc::new(DPGW)
            .args(["run", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon(Some(child), err);
        let t0 = Instant::now();
        loop {
            if let Ok(mut c) = Client::connect(sock, Duration::from_secs(5)) {
                if c.request(Command::Ping).is_ok() {
                    return d;
                }
            }
            if let Some(Ok(Some(st))) = d.0.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "dpgw exited ({st}): {}",
                    std::fs::read_to_string(&d.1).unwrap_or_default()
                );
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no control socket");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Proc::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn call(c: &mut Client, cmd: Command) -> Data {
    let r = c.call(cmd.clone()).unwrap();
    assert!(r.ok, "{cmd:?}: {:?}", r.error);
    r.data.unwrap()
}

/// Stops a watch and reads until it is done (its last records handed out).
fn stop(c: &mut Client, id: u64) -> ctl::WatchReport {
    let t0 = Instant::now();
    loop {
        let Data::Watch(w) = call(c, Command::WatchStop { id }) else {
            panic!()
        };
        if w.done {
            return w;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "watch {id} never ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `dpgwctl capture` into a file; returns the file.
fn capture(dir: &Path, sock: &Path, filter: &str, at: &str, count: u64) -> PathBuf {
    let out = dir.join(format!("cap-{}.pcapng", count ^ filter.len() as u64));
    let o = Proc::new(dpgwctl())
        .arg("--socket")
        .arg(sock)
        .args(["capture", "--filter", filter, "--where", at, "--count"])
        .arg(count.to_string())
        .arg("-w")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "capture: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// tshark over `file` with display filter `y`: (lines printed, stderr).
fn tshark(file: &Path, y: &str, fields: &[&str]) -> (Vec<String>, String) {
    let mut cmd = Proc::new("tshark");
    cmd.arg("-n").arg("-r").arg(file);
    if !y.is_empty() {
        cmd.arg("-Y").arg(y);
    }
    if !fields.is_empty() {
        cmd.args(["-T", "fields"]);
        for f in fields {
            cmd.args(["-e", f]);
        }
    }
    let o = cmd
        .output()
        .expect("tshark (installed by scripts/setup.sh)");
    assert!(
        o.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.contains("Running as user \"root\""))
        .collect::<Vec<_>>()
        .join("\n");
    (
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        err,
    )
}

#[test]
fn test_trace_capture_flows_explain_live() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo(dir.path(), 0, 2, true);
    let sock = dir.path().join("dpgw.sock");
    let _d = Daemon::start(&cfg, &sock);
    let mut c = Client::connect(&sock, Duration::from_secs(30)).unwrap();

    // Malformed filters: an error naming the token and its column.
    let r = c
        .call(Command::WatchStart {
            filter: "tcp and fish".into(),
            count: 1,
            capture: None,
        })
        .unwrap();
    assert!(!r.ok);
    let e = r.error.unwrap();
    assert!(e.contains("'fish'") && e.contains("column 9"), "{e}");
    let o = Proc::new(dpgwctl())
        .arg("--socket")
        .arg(&sock)
        .args(["trace", "--filter", "port 9-3"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("'9-3'"));

    // Trace: tenant 101's TCP to 443 is denied by rule 1 of the demo config.
    let Data::WatchStarted { id, workers } = call(
        &mut c,
        Command::WatchStart {
            filter: "vni 101 and tcp and dst port 443".into(),
            count: 40,
            capture: None,
        },
    ) else {
        panic!()
    };
    assert_eq!(workers, 2);
    let mut recs = Vec::new();
    let t0 = Instant::now();
    loop {
        let Data::Watch(w) = call(&mut c, Command::WatchRead { id }) else {
            panic!()
        };
        recs.extend(w.records);
        if w.done {
            assert_eq!(w.matched, 40);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "trace never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(recs.len(), 40);
    for r in &recs {
        assert_eq!(r.verdict, "acl_deny", "{r:?}");
        assert!(r.steps[0].starts_with("decap: VXLAN VNI 101"), "{r:?}");
        assert!(
            r.steps[1].starts_with("inner: tcp ") && r.steps[1].ends_with(":443"),
            "{r:?}"
        );
        assert!(
            r.steps[2].starts_with("acl: rule 1 matches") && r.steps[2].ends_with("deny"),
            "{r:?}"
        );
    }
    // A second watch can start once the first ended.
    let Data::WatchStarted { id, .. } = call(
        &mut c,
        Command::WatchStart {
            filter: "service web".into(),
            count: 5,
            capture: None,
        },
    ) else {
        panic!()
    };
    // ...and only one at a time.
    let r = c
        .call(Command::WatchStart {
            filter: String::new(),
            count: 1,
            capture: None,
        })
        .unwrap();
    assert_eq!(r.code, Some(ctl::ErrorCode::Refused), "{r:?}");
    stop(&mut c, id);

    // Capture: the filter decides both ways as tshark's dissection says.
    let f = "vni 101 and tcp and dst port 443";
    let y = "vxlan.vni == 101 && tcp.dstport == 443";
    let yes = capture(dir.path(), &sock, f, "rx", 200);
    let no = capture(dir.path(), &sock, &format!("not ({f})"), "rx", 300);
    let (all, err) = tshark(&yes, "", &["frame.comment", "frame.interface_id"]);
    assert_eq!(all.len(), 200, "{err}");
    assert!(err.is_empty(), "tshark warned: {err}");
    for l in &all {
        let (comment, iface) = l.split_once('\t').unwrap();
        assert_eq!(comment, format!("rx worker {iface}"), "{l}");
    }
    assert_eq!(tshark(&yes, &format!("!({y})"), &[]).0.len(), 0);
    assert_eq!(tshark(&no, "", &[]).0.len(), 300);
    assert_eq!(tshark(&no, y, &[]).0.len(), 0);
    // Drops are commented with their reason, transmitted frames are the encapsulated ones.
    let drops = capture(dir.path(), &sock, "drop", "drop", 50);
    let (lines, err) = tshark(&drops, "", &["frame.comment"]);
    assert_eq!(lines.len(), 50, "{err}");
    assert!(
        lines.iter().all(|l| l.starts_with("drop acl_deny worker ")),
        "{lines:?}"
    );
    let tx = capture(dir.path(), &sock, "service web", "tx", 50);
    let (dsts, _) = tshark(&tx, "", &["ip.dst", "ip.proto"]);
    assert_eq!(dsts.len(), 50);
    for l in &dsts {
        // IPIP to one of the three backends: outer dst a backend, protocol 4 then 6.
        assert!(l.starts_with("10.9.0."), "{l}");
        assert!(l.contains("4,6") || l.contains("\t4"), "{l}");
    }

    // `-w -` streams into `tshark -r -`.
    let o = Proc::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --socket {} capture --count 25 -w - | tshark -n -r - | wc -l",
            dpgwctl().display(),
            sock.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "25");

    // top, not on a terminal: one snapshot per interval.
    let o = Proc::new(dpgwctl())
        .arg("--socket")
        .arg(&sock)
        .args(["top", "-n", "2", "--interval", "0.3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let top = String::from_utf8_lossy(&o.stdout);
    assert_eq!(top.matches("WORKER  RUNNING").count(), 2, "{top}");
    assert!(
        !top.contains('\x1b'),
        "no screen control codes off a terminal: {top}"
    );
    assert!(top.contains("acl_deny") && top.contains("web"), "{top}");

    // A reader that never reads: the workers keep going, the loss is counted.
    let rx = |c: &mut Client| {
        let Data::Stats(s) = call(c, Command::Stats) else {
            panic!()
        };
        s.total.rx
    };
    let Data::WatchStarted { id, .. } = call(
        &mut c,
        Command::WatchStart {
            filter: String::new(),
            count: 10_000_000,
            capture: Some(CaptureSpec {
                at: CapturePoint::All,
                snaplen: 65535,
            }),
        },
    ) else {
        panic!()
    };
    let r0 = rx(&mut c);
    std::thread::sleep(Duration::from_secs(2));
    let r1 = rx(&mut c);
    assert!(
        r1 - r0 > 100_000,
        "workers slowed to {} packets in 2 s",
        r1 - r0
    );
    let w = stop(&mut c, id);
    assert!(w.lost > 0, "{} matched, nothing lost?", w.matched);

    // flows list: real entries; explain agrees on each one's backend and finds it.
    let Data::FlowList(fl) = call(
        &mut c,
        Command::FlowsList {
            service: Some("web".into()),
            backend: None,
            vni: None,
            limit: Some(20),
        },
    ) else {
        panic!()
    };
    assert_eq!(fl.workers, 2);
    assert!(!fl.entries.is_empty() && fl.entries.len() <= 20, "{fl:?}");
    for e in &fl.entries {
        assert_eq!(e.service.as_deref(), Some("web"));
        let Data::Explanation(x) = call(
            &mut c,
            Command::Explain {
                packet: ExplainPacket {
                    vni: e.vni,
                    src: e.src,
                    sport: e.sport,
                    dst: e.dst,
                    dport: e.dport,
                    proto: e.proto.clone(),
                    payload: 0,
                },
            },
        ) else {
            panic!()
        };
        assert_eq!(x.verdict, "tx", "{x:?}");
        assert_eq!(
            x.backend,
            Some(e.backend),
            "Maglev's choice vs the flow table: {x:?}"
        );
        assert!(
            x.flows
                .iter()
                .any(|f| f.worker == e.worker && f.backend == e.backend),
            "{x:?} does not list {e:?}"
        );
    }
    // Filters of flows list.
    let b = fl.entries[0].backend;
    let Data::FlowList(fb) = call(
        &mut c,
        Command::FlowsList {
            service: None,
            backend: Some(b),
            vni: Some(100),
            limit: Some(50),
        },
    ) else {
        panic!()
    };
    assert!(!fb.entries.is_empty());
    assert!(fb.entries.iter().all(|e| e.backend == b && e.vni == 100));
    let r = c
        .call(Command::FlowsList {
            service: Some("nope".into()),
            backend: None,
            vni: None,
            limit: None,
        })
        .unwrap();
    assert_eq!(r.code, Some(ctl::ErrorCode::NotFound));
}

/// `dpgw explain --pcap` computes what the data path does: the frames it
/// says are sent are exactly `dpgw replay --out`'s, in order, and its drop
/// reasons add up to replay's counters.
#[test]
fn test_offline_explain_agrees_with_replay() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo(dir.path(), 1, 1, false);
    let out = dir.path().join("out.pcap");
    let r = Proc::new(DPGW)
        .args(["replay", "--json", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let x = Proc::new(DPGW)
        .args(["explain", "--json", "--config"])
        .arg(&cfg)
        .arg("--pcap")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../pcaps/demo.pcap"))
        .output()
        .unwrap();
    assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&x.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sent = dataplane::pcapfile::read_file(&out).unwrap();
    let sent: Vec<String> = sent
        .iter()
        .map(|(_, d)| d.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let explained: Vec<String> = lines
        .iter()
        .filter(|l| l["verdict"] == "tx")
        .map(|l| l["out"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(explained.len(), sent.len());
    for (i, (a, b)) in explained.iter().zip(&sent).enumerate() {
        assert_eq!(a, b, "transmitted frame {i} differs");
    }
    let mut drops = std::collections::BTreeMap::<String, u64>::new();
    for l in &lines {
        let v = l["verdict"].as_str().unwrap();
        if v != "tx" && v != "punt" {
            *drops.entry(v.to_string()).or_default() += 1;
        }
    }
    let want: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(summary["total"]["drops"].clone())
            .or_else(|_| serde_json::from_value(summary["drops"].clone()))
            .unwrap_or_else(|_| panic!("no drops in {summary}"));
    let want: std::collections::BTreeMap<String, u64> =
        want.into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(drops, want);
    assert!(drops.get("acl_deny").copied().unwrap_or(0) > 0, "{drops:?}");
    // Every service packet names its backend, and it is one of the three.
    let to_web: Vec<_> = lines.iter().filter(|l| l["service"] == "web").collect();
    assert!(!to_web.is_empty());
    for l in to_web {
        let b = l["backend"].as_str().unwrap();
        assert!(["10.9.0.1", "10.9.0.2", "10.9.0.3"].contains(&b), "{l}");
    }
}

/// SIGHUP re-reads the config as one snapshot (a bad file changes nothing),
/// `dpgw check` prints the digest the daemon reports for the same file, and
/// the daemon speaks systemd's notify protocol (READY, WATCHDOG, RELOADING).
#[test]
fn test_sighup_reload_check_digest_and_sd_notify() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo(dir.path(), 0, 1, true);
    let sock = dir.path().join("dpgw.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let err = dir.path().join("run.stderr");
    let child = Proc::new(DPGW)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _d = Daemon(Some(child), err.clone());
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    let recv_until = |want: &str, seen: &mut String, buf: &mut [u8]| {
        let t0 = Instant::now();
        while !seen.contains(want) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no {want} in {seen:?}"
            );
            let n = notify.recv(buf).expect("notify datagram");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    };
    recv_until("READY=1", &mut seen, &mut buf);
    seen.clear();
    recv_until("WATCHDOG=1", &mut seen, &mut buf);

    let check = |path: &Path| -> String {
        let o = Proc::new(DPGW)
            .args(["check", "--config"])
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        s.rsplit(' ').next().unwrap().trim().to_string()
    };
    let mut c = Client::connect(&sock, Duration::from_secs(30)).unwrap();
    let stats = |c: &mut Client| {
        let Data::Stats(s) = call(c, Command::Stats) else {
            panic!()
        };
        s
    };
    let s0 = stats(&mut c);
    assert_eq!(s0.digest, check(&cfg), "same file, same digest");

    // A fourth backend by SIGHUP.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let more = text.replace(
        "[[service.backend]]\nip = \"10.9.0.3\"",
        "[[service.backend]]\nip = \"10.9.0.3\"\n\n[[service.backend]]\nip = \"10.9.0.4\"",
    );
    assert_ne!(more, text);
    std::fs::write(&cfg, &more).unwrap();
    let hup = || {
        assert!(Proc::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success())
    };
    hup();
    let t0 = Instant::now();
    let s1 = loop {
        let s = stats(&mut c);
        if s.generation > s0.generation {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "reload not applied");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(s1.generation, s0.generation + 1);
    assert_ne!(s1.digest, s0.digest);
    assert_eq!(s1.digest, check(&cfg));
    let Data::Backends { backends } = call(&mut c, Command::BackendList { service: None }) else {
        panic!()
    };
    assert_eq!(backends.len(), 4);
    let log = std::fs::read_to_string(&err).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("event=config_change") && l.contains("cmd=reload"))
        .unwrap_or_else(|| panic!("no reload event in {log}"));
    assert!(
        line.starts_with("ts=") && line.contains(" level=info "),
        "{line}"
    );
    assert!(
        line.contains(&format!("generation={}", s1.generation)),
        "{line}"
    );
    assert!(line.contains("services +0 -0 ~1"), "{line}");
    seen.clear();
    recv_until("RELOADING=1", &mut seen, &mut buf);
    recv_until("READY=1", &mut seen, &mut buf);

    // A broken file changes nothing and says why.
    std::fs::write(&cfg, more.replace("[[service]]", "[[service]\n")).unwrap();
    hup();
    let t0 = Instant::now();
    while !std::fs::read_to_string(&err)
        .unwrap_or_default()
        .contains("failed, running state kept")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no reload error logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s2 = stats(&mut c);
    assert_eq!(
        (s2.generation, s2.digest.clone()),
        (s1.generation, s1.digest.clone())
    );
    let Data::Backends { backends } = call(&mut c, Command::BackendList { service: None }) else {
        panic!()
    };
    assert_eq!(backends.len(), 4);
}

/// Every metric the Grafana dashboard queries exists in a live `/metrics`.
#[test]
fn test_grafana_dashboard_queries_live_metrics() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo(dir.path(), 0, 2, true);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("metrics = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&cfg, text).unwrap();
    let _d = Daemon::start(&cfg, &dir.path().join("dpgw.sock"));
    // Optional families (the burst histogram) appear once they have samples.
    let t0 = Instant::now();
    let body = loop {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        if body.contains("# TYPE dpgw_burst_duration_seconds ")
            || t0.elapsed() > Duration::from_secs(20)
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let live: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(live.contains("dpgw_rx_packets_total"), "{body}");
    let dash = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/dpgw.json"),
    )
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    for e in &exprs {
        let b = e.as_bytes();
        let mut i = 0;
        while let Some(at) = e[i..].find("dpgw_") {
            let st = i + at;
            let mut j = st;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            let name = &e[st..j];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|n| live.contains(n)))
                .unwrap_or(name);
            queried.insert(base.to_string());
            i = j;
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    let missing: Vec<_> = queried
        .iter()
        .filter(|q| !live.contains(q.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics lacks: {missing:?}"
    );
}
