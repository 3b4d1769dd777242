//! `dpgwctl` against a scripted server: the request it sends, what it prints,
//! and its exit status.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::Command;

use ctl::{Command as Cmd, Data, Request, Response};

/// Runs `dpgwctl args...` against a server that answers the one request with
/// `resp`; returns (request seen, exit code, stdout, stderr).
fn run(args: &[&str], resp: Response) -> (Request, i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        (&s).write_all(resp.to_line().as_bytes()).unwrap();
        serde_json::from_str::<Request>(&line).unwrap()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_dpgwctl"))
        .env("DPGW_SOCKET", &sock)
        .args(args)
        .output()
        .unwrap();
    let req = server.join().unwrap();
    (
        req,
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn test_rule_add_prints_the_id() {
    let mut r = Response::ok(Some(Data::RuleIds { ids: vec![42] }));
    r.generation = Some(3);
    r.live = Some(true);
    let (req, code, out, _) = run(
        &[
            "rule",
            "add",
            "--dst",
            "10.0.0.0/8",
            "--dport",
            "80-90",
            "--action",
            "deny",
            "--priority",
            "5",
        ],
        r,
    );
    assert_eq!(code, 0);
    assert_eq!(out, "42\n");
    let Cmd::RuleAdd { rule } = req.cmd else {
        panic!("{req:?}")
    };
    assert_eq!(
        (rule.dst.as_str(), rule.dst_ports.as_str(), rule.priority),
        ("10.0.0.0/8", "80-90", Some(5))
    );
    assert_eq!(rule.id, None);
}

#[test]
fn test_error_is_one_line_and_nonzero() {
    let (req, code, out, err) = run(
        &["backend", "del", "web", "10.0.0.9"],
        Response::error(
            ctl::ErrorCode::NotFound,
            "service \"web\": backend 10.0.0.9: no such backend",
        ),
    );
    assert!(matches!(req.cmd, Cmd::BackendDel { .. }));
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(
        err,
        "dpgwctl: service \"web\": backend 10.0.0.9: no such backend\n"
    );
}

#[test]
fn test_json_output_and_drain() {
    let mut r = Response::ok(None);
    r.generation = Some(9);
    r.live = Some(false);
    let (req, code, out, _) = run(
        &["--json", "backend", "drain", "web", "10.0.0.9"],
        r.clone(),
    );
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Response>(&out).unwrap(), r);
    assert!(matches!(
        req.cmd,
        Cmd::BackendState {
            state: ctl::BackendState::Draining,
            ..
        }
    ));
}

#[test]
fn test_rule_load_sends_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.cb");
    std::fs::write(
        &f,
        "@1.2.3.4/32\t0.0.0.0/0\t0 : 65535\t80 : 80\t0x06/0xFF\n",
    )
    .unwrap();
    let (req, code, out, _) = run(
        &[
            "rule",
            "load",
            f.to_str().unwrap(),
            "--format",
            "classbench",
            "--replace",
        ],
        Response::ok(Some(Data::RuleIds { ids: vec![1] })),
    );
    assert_eq!(code, 0, "{out}");
    let Cmd::RuleLoad {
        content,
        replace,
        format,
        ..
    } = req.cmd
    else {
        panic!()
    };
    assert!(content.starts_with("@1.2.3.4/32") && replace && format == ctl::RuleFormat::Classbench);
}

#[test]
fn test_no_daemon() {
    let out = Command::new(env!("CARGO_BIN_EXE_dpgwctl"))
        .args(["--socket", "/nonexistent/dpgw.sock", "stats"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("dpgwctl: cannot connect to /nonexistent/dpgw.sock")
            && err.lines().count() == 1,
        "{err}"
    );
}
