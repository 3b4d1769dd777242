//! The control protocol: one request line as the daemon's server decodes it
//! (`control::decode_request`: JSON, object, version, command), then what the
//! server does with it against the fixed gateway's state — a mutation is
//! validated and applied to a copy (`Desired::apply`) and its tables built,
//! a read is answered (`Desired::list`). Checked: no panic; a decoded command
//! survives the client's encoding (`Request::to_line`) unchanged; the state
//! after an accepted mutation is a configuration `config save` can write and
//! `dpgw run` load back (valid, and equal after a TOML round trip).
#![no_main]

use std::sync::OnceLock;

use ctl::{Command, Request};
use dataplane::config::Config;
use dataplane::control::decode_request;
use dataplane::control::state::Desired;
use dataplane::tables::Tables;
use libfuzzer_sys::fuzz_target;

fn desired() -> &'static Desired {
    static D: OnceLock<Desired> = OnceLock::new();
    D.get_or_init(|| {
        let text = dpgw_fuzz::FIXED_TOML.replace("{VTEPS}", "\"10.0.0.1\", \"fd00::1\"");
        let cfg = Config::parse(&text).expect("fixed config parses");
        Desired::new(&cfg).expect("fixed config is a valid state")
    })
}

fuzz_target!(|data: &[u8]| {
    // The server cuts requests at newlines and at 1 MiB; the decoder sees one line.
    let line = data.split(|b| *b == b'\n').next().unwrap_or(data);
    let Ok(cmd) = decode_request(line) else {
        return;
    };
    let again = Request::new(cmd.clone()).to_line();
    let back = decode_request(again.trim_end().as_bytes())
        .unwrap_or_else(|e| panic!("re-encoded request does not decode: {e}\n{again}"));
    assert_eq!(back, cmd, "encode/decode round trip changed the command");

    let d = desired();
    if matches!(cmd, Command::ConfigSave { .. }) {
        return; // file I/O: covered by the control socket tests
    }
    if !cmd.is_mutation() {
        let _ = d.list(&cmd);
        return;
    }
    let Ok(change) = d.apply(&cmd) else {
        return;
    };
    let cfg = change.next.config();
    assert_eq!(
        cfg.validate(),
        Vec::<String>::new(),
        "accepted mutation left an invalid config"
    );
    let text = cfg.to_toml();
    let reloaded =
        Config::parse(&text).unwrap_or_else(|e| panic!("saved config does not load: {e}\n{text}"));
    assert_eq!(&reloaded, cfg, "saved config changed on reload");
    // Table sizes up to 655373 are valid; keep the build to small ones.
    if cfg.service.iter().all(|s| s.table_size <= 5003) {
        if let Err(p) = Tables::build(cfg, 2) {
            panic!("accepted mutation does not build: {p:?}");
        }
    }
});
