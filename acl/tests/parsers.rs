//! Parsers never panic on arbitrary text, and every error names a real line.

use acl::{
    parse_classbench, parse_classbench_trace, parse_ports, parse_prefix, parse_proto, Action,
};
use proptest::prelude::*;

fn classbench_like() -> impl Strategy<Value = String> {
    // Lines close to the real format (so parsing goes deep), mutated.
    let tok = prop_oneof![
        Just("@1.2.3.4/32".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("0 : 65535".to_string()),
        Just("80 : 80".to_string()),
        Just("0x06/0xFF".to_string()),
        Just("0x0000/0x0000".to_string()),
        "[ -~]{0,12}",
    ];
    prop::collection::vec(prop::collection::vec(tok, 0..8), 0..6).prop_map(|lines| {
        lines
            .into_iter()
            .map(|l| l.join("\t"))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

proptest! {
    #[test]
    fn classbench_never_panics(text in classbench_like()) {
        let lines = text.lines().count();
        match parse_classbench(&text, "f", Action::Allow) {
            Ok(rules) => prop_assert!(rules.len() <= lines),
            Err(e) => {
                prop_assert_eq!(e.file.as_str(), "f");
                prop_assert!(e.line >= 1 && e.line <= lines);
            }
        }
    }

    #[test]
    fn trace_never_panics(text in "[0-9 \t\n-]{0,80}") {
        let _ = parse_classbench_trace(&text, "t");
    }

    #[test]
    fn fields_never_panic(s in "[ -~]{0,24}") {
        let _ = (parse_prefix(&s), parse_ports(&s), parse_proto(&s));
    }
}
