//! The event loop: connections, line framing, request dispatch, the metrics
//! endpoint, and mutations that answer once the workers use their snapshot.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctl::{Command, Data, ErrorCode, Request, Response, MAX_LINE, PROTOCOL_VERSION};
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::metrics::{self, Sampler};
use super::state::Desired;
use super::WAIT_BOUND;
use crate::engine::Shared;
use crate::log::{self, Level};
use crate::tables::Tables;

const LISTENER: Token = Token(0);
const METRICS: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 3;

/// Connections beyond this are accepted and closed at once.
const MAX_CONNS: usize = 1024;
/// Bytes read from one connection per turn before others get theirs.
const READ_BUDGET: usize = 256 << 10;
/// Reading pauses while this many answer bytes wait for the client to read.
const MAX_PENDING_OUT: usize = 4 << 20;
/// An HTTP request head larger than this is refused.
const MAX_HTTP_HEAD: usize = 16 << 10;
/// HTTP connections idle this long are closed.
const HTTP_IDLE: Duration = Duration::from_secs(10);

enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Unix(s) => s,
            Sock::Tcp(s) => s,
        }
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(b),
            Sock::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(b),
            Sock::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long a mutation spins for the workers before its answer is parked.
const FAST_WAIT: Duration = Duration::from_micros(300);
/// How much of [`FAST_WAIT`] is a busy spin (the rest yields the core).
const FAST_SPIN: Duration = Duration::from_micros(100);

/// Has every running worker loaded snapshot generation `g`?
fn all_live(shared: &Shared, g: u64) -> bool {
    (0..shared.running.len()).all(|i| {
        !shared.running[i].load(Ordering::Acquire)
            || shared.seen_generation[i].load(Ordering::Acquire) >= g
    })
}

/// A mutation's answer, held until the workers use its snapshot.
struct Pending {
    generation: u64,
    deadline: Instant,
    resp: Response,
    /// The snapshot this one replaced. Held until the workers have moved on, so
    /// the last reference (and the deallocation of its tables) is dropped here
    /// rather than on a worker's fast path.
    _retired: Arc<Tables>,
}

struct Conn {
    sock: Sock,
    http: bool,
    inbuf: Vec<u8>,
    /// `inbuf[..scanned]` holds no newline.
    scanned: usize,
    out: Vec<u8>,
    out_pos: usize,
    /// Dropping the rest of an oversized line.
    discarding: bool,
    pending: Option<Pending>,
    eof: bool,
    close_after_write: bool,
    dead: bool,
    last_active: Instant,
}

impl Conn {
    fn new(sock: Sock, http: bool) -> Conn {
        Conn {
            sock,
            http,
            inbuf: Vec::new(),
            scanned: 0,
            out: Vec::new(),
            out_pos: 0,
            discarding: false,
            pending: None,
            eof: false,
            close_after_write: false,
            dead: false,
            last_active: Instant::now(),
        }
    }

    fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn can_read(&self) -> bool {
        self.pending.is_none()
            && self.backlog() < MAX_PENDING_OUT
            && !self.eof
            && !self.close_after_write
            && !self.dead
    }

    fn send(&mut self, r: &Response) {
        self.out.extend_from_slice(r.to_line().as_bytes());
    }

    /// Writes as much of the answer backlog as the socket takes.
    fn flush(&mut self) {
        while self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > (1 << 20) {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Takes bytes read from the socket; an oversized line is answered with an
    /// error at once and the rest of it is skipped as it arrives.
    fn feed(&mut self, mut data: &[u8]) {
        if self.discarding {
            match data.iter().position(|&b| b == b'\n') {
                None => return,
                Some(i) => {
                    self.discarding = false;
                    data = &data[i + 1..];
                }
            }
        }
        self.inbuf.extend_from_slice(data);
    }

    /// The next complete line, if any (without its newline).
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let rel = self.inbuf[self.scanned..].iter().position(|&b| b == b'\n');
        match rel {
            Some(i) => {
                let end = self.scanned + i;
                let mut line: Vec<u8> = self.inbuf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                Some(line)
            }
            None => {
                self.scanned = self.inbuf.len();
                None
            }
        }
    }
}

pub struct Server {
    poll: Poll,
    waker: Arc<Waker>,
    listener: UnixListener,
    metrics: Option<TcpListener>,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    ready: VecDeque<Token>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    desired: Desired,
    config_path: PathBuf,
    config_dir: PathBuf,
    sampler: Sampler,
    buf: Vec<u8>,
    watches: super::watch::Watches,
    /// Set by SIGHUP: re-read the config file.
    reload: Arc<AtomicBool>,
    /// The background recompile of the ACL delta, if one runs.
    recompile: Option<Recompile>,
    /// When the last rule change was published through the delta.
    rule_changed_at: Option<Instant>,
    /// Snapshots replaced by recompiles, dropped here once the workers moved on.
    retired: Vec<(u64, Arc<Tables>)>,
}

/// A recompile of the ACL (base plus delta) into a new base, on its own
/// thread so that neither the control loop nor a worker waits for it.
struct Recompile {
    rx: std::sync::mpsc::Receiver<crate::tables::AclTables>,
    /// The ACL published last by the delta path; the result is published only
    /// if it is still the running one (no other change replaced the ACL).
    expected: Arc<crate::tables::AclTables>,
    /// Rule changes published since the compile started, replayed onto its
    /// result.
    log: Vec<crate::tables::RuleChange>,
}

/// A recompile starts once rule changes have stopped for this long...
const RECOMPILE_QUIET: Duration = Duration::from_millis(100);
/// ...or once the delta holds this many added and removed rules, or this
/// many changes were made since the base (added-then-removed rules keep
/// their index until a recompile).
const RECOMPILE_DELTA: usize = 64;
const RECOMPILE_CHANGES: u64 = 1024;

enum Outcome {
    Now(Response),
    Wait(Pending),
}

impl Server {
    pub fn new(
        mut listener: UnixListener,
        mut metrics: Option<TcpListener>,
        shared: Arc<Shared>,
        desired: Desired,
        config_path: PathBuf,
        stop: Arc<AtomicBool>,
        reload: Arc<AtomicBool>,
    ) -> std::io::Result<Server> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        if let Some(m) = &mut metrics {
            poll.registry().register(m, METRICS, Interest::READABLE)?;
        }
        let config_dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        Ok(Server {
            poll,
            waker,
            listener,
            metrics,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            ready: VecDeque::new(),
            stop,
            shared,
            desired,
            config_path,
            config_dir,
            sampler: Sampler::new(),
            buf: vec![0u8; 64 << 10],
            watches: super::watch::Watches::default(),
            reload,
            recompile: None,
            rule_changed_at: None,
            retired: Vec::new(),
        })
    }

    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Acquire) {
            let timeout = if !self.ready.is_empty() {
                Duration::ZERO
            } else if self.conns.values().any(|c| c.pending.is_some()) {
                Duration::from_millis(1)
            } else if self.recompile.is_some() || self.rule_changed_at.is_some() {
                Duration::from_millis(5)
            } else {
                self.sampler.next_due().min(Duration::from_secs(1))
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    eprintln!("dpgw: control: poll failed: {e}; control server stops");
                    return;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_unix(),
                    METRICS => self.accept_tcp(),
                    WAKER => {}
                    t => self.ready.push_back(t),
                }
            }
            self.sampler.tick(&self.shared);
            self.watches.tick(&self.shared);
            if self.reload.swap(false, Ordering::AcqRel) {
                self.reload_config();
            }
            self.resolve_pending();
            self.tick_recompile();
            // Serve the connections that are ready now; those that still have
            // input after their budget go to the back of the queue.
            let n = self.ready.len();
            for _ in 0..n {
                if let Some(t) = self.ready.pop_front() {
                    self.service(t);
                }
            }
            self.reap_idle_http();
        }
    }

    fn add_conn(&mut self, sock: Sock, http: bool) {
        if self.conns.len() >= MAX_CONNS {
            return; // dropped: closed at once
        }
        let t = Token(self.next_token);
        self.next_token += 1;
        let mut c = Conn::new(sock, http);
        if self
            .poll
            .registry()
            .register(c.sock.source(), t, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            return;
        }
        self.conns.insert(t, c);
        self.ready.push_back(t);
    }

    fn accept_unix(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => self.add_conn(Sock::Unix(s), false),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: stop accepting this round, keep serving.
                    eprintln!("dpgw: control: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn accept_tcp(&mut self) {
        loop {
            let Some(m) = &self.metrics else { return };
            match m.accept() {
                Ok((s, _)) => self.add_conn(Sock::Tcp(s), true),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("dpgw: control: metrics accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn close(&mut self, t: Token, mut c: Conn) {
        let _ = self.poll.registry().deregister(c.sock.source());
        drop(c);
        let _ = t;
    }

    fn reap_idle_http(&mut self) {
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.http && c.last_active.elapsed() > HTTP_IDLE)
            .map(|(t, _)| *t)
            .collect();
        for t in idle {
            if let Some(c) = self.conns.remove(&t) {
                self.close(t, c);
            }
        }
    }

    /// Answers mutations whose snapshot every running worker now uses (or
    /// whose wait ran out).
    fn resolve_pending(&mut self) {
        let now = Instant::now();
        for (t, c) in self.conns.iter_mut() {
            let Some(p) = &c.pending else { continue };
            let ok = all_live(&self.shared, p.generation);
            if ok || now >= p.deadline {
                if let Some(mut p) = c.pending.take() {
                    p.resp.live = Some(ok);
                    c.send(&p.resp);
                    self.ready.push_back(*t);
                }
            }
        }
    }

    fn service(&mut self, t: Token) {
        let Some(mut c) = self.conns.remove(&t) else {
            return;
        };
        c.flush();
        let mut budget = READ_BUDGET;
        let mut more = false;
        loop {
            self.process(&mut c);
            if !c.can_read() {
                break;
            }
            if budget == 0 {
                more = true;
                break;
            }
            match c.sock.read(&mut self.buf) {
                Ok(0) => {
                    c.eof = true;
                }
                Ok(n) => {
                    c.last_active = Instant::now();
                    budget = budget.saturating_sub(n);
                    c.feed(&self.buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.process(&mut c);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => c.dead = true,
            }
        }
        c.flush();
        let finished = c.dead
            || (c.close_after_write && c.backlog() == 0)
            || (c.eof && c.pending.is_none() && c.backlog() == 0);
        if finished {
            self.close(t, c);
            return;
        }
        if more {
            self.ready.push_back(t);
        }
        self.conns.insert(t, c);
    }

    /// Handles the complete requests in the connection's buffer (in order,
    /// stopping at a mutation that waits for the workers).
    fn process(&mut self, c: &mut Conn) {
        if c.http {
            self.process_http(c);
            return;
        }
        while c.pending.is_none() && !c.dead {
            let line = match c.next_line() {
                Some(l) => l,
                None => {
                    if c.inbuf.len() > MAX_LINE {
                        c.send(&Response::error(
                            ErrorCode::BadRequest,
                            format!(
                                "request line exceeds {MAX_LINE} bytes; the rest of the line is discarded"
                            ),
                        ));
                        c.inbuf.clear();
                        c.scanned = 0;
                        c.discarding = true;
                    } else if c.eof && !c.inbuf.is_empty() && !c.discarding {
                        // A last request without a newline before the client's shutdown.
                        let l = std::mem::take(&mut c.inbuf);
                        c.scanned = 0;
                        self.answer(c, &l);
                        continue;
                    }
                    return;
                }
            };
            if line.len() > MAX_LINE {
                c.send(&Response::error(
                    ErrorCode::BadRequest,
                    format!(
                        "request line of {} bytes exceeds {MAX_LINE} bytes; discarded",
                        line.len()
                    ),
                ));
                continue;
            }
            self.answer(c, &line);
        }
    }

    fn answer(&mut self, c: &mut Conn, line: &[u8]) {
        let l = line.strip_suffix(b"\r").unwrap_or(line);
        if l.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match self.handle(l) {
            Outcome::Now(r) => c.send(&r),
            Outcome::Wait(p) => c.pending = Some(p),
        }
    }

    fn process_http(&mut self, c: &mut Conn) {
        if c.close_after_write {
            return;
        }
        let head_end = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n");
        let Some(_) = head_end else {
            if c.inbuf.len() > MAX_HTTP_HEAD {
                c.out.extend_from_slice(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                c.close_after_write = true;
            } else if c.eof {
                c.close_after_write = true;
            }
            return;
        };
        let first = c.inbuf.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let first = String::from_utf8_lossy(first);
        let mut parts = first.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, ctype, body) = if method != "GET" && method != "HEAD" {
            (
                "405 Method Not Allowed",
                "text/plain",
                "only GET is supported\n".to_string(),
            )
        } else if target == "/metrics" || target.starts_with("/metrics?") {
            let tel = metrics::telemetry(&self.shared);
            let report = metrics::collect(&self.shared, &self.desired, &self.sampler, &tel);
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::prometheus(&self.shared, &report, &tel, self.sampler.tsc_hz()),
            )
        } else {
            ("404 Not Found", "text/plain", "try /metrics\n".to_string())
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        c.out.extend_from_slice(head.as_bytes());
        if method != "HEAD" {
            c.out.extend_from_slice(body.as_bytes());
        }
        c.inbuf.clear();
        c.close_after_write = true;
    }

    /// One request line → its answer (or a wait for the workers).
    fn handle(&mut self, line: &[u8]) -> Outcome {
        let cmd = match decode_request(line) {
            Ok(c) => c,
            Err(e) => return Outcome::Now(Response::error(ErrorCode::BadRequest, e)),
        };
        if cmd.is_mutation() {
            if let Command::TenantDel { vni } = &cmd {
                // Its learned entries go with it (a tenant added again
                // learns afresh).
                if let Some(f) = &self.shared.tables.load().fdb {
                    f.fdb.flush(Some(*vni));
                }
            }
            return self.mutate(&cmd);
        }
        match &cmd {
            Command::Apply {
                content,
                base_dir,
                dry_run,
            } => return self.apply_file(content, base_dir.as_deref(), *dry_run),
            Command::GatewayDrain | Command::GatewayUndrain | Command::GatewayStatus => {
                return Outcome::Now(self.gateway(&cmd));
            }
            _ => {}
        }
        let generation = self.shared.tables.load().generation;
        let result: Result<Option<Data>, (ErrorCode, String)> = match &cmd {
            Command::Ping => Ok(Some(Data::Pong {
                version: env!("CARGO_PKG_VERSION").to_string(),
                workers: self.shared.published.len(),
            })),
            Command::Stats => {
                let tel = metrics::telemetry(&self.shared);
                let r = metrics::collect(&self.shared, &self.desired, &self.sampler, &tel);
                Ok(Some(Data::Stats(Box::new(r))))
            }
            Command::Flows { service, limit } => {
                let tel = metrics::telemetry(&self.shared);
                let r = metrics::collect(&self.shared, &self.desired, &self.sampler, &tel);
                metrics::flows(&r, service.as_deref(), *limit)
                    .map(|f| Some(Data::Flows(f)))
                    .map_err(|e| (ErrorCode::NotFound, e))
            }
            Command::ConfigSave { path } => self.save(path.as_deref()).map(Some),
            Command::WatchStart {
                filter,
                count,
                capture,
            } => self
                .watches
                .start(&self.shared, filter, *count, *capture)
                .map(Some),
            Command::WatchRead { id } => self.watches.read(&self.shared, *id, false).map(Some),
            Command::WatchStop { id } => self.watches.read(&self.shared, *id, true).map(Some),
            Command::FlowsList {
                service,
                backend,
                vni,
                limit,
            } => super::watch::flows_list(&self.shared, service.clone(), *backend, *vni, *limit)
                .map(Some),
            Command::Explain { packet } => super::watch::explain(&self.shared, packet).map(Some),
            Command::VtepList { vni } => Ok(Some(vtep_list(&self.shared.tables.load(), *vni))),
            Command::VtepFlush { vni } => {
                let n = self
                    .shared
                    .tables
                    .load()
                    .fdb
                    .as_ref()
                    .map_or(0, |f| f.fdb.flush(*vni));
                Ok(Some(Data::Vteps {
                    vteps: Vec::new(),
                    flushed: Some(n as u64),
                }))
            }
            Command::ConnList { vni, limit } => {
                super::watch::conn_list(&self.shared, *vni, *limit).map(Some)
            }
            Command::ConnFlush { vni } => super::watch::conn_flush(&self.shared, *vni).map(Some),
            other => match self.desired.list(other) {
                Some(Ok(Data::Backends { mut backends })) => {
                    // The checker's view beside the admin state.
                    let board = self.shared.health.lock().unwrap_or_else(|p| p.into_inner());
                    let report = board.report();
                    for row in &mut backends {
                        row.health = report
                            .backends
                            .iter()
                            .find(|h| h.service == row.service && h.ip == row.backend.ip)
                            .cloned();
                    }
                    Ok(Some(Data::Backends { backends }))
                }
                Some(r) => r.map(Some).map_err(|e| (e.code(), e.to_string())),
                None => Err((
                    ErrorCode::BadRequest,
                    format!("command {other:?} is not handled"),
                )),
            },
        };
        Outcome::Now(match result {
            Ok(data) => {
                let mut r = Response::ok(data);
                r.generation = Some(generation);
                r
            }
            Err((code, e)) => Response::error(code, e),
        })
    }

    /// Validates, builds and publishes; the answer waits for the workers.
    /// `rule add` and `rule del` go into the ACL's delta (no compile, no
    /// copy of the whole state) when there is a compiled ACL to change.
    fn mutate(&mut self, cmd: &Command) -> Outcome {
        if let Some(r) = self.desired.rule_change(cmd) {
            match r {
                Err(e) => return Outcome::Now(Response::error(e.code(), e.to_string())),
                Ok((change, data)) => {
                    if let Some(o) = self.publish_rule_change(change, data.clone(), cmd) {
                        return o;
                    }
                }
            }
        }
        let change = match self.desired.apply(cmd) {
            Ok(c) => c,
            Err(e) => return Outcome::Now(Response::error(e.code(), e.to_string())),
        };
        self.publish(change.next, change.data, |g| log_change(cmd, g))
    }

    /// Publishes a rule change through the ACL's delta; `None` if the running
    /// tables cannot take it that way (no ACL yet), so the caller rebuilds.
    fn publish_rule_change(
        &mut self,
        change: crate::tables::RuleChange,
        data: Option<Data>,
        cmd: &Command,
    ) -> Option<Outcome> {
        let mut generation = 0;
        let mut acl = None;
        let retired = self
            .shared
            .publish_with(|prev, g| {
                generation = g;
                let t = prev.with_rule_change(&change, g).ok_or(())?;
                acl = t.acl.clone();
                Ok::<_, ()>(t)
            })
            .ok()?;
        self.desired.commit_rule_change(&change);
        self.rule_changed_at = Some(Instant::now());
        if let (Some(rc), Some(acl)) = (&mut self.recompile, acl) {
            rc.expected = acl;
            rc.log.push(change);
        }
        log_change(cmd, generation);
        let mut resp = Response::ok(data);
        resp.generation = Some(generation);
        Some(self.answer_when_live(resp, generation, retired))
    }

    /// Starts a background recompile of the ACL delta when rule changes went
    /// quiet or the delta grew; publishes its result when it is ready.
    fn tick_recompile(&mut self) {
        self.retired.retain(|(g, _)| !all_live(&self.shared, *g));
        if let Some(rc) = &self.recompile {
            let new = match rc.rx.try_recv() {
                Ok(new) => new,
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.recompile = None;
                    return;
                }
            };
            let Some(rc) = self.recompile.take() else {
                return;
            };
            let mut new = new;
            for c in &rc.log {
                match new.with_change(c) {
                    Some(n) => new = n,
                    None => return,
                }
            }
            let new = Arc::new(new);
            let mut generation = 0;
            let published = self.shared.publish_with(|prev, g| {
                generation = g;
                match &prev.acl {
                    Some(a) if Arc::ptr_eq(a, &rc.expected) => Ok(prev.with_acl(new.clone(), g)),
                    _ => Err(()),
                }
            });
            if let Ok(old) = published {
                log::event(
                    Level::Info,
                    "acl_recompiled",
                    &[
                        ("generation", &generation),
                        ("rules", &new.classifier.rule_count()),
                        ("build_ms", &format!("{:.1}", new.build_ms)),
                        ("replayed", &rc.log.len()),
                    ],
                );
                self.retired.push((generation, old));
            }
            return;
        }
        let Some(at) = self.rule_changed_at else {
            return;
        };
        let cur = self.shared.tables.load_full();
        let Some(a) = cur.acl.clone() else {
            self.rule_changed_at = None;
            return;
        };
        let (delta, changes) = (a.classifier.delta_len(), a.classifier.version());
        if changes == 0 {
            self.rule_changed_at = None;
            return;
        }
        if at.elapsed() < RECOMPILE_QUIET && delta < RECOMPILE_DELTA && changes < RECOMPILE_CHANGES
        {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let from = a.clone();
        let spawned = std::thread::Builder::new()
            .name("dpgw-acl-build".into())
            .spawn(move || {
                crate::cpu::lower_thread_priority();
                let _ = tx.send(from.recompiled());
            });
        if spawned.is_ok() {
            self.recompile = Some(Recompile {
                rx,
                expected: a,
                log: Vec::new(),
            });
            // Changes from now on are replayed onto the result; a quiet
            // period after them starts the next recompile.
            self.rule_changed_at = Some(Instant::now());
        }
    }

    /// Builds `next`'s tables, publishes them and answers `data` once the
    /// workers use them (or after [`WAIT_BOUND`] with `live: false`).
    fn publish(&mut self, next: Desired, data: Option<Data>, logged: impl FnOnce(u64)) -> Outcome {
        let mut generation = 0;
        let retired = match self.shared.publish_with(|prev, g| {
            generation = g;
            Tables::rebuild(next.config(), next.services(), prev, g)
        }) {
            Ok(r) => r,
            Err(e) => return Outcome::Now(Response::error(e.code(), e.to_string())),
        };
        self.desired = next;
        logged(generation);
        let mut resp = Response::ok(data);
        resp.generation = Some(generation);
        self.answer_when_live(resp, generation, retired)
    }

    /// `resp` now if the workers use snapshot `generation` within
    /// [`FAST_WAIT`], else once they do (or after [`WAIT_BOUND`] with `live:
    /// false`). `retired` is dropped here, not on a worker.
    fn answer_when_live(
        &mut self,
        mut resp: Response,
        generation: u64,
        retired: Arc<Tables>,
    ) -> Outcome {
        // A busy worker picks the snapshot up at its next burst (microseconds):
        // wait that long here rather than a poll round (a millisecond). Spin
        // first: yielding on a core shared with another busy process gives
        // it a whole time slice (4 ms measured) before we look again.
        let t0 = Instant::now();
        while t0.elapsed() < FAST_WAIT {
            if all_live(&self.shared, generation) {
                resp.live = Some(true);
                drop(retired);
                return Outcome::Now(resp);
            }
            if t0.elapsed() < FAST_SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Outcome::Wait(Pending {
            generation,
            deadline: Instant::now() + WAIT_BOUND,
            resp,
            _retired: retired,
        })
    }

    /// `apply`: the desired file's services and ACL become the running ones
    /// in one snapshot (nothing when they already are, or on `dry_run`).
    fn apply_file(&mut self, content: &str, base_dir: Option<&str>, dry_run: bool) -> Outcome {
        let base = base_dir.map_or(self.config_dir.clone(), PathBuf::from);
        let a = match super::reload::prepare_apply(&self.desired, content, &base) {
            Ok(a) => a,
            Err(e) => return Outcome::Now(Response::error(ErrorCode::Invalid, e)),
        };
        let cur = self.shared.tables.load_full();
        let digest_before = cur.digest().to_string();
        let mut report = ctl::ApplyReport {
            dry_run,
            changes: a.changes,
            ignored: a.ignored,
            digest_before: digest_before.clone(),
            digest_after: digest_before,
        };
        if report.changes.is_empty() {
            let mut r = Response::ok(Some(Data::Applied(report)));
            r.generation = Some(cur.generation);
            r.live = Some(true);
            return Outcome::Now(r);
        }
        // The tables this would publish, for their digest (dry run) or to publish.
        let built =
            match Tables::rebuild(a.next.config(), a.next.services(), &cur, cur.generation + 1) {
                Ok(t) => t,
                Err(e) => return Outcome::Now(Response::error(e.code(), e.to_string())),
            };
        report.digest_after = built.digest().to_string();
        drop(built);
        if dry_run {
            let mut r = Response::ok(Some(Data::Applied(report)));
            r.generation = Some(cur.generation);
            return Outcome::Now(r);
        }
        let n = report.changes.len();
        let digest = report.digest_after.clone();
        self.publish(a.next, Some(Data::Applied(report)), |g| {
            log::event(
                Level::Info,
                "config_change",
                &[
                    ("generation", &g),
                    ("cmd", &"apply"),
                    ("changes", &n),
                    ("digest", &digest),
                ],
            )
        })
    }

    /// `gateway drain|undrain|status`.
    fn gateway(&mut self, cmd: &Command) -> Response {
        let Some(a) = self.shared.announce.get() else {
            return match cmd {
                Command::GatewayStatus => Response::ok(Some(Data::Gateway(ctl::GatewayReport {
                    configured: false,
                    reason: "no [announce] section: this gateway announces nothing".into(),
                    ..Default::default()
                }))),
                _ => Response::error(
                    ErrorCode::Invalid,
                    "no [announce] section: there is no announcement to drain or restore",
                ),
            };
        };
        let report = match cmd {
            Command::GatewayDrain => a.set_drained(true),
            Command::GatewayUndrain => a.set_drained(false),
            _ => a.status(),
        };
        if !matches!(cmd, Command::GatewayStatus) {
            log::event(
                Level::Info,
                "gateway_drain",
                &[
                    ("drained", &report.drained),
                    ("announced", &report.announced),
                    ("reason", &report.reason),
                ],
            );
        }
        Response::ok(Some(Data::Gateway(report)))
    }

    /// SIGHUP: the config file's services, ACL and gateway become the
    /// running state in one snapshot, or nothing changes (see `reload`).
    fn reload_config(&mut self) {
        crate::sdnotify::notify("RELOADING=1");
        match super::reload::prepare(&self.desired, &self.config_path) {
            Err(e) => log::event(
                Level::Error,
                "reload_failed",
                &[
                    ("file", &self.config_path.display()),
                    ("error", &e),
                    ("result", &"failed, running state kept"),
                ],
            ),
            Ok(r) => {
                let mut generation = 0;
                let mut digest = String::new();
                let next = &r.next;
                let published = self.shared.publish_with(|prev, g| {
                    generation = g;
                    let t = Tables::rebuild(next.config(), next.services(), prev, g)?;
                    digest = t.digest().to_string();
                    Ok::<Tables, crate::tables::BuildError>(t)
                });
                match published {
                    Err(e) => log::event(
                        Level::Error,
                        "reload_failed",
                        &[
                            ("file", &self.config_path.display()),
                            ("error", &e),
                            ("result", &"failed, running state kept"),
                        ],
                    ),
                    Ok(_retired) => {
                        self.desired = r.next;
                        log::event(
                            Level::Info,
                            "config_change",
                            &[
                                ("generation", &generation),
                                ("cmd", &"reload"),
                                ("file", &self.config_path.display()),
                                ("summary", &r.summary),
                                ("digest", &digest),
                            ],
                        );
                        for s in r.ignored {
                            log::event(
                                Level::Warn,
                                "reload_needs_restart",
                                &[("section", &s), ("result", &"differs from the running one; takes effect at the next restart")],
                            );
                        }
                    }
                }
            }
        }
        crate::sdnotify::notify("READY=1");
    }

    /// `config save`: only into the directory of the daemon's config file.
    fn save(&self, path: Option<&str>) -> Result<Data, (ErrorCode, String)> {
        let target = match path {
            None => self.config_path.clone(),
            Some(p) => {
                let p = Path::new(p);
                if p.is_relative() {
                    self.config_dir.join(p)
                } else {
                    p.to_path_buf()
                }
            }
        };
        let name = match target.components().next_back() {
            Some(Component::Normal(n)) => n.to_os_string(),
            _ => {
                return Err((
                    ErrorCode::Invalid,
                    format!("{}: not a file path", target.display()),
                ))
            }
        };
        let parent = target.parent().unwrap_or(Path::new("/"));
        let cparent = parent
            .canonicalize()
            .map_err(|e| (ErrorCode::Invalid, format!("{}: {e}", parent.display())))?;
        if cparent != self.config_dir {
            return Err((ErrorCode::Refused, format!(
                "refusing to write {}: config save writes only into {} (the directory of the config file dpgw was started with)",
                target.display(),
                self.config_dir.display()
            )));
        }
        let target = cparent.join(name);
        if let Ok(md) = std::fs::symlink_metadata(&target) {
            if !md.file_type().is_file() {
                return Err((
                    ErrorCode::Refused,
                    format!(
                        "refusing to write {}: it exists and is not a regular file",
                        target.display()
                    ),
                ));
            }
        }
        let text = format!(
            "# Written by dpgw's `config save` (the running state).\n{}",
            self.desired.config().to_toml()
        );
        crate::runner::write_atomic(&target, text.as_bytes()).map_err(|e| {
            (
                ErrorCode::Internal,
                format!("writing {}: {e}", target.display()),
            )
        })?;
        Ok(Data::Saved {
            path: target.to_string_lossy().into_owned(),
            bytes: text.len(),
        })
    }
}

/// Decodes one request line (without its newline) of protocol v1 into its
/// command, or the error message the client gets: not JSON, not an object,
/// a missing or other protocol version, an unknown command or field, a value
/// of the wrong type. Pure: no I/O, no state.
pub fn decode_request(line: &[u8]) -> Result<Command, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err("invalid request: expected a JSON object".into());
    };
    match obj.get("v").map(|v| v.as_u64()) {
        None => return Err("invalid request: missing protocol version field \"v\"".into()),
        Some(Some(v)) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "unsupported protocol version {}; this daemon speaks {PROTOCOL_VERSION}",
                v.map_or_else(|| obj["v"].to_string(), |v| v.to_string())
            ))
        }
    }
    let req: Request =
        serde_json::from_value(value).map_err(|e| format!("invalid request: {e}"))?;
    Ok(req.cmd)
}

/// The `config_change` event of a control mutation: its command and
/// arguments (a rule file's text is summarised by its size).
fn log_change(cmd: &Command, generation: u64) {
    if !log::enabled(Level::Info) {
        return;
    }
    let mut v = serde_json::to_value(cmd).unwrap_or_default();
    let name = v
        .get("cmd")
        .and_then(|c| c.as_str())
        .unwrap_or("?")
        .to_string();
    if let Some(m) = v.as_object_mut() {
        m.remove("cmd");
        if let Some(c) = m.get("content").and_then(|c| c.as_str()).map(str::len) {
            m.insert("content".into(), format!("{c} bytes").into());
        }
    }
    log::event(
        Level::Info,
        "config_change",
        &[("generation", &generation), ("cmd", &name), ("args", &v)],
    );
}

/// Answer to `vtep_list`: the snapshot's static entries, then the learned
/// ones, each sorted by VNI and address.
fn vtep_list(t: &crate::tables::Tables, vni: Option<u32>) -> Data {
    fn ip(a: u128, v6: bool) -> std::net::IpAddr {
        if v6 {
            std::net::IpAddr::V6(a.into())
        } else {
            std::net::IpAddr::V4((a as u32).into())
        }
    }
    let mac = |m: [u8; 6]| (m != [0xff; 6]).then_some(ctl::MacAddr(m));
    let mut vteps = Vec::new();
    if let Some(o) = &t.overlay {
        for ((v, a, v6), e) in &o.statics {
            if vni.is_none_or(|x| x == *v) {
                vteps.push(ctl::VtepRow {
                    vni: *v,
                    addr: ip(*a, *v6),
                    vtep: ip(e.vtep, e.vtep_v6),
                    mac: mac(e.mac),
                    source: "static".into(),
                    age_s: None,
                    moves: 0,
                });
            }
        }
    }
    if let Some(f) = &t.fdb {
        let mut learned = f.fdb.entries(f.now_s());
        learned.retain(|e| vni.is_none_or(|x| x == e.vni));
        learned.sort_by_key(|e| (e.vni, e.v6, e.addr));
        for e in learned {
            vteps.push(ctl::VtepRow {
                vni: e.vni,
                addr: ip(e.addr, e.v6),
                vtep: ip(e.at.vtep, e.at.vtep_v6),
                mac: Some(ctl::MacAddr(e.at.mac)),
                source: "learned".into(),
                age_s: Some(e.age_s),
                moves: e.moves,
            });
        }
    }
    Data::Vteps {
        vteps,
        flushed: None,
    }
}
