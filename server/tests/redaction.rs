//! Broker and store URLs whose passwords hold `@`, `:`, `/`, `,` or percent-escapes never reach
//! what the `impush` binary prints: its start-up error when the backend is unreachable, its logs
//! (at `debug`, so the redacted URLs of every log line are read) and its config errors.

#![allow(clippy::unwrap_used)]

use std::{
    net::TcpListener,
    process::{Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_impush");

/// Passwords and the parts of them that must never be printed.
const PASSWORDS: &[(&str, &[&str])] = &[
    // The case: Redis's own redaction split at the first `@` and printed `ret-tail`.
    ("sxq@ret-tail", &["sxq", "ret-tail"]),
    ("pqz:wqz@xqz/yqz", &["pqz", "wqz", "xqz", "yqz"]),
    (
        "aqk/bqk@cqk:dqk?eqk#fqk",
        &["aqk", "bqk", "cqk", "dqk", "eqk", "fqk"],
    ),
    ("mqv,nqv@oqv", &["mqv", "nqv", "oqv"]),
    ("gqj%40hqj%2Fiqj", &["gqj", "hqj", "iqj"]),
];

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `impush` with `env` until it gives up, returning everything it printed.
fn run(env: &[(&str, String)]) -> (i32, String) {
    let mut c = Command::new(BIN);
    c.env_remove("IMPUSH_TEST_REDIS_URL")
        .env("RUST_LOG", "debug")
        .env("IMPUSH_NODE__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), all)
}

/// Asserts that the URL was printed, redacted, and no part of the password.
fn assert_hidden(printed: &str, password: &str, parts: &[&str]) {
    assert!(
        printed.contains(":***@127.0.0.1:"),
        "the redacted URL names the host:\n{printed}"
    );
    assert_no_part(printed, password, parts);
}

fn assert_no_part(printed: &str, password: &str, parts: &[&str]) {
    for p in parts {
        assert!(
            !printed.contains(p),
            "password {password:?}: {p:?} was printed:\n{printed}"
        );
    }
}

#[test]
fn redis_broker_url_passwords_are_not_printed() {
    let port = closed_port();
    for (pw, parts) in PASSWORDS {
        for user in ["", "impush"] {
            let url = format!("redis://{user}:{pw}@127.0.0.1:{port}/0");
            let (code, printed) = run(&[
                ("IMPUSH_BROKER__KIND", "redis".into()),
                ("IMPUSH_BROKER__URL", url.clone()),
                ("IMPUSH_BROKER__COMMAND_TIMEOUT", "300ms".into()),
            ]);
            assert_ne!(code, 0, "{url} cannot connect:\n{printed}");
            assert!(
                printed.contains("127.0.0.1"),
                "the host is named:\n{printed}"
            );
            assert_hidden(&printed, pw, parts);
        }
    }
}

#[test]
fn redis_presence_url_passwords_are_not_printed() {
    let port = closed_port();
    for (pw, parts) in PASSWORDS {
        let url = format!("rediss://:{pw}@127.0.0.1:{port}");
        let (code, printed) = run(&[
            ("IMPUSH_PRESENCE__KIND", "redis".into()),
            ("IMPUSH_PRESENCE__URL", url.clone()),
            ("IMPUSH_PRESENCE__COMMAND_TIMEOUT", "300ms".into()),
        ]);
        assert_ne!(code, 0, "{url} cannot connect:\n{printed}");
        assert_hidden(&printed, pw, parts);
    }
}

#[test]
fn rabbitmq_url_passwords_are_not_printed() {
    let port = closed_port();
    for (pw, parts) in PASSWORDS {
        for scheme in ["amqp", "amqps"] {
            let url = format!("{scheme}://guest:{pw}@127.0.0.1:{port}/%2f");
            let (code, printed) = run(&[
                ("IMPUSH_BROKER__KIND", "rabbitmq".into()),
                ("IMPUSH_BROKER__URL", url.clone()),
                ("IMPUSH_BROKER__CONNECT_TIMEOUT", "500ms".into()),
            ]);
            assert_ne!(code, 0, "{url} cannot connect:\n{printed}");
            assert_hidden(&printed, pw, parts);
        }
    }
}

#[test]
fn kafka_url_with_credentials_is_refused_without_printing_them() {
    for (pw, parts) in PASSWORDS {
        let url = format!("kafka://u:{pw}@127.0.0.1:9092,127.0.0.1:9093");
        let (code, printed) = run(&[
            ("IMPUSH_BROKER__KIND", "kafka".into()),
            ("IMPUSH_BROKER__URL", url.clone()),
        ]);
        assert_eq!(code, 2, "{url} is a config error:\n{printed}");
        assert!(printed.contains("broker.url"), "{printed}");
        assert_no_part(&printed, pw, parts);
    }
}
