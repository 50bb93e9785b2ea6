//! The `impush` binary's admin console as a new user meets it: the embedded default prints a
//! generated `admin.secret` and where the console is, and that secret logs in; a configured
//! secret is never printed.

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_impush");

fn spawn(env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(BIN);
    c.env_remove("RUST_LOG")
        .env("IMPUSH_NODE__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Reads stdout up to the console line; returns every line so far.
fn until_console_line(child: &mut Child) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        let done = line.starts_with("admin console at ");
        lines.push(line);
        if done {
            return lines;
        }
        assert!(lines.len() < 10, "no console line: {lines:?}");
    }
    panic!("stdout ended: {lines:?}");
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
}

/// `POST /admin/api/login` with `secret`: the status line and the whole answer.
fn login(addr: &str, secret: &str) -> String {
    let body = format!("{{\"secret\":\"{secret}\"}}");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /admin/api/login HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn the_embedded_default_prints_an_admin_secret_that_logs_in() {
    let mut child = spawn(&[]);
    let lines = until_console_line(&mut child);
    let addr = lines[0]
        .strip_prefix("impush listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let secret = lines
        .iter()
        .find_map(|l| l.strip_prefix("generated admin.secret = "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no generated admin.secret in {lines:?}"))
        .to_owned();
    let key = lines
        .iter()
        .find_map(|l| l.strip_prefix("generated auth.api_key = "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    assert_ne!(secret, key, "the console has its own secret");
    assert_eq!(
        lines.last().unwrap(),
        &format!("admin console at http://{addr}/admin")
    );

    let ok = login(&addr, &secret);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("set-cookie: impush_admin="), "{ok}");
    let refused = login(&addr, key);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    stop(child);
}

#[test]
fn a_configured_admin_secret_is_not_printed() {
    let secret = "configured-admin-secret-value";
    let mut child = spawn(&[("IMPUSH_ADMIN__SECRET", secret)]);
    let lines = until_console_line(&mut child);
    assert!(
        lines
            .iter()
            .all(|l| !l.contains(secret) && !l.contains("admin.secret")),
        "{lines:?}"
    );
    stop(child);
}
