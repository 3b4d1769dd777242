//! The control server of `dpgw run`: one thread running a `mio` event loop over
//! the control socket (newline-delimited JSON, the [`ctl`] protocol) and, if
//! configured, a minimal HTTP endpoint serving Prometheus metrics.
//!
//! * It starts only if the config has a `[control]` section ([`start`] returns
//!   `None` otherwise): a daemon is not steerable unless the operator says where.
//! * The socket is created with the configured mode (default `0600`) and group
//!   before it becomes visible (bound under a temporary name, then renamed). A
//!   stale socket left by a crashed run is replaced; a live one is refused.
//! * Every mutation is validated against the whole desired state
//!   ([`state::Desired`]), compiled with [`Tables::build`] on this thread and
//!   published as one snapshot. Its answer is sent once every running worker has
//!   loaded that snapshot, or after [`WAIT_BOUND`] with `live: false`; other
//!   clients are served meanwhile.
//! * Sockets are non-blocking with per-connection buffers: a slow, silent or
//!   flooding client costs only its own buffers (reads pause while its answers
//!   are not being read) and never stalls the loop or the workers.
//! * `config save` writes only inside the directory of the config file the
//!   daemon was started with (default: that file), atomically.

pub mod metrics;
mod reload;
mod server;
pub use server::decode_request;
pub mod state;
pub mod watch;

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, ControlSection};
use crate::engine::Shared;
use crate::tables::Tables;

/// How long a mutation waits for the workers to load its snapshot.
pub const WAIT_BOUND: Duration = Duration::from_secs(1);

/// Why the control server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control.socket {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("control.socket {}: {reason}", path.display())]
    Socket { path: PathBuf, reason: String },
    #[error("control.socket_mode: {0:?} is not an octal file mode like \"0600\"")]
    Mode(String),
    #[error("control.socket_group: {0}")]
    Group(String),
    #[error("control.metrics: {0}")]
    Metrics(String),
    #[error("{0}")]
    State(String),
    #[error("control: {0}")]
    Other(String),
}

/// A running control server; [`ControlHandle::stop`] (or drop) ends it and
/// removes the socket file.
#[derive(Debug)]
pub struct ControlHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<()>>,
    socket: PathBuf,
    metrics: Option<SocketAddr>,
}

impl ControlHandle {
    /// The control socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The metrics endpoint's bound address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Stops the server thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the control server if `cfg` has a `[control]` section. `config_path`
/// is the file the daemon was started with (the default target of `config save`
/// and the directory saves are confined to).
pub fn start(
    cfg: &Config,
    config_path: &Path,
    shared: Arc<Shared>,
) -> Result<Option<ControlHandle>, ControlError> {
    let Some(c) = &cfg.control else {
        return Ok(None);
    };
    let desired = state::Desired::new(cfg).map_err(|e| ControlError::State(e.to_string()))?;
    // Rules that had no id got one: publish tables that count them by it.
    if desired.config().acl != cfg.acl {
        shared
            .publish_with(|prev, gen| {
                Tables::rebuild(desired.config(), desired.services(), prev, gen)
            })
            .map_err(|e| ControlError::State(e.to_string()))?;
    }
    let config_path = config_path
        .canonicalize()
        .map_err(|source| ControlError::Io {
            path: config_path.to_path_buf(),
            what: "resolving the config file path",
            source,
        })?;
    // The socket first: a second daemon on the same config should hear that
    // one is already running, not that the metrics port is taken.
    let listener = bind_socket(c)?;
    let ino = std::fs::symlink_metadata(&c.socket).map(|m| m.ino()).ok();
    let metrics = match c.metrics.as_deref().map(bind_metrics).transpose() {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&c.socket);
            return Err(e);
        }
    };
    let metrics_addr = metrics.as_ref().and_then(|m| m.local_addr().ok());
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| ControlError::Other(format!("SIGHUP handler: {e}")))?;
    let mut srv = server::Server::new(
        listener,
        metrics,
        shared,
        desired,
        config_path,
        stop.clone(),
        reload,
    )
    .map_err(|e| ControlError::Other(format!("event loop: {e}")))?;
    let waker = srv.waker();
    let socket = c.socket.clone();
    let sock2 = socket.clone();
    let thread = std::thread::Builder::new()
        .name("dpgw-control".into())
        .spawn(move || {
            srv.run();
            // Only remove the socket if it is still ours (not replaced by another run).
            if ino.is_some() && std::fs::symlink_metadata(&sock2).map(|m| m.ino()).ok() == ino {
                let _ = std::fs::remove_file(&sock2);
            }
        })
        .map_err(|e| ControlError::Other(format!("spawning the control thread: {e}")))?;
    Ok(Some(ControlHandle {
        stop,
        waker,
        thread: Some(thread),
        socket,
        metrics: metrics_addr,
    }))
}

fn parse_mode(s: &str) -> Result<u32, ControlError> {
    let t = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(t, 8) {
        Ok(m) if m <= 0o777 && !t.is_empty() => Ok(m),
        _ => Err(ControlError::Mode(s.to_string())),
    }
}

/// A group name (looked up in /etc/group) or a numeric gid.
fn resolve_group(g: &str) -> Result<u32, ControlError> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string("/etc/group").map_err(|e| {
        ControlError::Group(format!("cannot read /etc/group to look up {g:?}: {e}"))
    })?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            (name == g).then_some(gid)
        })
        .next()
        .ok_or_else(|| ControlError::Group(format!("no group named {g:?}")))
}

fn bind_metrics(a: &str) -> Result<mio::net::TcpListener, ControlError> {
    let addr: SocketAddr = a.parse().map_err(|_| {
        ControlError::Metrics(format!("{a:?} is not an address like \"127.0.0.1:9100\""))
    })?;
    if !addr.ip().is_loopback() {
        return Err(ControlError::Metrics(format!(
            "{a}: only loopback addresses are allowed (the endpoint has no authentication; \
             put a proxy in front to export it)"
        )));
    }
    mio::net::TcpListener::bind(addr)
        .map_err(|e| ControlError::Metrics(format!("binding {addr}: {e}")))
}

fn bind_socket(c: &ControlSection) -> Result<mio::net::UnixListener, ControlError> {
    let path = &c.socket;
    let io = |what: &'static str| {
        move |source: std::io::Error| ControlError::Io {
            path: path.clone(),
            what,
            source,
        }
    };
    let mode = parse_mode(&c.socket_mode)?;
    let gid = c.socket_group.as_deref().map(resolve_group).transpose()?;
    let name = path
        .file_name()
        .ok_or_else(|| ControlError::Socket {
            path: path.clone(),
            reason: "not a file path".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io("creating its directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) => {
            if !md.file_type().is_socket() {
                return Err(ControlError::Socket {
                    path: path.clone(),
                    reason: "exists and is not a socket; refusing to replace it".into(),
                });
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::Socket {
                    path: path.clone(),
                    reason: "another process is serving this socket (is dpgw already running?)"
                        .into(),
                });
            }
            // Nobody listens: a stale socket from a run that did not clean up.
            std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting")(e)),
    }
    // Bind under a private name, set mode and group, then rename into place so
    // the socket is never reachable with the wrong permissions.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = mio::net::UnixListener::bind(&tmp).map_err(io("binding"))?;
    let fix = || -> Result<(), ControlError> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(io("setting its mode"))?;
        if let Some(g) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(g)).map_err(io("setting its group"))?;
        }
        std::fs::rename(&tmp, path).map_err(io("moving it into place"))
    };
    if let Err(e) = fix() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mode_and_group() {
        assert_eq!(parse_mode("0600").unwrap(), 0o600);
        assert_eq!(parse_mode("660").unwrap(), 0o660);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("01777").is_err());
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(resolve_group("no-such-group-dpgw").is_err());
    }

    #[test]
    fn test_metrics_must_be_loopback() {
        assert!(bind_metrics("0.0.0.0:0")
            .unwrap_err()
            .to_string()
            .contains("loopback"));
        assert!(bind_metrics("nope").is_err());
        assert!(bind_metrics("127.0.0.1:0").is_ok());
    }

    #[test]
    fn test_stale_socket_replaced_live_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.sock");
        let c = ControlSection {
            socket: path.clone(),
            ..ControlSection::default()
        };
        let l = bind_socket(&c).unwrap();
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        // Live: refused.
        let e = bind_socket(&c).unwrap_err().to_string();
        assert!(e.contains("already running"), "{e}");
        drop(l);
        // Stale (file left, nobody listening): replaced.
        assert!(path.exists());
        let _l = bind_socket(&c).unwrap();
        // Not a socket: refused, file left alone.
        let f = dir.path().join("plain");
        std::fs::write(&f, b"x").unwrap();
        let c2 = ControlSection {
            socket: f.clone(),
            ..ControlSection::default()
        };
        assert!(bind_socket(&c2)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
    }
}

#[cfg(test)]
mod contrib_tests {
    use crate::config::Config;

    /// The sample production config parses, validates, builds tables and
    /// survives a dump/parse round trip through the control plane's state.
    #[test]
    fn test_production_config() {
        let text = include_str!("../../../contrib/dpgw.production.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.validate(), Vec::<String>::new());
        assert!(cfg.control.is_some());
        let d = super::state::Desired::new(&cfg).unwrap();
        crate::tables::Tables::build(d.config(), 1).unwrap();
        let back = Config::parse(&d.config().to_toml()).unwrap();
        assert_eq!(&back, d.config());
    }
}
