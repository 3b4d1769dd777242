//! `pcaps/demo.pcap` is remade byte for byte by the `dpgw gen` command that
//! `pcaps/README.md` and `README.md` quote, run by the real binary: the
//! generator is deterministic, and the committed capture and its recipe do
//! not drift apart.

use std::path::Path;
use std::process::Command;

const RECIPE: &str = "dpgw gen --out pcaps/demo.pcap ";

/// Every backquoted `dpgw gen --out pcaps/demo.pcap …` command in `text`.
fn recipes(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with(RECIPE))
        .map(str::to_string)
        .collect()
}

#[test]
fn demo_pcap_is_remade_by_its_recipe() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for doc in ["pcaps/README.md", "README.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let r = recipes(&text);
        assert!(!r.is_empty(), "{doc} quotes no `{RECIPE}…` command");
        found.extend(r.into_iter().map(|c| (doc, c)));
    }
    let cmd = &found[0].1;
    for (doc, c) in &found {
        assert_eq!(c, cmd, "{doc} quotes another recipe than pcaps/README.md");
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.pcap");
    let args: Vec<&str> = cmd[RECIPE.len()..].split_whitespace().collect();
    let o = Command::new(env!("CARGO_BIN_EXE_dpgw"))
        .args(["gen", "--out"])
        .arg(&out)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let made = std::fs::read(&out).unwrap();
    let committed = std::fs::read(root.join("pcaps/demo.pcap")).unwrap();
    assert_eq!(made.len(), committed.len(), "{cmd}: capture length");
    if let Some(at) = made.iter().zip(&committed).position(|(a, b)| a != b) {
        panic!("{cmd}: first differing byte at offset {at}");
    }
}
