//! ClassBench sets: answers equal rte_acl's (CutSplit traces) and the linear
//! reference (all NeuroCuts sets, generated traces).

use std::time::Instant;

use acl::{
    generate_trace, parse_classbench, parse_classbench_trace, Action, BuildParams, Classifier, Key,
    LinearClassifier, RuleSet, Walk,
};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/classbench"
);

fn load(path: &str) -> RuleSet {
    let text = std::fs::read_to_string(path).unwrap();
    let mut set = RuleSet::new(Action::Deny);
    set.extend(parse_classbench(&text, path, Action::Allow).unwrap())
        .unwrap();
    set
}

fn check_cutsplit(name: &str) {
    let set = load(&format!("{DIR}/cutsplit/{name}"));
    let tpath = format!("{DIR}/cutsplit/{name}_trace");
    let trace = parse_classbench_trace(&std::fs::read_to_string(&tpath).unwrap(), &tpath).unwrap();
    let expected: Vec<u32> = std::fs::read_to_string(format!("{tpath}.expected"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(trace.len(), expected.len());
    let c = Classifier::new(&set);
    let keys: Vec<Key> = trace.iter().map(|e| e.key).collect();
    let mut out = vec![0u32; keys.len()];
    c.classify_burst(&keys, &mut out);
    for (i, ((k, &got), &want)) in keys.iter().zip(&out).zip(&expected).enumerate() {
        assert_eq!(got, want, "{name} trace line {}: {k:?}", i + 1);
        assert_eq!(c.classify(k), want);
        assert!(trace[i].filter >= want);
    }
}

#[test]
fn cutsplit_acl_1k_matches_rte_acl() {
    check_cutsplit("acl_1k");
}

#[test]
fn cutsplit_fw_1k_matches_rte_acl() {
    check_cutsplit("fw_1k");
}

#[test]
fn cutsplit_ipc_1k_matches_rte_acl() {
    check_cutsplit("ipc_1k");
}

fn check_neurocuts(name: &str, n: usize) {
    let set = load(&format!("{DIR}/neurocuts/{name}"));
    assert!(set.len() > 500, "{name}: {} rules", set.len());
    let t0 = Instant::now();
    let c = Classifier::new(&set);
    let built = t0.elapsed();
    let lin = LinearClassifier::new(&set);
    let trace = generate_trace(set.rules(), n, 0x5eed ^ set.len() as u64);
    let keys: Vec<Key> = trace.iter().map(|e| e.key).collect();
    let mut out = vec![0u32; keys.len()];
    c.classify_burst(&keys, &mut out);
    // The other walks must agree too.
    let others: Vec<Vec<u32>> = [Walk::One, Walk::Group, Walk::Interleave]
        .into_iter()
        .filter(|&w| w != c.stats().walk)
        .map(|w| {
            let other = Classifier::with_params(
                &set,
                BuildParams {
                    walk: Some(w),
                    ..BuildParams::default()
                },
            );
            let mut o = vec![0u32; keys.len()];
            other.classify_burst(&keys, &mut o);
            o
        })
        .collect();
    let out2: Vec<u32> = (0..keys.len())
        .map(|i| {
            let v = others[0][i];
            assert!(
                others.iter().all(|o| o[i] == v),
                "{name}: walks disagree on key {i}"
            );
            v
        })
        .collect();
    for ((e, &got), &got2) in trace.iter().zip(&out).zip(&out2) {
        let want = lin.classify(&e.key);
        assert!(
            want <= e.filter,
            "{name}: generator made a key outside its rule"
        );
        assert_eq!(got, want, "{name}: {:?}", e.key);
        assert_eq!(got2, want, "{name} (other walk): {:?}", e.key);
    }
    eprintln!(
        "{name}: {} rules, build {built:?}, {:?}",
        set.len(),
        c.stats()
    );
}

macro_rules! neurocuts {
    ($($t:ident => $name:literal, $n:expr;)*) => {
        $(#[test] fn $t() { check_neurocuts($name, $n); })*
    };
}

neurocuts! {
    neurocuts_acl1_1k => "acl1_1k", 2000;
    neurocuts_acl2_1k => "acl2_1k", 2000;
    neurocuts_acl3_1k => "acl3_1k", 2000;
    neurocuts_acl4_1k => "acl4_1k", 2000;
    neurocuts_acl5_1k => "acl5_1k", 2000;
    neurocuts_fw1_1k => "fw1_1k", 2000;
    neurocuts_fw2_1k => "fw2_1k", 2000;
    neurocuts_fw3_1k => "fw3_1k", 2000;
    neurocuts_fw4_1k => "fw4_1k", 2000;
    neurocuts_fw5_1k => "fw5_1k", 2000;
    neurocuts_ipc1_1k => "ipc1_1k", 2000;
    neurocuts_ipc2_1k => "ipc2_1k", 2000;
    neurocuts_acl1_10k => "acl1_10k", 2000;
    neurocuts_fw1_10k => "fw1_10k", 2000;
    neurocuts_ipc1_10k => "ipc1_10k", 2000;
}
