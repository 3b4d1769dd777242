//! systemd's readiness and watchdog protocol (`sd_notify(3)`), without
//! libsystemd: datagrams to `$NOTIFY_SOCKET`. `READY=1` once every worker
//! runs its loop; `WATCHDOG=1` every half `$WATCHDOG_USEC` while every
//! worker still runs (a worker that died stops the pings, and systemd
//! restarts the unit); `RELOADING=1` / `READY=1` around a SIGHUP reload;
//! `STOPPING=1` at shutdown. Without `$NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Shared;

/// Sends `msg` to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
/// namespace). Returns false when there is no socket or the send failed.
pub fn notify(msg: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        match std::os::unix::net::SocketAddr::from_abstract_name(name) {
            Ok(a) => sock.send_to_addr(msg.as_bytes(), &a),
            Err(e) => Err(e),
        }
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    r.is_ok()
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`, only if
/// `$WATCHDOG_PID` is unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let us: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (us > 0).then(|| Duration::from_micros(us))
}

/// Starts the thread that reports readiness and pets the watchdog; it ends
/// when `shared.stop` is set. Does nothing without `$NOTIFY_SOCKET`.
pub fn spawn(shared: Arc<Shared>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("dpgw-notify".into())
        .spawn(move || {
            let t0 = Instant::now();
            // Ready once every worker has loaded its first snapshot.
            while !shared.stop.load(Ordering::Relaxed) {
                let up = shared
                    .seen_generation
                    .iter()
                    .all(|g| g.load(Ordering::Acquire) != 0);
                if up || t0.elapsed() > Duration::from_secs(60) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            notify(&format!(
                "READY=1\nSTATUS=forwarding with {} worker(s)\nMAINPID={}",
                shared.published.len(),
                std::process::id()
            ));
            let every = watchdog_interval().map(|d| d / 2);
            while !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(
                    every
                        .unwrap_or(Duration::from_millis(200))
                        .min(Duration::from_secs(1)),
                );
                if let Some(_every) = every {
                    let alive = shared.running.iter().all(|r| r.load(Ordering::Acquire));
                    if alive {
                        notify("WATCHDOG=1");
                    }
                }
            }
            notify("STOPPING=1");
        });
}
