//! Error types.

use thiserror::Error;

/// A rule that violates an invariant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    /// IPv4 and IPv6 prefixes in one rule.
    #[error("source {src} and destination {dst} are of different address families")]
    MixedFamily {
        /// Source prefix as written.
        src: String,
        /// Destination prefix as written.
        dst: String,
    },
    /// `lo > hi`.
    #[error("empty port range {0}-{1}")]
    EmptyPortRange(u16, u16),
}

/// A field value that does not parse (TOML/CLI forms).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldError {
    /// Not a prefix (`10.0.0.0/8`, `2001:db8::/32`, an address, or `any`).
    #[error("bad prefix {0:?} (want e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"any\")")]
    Prefix(String),
    /// Not a port or port range (`80`, `1024-65535`, `any`).
    #[error("bad port range {0:?} (want e.g. \"80\", \"1024-65535\" or \"any\")")]
    Ports(String),
    /// Not a protocol (`tcp`, `udp`, `icmp`, `icmpv6`, a number, `any`).
    #[error("bad protocol {0:?} (want tcp, udp, icmp, icmpv6, a number 0-255 or any)")]
    Proto(String),
    /// Not an action.
    #[error("bad action {0:?} (want allow or deny)")]
    Action(String),
}

/// A [`crate::RuleSpec`] that does not make a valid rule; names the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("field `{field}`: {reason}")]
pub struct SpecError {
    /// The offending field (`src`, `dst`, `proto`, `src_ports`, `dst_ports`, ...).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// An error in a rule or trace file, with its position.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}:{line}: {what}: {token:?}")]
pub struct ParseError {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// The offending token (or the whole line when the shape is wrong).
    pub token: String,
    /// What was expected.
    pub what: String,
}
