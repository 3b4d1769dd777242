//! The configuration model: service and backend specs (serde, `[[service]]` and
//! `[[service.backend]]` in the TOML config), their validation, and [`Services`],
//! the desired state the control plane mutates.
//!
//! Validation rules (every error names the service, the backend and the field):
//! * service names are unique and non-empty; `(vni, vip, port, proto)` is unique
//!   (a VNI-scoped service and an unscoped one may share `(vip, port, proto)`:
//!   the scoped one wins for its VNI);
//! * `port` is non-zero, `vni` fits 24 bits;
//! * `table_size` is prime, at most [`MAX_TABLE_SIZE`](crate::maglev::MAX_TABLE_SIZE)
//!   and at least the number of backends; at most
//!   [`MAX_BACKENDS`](crate::maglev::MAX_BACKENDS) backends;
//! * backend IPs are unique within a service;
//! * every backend of a `vxlan` or `geneve` service has a `mac`;
//! * **address family**: a backend has the same family as its service's VIP. The
//!   outer (encapsulation) header is addressed to the backend and the inner packet
//!   keeps the VIP, so mixed families would need 4-in-6 / 6-in-4 encapsulation;
//!   we refuse them rather than emit something a backend may not decapsulate.
//!   (Relaxing this later breaks no valid configuration.)

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::health::{HealthMode, HealthSpec};
use crate::maglev::{self, MAX_BACKENDS};
use crate::sched::Scheduler;

/// The transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// The protocol for an IP protocol number, if it is one we balance.
    pub const fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// How packets are encapsulated to a backend (the bytes are written by the
/// `vxlan` crate; the `lb` crate only decides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncapKind {
    /// IP-in-IP (protocol 4 for IPv4, 41 for IPv6), Katran's default.
    #[default]
    Ipip,
    /// Generic UDP Encapsulation.
    Gue,
    /// VXLAN (needs the backend's MAC for the inner Ethernet header).
    Vxlan,
    /// Geneve (RFC 8926) without options, like VXLAN (needs the backend's MAC).
    Geneve,
}

impl fmt::Display for EncapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncapKind::Ipip => "ipip",
            EncapKind::Gue => "gue",
            EncapKind::Vxlan => "vxlan",
            EncapKind::Geneve => "geneve",
        })
    }
}

/// A backend's administrative state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Takes new flows (if its weight is positive) and keeps its flows.
    #[default]
    Active,
    /// Keeps its existing flows, takes no new ones.
    Draining,
    /// Takes nothing; its flows move to other backends on their next packet.
    Down,
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Down => "down",
        })
    }
}

/// An Ethernet MAC address; text form `02:00:00:00:00:01` (parsing also
/// takes `-` separators and one-digit bytes: `2-0-0-0-0-1`). The one MAC
/// type of the workspace: the engine's config parses and prints through it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// A MAC address that is not six `:`-separated hex bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?} (expected six hex bytes like 02:00:00:00:00:01)")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_weight() -> u32 {
    1
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn default_table_size() -> u32 {
    maglev::DEFAULT_TABLE_SIZE
}

/// One `[[service.backend]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// The backend's address (the outer destination of the encapsulation).
    pub ip: IpAddr,
    /// Relative share of new flows; 0 = no new flows (existing ones stay).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The backend's MAC, required for `vxlan` encapsulation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Administrative state (default `active`).
    #[serde(default)]
    pub state: BackendState,
}

impl BackendSpec {
    /// An active backend with weight 1 and no MAC.
    pub fn new(ip: IpAddr) -> Self {
        BackendSpec {
            ip,
            weight: 1,
            mac: None,
            state: BackendState::Active,
        }
    }
}

/// One `[[service]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name.
    pub name: String,
    /// The virtual IP (inner destination address).
    pub vip: IpAddr,
    /// The inner destination port.
    pub port: u16,
    /// The inner transport protocol.
    pub proto: Proto,
    /// Restricts the service to one tenant (VNI); scoped services take
    /// precedence over unscoped ones with the same `(vip, port, proto)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// Encapsulation towards the backends (default `ipip`).
    #[serde(default)]
    pub encap: EncapKind,
    /// Maglev table size `M` (prime, default 65537).
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// How new flows choose a backend (default `maglev`; see [`crate::sched`]).
    #[serde(default, skip_serializing_if = "Scheduler::is_default")]
    pub scheduler: Scheduler,
    /// At most this many new flows per second per worker (0 = no cap);
    /// above it new flows go where the hash points and are not stored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub new_flow_rate: u32,
    /// Health checks of the backends (`[service.health]`; absent = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// The backends.
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendSpec>,
}

impl ServiceSpec {
    /// A service with no backends, `ipip` encapsulation and `M = 65537`.
    pub fn new(name: impl Into<String>, vip: IpAddr, port: u16, proto: Proto) -> Self {
        ServiceSpec {
            name: name.into(),
            vip,
            port,
            proto,
            vni: None,
            encap: EncapKind::Ipip,
            table_size: maglev::DEFAULT_TABLE_SIZE,
            scheduler: Scheduler::Maglev,
            new_flow_rate: 0,
            health: None,
            backends: Vec::new(),
        }
    }

    /// The identity used for duplicate detection and lookup.
    pub fn vip_key(&self) -> (Option<u32>, IpAddr, u16, Proto) {
        (self.vni, self.vip, self.port, self.proto)
    }

    /// Checks this service on its own (everything but cross-service rules).
    pub fn validate(&self) -> Result<(), LbError> {
        let inv = |field: &'static str, reason: String| LbError::InvalidService {
            service: self.name.clone(),
            field,
            reason,
        };
        if self.name.is_empty() {
            return Err(inv("name", "must not be empty".into()));
        }
        if self.port == 0 {
            return Err(inv("port", "must not be 0".into()));
        }
        if let Some(vni) = self.vni {
            if vni > 0x00FF_FFFF {
                return Err(inv("vni", format!("{vni} does not fit 24 bits")));
            }
        }
        if let Err(e) = maglev::check_table_size(self.table_size) {
            return Err(inv("table_size", e.to_string()));
        }
        if let Some(h) = self.health.as_ref().filter(|h| h.enabled()) {
            if let Err((field, reason)) = h.check(self.proto == Proto::Udp) {
                return Err(inv(field, reason));
            }
            if h.mode == HealthMode::Inband
                && matches!(self.encap, EncapKind::Vxlan | EncapKind::Geneve)
                && h.vni.or(self.vni).is_none()
            {
                return Err(inv(
                    "health.vni",
                    "required for in-band checks of a vxlan or geneve service without a vni".into(),
                ));
            }
        }
        let n = self.backends.len();
        if n > MAX_BACKENDS || n > self.table_size as usize {
            return Err(inv(
                "backend",
                format!(
                    "{n} backends exceed the limit min(table_size {}, {MAX_BACKENDS})",
                    self.table_size
                ),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(n);
        for b in &self.backends {
            if !seen.insert(b.ip) {
                return Err(LbError::DuplicateBackend {
                    service: self.name.clone(),
                    ip: b.ip,
                });
            }
            self.validate_backend(b)?;
        }
        Ok(())
    }

    fn validate_backend(&self, b: &BackendSpec) -> Result<(), LbError> {
        let inv = |field: &'static str, reason: String| LbError::InvalidBackend {
            service: self.name.clone(),
            ip: b.ip,
            field,
            reason,
        };
        if b.ip.is_ipv4() != self.vip.is_ipv4() {
            return Err(inv(
                "ip",
                format!(
                    "address family differs from the service VIP {} (mixed families are not supported)",
                    self.vip
                ),
            ));
        }
        if b.ip.is_unspecified() || b.ip.is_multicast() {
            return Err(inv("ip", "must be a unicast address".into()));
        }
        if matches!(self.encap, EncapKind::Vxlan | EncapKind::Geneve) && b.mac.is_none() {
            return Err(inv(
                "mac",
                format!("required for {} encapsulation", self.encap),
            ));
        }
        Ok(())
    }

    fn backend_mut(&mut self, ip: IpAddr) -> Result<&mut BackendSpec, LbError> {
        let service = self.name.clone();
        self.backends
            .iter_mut()
            .find(|b| b.ip == ip)
            .ok_or(LbError::NoSuchBackend { service, ip })
    }
}

/// Errors of the configuration model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LbError {
    /// A second service with the same name.
    #[error("service {0:?}: a service with this name already exists")]
    DuplicateService(String),
    /// No service with that name.
    #[error("service {0:?}: no such service")]
    NoSuchService(String),
    /// Two services with the same `(vni, vip, port, proto)`.
    #[error("service {service:?}: vni {} vip {vip} port {port} proto {proto} is already served by service {other:?}", vni.map_or_else(|| "any".to_string(), |v| v.to_string()))]
    DuplicateVip {
        /// The service being added.
        service: String,
        /// The service that already has this identity.
        other: String,
        /// The VNI scope.
        vni: Option<u32>,
        /// The VIP.
        vip: IpAddr,
        /// The port.
        port: u16,
        /// The protocol.
        proto: Proto,
    },
    /// A backend IP listed twice in a service.
    #[error("service {service:?}: backend {ip}: already exists")]
    DuplicateBackend {
        /// The service.
        service: String,
        /// The backend address.
        ip: IpAddr,
    },
    /// No backend with that IP in the service.
    #[error("service {service:?}: backend {ip}: no such backend")]
    NoSuchBackend {
        /// The service.
        service: String,
        /// The backend address.
        ip: IpAddr,
    },
    /// A field of a service is invalid.
    #[error("service {service:?}: field {field}: {reason}")]
    InvalidService {
        /// The service.
        service: String,
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A field of a backend is invalid.
    #[error("service {service:?}: backend {ip}: field {field}: {reason}")]
    InvalidBackend {
        /// The service.
        service: String,
        /// The backend address.
        ip: IpAddr,
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// The desired state: services by name (ordered, so service indices in a built
/// [`LbTables`](crate::LbTables) follow name order). Every mutation validates the
/// result and leaves the state unchanged on error, so a `Services` value is
/// always valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Services {
    by_name: BTreeMap<String, ServiceSpec>,
}

impl Services {
    /// No services.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates a whole configuration (`[[service]]` list) and builds the state.
    pub fn from_specs(specs: impl IntoIterator<Item = ServiceSpec>) -> Result<Self, LbError> {
        let mut s = Services::new();
        for spec in specs {
            s.add_service(spec)?;
        }
        Ok(s)
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True if there is no service.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The service called `name`.
    pub fn get(&self, name: &str) -> Option<&ServiceSpec> {
        self.by_name.get(name)
    }

    /// All services in name order.
    pub fn iter(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.by_name.values()
    }

    /// The specs, in name order (e.g. to write the configuration back).
    pub fn to_specs(&self) -> Vec<ServiceSpec> {
        self.by_name.values().cloned().collect()
    }

    /// Adds a service (with its backends) after validating it.
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<(), LbError> {
        if self.by_name.contains_key(&spec.name) {
            return Err(LbError::DuplicateService(spec.name));
        }
        spec.validate()?;
        if let Some(other) = self
            .by_name
            .values()
            .find(|o| o.vip_key() == spec.vip_key())
        {
            return Err(LbError::DuplicateVip {
                service: spec.name.clone(),
                other: other.name.clone(),
                vni: spec.vni,
                vip: spec.vip,
                port: spec.port,
                proto: spec.proto,
            });
        }
        self.by_name.insert(spec.name.clone(), spec);
        Ok(())
    }

    /// Removes a service and returns it.
    pub fn del_service(&mut self, name: &str) -> Result<ServiceSpec, LbError> {
        self.by_name
            .remove(name)
            .ok_or_else(|| LbError::NoSuchService(name.to_string()))
    }

    fn service_mut(&mut self, name: &str) -> Result<&mut ServiceSpec, LbError> {
        self.by_name
            .get_mut(name)
            .ok_or_else(|| LbError::NoSuchService(name.to_string()))
    }

    /// Adds a backend to a service.
    pub fn add_backend(&mut self, service: &str, backend: BackendSpec) -> Result<(), LbError> {
        let svc = self.service_mut(service)?;
        if svc.backends.iter().any(|b| b.ip == backend.ip) {
            return Err(LbError::DuplicateBackend {
                service: service.to_string(),
                ip: backend.ip,
            });
        }
        let n = svc.backends.len() + 1;
        if n > MAX_BACKENDS || n > svc.table_size as usize {
            return Err(LbError::InvalidService {
                service: service.to_string(),
                field: "backend",
                reason: format!(
                    "{n} backends exceed the limit min(table_size {}, {MAX_BACKENDS})",
                    svc.table_size
                ),
            });
        }
        svc.validate_backend(&backend)?;
        svc.backends.push(backend);
        Ok(())
    }

    /// Removes a backend from a service and returns it.
    pub fn del_backend(&mut self, service: &str, ip: IpAddr) -> Result<BackendSpec, LbError> {
        let svc = self.service_mut(service)?;
        let pos = svc
            .backends
            .iter()
            .position(|b| b.ip == ip)
            .ok_or_else(|| LbError::NoSuchBackend {
                service: service.to_string(),
                ip,
            })?;
        Ok(svc.backends.remove(pos))
    }

    /// Sets a backend's weight (0 = no new flows).
    pub fn set_weight(&mut self, service: &str, ip: IpAddr, weight: u32) -> Result<(), LbError> {
        self.service_mut(service)?.backend_mut(ip)?.weight = weight;
        Ok(())
    }

    /// Sets (or, with `None`, removes) a service's health checks.
    pub fn set_health(&mut self, service: &str, health: Option<HealthSpec>) -> Result<(), LbError> {
        let svc = self.service_mut(service)?;
        let mut next = svc.clone();
        next.health = health;
        next.validate()?;
        *svc = next;
        Ok(())
    }

    /// Sets a service's scheduler and/or new-flow rate cap (`None` leaves a
    /// setting as it is). Flows already pinned keep their backends.
    pub fn set_scheduler(
        &mut self,
        service: &str,
        scheduler: Option<Scheduler>,
        new_flow_rate: Option<u32>,
    ) -> Result<(), LbError> {
        let svc = self.service_mut(service)?;
        if let Some(s) = scheduler {
            svc.scheduler = s;
        }
        if let Some(r) = new_flow_rate {
            svc.new_flow_rate = r;
        }
        Ok(())
    }

    /// Sets a backend's state.
    pub fn set_state(
        &mut self,
        service: &str,
        ip: IpAddr,
        state: BackendState,
    ) -> Result<(), LbError> {
        self.service_mut(service)?.backend_mut(ip)?.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mac_roundtrip() {
        let m: MacAddr = "02:00:00:00:00:0a".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0, 0, 0, 10]);
        assert_eq!(m.to_string(), "02:00:00:00:00:0a");
        let short: MacAddr = "2-0-0-0-0-a".parse().unwrap();
        assert_eq!(short, m);
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "002:00:00:00:00:00",
            "+2:00:00:00:00:00",
            "02::00:00:00:00",
            "zz:00:00:00:00:00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_toml_config() {
        #[derive(Deserialize)]
        struct Cfg {
            service: Vec<ServiceSpec>,
        }
        let text = r#"
            [[service]]
            name = "web"
            vip = "10.0.0.1"
            port = 80
            proto = "tcp"
            [[service.backend]]
            ip = "192.168.1.1"
            [[service.backend]]
            ip = "192.168.1.2"
            weight = 3
            state = "draining"

            [[service]]
            name = "dns"
            vip = "fd00::53"
            port = 53
            proto = "udp"
            vni = 42
            encap = "vxlan"
            table_size = 251
            [[service.backend]]
            ip = "fd00::1"
            mac = "02:00:00:00:00:01"
        "#;
        let cfg: Cfg = toml::from_str(text).unwrap();
        let s = Services::from_specs(cfg.service).unwrap();
        let web = s.get("web").unwrap();
        assert_eq!(web.encap, EncapKind::Ipip);
        assert_eq!(web.table_size, 65537);
        assert_eq!(web.backends[0].weight, 1);
        assert_eq!(web.backends[1].state, BackendState::Draining);
        let dns = s.get("dns").unwrap();
        assert_eq!(dns.vni, Some(42));
        assert_eq!(dns.backends[0].mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        // Round trip through serde.
        let again: ServiceSpec = toml::from_str(&toml::to_string(dns).unwrap()).unwrap();
        assert_eq!(&again, dns);
    }

    #[test]
    fn unknown_field_is_an_error() {
        let text = "name = \"a\"\nvip = \"10.0.0.1\"\nport = 80\nproto = \"tcp\"\ntablesize = 7\n";
        let err = toml::from_str::<ServiceSpec>(text).unwrap_err().to_string();
        assert!(err.contains("tablesize"), "{err}");
    }

    fn svc(name: &str, vip: &str, port: u16) -> ServiceSpec {
        ServiceSpec::new(name, ip(vip), port, Proto::Tcp)
    }

    #[test]
    fn validation_errors_name_the_culprit() {
        let mut s = Services::new();
        s.add_service(svc("a", "10.0.0.1", 80)).unwrap();
        assert_eq!(
            s.add_service(svc("a", "10.0.0.2", 80)),
            Err(LbError::DuplicateService("a".into()))
        );
        let e = s.add_service(svc("b", "10.0.0.1", 80)).unwrap_err();
        assert!(
            e.to_string().contains("\"a\"") && e.to_string().contains("\"b\""),
            "{e}"
        );
        // Same VIP but scoped to a VNI: allowed.
        let mut scoped = svc("c", "10.0.0.1", 80);
        scoped.vni = Some(7);
        s.add_service(scoped).unwrap();

        let mut bad = svc("d", "10.0.0.3", 80);
        bad.table_size = 65536;
        let e = s.add_service(bad).unwrap_err().to_string();
        assert!(
            e.contains("\"d\"") && e.contains("table_size") && e.contains("not prime"),
            "{e}"
        );

        let mut bad = svc("d", "10.0.0.3", 80);
        bad.vni = Some(1 << 24);
        assert!(s.add_service(bad).unwrap_err().to_string().contains("vni"));

        let mut bad = svc("d", "10.0.0.3", 80);
        bad.backends = vec![
            BackendSpec::new(ip("1.1.1.1")),
            BackendSpec::new(ip("1.1.1.1")),
        ];
        assert!(matches!(
            s.add_service(bad),
            Err(LbError::DuplicateBackend { .. })
        ));

        let mut bad = svc("d", "10.0.0.3", 80);
        bad.encap = EncapKind::Vxlan;
        bad.backends = vec![BackendSpec::new(ip("1.1.1.1"))];
        let e = s.add_service(bad).unwrap_err().to_string();
        assert!(e.contains("1.1.1.1") && e.contains("mac"), "{e}");

        let mut bad = svc("d", "10.0.0.3", 80);
        bad.backends = vec![BackendSpec::new(ip("fd00::1"))];
        let e = s.add_service(bad).unwrap_err().to_string();
        assert!(e.contains("fd00::1") && e.contains("family"), "{e}");

        let mut bad = svc("d", "10.0.0.3", 80);
        bad.table_size = 2;
        bad.backends = (1..=3)
            .map(|i| BackendSpec::new(ip(&format!("1.1.1.{i}"))))
            .collect();
        assert!(s
            .add_service(bad)
            .unwrap_err()
            .to_string()
            .contains("exceed"));

        assert!(s.add_service(svc("", "10.0.0.9", 80)).is_err());
        assert!(s.add_service(svc("z", "10.0.0.9", 0)).is_err());
        // Nothing invalid got in.
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn mutations() {
        let mut s = Services::new();
        s.add_service(svc("a", "10.0.0.1", 80)).unwrap();
        s.add_backend("a", BackendSpec::new(ip("1.1.1.1"))).unwrap();
        assert!(matches!(
            s.add_backend("a", BackendSpec::new(ip("1.1.1.1"))),
            Err(LbError::DuplicateBackend { .. })
        ));
        assert!(matches!(
            s.add_backend("nope", BackendSpec::new(ip("1.1.1.1"))),
            Err(LbError::NoSuchService(_))
        ));
        assert!(s.add_backend("a", BackendSpec::new(ip("fd00::1"))).is_err());
        s.set_weight("a", ip("1.1.1.1"), 5).unwrap();
        s.set_state("a", ip("1.1.1.1"), BackendState::Draining)
            .unwrap();
        let b = &s.get("a").unwrap().backends[0];
        assert_eq!((b.weight, b.state), (5, BackendState::Draining));
        assert!(matches!(
            s.set_weight("a", ip("1.1.1.2"), 1),
            Err(LbError::NoSuchBackend { .. })
        ));
        assert_eq!(s.del_backend("a", ip("1.1.1.1")).unwrap().weight, 5);
        assert!(s.del_backend("a", ip("1.1.1.1")).is_err());
        s.del_service("a").unwrap();
        assert!(s.del_service("a").is_err());
        assert!(s.is_empty());
    }
}
