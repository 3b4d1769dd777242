//! The TOML configuration: `Config::parse`, `validate`, the `to_toml` round
//! trip, and (for small, file-free configs) building the fast-path tables.
#![no_main]

use dataplane::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text) else {
        return;
    };
    let problems = cfg.validate();
    // `to_toml` promises text that `parse` accepts back, unchanged.
    let back = Config::parse(&cfg.to_toml())
        .unwrap_or_else(|e| panic!("to_toml output does not parse: {e}\n{}", cfg.to_toml()));
    assert_eq!(back, cfg, "to_toml round trip changed the config");
    if !problems.is_empty() {
        return;
    }
    // Building reads rule files and allocates Maglev tables and flow tables:
    // keep to configs that do neither on a large scale.
    let small = cfg.acl.as_ref().is_none_or(|a| a.file.is_empty())
        && cfg
            .service
            .iter()
            .all(|s| s.table_size <= 5003 && s.backends.len() <= 64)
        && cfg.service.len() <= 16;
    if small {
        let _ = dataplane::tables::Tables::build(&cfg, 1);
    }
});
