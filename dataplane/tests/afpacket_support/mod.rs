//! Network-namespace helpers for the AF_PACKET and end-to-end tests: namespaces
//! named after the test and the pid, removed (with every process left in them)
//! when the guard drops, also on panic.
#![allow(dead_code)]

use std::process::{Command, Output, Stdio};

/// Why the netns tests cannot run here, if they cannot.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`ip netns list` failed ({s})")),
        Err(e) => Some(format!("`ip` is not available: {e}")),
    }
}

/// Panics, saying why, when root and `ip netns` are not available. The tests
/// that call this are `#[ignore]`d, so they run only when asked for
/// (`-- --ignored`, as `scripts/test.sh` does as root); a test that was asked
/// for and cannot run fails: it never passes without having run.
pub fn require_root_netns() {
    if let Some(r) = unavailable_reason() {
        panic!(
            "this test needs root and `ip netns` ({r}); it was asked for (--ignored), \
             so it fails rather than pass without running"
        );
    }
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("dpgw-{tag}-{}", std::process::id());
        // A leftover of a crashed earlier run with the same pid.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs `sh -c cmd` inside the namespace; panics (naming the command) on failure.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.try_sh(cmd);
        assert!(
            out.status.success(),
            "[{}] {cmd}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("run ip netns exec")
    }

    /// A command to run inside the namespace (for background processes).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into the namespace (sockets it opens live there;
    /// threads it spawns start there).
    pub fn enter(&self) {
        let path = format!("/run/netns/{}", self.name);
        let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a namespace fd we hold open; affects this thread only.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns({path}): {}", std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still running inside (servers we started) go first.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a pid that lives in our own test namespace.
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Builds an Ethernet frame with a private EtherType (0x88b5) whose payload
/// starts with `seq` and `flow` (so fanout hashing sees distinct flows, the
/// frame also carries an IPv4/UDP header when `udp` is set).
pub fn test_frame(dst: [u8; 6], src: [u8; 6], seq: u32, flow: u16, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(64));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    // IPv4 + UDP so the kernel's flow hash (fanout) depends on the ports.
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (len.max(64) - 14) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let udp_len = total - 20;
    f.extend_from_slice(&(10_000 + flow).to_be_bytes());
    f.extend_from_slice(&9999u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(b"DPGWTEST");
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(len.max(64), 0xa5);
    f
}

/// The sequence number of a frame built by [`test_frame`], if it is one.
pub fn test_seq(frame: &[u8]) -> Option<u32> {
    if frame.len() < 54 || &frame[42..50] != b"DPGWTEST" {
        return None;
    }
    Some(u32::from_be_bytes([
        frame[50], frame[51], frame[52], frame[53],
    ]))
}

pub fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut s = 0u32;
    for c in h.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A ping in Python (raw ICMP / ICMPv6 sockets; iputils may be missing):
/// `python3 - DST TRIES` exits 0 on the first echo reply, 1 after TRIES tries.
pub const PY_PING: &str = r#"
import os, socket, struct, sys, time
dst = sys.argv[1]
tries = int(sys.argv[2])
v6 = ':' in dst
def csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
ident = os.getpid() & 0xffff
if v6:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6); typ, rep = 128, 129
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); typ, rep = 8, 0
s.settimeout(0.3)
for seq in range(1, tries + 1):
    payload = b'dpgw-ping'
    c = 0 if v6 else csum(struct.pack('!BBHHH', typ, 0, 0, ident, seq) + payload)
    s.sendto(struct.pack('!BBHHH', typ, 0, c, ident, seq) + payload, (dst, 0))
    end = time.time() + 0.5
    while time.time() < end:
        try:
            data, addr = s.recvfrom(2048)
        except socket.timeout:
            break
        if not v6:
            data = data[(data[0] & 15) * 4:]
        if len(data) >= 8 and data[0] == rep:
            t, code, ck, i, sq = struct.unpack('!BBHHH', data[:8])
            if i == ident and data[8:] == payload:
                print('reply from', addr[0], 'seq', sq)
                sys.exit(0)
sys.exit(1)
"#;

/// Pings `dst` from inside `ns` (up to `tries` requests, 0.5 s apart); true on a reply.
pub fn ping(ns: &Netns, dst: &str, tries: u32) -> bool {
    use std::io::Write;
    let mut child = ns
        .command("python3")
        .args(["-", dst, &tries.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(PY_PING.as_bytes())
        .expect("write script");
    let out = child.wait_with_output().expect("wait python3");
    out.status.success()
}

/// True when the pipeline's Decap stage hands exception frames (here: an ARP
/// request for our VTEP address) to the slow path, i.e. counts them as
/// `punted`. Probed through a pcap replay of that one frame.
pub fn exception_hook_wired() -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
    arp.extend_from_slice(&[
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 9, 192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1,
    ]);
    arp.resize(60, 0);
    let mut file = dataplane::pcapfile::global_header().to_vec();
    dataplane::pcapfile::write_record(&mut file, 0, &arp);
    let pcap = dir.path().join("arp.pcap");
    std::fs::write(&pcap, &file).expect("write pcap");
    let cfg = dataplane::config::Config::parse(&format!(
        "[dataplane]\nno_pin = true\n[pcap]\ninput = [{:?}]\n[gateway]\nvtep_ips = [\"192.0.2.1\"]\n",
        pcap.display().to_string()
    ))
    .expect("probe config");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (summary, _) =
        dataplane::runner::run(&cfg, &dataplane::runner::RunOptions::default(), stop)
            .expect("probe run");
    summary.punted == 1
}
