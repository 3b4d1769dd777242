//! Serde forms of rules for the TOML config (`[acl]`, `[[acl.rule]]`,
//! `[[acl.file]]`) and for dumping the running state back to TOML.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::{ParseError, RuleError, SpecError};
use crate::parse::{parse_classbench, parse_ports, parse_prefix, parse_proto};
use crate::rule::{Action, PortRange, Prefix, ProtoMatch, Rule, RuleSet};

fn any() -> String {
    "any".to_string()
}

fn is_any(s: &String) -> bool {
    s == "any"
}

/// One `[[acl.rule]]` table. Every match field defaults to `"any"`.
///
/// ```toml
/// [[acl.rule]]
/// vni = 100
/// src = "10.0.0.0/8"
/// dst = "2001:db8::/32"   # (would be rejected: mixed families)
/// proto = "tcp"
/// dst_ports = "443"
/// action = "allow"
/// priority = 10
/// id = 7
/// stateful = true         # connection tracking (default: see `stateful`)
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Tenant; absent = every VNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// Source prefix: `"10.0.0.0/8"`, `"2001:db8::/32"`, `"any"`.
    #[serde(default = "any", skip_serializing_if = "is_any")]
    pub src: String,
    /// Destination prefix.
    #[serde(default = "any", skip_serializing_if = "is_any")]
    pub dst: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, a number (`17` or `"17"`) or `any`.
    #[serde(
        default = "any",
        skip_serializing_if = "is_any",
        deserialize_with = "name_or_number"
    )]
    pub proto: String,
    /// `"80"` (or `80`), `"1024-65535"`, `"any"`.
    #[serde(
        default = "any",
        skip_serializing_if = "is_any",
        deserialize_with = "name_or_number"
    )]
    pub src_ports: String,
    /// `"80"` (or `80`), `"1024-65535"`, `"any"`.
    #[serde(
        default = "any",
        skip_serializing_if = "is_any",
        deserialize_with = "name_or_number"
    )]
    pub dst_ports: String,
    /// `allow` or `deny`.
    pub action: Action,
    /// Lower first; absent = after all explicit priorities, in file order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Identifier for counters and the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// Connection tracking (see [`Rule::stateful`]); absent = stateful for an
    /// `allow` in a VNI whose default is `deny`. `true` on a `deny` rule is
    /// rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful: Option<bool>,
}

/// Accepts a string or a non-negative integer (TOML `proto = 17` as well as
/// `proto = "udp"`); the value is checked later, with the field's own rules.
fn name_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(
                "a name, a number or \"any\" (e.g. \"tcp\", 17, \"80\", 443, \"1024-65535\")",
            )
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            if v < 0 {
                return Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self));
            }
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

impl RuleSpec {
    /// Validate and convert; the error names the bad field.
    pub fn to_rule(&self) -> Result<Rule, SpecError> {
        let field = |field: &'static str| {
            move |e: crate::error::FieldError| SpecError {
                field,
                reason: e.to_string(),
            }
        };
        let src: Prefix = parse_prefix(&self.src).map_err(field("src"))?;
        let dst: Prefix = parse_prefix(&self.dst).map_err(field("dst"))?;
        let proto: ProtoMatch = parse_proto(&self.proto).map_err(field("proto"))?;
        let src_ports: PortRange = parse_ports(&self.src_ports).map_err(field("src_ports"))?;
        let dst_ports: PortRange = parse_ports(&self.dst_ports).map_err(field("dst_ports"))?;
        let rule = Rule {
            id: self.id,
            vni: self.vni,
            src,
            dst,
            proto,
            src_ports,
            dst_ports,
            action: self.action,
            priority: self.priority,
            stateful: self.stateful,
        };
        if self.stateful == Some(true) && self.action == Action::Deny {
            return Err(SpecError {
                field: "stateful",
                reason: "a deny rule cannot be stateful (only allowed flows create connections)"
                    .to_string(),
            });
        }
        rule.validate().map_err(|e| SpecError {
            field: match e {
                RuleError::MixedFamily { .. } => "dst",
                RuleError::EmptyPortRange(..) => "dst_ports",
            },
            reason: e.to_string(),
        })?;
        Ok(rule)
    }
}

impl From<&Rule> for RuleSpec {
    fn from(r: &Rule) -> RuleSpec {
        let proto = if r.proto.is_any() || r.proto.mask == 0xff {
            r.proto.to_string()
        } else {
            // A masked protocol has no TOML form; keep the value so the dump
            // stays loadable (documented limitation).
            r.proto.value.to_string()
        };
        RuleSpec {
            vni: r.vni,
            src: r.src.to_string(),
            dst: r.dst.to_string(),
            proto,
            src_ports: r.src_ports.to_string(),
            dst_ports: r.dst_ports.to_string(),
            action: r.action,
            priority: r.priority,
            id: r.id,
            stateful: r.stateful,
        }
    }
}

/// Rule file formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// ClassBench filter format.
    #[default]
    Classbench,
}

/// One `[[acl.file]]` table: a rule file the dataplane reads and hands to
/// [`FileSpec::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Path of the file.
    pub path: String,
    /// Format (only `classbench` today).
    #[serde(default)]
    pub format: FileFormat,
    /// Action of every rule in the file.
    pub action: Action,
    /// Restrict every rule of the file to one tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
}

impl FileSpec {
    /// Parse the file's text (already read by the caller); messages use `path`.
    pub fn parse(&self, text: &str) -> Result<Vec<Rule>, ParseError> {
        let mut rules = match self.format {
            FileFormat::Classbench => parse_classbench(text, &self.path, self.action)?,
        };
        for r in &mut rules {
            r.vni = self.vni;
        }
        Ok(rules)
    }
}

/// A per-VNI default (`[[acl.vni]]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VniDefaultSpec {
    /// Tenant.
    pub vni: u32,
    /// Action for its flows that match no rule.
    pub default: Action,
}

/// The whole `[acl]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclSpec {
    /// Action when no rule matches (and the VNI has no default of its own).
    #[serde(default)]
    pub default: Action,
    /// Per-VNI defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vni: Vec<VniDefaultSpec>,
    /// Inline rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule: Vec<RuleSpec>,
    /// Rule files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file: Vec<FileSpec>,
}

/// Why an [`AclSpec`] does not make a rule set.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AclSpecError {
    /// `[[acl.rule]]` number `index` (0-based) is bad.
    #[error("acl.rule[{index}]: {source}")]
    Rule {
        /// Position in the `[[acl.rule]]` array.
        index: usize,
        /// What is wrong.
        source: SpecError,
    },
    /// A rule file does not parse.
    #[error(transparent)]
    File(#[from] ParseError),
    /// `file_texts` does not have one entry per `[[acl.file]]`.
    #[error("expected {expected} rule file texts, got {got}")]
    FileCount {
        /// Number of `[[acl.file]]` tables.
        expected: usize,
        /// Number of texts passed.
        got: usize,
    },
}

impl AclSpec {
    /// Build the rule set: inline rules first, then each file's rules, in
    /// order (explicit priorities reorder). `file_texts[i]` is the content of
    /// `self.file[i]`, read by the caller.
    pub fn to_rule_set(&self, file_texts: &[String]) -> Result<RuleSet, AclSpecError> {
        if file_texts.len() != self.file.len() {
            return Err(AclSpecError::FileCount {
                expected: self.file.len(),
                got: file_texts.len(),
            });
        }
        let mut set = RuleSet::new(self.default);
        for v in &self.vni {
            set.set_vni_default(v.vni, v.default);
        }
        for (index, spec) in self.rule.iter().enumerate() {
            let rule = spec
                .to_rule()
                .map_err(|source| AclSpecError::Rule { index, source })?;
            // `to_rule` validated the rule, so `push` cannot fail here; map
            // the impossible error anyway instead of unwrapping.
            set.push(rule).map_err(|e| AclSpecError::Rule {
                index,
                source: SpecError {
                    field: "rule",
                    reason: e.to_string(),
                },
            })?;
        }
        for (f, text) in self.file.iter().zip(file_texts) {
            for rule in f.parse(text)? {
                // ClassBench rules are IPv4 with valid ranges, always valid.
                if rule.validate().is_ok() {
                    set.push(rule).ok();
                }
            }
        }
        Ok(set)
    }

    /// The spec of a rule set (inline rules only), for dumping to TOML.
    pub fn from_rule_set(set: &RuleSet) -> AclSpec {
        AclSpec {
            default: set.default_action,
            vni: set
                .vni_defaults
                .iter()
                .map(|(&vni, &default)| VniDefaultSpec { vni, default })
                .collect(),
            rule: set.rules().iter().map(RuleSpec::from).collect(),
            file: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        acl: AclSpec,
    }

    const CFG: &str = r#"
[acl]
default = "deny"

[[acl.vni]]
vni = 7
default = "allow"

[[acl.rule]]
vni = 100
src = "10.0.0.0/8"
proto = "tcp"
dst_ports = "443"
action = "allow"
priority = 10
id = 1

[[acl.rule]]
dst = "2001:db8::/32"
src_ports = "1024-65535"
action = "deny"

[[acl.file]]
path = "rules.cb"
action = "deny"
vni = 5
"#;

    #[test]
    fn test_spec_roundtrip() {
        let cfg: Config = toml::from_str(CFG).unwrap();
        let texts = vec!["@1.2.3.4/32\t0.0.0.0/0\t0 : 65535\t80 : 80\t0x06/0xFF\n".to_string()];
        let set = cfg.acl.to_rule_set(&texts).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.default_action, Action::Deny);
        assert_eq!(set.vni_defaults.get(&7), Some(&Action::Allow));
        assert_eq!(set.rules()[0].dst_ports, PortRange::single(443));
        assert_eq!(set.rules()[2].vni, Some(5));
        let dumped = toml::to_string(&Config {
            acl: AclSpec::from_rule_set(&set),
        })
        .unwrap();
        let back: Config = toml::from_str(&dumped).unwrap();
        let set2 = back.acl.to_rule_set(&[]).unwrap();
        assert_eq!(set2.rules(), set.rules(), "{dumped}");
    }

    #[test]
    fn test_proto_and_ports_as_integers() {
        let cfg: Config = toml::from_str(
            "[acl]\n[[acl.rule]]\nproto = 17\ndst_ports = 53\nsrc_ports = \"1024-65535\"\naction = \"allow\"\n",
        )
        .unwrap();
        let r = cfg.acl.rule[0].to_rule().unwrap();
        assert_eq!(r.proto.value, 17);
        assert_eq!(cfg.acl.rule[0].dst_ports, "53");
        let named: Config = toml::from_str(
            "[acl]\n[[acl.rule]]\nproto = \"udp\"\ndst_ports = \"53\"\nsrc_ports = \"1024-65535\"\naction = \"allow\"\n",
        )
        .unwrap();
        assert_eq!(named.acl.rule[0].to_rule().unwrap(), r);
        for bad in [
            "proto = 1.5",
            "proto = true",
            "proto = -1",
            "dst_ports = [1]",
        ] {
            let e = toml::from_str::<Config>(&format!(
                "[acl]\n[[acl.rule]]\n{bad}\naction = \"allow\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("a name, a number or \"any\""), "{bad}: {e}");
        }
        let e = toml::from_str::<Config>("[acl]\n[[acl.rule]]\nproto = 300\naction = \"allow\"\n")
            .unwrap()
            .acl
            .rule[0]
            .to_rule()
            .unwrap_err();
        assert_eq!(e.field, "proto");
    }

    #[test]
    fn test_spec_errors() {
        let e = toml::from_str::<Config>("[acl]\n[[acl.rule]]\naction=\"allow\"\nsrcc=\"any\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("srcc"), "{e}");
        let spec = |src: &str, ports: &str, proto: &str| RuleSpec {
            vni: None,
            src: src.into(),
            dst: "any".into(),
            proto: proto.into(),
            src_ports: "any".into(),
            dst_ports: ports.into(),
            action: Action::Allow,
            priority: None,
            id: None,
            stateful: None,
        };
        assert_eq!(
            spec("10.0.0.0/40", "any", "any")
                .to_rule()
                .unwrap_err()
                .field,
            "src"
        );
        assert_eq!(
            spec("any", "80-70", "any").to_rule().unwrap_err().field,
            "dst_ports"
        );
        assert_eq!(
            spec("any", "any", "tcpp").to_rule().unwrap_err().field,
            "proto"
        );
        let mut mixed = spec("10.0.0.0/8", "any", "any");
        mixed.dst = "::/0".into();
        assert_eq!(mixed.to_rule().unwrap_err().field, "dst");
        let acl = AclSpec {
            rule: vec![spec("x", "any", "any")],
            ..AclSpec::default()
        };
        let e = acl.to_rule_set(&[]).unwrap_err();
        assert!(e.to_string().starts_with("acl.rule[0]: field `src`"), "{e}");
    }
}
