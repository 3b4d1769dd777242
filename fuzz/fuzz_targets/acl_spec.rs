//! The TOML rule forms: an `[acl]` section (`AclSpec` with `RuleSpec`s) via
//! toml, turned into a rule set and compiled; the classifier must agree with
//! the linear reference.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = toml::from_str::<acl::AclSpec>(text) else {
        return;
    };
    let texts = vec![String::new(); spec.file.len()];
    let Ok(set) = spec.to_rule_set(&texts) else {
        return;
    };
    // Every inline rule's field forms parse back through their own parsers.
    for r in &spec.rule {
        let rule = r.to_rule().expect("to_rule_set accepted it");
        let again = acl::RuleSpec::from(&rule)
            .to_rule()
            .expect("RuleSpec::from(rule) re-parses");
        assert_eq!(again, rule, "RuleSpec round trip changed the rule");
    }
    if set.len() > 64 {
        return;
    }
    dpgw_fuzz::agree_set(&set, data);
});
