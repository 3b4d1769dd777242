//! The packet filter of `dpgwctl trace` and `dpgwctl capture`: a small
//! tcpdump-style language, parsed once on the control side and evaluated by
//! the workers (only while a trace or capture is armed).
//!
//! ```text
//! expr    := term ( ("or" | "||") term )*
//! term    := factor ( ("and" | "&&") factor )*
//! factor  := ("not" | "!") factor | "(" expr ")" | prim
//! prim    := "vni" N
//!          | [ "src" | "dst" ] "host" IP
//!          | [ "src" | "dst" ] "net" CIDR
//!          | [ "src" | "dst" ] "port" N[-M]
//!          | "tcp" | "udp" | "icmp" | "icmp6" | "ip" | "ip6"
//!          | "drop" | "reason" NAME | "service" NAME | "backend" IP | "worker" N
//! ```
//!
//! Addresses, ports and protocols are those of the tenant's packet: the inner
//! packet of a decapsulated frame, or the frame's own IP packet when it was not
//! decapsulated (not VXLAN, a frame for the gateway). `host`/`net`/`port`
//! without `src`/`dst` match either side. `drop` matches packets the pipeline
//! dropped, `reason NAME` those dropped for that reason (the names of
//! `dpgwctl stats`), `service`/`backend` packets the load balancer sent to that
//! service/backend, `worker N` packets of worker N. An empty filter matches
//! everything. Errors name the offending token and its column.

use std::net::IpAddr;

use crate::stats::DropReason;

/// What a filter looks at: one packet's outcome through the pipeline.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts<'a> {
    /// VNI of a decapsulated frame.
    pub vni: Option<u32>,
    /// The tenant packet's addresses (IPv4 as `u32` in a `u128`, as in
    /// `vxlan::FlowKey`), ports and protocol.
    pub key: Option<vxlan::FlowKey>,
    /// Final drop reason, if dropped.
    pub drop: Option<DropReason>,
    /// Service and backend the load balancer chose.
    pub service: Option<&'a str>,
    pub backend: Option<IpAddr>,
    pub worker: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    Either,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Prim {
    Vni(u32),
    /// Address (as in `FlowKey`), prefix length in bits, IPv6.
    Net(Dir, u128, u8, bool),
    Port(Dir, u16, u16),
    Proto(u8),
    Ip,
    Ip6,
    Drop,
    Reason(DropReason),
    Service(String),
    Backend(IpAddr),
    Worker(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    All,
    Prim(Prim),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

/// A parsed filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    root: Node,
    text: String,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            root: Node::All,
            text: String::new(),
        }
    }
}

/// A filter that does not parse: what is wrong, at which token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("filter: {message} at column {column} ({token})")]
pub struct FilterError {
    pub message: String,
    /// 1-based column of the token in the filter text.
    pub column: usize,
    /// The token, quoted, or `end of filter`.
    pub token: String,
}

struct Parser<'a> {
    toks: Vec<(usize, &'a str)>,
    at: usize,
    len: usize,
}

fn tokens(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'(' || c == b')' || c == b'!' {
            out.push((i, &s[i..i + 1]));
            i += 1;
        } else if (c == b'&' || c == b'|') && b.get(i + 1) == Some(&c) {
            out.push((i, &s[i..i + 2]));
            i += 2;
        } else {
            let st = i;
            while i < b.len()
                && !b[i].is_ascii_whitespace()
                && !matches!(b[i], b'(' | b')' | b'!')
                && !((b[i] == b'&' || b[i] == b'|') && b.get(i + 1) == Some(&b[i]))
            {
                i += 1;
            }
            out.push((st, &s[st..i]));
        }
    }
    out
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.toks.get(self.at).map(|t| t.1)
    }

    fn err(&self, message: impl Into<String>) -> FilterError {
        let (column, token) = match self.toks.get(self.at) {
            Some((c, t)) => (c + 1, format!("'{t}'")),
            None => (self.len + 1, "end of filter".to_string()),
        };
        FilterError {
            message: message.into(),
            column,
            token,
        }
    }

    fn next(&mut self, what: &str) -> Result<&'a str, FilterError> {
        match self.peek() {
            Some(t) => {
                self.at += 1;
                Ok(t)
            }
            None => Err(self.err(format!("expected {what}"))),
        }
    }

    /// Parses the argument token with `f`; on failure points at that token.
    fn arg<T>(&mut self, what: &str, f: impl Fn(&str) -> Option<T>) -> Result<T, FilterError> {
        let t = self.next(what)?;
        match f(t) {
            Some(v) => Ok(v),
            None => {
                self.at -= 1;
                Err(self.err(format!("expected {what}")))
            }
        }
    }

    fn expr(&mut self) -> Result<Node, FilterError> {
        let mut l = self.term()?;
        while matches!(self.peek(), Some("or" | "||")) {
            self.at += 1;
            let r = self.term()?;
            l = Node::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn term(&mut self) -> Result<Node, FilterError> {
        let mut l = self.factor()?;
        while matches!(self.peek(), Some("and" | "&&")) {
            self.at += 1;
            let r = self.factor()?;
            l = Node::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn factor(&mut self) -> Result<Node, FilterError> {
        match self.peek() {
            Some("not" | "!") => {
                self.at += 1;
                Ok(Node::Not(Box::new(self.factor()?)))
            }
            Some("(") => {
                self.at += 1;
                let e = self.expr()?;
                if self.peek() != Some(")") {
                    return Err(self.err("expected ')'"));
                }
                self.at += 1;
                Ok(e)
            }
            _ => Ok(Node::Prim(self.prim()?)),
        }
    }

    fn prim(&mut self) -> Result<Prim, FilterError> {
        let t = self.next("a filter primitive (vni, host, net, port, tcp, udp, drop, ...)")?;
        let (dir, word) = match t {
            "src" | "dst" => {
                let d = if t == "src" { Dir::Src } else { Dir::Dst };
                let w = self.next("host, net or port after src/dst")?;
                if !matches!(w, "host" | "net" | "port") {
                    self.at -= 1;
                    return Err(self.err("expected host, net or port after src/dst"));
                }
                (d, w)
            }
            w => (Dir::Either, w),
        };
        Ok(match word {
            "vni" => Prim::Vni(self.arg("a VNI (0..16777215)", |s| {
                s.parse::<u32>().ok().filter(|v| *v < 1 << 24)
            })?),
            "host" => {
                let ip = self.arg("an IP address", |s| s.parse::<IpAddr>().ok())?;
                let (v, bits, v6) = ip_bits(ip);
                Prim::Net(dir, v, bits, v6)
            }
            "net" => {
                let (v, len, v6) = self.arg("a CIDR prefix (a.b.c.d/n or x::/n)", parse_cidr)?;
                Prim::Net(dir, v, len, v6)
            }
            "port" => {
                let (a, b) = self.arg("a port N or a range N-M", |s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
                    (a <= b).then_some((a, b))
                })?;
                Prim::Port(dir, a, b)
            }
            "tcp" => Prim::Proto(6),
            "udp" => Prim::Proto(17),
            "icmp" => Prim::Proto(1),
            "icmp6" => Prim::Proto(58),
            "ip" => Prim::Ip,
            "ip6" => Prim::Ip6,
            "drop" => Prim::Drop,
            "reason" => Prim::Reason(self.arg("a drop reason (as in `dpgwctl stats`)", |s| {
                DropReason::ALL.iter().copied().find(|r| r.name() == s)
            })?),
            "service" => Prim::Service(self.next("a service name")?.to_string()),
            "backend" => Prim::Backend(self.arg("a backend IP address", |s| s.parse().ok())?),
            "worker" => Prim::Worker(self.arg("a worker number", |s| s.parse().ok())?),
            _ => {
                self.at -= 1;
                return Err(self.err("unknown filter primitive"));
            }
        })
    }
}

fn ip_bits(ip: IpAddr) -> (u128, u8, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32, false),
        IpAddr::V6(a) => (u128::from(a), 128, true),
    }
}

fn parse_cidr(s: &str) -> Option<(u128, u8, bool)> {
    let (a, l) = s.split_once('/')?;
    let ip: IpAddr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    let (v, bits, v6) = ip_bits(ip);
    (len <= bits).then_some((v, len, v6))
}

fn in_net(addr: u128, net: u128, len: u8, width: u8) -> bool {
    if len == 0 {
        return true;
    }
    let shift = u32::from(width - len);
    (addr >> shift) == (net >> shift)
}

impl Filter {
    /// Parses `text` (empty or blank = match everything).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let toks = tokens(text);
        if toks.is_empty() {
            return Ok(Filter::default());
        }
        let mut p = Parser {
            toks,
            at: 0,
            len: text.len(),
        };
        let root = p.expr()?;
        if p.at < p.toks.len() {
            return Err(p.err("expected 'and', 'or' or the end of the filter"));
        }
        Ok(Filter {
            root,
            text: text.trim().to_string(),
        })
    }

    /// The filter's text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Does the packet described by `f` match?
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        eval(&self.root, f)
    }

    /// True when the filter can be decided before the pipeline's verdict is
    /// known (it names no drop, reason, service or backend). Not used for
    /// correctness, only documentation of cost.
    pub fn is_all(&self) -> bool {
        self.root == Node::All
    }
}

fn eval(n: &Node, f: &Facts<'_>) -> bool {
    match n {
        Node::All => true,
        Node::Not(a) => !eval(a, f),
        Node::And(a, b) => eval(a, f) && eval(b, f),
        Node::Or(a, b) => eval(a, f) || eval(b, f),
        Node::Prim(p) => prim(p, f),
    }
}

fn prim(p: &Prim, f: &Facts<'_>) -> bool {
    match p {
        Prim::Vni(v) => f.vni == Some(*v),
        Prim::Net(dir, net, len, v6) => f.key.is_some_and(|k| {
            if k.v6 != *v6 {
                return false;
            }
            let w = if k.v6 { 128 } else { 32 };
            let s = in_net(k.src, *net, *len, w);
            let d = in_net(k.dst, *net, *len, w);
            match dir {
                Dir::Src => s,
                Dir::Dst => d,
                Dir::Either => s || d,
            }
        }),
        Prim::Port(dir, a, b) => f.key.is_some_and(|k| {
            if !matches!(k.proto, 6 | 17 | 132) {
                return false;
            }
            let s = (*a..=*b).contains(&k.sport);
            let d = (*a..=*b).contains(&k.dport);
            match dir {
                Dir::Src => s,
                Dir::Dst => d,
                Dir::Either => s || d,
            }
        }),
        Prim::Proto(p) => f.key.is_some_and(|k| k.proto == *p),
        Prim::Ip => f.key.is_some_and(|k| !k.v6),
        Prim::Ip6 => f.key.is_some_and(|k| k.v6),
        Prim::Drop => f.drop.is_some(),
        Prim::Reason(r) => f.drop == Some(*r),
        Prim::Service(s) => f.service == Some(s.as_str()),
        Prim::Backend(b) => f.backend == Some(*b),
        Prim::Worker(w) => f.worker == *w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> vxlan::FlowKey {
        let (s, _, v6) = ip_bits(src.parse().unwrap());
        let (d, _, _) = ip_bits(dst.parse().unwrap());
        vxlan::FlowKey {
            vni: 100,
            src: s,
            dst: d,
            sport,
            dport,
            proto,
            v6,
        }
    }

    fn facts(k: vxlan::FlowKey) -> Facts<'static> {
        Facts {
            vni: Some(100),
            key: Some(k),
            ..Facts::default()
        }
    }

    #[test]
    fn test_primitives_and_combinations() {
        let k = key("172.16.0.5", 40000, "10.96.0.10", 80, 6);
        let f = facts(k);
        let yes = [
            "",
            "vni 100",
            "host 172.16.0.5",
            "src host 172.16.0.5",
            "dst host 10.96.0.10",
            "net 172.16.0.0/16",
            "dst net 10.96.0.0/12",
            "port 80",
            "dst port 80",
            "src port 39000-41000",
            "tcp",
            "ip",
            "tcp and dst port 80 and vni 100",
            "udp or tcp",
            "not udp",
            "! (udp || icmp)",
            "(vni 7 or vni 100) && not drop",
            "worker 0",
            "net 0.0.0.0/0",
        ];
        for s in yes {
            assert!(Filter::parse(s).unwrap().matches(&f), "{s}");
        }
        let no = [
            "vni 7",
            "src host 10.96.0.10",
            "dst net 172.16.0.0/16",
            "src port 80",
            "udp",
            "ip6",
            "drop",
            "reason acl_deny",
            "service web",
            "backend 10.0.2.2",
            "worker 1",
            "tcp and not port 80",
            "host fd00::1",
        ];
        for s in no {
            assert!(!Filter::parse(s).unwrap().matches(&f), "{s}");
        }
        let d = Facts {
            drop: Some(DropReason::AclDeny),
            service: Some("web"),
            backend: Some("10.0.2.2".parse().unwrap()),
            ..f
        };
        for s in ["drop", "reason acl_deny", "service web", "backend 10.0.2.2"] {
            assert!(Filter::parse(s).unwrap().matches(&d), "{s}");
        }
        let v6 = facts(key("fd10::5", 1, "fd00::10", 53, 17));
        assert!(
            Filter::parse("ip6 and udp and dst net fd00::/16 and port 53")
                .unwrap()
                .matches(&v6)
        );
        assert!(!Filter::parse("net 172.16.0.0/16").unwrap().matches(&v6));
        // No key (e.g. truncated): only the non-address primitives decide.
        let none = Facts::default();
        assert!(!Filter::parse("host 1.2.3.4").unwrap().matches(&none));
        assert!(Filter::parse("not host 1.2.3.4").unwrap().matches(&none));
    }

    #[test]
    fn test_precedence() {
        // `and` binds tighter than `or`.
        let f = facts(key("1.1.1.1", 1, "2.2.2.2", 2, 17));
        assert!(Filter::parse("tcp and port 9 or udp").unwrap().matches(&f));
        assert!(!Filter::parse("tcp and (port 9 or udp)")
            .unwrap()
            .matches(&f));
        assert!(!Filter::parse("not udp or tcp").unwrap().matches(&f));
    }

    #[test]
    fn test_errors_point_at_the_token() {
        let cases = [
            ("vni", 4, "end of filter"),
            ("vni x", 5, "'x'"),
            ("tcp and fish", 9, "'fish'"),
            ("host 1.2.3", 6, "'1.2.3'"),
            ("net 10.0.0.0/33", 5, "'10.0.0.0/33'"),
            ("port 9-3", 6, "'9-3'"),
            ("(tcp", 5, "end of filter"),
            ("tcp udp", 5, "'udp'"),
            ("reason nope", 8, "'nope'"),
            ("src tcp", 5, "'tcp'"),
            ("tcp)", 4, "')'"),
            ("vni 16777216", 5, "'16777216'"),
        ];
        for (s, col, tok) in cases {
            let e = Filter::parse(s).unwrap_err();
            assert_eq!((e.column, e.token.as_str()), (col, tok), "{s}: {e}");
        }
        let e = Filter::parse("tcp and fish").unwrap_err();
        assert_eq!(
            e.to_string(),
            "filter: unknown filter primitive at column 9 ('fish')"
        );
    }
}
