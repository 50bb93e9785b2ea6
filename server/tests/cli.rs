//! The `impush` binary as a user runs it: embedded default, env overrides, one-line config
//! errors, graceful exit on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_impush");

fn impush(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("IMPUSH_TEST_REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Reads stdout lines until the "listening on" line and returns (address, all lines so far).
fn wait_listening(child: &mut Child) -> (String, Vec<String>) {
    let out = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        lines.push(line.clone());
        if lines.len() >= 3 {
            break;
        }
    }
    let addr = lines[0]
        .strip_prefix("impush listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {:?}", lines[0]))
        .to_owned();
    (addr, lines)
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < within,
            "impush did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn embedded_default_runs_prints_generated_secrets_and_stops_on_sigterm() {
    let mut child = impush(&[], &[("IMPUSH_NODE__LISTEN", "127.0.0.1:0")])
        .spawn()
        .unwrap();
    let (addr, lines) = wait_listening(&mut child);
    assert!(
        lines[1].starts_with("generated auth.secret = "),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("generated auth.api_key = "),
        "{lines:?}"
    );
    let health = http_get(&addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = http_get(&addr, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

#[test]
fn configured_secrets_are_not_printed() {
    let mut child = impush(
        &[],
        &[
            ("IMPUSH_NODE__LISTEN", "127.0.0.1:0"),
            ("IMPUSH_AUTH__SECRET", "s3cret-value"),
            ("IMPUSH_AUTH__API_KEY", "key-value"),
        ],
    )
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("impush listening on"), "{first}");
    // Stop it gracefully so everything it would ever print (shutdown logs included) is read.
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(stopped, "kill -TERM");
    let mut all = first + "\n";
    for line in lines {
        all.push_str(&line.unwrap());
        all.push('\n');
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success());
    // Both streams were really read: the start-up log goes to stderr.
    assert!(err.contains("impush node started"), "{err}");
    all.push_str(&err);
    assert!(
        !all.contains("s3cret-value") && !all.contains("key-value"),
        "{all}"
    );
}

/// Runs `impush` expecting it to refuse to start: its exit code and stderr. A node that
/// starts instead is stopped after a few seconds and fails the test at once (rather than
/// running until the test harness times it out).
fn run_failing(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = impush(args, env).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "impush {args:?} with {env:?} started instead of refusing: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_config_is_one_line_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("impush-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let cases: &[(&str, &str)] = &[
        ("[node]\nlisten = \"not an address\"\n", "node.listen"),
        ("[limits]\nmax_frame_bytez = 1\n", "limits.max_frame_bytez"),
        ("[broker]\nkind = \"nats\"\n", "broker.kind"),
        (
            "[broker]\nkind = \"memory\"\nfanout_capacty = 1\n",
            "broker.fanout_capacty",
        ),
        ("[presence]\nkind = \"redis\"\nurl = 5\n", "presence.url"),
        (
            "[cluster]\nnodes = [{ id = \"n2\", url = \"ws://127.0.0.1:1\" }]\n",
            "node.id",
        ),
        ("[auth]\ntoken_ttl = \"soon\"\n", "auth.token_ttl"),
        (
            "[offline]\nenabled = true\nmax_per_client = 0\n",
            "offline.max_per_client",
        ),
        (
            "[offline]\nenabled = true\nkind = \"tape\"\n",
            "offline.kind",
        ),
        // Inboxes a connecting client's outbound queue could not take at once.
        (
            "[offline]\nenabled = true\nmax_per_client = 1024\n",
            "offline.max_per_client",
        ),
        (
            "[limits]\noutbound_queue_bytes = 1000000\n[offline]\nenabled = true\n",
            "offline.max_bytes",
        ),
        ("[limits]\ninbound_rate = 0\n", "limits.inbound_rate"),
        // A typo in a disabled section: the inbox would be silently off.
        ("[offline]\nenable = true\n", "offline.enable"),
        ("this is not toml", "impush.toml"),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let (code, stderr) = run_failing(&["--config", path.to_str().unwrap()], &[]);
        assert_eq!(code, 2, "{toml}: {stderr}");
        let text = stderr.trim_end();
        assert_eq!(text.lines().count(), 1, "{toml}: {stderr}");
        assert!(text.starts_with("impush: "), "{stderr}");
        if *key != "impush.toml" {
            assert!(text.contains(key), "{toml}: expected `{key}` in {stderr}");
        }
        assert!(!text.contains("panicked"), "{stderr}");
    }

    let (code, stderr) = run_failing(&["--config", "/nonexistent/impush.toml"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("does not exist"), "{stderr}");

    let (code, stderr) = run_failing(&[], &[("IMPUSH_LIMITS__OUTBOUND_QUEUE", "lots")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("IMPUSH_LIMITS__OUTBOUND_QUEUE"), "{stderr}");

    let (code, stderr) = run_failing(&[], &[("IMPUSH_OFFLINE__ENABLE", "true")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("offline.enable"), "{stderr}");

    let (code, stderr) = run_failing(&[], &[("IMPUSH_BROKER__KIND", "nats")]);
    assert_eq!(code, 2, "{stderr}");
    // The list depends on the features this build has (rabbitmq and kafka are optional).
    let known = stderr
        .split_once("unknown broker kind `nats`; this build has: ")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        known.contains("memory") && known.contains("redis"),
        "{stderr}"
    );

    if !cfg!(feature = "kafka") {
        let (code, stderr) = run_failing(&[], &[("IMPUSH_BROKER__KIND", "kafka")]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("not compiled in"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Values that would make a node panic or spin at run time (zero or huge durations, keep-alive
/// 0, negative numbers, limits that refuse everything, origins no browser sends) are refused at
/// start-up: exit 2 and one line naming the key, from a file and from the environment.
#[test]
fn values_that_could_panic_or_spin_are_refused_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("impush-cli-bounds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "[limits]\nheader_read_timeout = \"0s\"\n",
            "limits.header_read_timeout",
        ),
        (
            "[limits]\nheader_read_timeout = \"100000days\"\n",
            "limits.header_read_timeout",
        ),
        (
            "[limits]\nkeep_alive_timeout = \"0s\"\n",
            "limits.keep_alive_timeout",
        ),
        (
            "[limits]\nrequest_body_timeout = \"0s\"\n",
            "limits.request_body_timeout",
        ),
        (
            "[limits]\nsse_keep_alive = \"0s\"\n",
            "limits.sse_keep_alive",
        ),
        ("[limits]\npong_timeout = \"0s\"\n", "limits.pong_timeout"),
        (
            "[limits]\nping_interval = \"30days\"\n",
            "limits.ping_interval",
        ),
        (
            "[limits]\nshutdown_grace = \"8days\"\n",
            "limits.shutdown_grace",
        ),
        (
            "[limits]\nevent_group_idle = \"0s\"\n",
            "limits.event_group_idle",
        ),
        (
            "[cluster]\nnode_lease = \"1000days\"\n",
            "cluster.node_lease",
        ),
        ("[auth]\ntoken_ttl = \"365days\"\n", "auth.token_ttl"),
        (
            "[auth]\ntoken_ttl = \"99999999999999999999s\"\n",
            "auth.token_ttl",
        ),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        ("[limits]\nmax_connections = -1\n", "limits.max_connections"),
        (
            "[limits]\nmax_event_groups = 0\n",
            "limits.max_event_groups",
        ),
        (
            "[limits]\nmax_receivers_per_message = 0\n",
            "limits.max_receivers_per_message",
        ),
        (
            "[limits]\nmax_clients_per_join = 0\n",
            "limits.max_clients_per_join",
        ),
        (
            "[limits]\nallowed_origins = [\"*\"]\n",
            "limits.allowed_origins",
        ),
        (
            "[limits]\nallowed_origins = [\"https://chat.example.com/app\"]\n",
            "limits.allowed_origins",
        ),
        (
            "[limits]\nallowed_origins = \"https://a.example\"\n",
            "limits.allowed_origins",
        ),
        // A value with a newline (found by the config fuzzer) still gives one line.
        (
            "[limits]\nallowed_origins = [\"ht\\ntps://a.example\"]\n",
            "limits.allowed_origins",
        ),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bounds{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let (code, stderr) = run_failing(&["--config", path.to_str().unwrap()], &[]);
        assert_eq!(code, 2, "{toml}: {stderr}");
        let text = stderr.trim_end();
        assert_eq!(text.lines().count(), 1, "{toml}: {stderr}");
        assert!(text.contains(key), "{toml}: expected `{key}` in {stderr}");
        assert!(!text.contains("panicked"), "{stderr}");
    }
    for (var, value, key) in [
        (
            "IMPUSH_LIMITS__KEEP_ALIVE_TIMEOUT",
            "0s",
            "limits.keep_alive_timeout",
        ),
        (
            "IMPUSH_LIMITS__MAX_CONNECTIONS",
            "-5",
            "IMPUSH_LIMITS__MAX_CONNECTIONS",
        ),
        (
            "IMPUSH_LIMITS__SSE_KEEP_ALIVE",
            "0ms",
            "limits.sse_keep_alive",
        ),
    ] {
        let (code, stderr) = run_failing(&[], &[(var, value)]);
        assert_eq!(code, 2, "{var}={value}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(key),
            "{var}={value}: expected `{key}` in {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn busy_port_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (code, stderr) = run_failing(&[], &[("IMPUSH_NODE__LISTEN", &addr)]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn redis_password_never_reaches_the_output() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l); // nothing listens there now
    let url = format!("redis://:supersecret-pw@127.0.0.1:{port}/0");
    let out = impush(
        &[],
        &[
            ("IMPUSH_NODE__LISTEN", "127.0.0.1:0"),
            ("IMPUSH_BROKER__KIND", "redis"),
            ("IMPUSH_BROKER__URL", &url),
            ("RUST_LOG", "debug"),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A broker that is not up (yet) is worth starting again later: `EX_TEMPFAIL`, not 1.
    assert_eq!(
        out.status.code(),
        Some(i32::from(impush_server::EXIT_TEMPFAIL)),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot start broker `redis`: redis is unavailable"),
        "{stderr}"
    );
    assert!(stderr.contains(":***@127.0.0.1"), "{stderr}");
    assert!(
        !stderr.contains("supersecret") && !stdout.contains("supersecret"),
        "password leaked: {stderr}"
    );
}
