//! Smoke test of the benchmark suite: a `--tiny` run completes, writes a
//! well-formed results.json, the report and every plot; `--check` rejects a
//! malformed results file. Figures are not asserted (the machine may be busy).

use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dpgw-suite-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tiny_run_writes_report_json_and_plots() {
    let out = scratch("tiny");
    let st = Command::new(env!("CARGO_BIN_EXE_suite"))
        .args(["--tiny", "--no-peers", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "suite --tiny failed: {st:?}");

    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema"], 2);
    assert_eq!(v["settings"]["mode"], "tiny");
    assert!(v["machine"]["tsc_ghz"].as_f64().unwrap() > 0.0);
    assert!(!v["machine"]["cpu_model"].as_str().unwrap().is_empty());
    let rows = v["replay"].as_array().unwrap();
    let groups: std::collections::HashSet<&str> = rows
        .iter()
        .map(|r| r["scenario"]["group"].as_str().unwrap())
        .collect();
    for g in [
        "target",
        "frame_size",
        "flows",
        "acl",
        "services",
        "workers",
        "family",
        "io_only",
    ] {
        assert!(groups.contains(g), "no {g} row in {groups:?}");
    }
    for r in rows {
        // Every packet is accounted for, and nothing but the io_only row drops.
        assert_eq!(r["conserved"], true, "{}", r["scenario"]["label"]);
        let label = r["scenario"]["label"].as_str().unwrap();
        if label != "io_only" {
            assert_eq!(r["tx"], r["rx"], "{label} dropped packets: {}", r["drops"]);
        } else {
            assert_eq!(r["tx"], 0);
        }
        assert!(r["mpps"]["median"].as_f64().unwrap() > 0.0, "{label}");
    }
    assert!(
        v["errors"].as_array().unwrap().is_empty(),
        "{}",
        v["errors"]
    );
    assert!(v["stages"]["rows"].as_array().unwrap().len() >= 8);
    assert_eq!(v["latency"]["points"].as_array().unwrap().len(), 3);
    assert!(!v["line_rate"].as_array().unwrap().is_empty());

    let plots = v["plots"].as_array().unwrap();
    assert_eq!(plots.len(), 5);
    for p in plots {
        let svg = std::fs::read_to_string(out.join(p.as_str().unwrap())).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{p}"
        );
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for h in [
        "## Target",
        "## Cost per stage",
        "## Line rate",
        "## Latency",
        "## How to read",
    ] {
        assert!(md.contains(h), "report.md lacks {h}");
    }
    // The configs are kept so a row can be rerun with `dpgw replay`.
    assert!(out.join("configs/target.toml").is_file());
    // Captures are removed unless --keep-captures.
    assert!(!out.join("captures").exists());

    let st = Command::new(env!("CARGO_BIN_EXE_suite"))
        .arg("--check")
        .arg(out.join("results.json"))
        .status()
        .unwrap();
    assert!(st.success());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn check_rejects_malformed_results() {
    let d = scratch("check");
    let bad = [
        ("notjson.json", "{\"schema\": 1,"),
        ("missing.json", "{\"schema\": 1, \"replay\": []}"),
    ];
    for (name, text) in bad {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        let st = Command::new(env!("CARGO_BIN_EXE_suite"))
            .arg("--check")
            .arg(&p)
            .status()
            .unwrap();
        assert!(!st.success(), "{name} accepted");
    }
    let _ = std::fs::remove_dir_all(&d);
}
