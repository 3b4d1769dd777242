//! Parsers: ClassBench filter and trace files, and the field forms used by the
//! TOML config and the CLI. All are pure (text in, values out) and never panic.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::{FieldError, ParseError};
use crate::rule::{Action, Key, PortRange, Prefix, ProtoMatch, Rule};

/// Parse a prefix: `"10.0.0.0/8"`, `"2001:db8::/32"`, a bare address (full
/// length) or `"any"` / `"*"`. Host bits are cleared.
pub fn parse_prefix(s: &str) -> Result<Prefix, FieldError> {
    let t = s.trim();
    let bad = || FieldError::Prefix(s.to_string());
    if t.eq_ignore_ascii_case("any") || t == "*" {
        return Ok(Prefix::Any);
    }
    let (addr, len) = match t.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
        None => (t, None),
    };
    if let Ok(a) = addr.parse::<Ipv4Addr>() {
        return Prefix::v4(a, len.unwrap_or(32)).ok_or_else(bad);
    }
    if let Ok(a) = addr.parse::<Ipv6Addr>() {
        return Prefix::v6(a, len.unwrap_or(128)).ok_or_else(bad);
    }
    Err(bad())
}

/// Parse a port range: `"80"`, `"1024-65535"`, `"any"` / `"*"`.
pub fn parse_ports(s: &str) -> Result<PortRange, FieldError> {
    let t = s.trim();
    let bad = || FieldError::Ports(s.to_string());
    if t.eq_ignore_ascii_case("any") || t == "*" {
        return Ok(PortRange::ANY);
    }
    let num = |x: &str| x.trim().parse::<u16>().map_err(|_| bad());
    match t.split_once('-') {
        Some((lo, hi)) => PortRange::new(num(lo)?, num(hi)?).ok_or_else(bad),
        None => Ok(PortRange::single(num(t)?)),
    }
}

/// Parse a protocol: `tcp`, `udp`, `icmp`, `icmpv6`, a number (decimal or
/// `0x..`), or `any` / `*`.
pub fn parse_proto(s: &str) -> Result<ProtoMatch, FieldError> {
    let t = s.trim().to_ascii_lowercase();
    Ok(match t.as_str() {
        "any" | "*" => ProtoMatch::ANY,
        "tcp" => ProtoMatch::exact(6),
        "udp" => ProtoMatch::exact(17),
        "icmp" => ProtoMatch::exact(1),
        "icmpv6" | "ipv6-icmp" => ProtoMatch::exact(58),
        "sctp" => ProtoMatch::exact(132),
        _ => ProtoMatch::exact(parse_u8(&t).ok_or_else(|| FieldError::Proto(s.to_string()))?),
    })
}

/// Parse an action: `allow` (or `accept`, `permit`) / `deny` (or `drop`).
pub fn parse_action(s: &str) -> Result<Action, FieldError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "allow" | "accept" | "permit" => Ok(Action::Allow),
        "deny" | "drop" => Ok(Action::Deny),
        _ => Err(FieldError::Action(s.to_string())),
    }
}

/// The name `parse_proto` accepts for a protocol number.
pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        _ => p.to_string(),
    }
}

fn parse_u8(t: &str) -> Option<u8> {
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u8::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

fn perr(file: &str, line: usize, token: &str, what: &str) -> ParseError {
    ParseError {
        file: file.to_string(),
        line,
        token: token.to_string(),
        what: what.to_string(),
    }
}

/// Parse a ClassBench filter file: one rule per line,
/// `@src/len <TAB> dst/len <TAB> lo : hi <TAB> lo : hi <TAB> proto/mask [<TAB> flags/mask]`.
///
/// Rules get `id = Some(i)` (0-based rule number) and `priority = None`, so file
/// order is evaluation order; every rule gets `action`. Blank lines and lines
/// starting with `#` are skipped. Flags are ignored (as `rte_acl` does).
pub fn parse_classbench(text: &str, file: &str, action: Action) -> Result<Vec<Rule>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some(body) = l.strip_prefix('@') else {
            return Err(perr(file, line, l, "rule line must start with '@'"));
        };
        let fields: Vec<&str> = body
            .split('\t')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        if fields.len() < 5 || fields.len() > 6 {
            return Err(perr(
                file,
                line,
                l,
                "expected 5 or 6 tab-separated fields (src, dst, sport, dport, proto[, flags])",
            ));
        }
        let v4 = |tok: &str| -> Result<Prefix, ParseError> {
            let bad = || perr(file, line, tok, "bad IPv4 prefix");
            let (a, len) = tok.split_once('/').ok_or_else(bad)?;
            let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            Prefix::v4(a, len).ok_or_else(bad)
        };
        let ports = |tok: &str| -> Result<PortRange, ParseError> {
            let bad = || perr(file, line, tok, "bad port range (want `lo : hi`)");
            let (lo, hi) = tok.split_once(':').ok_or_else(bad)?;
            let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
            PortRange::new(lo, hi).ok_or_else(bad)
        };
        let proto = |tok: &str| -> Result<ProtoMatch, ParseError> {
            let bad = || perr(file, line, tok, "bad protocol (want `value/mask`)");
            let (v, m) = tok.split_once('/').ok_or_else(bad)?;
            let v = parse_u8(v.trim()).ok_or_else(bad)?;
            let m = parse_u8(m.trim()).ok_or_else(bad)?;
            Ok(ProtoMatch::new(v, m))
        };
        out.push(Rule {
            id: Some(out.len() as u32),
            vni: None,
            src: v4(fields[0])?,
            dst: v4(fields[1])?,
            src_ports: ports(fields[2])?,
            dst_ports: ports(fields[3])?,
            proto: proto(fields[4])?,
            action,
            priority: None,
            stateful: None,
        });
    }
    Ok(out)
}

/// One header of a ClassBench trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// The IPv4 key (VNI 0).
    pub key: Key,
    /// Last column: the rule that generated the header (not necessarily the
    /// first match); `u32::MAX` when the line has no such column.
    pub filter: u32,
}

/// Parse a ClassBench trace (`src dst sport dport proto [flags [filter_no]]`,
/// whitespace separated, addresses decimal host-order u32).
pub fn parse_classbench_trace(text: &str, file: &str) -> Result<Vec<TraceEntry>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 {
            return Err(perr(file, line, l, "expected at least 5 columns"));
        }
        let num = |tok: &str, max: u64, what: &str| -> Result<u64, ParseError> {
            tok.parse::<u64>()
                .ok()
                .filter(|&v| v <= max)
                .ok_or_else(|| perr(file, line, tok, what))
        };
        let src = num(f[0], u32::MAX.into(), "bad source address")?;
        let dst = num(f[1], u32::MAX.into(), "bad destination address")?;
        let sport = num(f[2], u16::MAX.into(), "bad source port")?;
        let dport = num(f[3], u16::MAX.into(), "bad destination port")?;
        let proto = num(f[4], u8::MAX.into(), "bad protocol")?;
        let filter = match f.get(6) {
            Some(t) => num(t, u32::MAX.into(), "bad filter number")? as u32,
            None => u32::MAX,
        };
        out.push(TraceEntry {
            key: Key {
                vni: 0,
                src: src.into(),
                dst: dst.into(),
                sport: sport as u16,
                dport: dport as u16,
                proto: proto as u8,
                v6: false,
            },
            filter,
        });
    }
    Ok(out)
}

/// Format an IPv4 key as a 7-column ClassBench trace line (no newline), the
/// form `dpdk-test-acl --tracef` reads.
pub fn format_classbench_trace_line(key: &Key, filter: u32) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t0\t{}",
        key.src as u32, key.dst as u32, key.sport, key.dport, key.proto, filter
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fields() {
        assert_eq!(parse_prefix("any"), Ok(Prefix::Any));
        assert_eq!(
            parse_prefix("10.1.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_prefix("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_prefix("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("2001::/129").is_err());
        assert!(parse_prefix("banana").is_err());
        assert_eq!(parse_ports("80"), Ok(PortRange::single(80)));
        assert_eq!(
            parse_ports("1024-65535"),
            Ok(PortRange::new(1024, 65535).unwrap())
        );
        assert_eq!(parse_ports("any"), Ok(PortRange::ANY));
        assert!(parse_ports("9-8").is_err());
        assert!(parse_ports("70000").is_err());
        assert_eq!(parse_proto("TCP"), Ok(ProtoMatch::exact(6)));
        assert_eq!(parse_proto("icmpv6"), Ok(ProtoMatch::exact(58)));
        assert_eq!(parse_proto("47"), Ok(ProtoMatch::exact(47)));
        assert_eq!(parse_proto("any"), Ok(ProtoMatch::ANY));
        assert!(parse_proto("256").is_err());
        assert_eq!(parse_action("deny"), Ok(Action::Deny));
        assert!(parse_action("maybe").is_err());
    }

    #[test]
    fn test_classbench_line() {
        let t = "@67.81.126.218/32\t112.154.225.224/32\t0 : 65535\t37 : 37\t0x11/0xFF\t0x0000/0x0000\t\n\
                 @0.0.0.0/0\t10.0.0.0/8\t0 : 65535\t0 : 1023\t0x00/0x00\t0x0000/0x0000\t\n";
        let rules = parse_classbench(t, "x", Action::Deny).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].src.to_string(), "67.81.126.218/32");
        assert_eq!(rules[0].dst_ports, PortRange::single(37));
        assert_eq!(rules[0].proto, ProtoMatch::exact(17));
        assert_eq!(rules[1].proto, ProtoMatch::ANY);
        assert_eq!(rules[1].id, Some(1));
        assert_eq!(rules[1].action, Action::Deny);
    }

    #[test]
    fn test_classbench_errors() {
        let good = "@1.2.3.4/32\t5.6.7.8/32\t0 : 65535\t0 : 65535\t0x06/0xFF\t0x0000/0x0000\n";
        let cases = [
            (
                "@1.2.3.4/33\t5.6.7.8/32\t0 : 65535\t0 : 65535\t0x06/0xFF",
                "1.2.3.4/33",
            ),
            (
                "@1.2.3.4/32\t5.6.7/32\t0 : 65535\t0 : 65535\t0x06/0xFF",
                "5.6.7/32",
            ),
            (
                "@1.2.3.4/32\t5.6.7.8/32\t9 : 8\t0 : 65535\t0x06/0xFF",
                "9 : 8",
            ),
            (
                "@1.2.3.4/32\t5.6.7.8/32\t0 : 65535\t0 - 65535\t0x06/0xFF",
                "0 - 65535",
            ),
            (
                "@1.2.3.4/32\t5.6.7.8/32\t0 : 65535\t0 : 65535\t0x106/0xFF",
                "0x106/0xFF",
            ),
        ];
        for (bad, token) in cases {
            let text = format!("{good}{good}{bad}\n");
            let e = parse_classbench(&text, "rules.txt", Action::Allow).unwrap_err();
            assert_eq!(
                (e.file.as_str(), e.line, e.token.as_str()),
                ("rules.txt", 3, token)
            );
            assert!(e.to_string().starts_with("rules.txt:3: "), "{e}");
        }
        let e = parse_classbench("1.2.3.4/32\t5.6.7.8/32", "f", Action::Allow).unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse_classbench("@1.2.3.4/32\t5.6.7.8/32", "f", Action::Allow).unwrap_err();
        assert_eq!(e.token, "@1.2.3.4/32\t5.6.7.8/32");
    }

    #[test]
    fn test_trace() {
        let t = "1289415424\t117750809\t0\t21\t17\t0\t383\n1 2 3 4 5\n";
        let v = parse_classbench_trace(t, "t").unwrap();
        assert_eq!(v[0].key.src, 1289415424);
        assert_eq!(v[0].key.dport, 21);
        assert_eq!(v[0].filter, 383);
        assert_eq!(v[1].filter, u32::MAX);
        assert_eq!(
            format_classbench_trace_line(&v[0].key, 383),
            t.lines().next().unwrap()
        );
        let e = parse_classbench_trace("1 2 3 70000 6 0 1\n", "t").unwrap_err();
        assert_eq!((e.line, e.token.as_str()), (1, "70000"));
        assert!(parse_classbench_trace("4294967296 1 1 1 1", "t").is_err());
    }
}
