//! Backend health checks: the `[service.health]` model (serde, validated with
//! the service), and the health state a snapshot is built with.
//!
//! The operator's admin state ([`BackendState`](crate::BackendState)) and the
//! health state ([`Health`]) are separate: a backend takes new flows only when
//! it is admin-`active`, has a positive weight and is not [`Health::Unhealthy`]
//! (`Unknown` counts as healthy, so starting with checks does not black-hole a
//! service). What an unhealthy backend's existing flows do is
//! [`HealthSpec::on_down`].
//!
//! ```
//! let h: lb::HealthSpec = toml::from_str("kind = \"http\"\npath = \"/healthz\"").unwrap();
//! assert_eq!((h.interval_ms, h.timeout_ms, h.rise, h.fall), (1000, 500, 2, 3));
//! let e = toml::from_str::<lb::HealthSpec>("kind = \"tpc\"").unwrap_err().to_string();
//! assert!(e.contains("health.kind"), "{e}");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident, $key:literal, { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            /// The configuration word.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                match s.as_str() {
                    $($s => Ok($name::$v),)+
                    _ => Err(format!(
                        concat!($key, ": unknown value {:?} (expected one of: {})"),
                        s,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// What a check does.
    HealthKind, "health.kind", {
        /// No check (the backend's health stays unknown).
        None = "none",
        /// A TCP connect (SYN answered by SYN-ACK).
        Tcp = "tcp",
        /// An HTTP/1.1 GET of `path`, expecting 2xx/3xx (or `expect_status`).
        Http = "http",
        /// A UDP datagram with `payload`, expecting any reply.
        Udp = "udp",
    }
);

named_enum!(
    /// Where a check goes.
    HealthMode, "health.mode", {
        /// To the VIP, encapsulated to the backend exactly like client traffic.
        Inband = "inband",
        /// To the backend's own address, not encapsulated.
        Direct = "direct",
    }
);

named_enum!(
    /// What happens to the existing flows of a backend that becomes unhealthy.
    OnDown, "health.on_down", {
        /// They move to a healthy backend on their next packet.
        Rehome = "rehome",
        /// They stay (only new flows avoid the backend).
        Keep = "keep",
    }
);

fn d_kind() -> HealthKind {
    HealthKind::None
}
fn d_mode() -> HealthMode {
    HealthMode::Inband
}
fn d_path() -> String {
    "/".into()
}
fn d_interval() -> u32 {
    1000
}
fn d_timeout() -> u32 {
    500
}
fn d_rise() -> u32 {
    2
}
fn d_fall() -> u32 {
    3
}
fn d_on_down() -> OnDown {
    OnDown::Rehome
}

/// One `[service.health]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// `tcp`, `http`, `udp` or `none` (default).
    #[serde(default = "d_kind")]
    pub kind: HealthKind,
    /// `inband` (default) or `direct`.
    #[serde(default = "d_mode")]
    pub mode: HealthMode,
    /// HTTP path (default `/`).
    #[serde(default = "d_path")]
    pub path: String,
    /// HTTP status that counts as success; absent = any 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// UDP payload (default empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload: String,
    /// Port probed (default: the service port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// VNI of in-band probes to `vxlan` backends (default: the service's `vni`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// Time between checks of one backend (default 1000).
    #[serde(default = "d_interval")]
    pub interval_ms: u32,
    /// Time a check waits for its answer (default 500; less than `interval_ms`).
    #[serde(default = "d_timeout")]
    pub timeout_ms: u32,
    /// Consecutive successes to become healthy (default 2).
    #[serde(default = "d_rise")]
    pub rise: u32,
    /// Consecutive failures to become unhealthy (default 3).
    #[serde(default = "d_fall")]
    pub fall: u32,
    /// `rehome` (default) or `keep`.
    #[serde(default = "d_on_down")]
    pub on_down: OnDown,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            kind: d_kind(),
            mode: d_mode(),
            path: d_path(),
            expect_status: None,
            payload: String::new(),
            port: None,
            vni: None,
            interval_ms: d_interval(),
            timeout_ms: d_timeout(),
            rise: d_rise(),
            fall: d_fall(),
            on_down: d_on_down(),
        }
    }
}

/// Longest accepted HTTP path / UDP payload, in bytes (a probe is one segment).
pub const MAX_PROBE_TEXT: usize = 512;

impl HealthSpec {
    /// True if this section asks for checks.
    pub fn enabled(&self) -> bool {
        self.kind != HealthKind::None
    }

    /// Checks the section for a service of protocol `proto` (`udp` = true);
    /// the error is `(field, reason)`.
    pub fn check(&self, udp: bool) -> Result<(), (&'static str, String)> {
        if self.rise == 0 {
            return Err(("health.rise", "must be at least 1".into()));
        }
        if self.fall == 0 {
            return Err(("health.fall", "must be at least 1".into()));
        }
        if self.interval_ms < 10 || self.interval_ms > 3_600_000 {
            return Err((
                "health.interval_ms",
                format!("{} is outside 10..=3600000", self.interval_ms),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms >= self.interval_ms {
            return Err((
                "health.timeout_ms",
                format!(
                    "{} must be positive and less than interval_ms ({})",
                    self.timeout_ms, self.interval_ms
                ),
            ));
        }
        if self.port == Some(0) {
            return Err(("health.port", "must not be 0".into()));
        }
        if let Some(v) = self.vni {
            if v > 0x00FF_FFFF {
                return Err(("health.vni", format!("{v} does not fit 24 bits")));
            }
        }
        match self.kind {
            HealthKind::Http | HealthKind::Tcp if udp => {
                return Err((
                    "health.kind",
                    format!(
                        "a {} check needs a TCP service (this one is UDP)",
                        self.kind
                    ),
                ))
            }
            HealthKind::Udp if !udp => {
                return Err((
                    "health.kind",
                    "a udp check needs a UDP service (this one is TCP)".into(),
                ))
            }
            _ => {}
        }
        if !self.path.starts_with('/')
            || self.path.len() > MAX_PROBE_TEXT
            || self.path.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err((
                "health.path",
                format!(
                    "{:?} must start with / and have no spaces or control characters (at most {MAX_PROBE_TEXT} bytes)",
                    self.path
                ),
            ));
        }
        if self.payload.len() > MAX_PROBE_TEXT {
            return Err(("health.payload", format!("at most {MAX_PROBE_TEXT} bytes")));
        }
        if let Some(s) = self.expect_status {
            if !(100..=599).contains(&s) {
                return Err(("health.expect_status", format!("{s} is not an HTTP status")));
            }
        }
        Ok(())
    }
}

/// A backend's health as the checker sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked, or not yet `rise`/`fall` results: counts as healthy.
    #[default]
    Unknown,
    /// `rise` consecutive successes.
    Healthy,
    /// `fall` consecutive failures: takes no new flows.
    Unhealthy,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// The health a snapshot is built with, by (service name, backend address);
/// absent = [`Health::Unknown`].
pub type HealthMap = HashMap<(String, IpAddr), Health>;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<HealthSpec, String> {
        toml::from_str::<HealthSpec>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn test_defaults_and_roundtrip() {
        let h = parse("").unwrap();
        assert_eq!(h, HealthSpec::default());
        assert!(!h.enabled());
        let h = parse("kind = \"http\"\nmode = \"direct\"\npath = \"/healthz\"\nport = 8080\ninterval_ms = 200\ntimeout_ms = 100\nrise = 1\nfall = 2\non_down = \"keep\"").unwrap();
        assert_eq!(h.kind, HealthKind::Http);
        assert_eq!(h.mode, HealthMode::Direct);
        assert_eq!(h.on_down, OnDown::Keep);
        assert_eq!(h.port, Some(8080));
        assert_eq!(parse(&toml::to_string(&h).unwrap()).unwrap(), h);
        let j: HealthSpec = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(j, h);
        assert!(h.check(false).is_ok());
    }

    #[test]
    fn test_errors_name_the_key() {
        for (text, key) in [
            ("kind = \"tpc\"", "health.kind"),
            ("mode = \"sideways\"", "health.mode"),
            ("on_down = \"explode\"", "health.on_down"),
            ("intervl_ms = 5", "intervl_ms"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = serde_json::from_str::<HealthSpec>("{\"kind\":\"tpc\"}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("health.kind"), "{e}");
        let tcp = |s: &str| parse(&format!("kind = \"tcp\"\n{s}")).unwrap();
        for (h, udp, key) in [
            (tcp("rise = 0"), false, "health.rise"),
            (tcp("fall = 0"), false, "health.fall"),
            (tcp("timeout_ms = 1000"), false, "health.timeout_ms"),
            (
                tcp("interval_ms = 300\ntimeout_ms = 400"),
                false,
                "health.timeout_ms",
            ),
            (tcp("port = 0"), false, "health.port"),
            (tcp("vni = 16777216"), false, "health.vni"),
            (tcp(""), true, "health.kind"),
            (parse("kind = \"http\"").unwrap(), true, "health.kind"),
            (parse("kind = \"udp\"").unwrap(), false, "health.kind"),
            (
                parse("kind = \"http\"\npath = \"x\"").unwrap(),
                false,
                "health.path",
            ),
            (
                parse("kind = \"http\"\npath = \"/a b\"").unwrap(),
                false,
                "health.path",
            ),
            (
                parse("kind = \"http\"\nexpect_status = 42").unwrap(),
                false,
                "health.expect_status",
            ),
        ] {
            assert_eq!(h.check(udp).map_err(|e| e.0), Err(key), "{h:?}");
        }
        assert!(parse("kind = \"udp\"").unwrap().check(true).is_ok());
    }
}
