//! The ClassBench filter parser, then the compiled classifier against the
//! linear reference on keys taken from the parsed rules and the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = acl::parse_classbench(text, "fuzz", acl::Action::Deny) else {
        return;
    };
    for (i, r) in rules.iter().enumerate() {
        assert_eq!(r.id, Some(i as u32));
        assert!(
            r.validate().is_ok(),
            "parser produced an invalid rule {r:?}"
        );
    }
    if rules.len() > 64 {
        return;
    }
    dpgw_fuzz::agree(&rules, acl::Action::Allow, data);
});
