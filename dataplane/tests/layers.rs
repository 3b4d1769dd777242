//! The layers of `dataplane/src` as `docs/architecture.md` draws them: every
//! `crate::…` path in a module's code names a module that the table allows
//! it to import, and the module graph has no cycle. Comments, doc comments
//! and `#[cfg(test)]` modules are not code here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Module name → modules it may import, from the table in docs/architecture.md.
fn allowed() -> BTreeMap<String, BTreeSet<String>> {
    let doc = Path::new(ROOT).join("../docs/architecture.md");
    let text = std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() != 3 || !cells[0].starts_with('`') {
            continue;
        }
        let name = cells[0].trim_matches('`').to_string();
        let deps = cells[2]
            .split(',')
            .map(|d| d.trim().trim_matches('`').to_string())
            .filter(|d| !d.is_empty() && d != "—")
            .collect();
        out.insert(name, deps);
    }
    assert!(out.len() > 10, "no module table found in {}", doc.display());
    out
}

/// The module a source file belongs to: top-level modules, with the I/O
/// backends (`io::pcap`, …) as modules of their own; `io/mod.rs` and
/// `io/buf.rs` are the `io` vocabulary.
fn module_of(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [f] if f == "lib" || f == "main" => None,
        [f] => Some(f.clone()),
        [d, f] if d == "io" && (f == "mod" || f == "buf") => Some("io".into()),
        [d, f] if d == "io" => Some(format!("io::{f}")),
        [d, ..] => Some(d.clone()),
        [] => None,
    }
}

/// The code of a file without comments and without its test modules.
fn code(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(p) => &line[..p],
            None => line,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

/// Modules named by `crate::a` / `crate::a::b` paths and `use crate::{a, b}`
/// groups on one line.
fn references(line: &str, known: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(p) = rest.find("crate::") {
        rest = &rest[p + "crate::".len()..];
        let mut names = Vec::new();
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                names.push(item.trim().to_string());
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_string());
        }
        for n in names {
            let segs: Vec<&str> = n.split("::").collect();
            let two = segs.iter().take(2).copied().collect::<Vec<_>>().join("::");
            if known.contains(&two) {
                out.push(two);
            } else if !segs[0].is_empty() {
                out.push(segs[0].to_string());
            }
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn imports_follow_the_layer_table_and_have_no_cycle() {
    let allowed = allowed();
    let known: BTreeSet<String> = allowed.keys().cloned().collect();
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let Some(m) = module_of(rel) else { continue };
        let Some(may) = allowed.get(&m) else {
            wrong.push(format!(
                "{}: module `{m}` has no row in docs/architecture.md",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in code(&text) {
            for r in references(&line, &known) {
                if r == m || r == "io" && m.starts_with("io::") {
                    continue;
                }
                if !known.contains(&r) {
                    wrong.push(format!(
                        "{}:{n}: `crate::{r}` is not a module of the table",
                        rel.display()
                    ));
                } else if !may.contains(&r) {
                    wrong.push(format!(
                        "{}:{n}: `{m}` imports `{r}`, which docs/architecture.md does not allow",
                        rel.display()
                    ));
                }
                graph.entry(m.clone()).or_default().insert(r);
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations:\n{}", wrong.join("\n"));

    // No cycle (depth-first search with colours).
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(1) => {
                let start = path.iter().position(|x| x == m).unwrap();
                let mut c = path[start..].to_vec();
                c.push(m.to_string());
                return Some(c);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if let Some(c) = visit(m, &graph, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", c.join(" → "));
        }
    }
}

#[test]
fn the_table_itself_has_no_cycle_and_names_every_source_module() {
    let allowed = allowed();
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mods: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(f.strip_prefix(&src).unwrap()))
        .collect();
    for m in allowed.keys() {
        assert!(
            mods.contains(m),
            "docs/architecture.md lists `{m}`, which has no source file"
        );
        for d in &allowed[m] {
            assert!(
                allowed.contains_key(d),
                "`{m}` may import `{d}`, which has no row"
            );
        }
    }
}
