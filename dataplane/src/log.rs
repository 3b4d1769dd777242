//! Structured events on stderr, one line each, in logfmt (the default; what
//! journald keeps as is and log shippers such as Vector, Promtail and
//! Fluent Bit parse) or JSON lines (`DPGW_LOG_FORMAT=json`), filtered by level
//! (`DPGW_LOG=error|warn|info|debug`, default `info`):
//!
//! ```text
//! ts=2026-12-01T23:55:01.123Z level=info event=config_change generation=7 cmd=backend_add summary="..."
//! ```
//!
//! Events are for what an operator looks for afterwards (configuration
//! changes with their generation and what changed, reloads, health
//! transitions, errors); the final counters of a run stay a human report.
//! Never called per packet.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;

/// Severity, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" | "trace" => Level::Debug,
            _ => return None,
        })
    }
}

struct Settings {
    max: Level,
    json: bool,
}

fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| Settings {
        max: std::env::var("DPGW_LOG")
            .ok()
            .and_then(|v| Level::parse(&v))
            .unwrap_or(Level::Info),
        json: std::env::var("DPGW_LOG_FORMAT").is_ok_and(|v| v.trim() == "json"),
    })
}

/// Whether events of `level` are written.
pub fn enabled(level: Level) -> bool {
    level <= settings().max
}

/// UTC time as RFC 3339 with milliseconds.
fn timestamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn logfmt_value(out: &mut String, v: &str) {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && c != '"' && c != '=' && !c.is_control());
    if plain {
        out.push_str(v);
    } else {
        out.push('"');
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:04x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// One event line: `event` names what happened, `fields` say the rest.
pub fn event(level: Level, event: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    if !enabled(level) {
        return;
    }
    let line = format_event(settings().json, &timestamp(), level, event, fields);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The line `event` writes (without the clock, for tests).
pub fn format_event(
    json: bool,
    ts: &str,
    level: Level,
    event: &str,
    fields: &[(&str, &dyn std::fmt::Display)],
) -> String {
    if json {
        let mut m = serde_json::Map::new();
        m.insert("ts".into(), ts.into());
        m.insert("level".into(), level.name().into());
        m.insert("event".into(), event.into());
        for (k, v) in fields {
            m.insert((*k).into(), v.to_string().into());
        }
        let mut s = serde_json::Value::Object(m).to_string();
        s.push('\n');
        s
    } else {
        let mut s = format!("ts={ts} level={} event=", level.name());
        logfmt_value(&mut s, event);
        for (k, v) in fields {
            s.push(' ');
            s.push_str(k);
            s.push('=');
            logfmt_value(&mut s, &v.to_string());
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_logfmt_and_json_lines() {
        let g = 7u64;
        let l = format_event(
            false,
            "T",
            Level::Info,
            "config_change",
            &[("generation", &g), ("summary", &"backend add \"x\"=1")],
        );
        assert_eq!(
            l,
            "ts=T level=info event=config_change generation=7 summary=\"backend add \\\"x\\\"=1\"\n"
        );
        let j = format_event(
            true,
            "T",
            Level::Warn,
            "reload_failed",
            &[("error", &"bad\nfile")],
        );
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["error"], "bad\nfile");
        assert!(Level::Error < Level::Debug);
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert!(
            timestamp().ends_with('Z') && timestamp().len() == 24,
            "{}",
            timestamp()
        );
    }
}
