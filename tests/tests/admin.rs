//! The admin console (`docs/design.md` section 17) against real nodes: the login (right and
//! wrong secrets, the rate limit, constant-time comparison of near misses), the session cookie's
//! attributes, CSRF refusals (no token, a wrong one, another session's, a cross-site browser),
//! session expiry and logout, the data routes (cluster with other nodes' stats, clients, a
//! client, kick, channels, the event feed), the static files and `[admin]` checks.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use impush_core::{config::Secret, NodeEntry};
use impush_server::{Config, ImServer};
use reqwest::{header::HeaderMap, StatusCode};
use serde_json::{json, Value};
use support::{eventually, free_addrs, start, start_cluster, Client, ADMIN_SECRET, WAIT};

const KEY: &str = "test-api-key";

fn base(server: &ImServer) -> String {
    format!("http://{}", server.local_addr())
}

/// A logged-in console session: the cookie (`impush_admin=...`) and the CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn login_with(http: &reqwest::Client, base: &str, secret: &str) -> reqwest::Response {
    http.post(format!("{base}/admin/api/login"))
        .json(&json!({ "secret": secret }))
        .send()
        .await
        .unwrap()
}

fn set_cookie(headers: &HeaderMap) -> String {
    headers
        .get("set-cookie")
        .expect("a Set-Cookie header")
        .to_str()
        .unwrap()
        .to_owned()
}

async fn login(http: &reqwest::Client, base: &str) -> Session {
    let resp = login_with(http, base, ADMIN_SECRET).await;
    assert_eq!(resp.status(), 200);
    let cookie = set_cookie(resp.headers());
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let v: Value = resp.json().await.unwrap();
    Session {
        cookie,
        csrf: v["csrf_token"].as_str().unwrap().to_owned(),
    }
}

/// `GET` with the session's cookie: status and JSON body.
async fn get(http: &reqwest::Client, url: &str, s: &Session) -> (StatusCode, Value) {
    let resp = http
        .get(url)
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `POST` with the given headers: status and JSON body.
async fn post(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut req = http.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// An open Server-Sent Events stream and what is buffered of it.
struct Sse {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: String,
}

impl Sse {
    async fn open(http: &reqwest::Client, url: &str, s: &Session) -> Sse {
        let resp = http
            .get(url)
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        Sse {
            stream: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event (`event`, JSON `data`), skipping comments.
    async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let (mut event, mut data) = (String::new(), String::new());
                    for line in block.lines() {
                        if let Some(e) = line.strip_prefix("event:") {
                            event = e.trim().to_owned();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    if !data.is_empty() {
                        return (event, serde_json::from_str(&data).unwrap());
                    }
                    continue;
                }
                let chunk = self.stream.next().await.expect("stream open").unwrap();
                self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("an event within the timeout")
    }
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_and_the_session_reads_back() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let http = reqwest::Client::new();

    let resp = login_with(&http, &base, ADMIN_SECRET).await;
    assert_eq!(resp.status(), 200);
    let cookie = set_cookie(resp.headers());
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    let (name, value) = attrs[0].split_once('=').unwrap();
    assert_eq!(name, "impush_admin");
    assert_eq!(value.len(), 64, "a 256-bit random session id: {cookie}");
    for want in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=28800",
    ] {
        assert!(attrs.contains(&want), "{want} missing from {cookie}");
    }
    assert!(
        !attrs.contains(&"Secure"),
        "plain HTTP: a Secure cookie would never come back: {cookie}"
    );
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["node"], "n1");
    assert_eq!(v["expires_in_s"], 28800);
    let csrf = v["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(csrf.len(), 64);
    assert_ne!(csrf, value, "the CSRF token is not the session id");

    let s = Session {
        cookie: attrs[0].to_owned(),
        csrf,
    };
    let (status, v) = get(&http, &format!("{base}/admin/api/session"), &s).await;
    assert_eq!(status, 200);
    assert_eq!(v["csrf_token"], s.csrf.as_str());

    // Each login is a new session with its own token.
    let other = login(&http, &base).await;
    assert_ne!(other.cookie, s.cookie);
    assert_ne!(other.csrf, s.csrf);

    // Over HTTPS (as a TLS proxy says, or the page's origin) the cookie is Secure.
    for (header, value) in [
        ("x-forwarded-proto", "https"),
        ("origin", "https://admin.example.com"),
    ] {
        let resp = http
            .post(format!("{base}/admin/api/login"))
            .header(header, value)
            .header("host", "admin.example.com")
            .json(&json!({ "secret": ADMIN_SECRET }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{header}");
        let cookie = set_cookie(resp.headers());
        assert!(cookie.ends_with("; Secure"), "{header}: {cookie}");
    }
    server.shutdown().await.unwrap();

    // admin.secure_cookie makes it always Secure.
    let server = start(|c| c.admin.secure_cookie = true).await;
    let resp = login_with(&http, &self::base(&server), ADMIN_SECRET).await;
    assert!(set_cookie(resp.headers()).ends_with("; Secure"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_secrets_are_refused_then_rate_limited_and_right_ones_do_not_count() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let http = reqwest::Client::new();

    // Right secrets do not spend the budget of wrong ones.
    for _ in 0..30 {
        assert_eq!(login_with(&http, &base, ADMIN_SECRET).await.status(), 200);
    }
    // Near misses: a prefix, one more character, one character changed, the API key.
    let near = [
        &ADMIN_SECRET[..ADMIN_SECRET.len() - 1],
        &format!("{ADMIN_SECRET}x"),
        &format!("{}X", &ADMIN_SECRET[..ADMIN_SECRET.len() - 1]),
        KEY,
        "",
    ];
    for wrong in near {
        let resp = login_with(&http, &base, wrong).await;
        assert_eq!(resp.status(), 401, "{wrong:?}");
        assert!(resp.headers().get("set-cookie").is_none());
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "wrong_secret");
    }
    // Five wrong guesses from one address at once, then it waits: even the right secret is
    // refused unread (its answer must not tell whether it was right).
    let resp = login_with(&http, &base, "guess").await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "too_many_attempts"
    );
    let resp = login_with(&http, &base, ADMIN_SECRET).await;
    assert_eq!(resp.status(), 429);
    // A guess comes back every second.
    let refused_at = Instant::now();
    eventually(|| async { login_with(&http, &base, ADMIN_SECRET).await.status() == 200 }).await;
    assert!(
        refused_at.elapsed() < Duration::from_secs(4),
        "one guess a second, not a lockout"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_api_key_does_not_open_the_console_nor_the_admin_secret_the_api() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let http = reqwest::Client::new();
    for path in ["session", "cluster", "clients", "clients/alice", "channels"] {
        let resp = http
            .get(format!("{base}/admin/api/{path}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "unauthorized");
    }
    let (status, _) = post(
        &http,
        &format!("{base}/admin/api/clients/alice/kick"),
        &[("authorization", &format!("Bearer {KEY}"))],
    )
    .await;
    assert_eq!(status, 401);
    // A made-up cookie is no session either.
    let fake = Session {
        cookie: format!("impush_admin={}", "0".repeat(64)),
        csrf: String::new(),
    };
    assert_eq!(
        get(&http, &format!("{base}/admin/api/cluster"), &fake)
            .await
            .0,
        401
    );
    let resp = http
        .get(format!("{base}/api/v1/nodes"))
        .bearer_auth(ADMIN_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn actions_need_the_sessions_csrf_token_and_the_same_origin() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let host = server.local_addr().to_string();
    let origin = format!("http://{host}");
    let http = reqwest::Client::new();
    let helper = server.helper();
    let mut alice = Client::connect(&helper, "alice", 1).await;
    let s = login(&http, &base).await;
    let other = login(&http, &base).await;
    let kick = format!("{base}/admin/api/clients/alice/kick");

    /// What is wrong, the request's headers, the refusal's code.
    type Refusal<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let refusals: Vec<Refusal> = vec![
        ("no token", vec![("cookie", &s.cookie)], "csrf"),
        (
            "a wrong token",
            vec![("cookie", &s.cookie), ("x-csrf-token", "0123")],
            "csrf",
        ),
        (
            "an empty token",
            vec![("cookie", &s.cookie), ("x-csrf-token", "")],
            "csrf",
        ),
        (
            "another session's token",
            vec![("cookie", &s.cookie), ("x-csrf-token", &other.csrf)],
            "csrf",
        ),
        (
            "a cross-site Origin",
            vec![
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                ("origin", "http://evil.example"),
            ],
            "cross_origin",
        ),
        (
            "another port's Origin",
            vec![
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                ("origin", "http://127.0.0.1:1"),
            ],
            "cross_origin",
        ),
        (
            "Sec-Fetch-Site: same-site",
            vec![
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                ("sec-fetch-site", "same-site"),
            ],
            "cross_origin",
        ),
        (
            "Sec-Fetch-Site: cross-site",
            vec![
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                ("sec-fetch-site", "cross-site"),
            ],
            "cross_origin",
        ),
    ];
    for (what, headers, code) in &refusals {
        let (status, v) = post(&http, &kick, headers).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (StatusCode::FORBIDDEN, Some(*code)),
            "{what}: {v}"
        );
    }
    // None of them kicked: alice is still connected.
    assert_eq!(helper.connections(&support::id("alice")).await.unwrap(), 1);
    let (status, v) = post(
        &http,
        &format!("{base}/admin/api/logout"),
        &[("cookie", &s.cookie)],
    )
    .await;
    assert_eq!(
        (status, &v["error"]),
        (StatusCode::FORBIDDEN, &json!("csrf"))
    );
    // A login from another site's page is refused too.
    let resp = http
        .post(format!("{base}/admin/api/login"))
        .header("origin", "http://evil.example")
        .json(&json!({ "secret": ADMIN_SECRET }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("set-cookie").is_none());

    // The console's own request: same origin, the token.
    let (status, v) = post(
        &http,
        &kick,
        &[
            ("cookie", &s.cookie),
            ("x-csrf-token", &s.csrf),
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
        ],
    )
    .await;
    assert_eq!((status, v), (StatusCode::OK, json!({ "kicked": 1 })));
    assert_eq!(alice.close_code().await, 4001);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn sessions_end_at_their_ttl_and_at_logout() {
    let ttl = Duration::from_secs(1);
    let server = start(|c| c.admin.session_ttl = ttl).await;
    let base = base(&server);
    let http = reqwest::Client::new();
    let sent = Instant::now();
    let resp = login_with(&http, &base, ADMIN_SECRET).await;
    assert!(set_cookie(resp.headers()).contains("Max-Age=1;"));
    let cookie = set_cookie(resp.headers());
    let s = Session {
        cookie: cookie.split(';').next().unwrap().to_owned(),
        csrf: resp.json::<Value>().await.unwrap()["csrf_token"]
            .as_str()
            .unwrap()
            .to_owned(),
    };
    let session = format!("{base}/admin/api/session");
    assert_eq!(get(&http, &session, &s).await.0, 200);
    eventually(|| async { get(&http, &session, &s).await.0 == 401 }).await;
    assert!(sent.elapsed() >= ttl, "ended after {:?}", sent.elapsed());
    let (status, _) = post(
        &http,
        &format!("{base}/admin/api/clients/alice/kick"),
        &[("cookie", &s.cookie), ("x-csrf-token", &s.csrf)],
    )
    .await;
    assert_eq!(status, 401, "an expired session takes no action");
    server.shutdown().await.unwrap();

    let server = start(|_| {}).await;
    let base = self::base(&server);
    let s = login(&http, &base).await;
    let kept = login(&http, &base).await;
    let resp = http
        .post(format!("{base}/admin/api/logout"))
        .header("cookie", &s.cookie)
        .header("x-csrf-token", &s.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cleared = set_cookie(resp.headers());
    assert!(
        cleared.starts_with("impush_admin=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(
        get(&http, &format!("{base}/admin/api/session"), &s).await.0,
        401
    );
    assert_eq!(
        get(&http, &format!("{base}/admin/api/session"), &kept)
            .await
            .0,
        200,
        "other sessions go on"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_console_sees_a_client_kicks_it_and_the_feed_says_so() {
    let server = start(|c| c.offline.enabled = true).await;
    let base = base(&server);
    let http = reqwest::Client::new();
    let helper = server.helper();
    let s = login(&http, &base).await;
    let mut feed = Sse::open(&http, &format!("{base}/admin/api/events"), &s).await;

    let mut alice = Client::connect_with(&helper, "alice", json!({"device": "web"})).await;
    let (event, v) = feed.next().await;
    assert_eq!(event, "online");
    assert_eq!(v["client_id"], "alice");
    assert_eq!(v["first"], true);
    helper
        .join_channel(&"room".parse().unwrap(), &[support::id("alice")])
        .await
        .unwrap();
    // A message for bob, who is away, waits in his inbox.
    helper
        .send_message(
            &support::id("alice"),
            &[support::id("bob")],
            &json!("hi"),
            false,
        )
        .await
        .unwrap();

    let clients = format!("{base}/admin/api/clients");
    eventually(|| async {
        get(&http, &clients, &s).await
            == (StatusCode::OK, json!({"clients": ["alice"], "total": 1}))
    })
    .await;
    let client = format!("{base}/admin/api/clients/alice");
    eventually(|| async { get(&http, &client, &s).await.1["channels"] == json!(["room"]) }).await;
    let (_, v) = get(&http, &client, &s).await;
    assert_eq!(
        v,
        json!({
            "client_id": "alice", "online": true, "connections": 1, "node": "n1",
            "node_status": "live", "channels": ["room"],
            "inbox": {"enabled": true, "count": 0, "bytes": 0, "oldest_ts": null},
        })
    );
    let bob = format!("{base}/admin/api/clients/bob");
    eventually(|| async { get(&http, &bob, &s).await.1["inbox"]["count"] == 1 }).await;

    let (status, v) = post(
        &http,
        &format!("{client}/kick"),
        &[("cookie", &s.cookie), ("x-csrf-token", &s.csrf)],
    )
    .await;
    assert_eq!((status, v), (StatusCode::OK, json!({"kicked": 1})));
    assert_eq!(alice.close_code().await, 4001);
    let (event, v) = feed.next().await;
    assert_eq!(event, "offline");
    assert_eq!(v["client_id"], "alice");
    assert_eq!(v["last"], true);
    eventually(|| async { get(&http, &client, &s).await.1["online"] == false }).await;
    let (_, v) = get(&http, &format!("{base}/admin/api/clients"), &s).await;
    assert_eq!(v, json!({"clients": [], "total": 0}));
    drop(feed);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn channels_list_members_and_who_is_online() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let http = reqwest::Client::new();
    let helper = server.helper();
    let s = login(&http, &base).await;
    let _alice = Client::connect(&helper, "alice", 1).await;
    let room = "room".parse().unwrap();
    helper
        .join_channel(&room, &[support::id("alice"), support::id("bob")])
        .await
        .unwrap();
    helper
        .join_channel(&"lobby".parse().unwrap(), &[support::id("bob")])
        .await
        .unwrap();

    let (status, v) = get(&http, &format!("{base}/admin/api/channels"), &s).await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"channels": [
            {"name": "lobby", "members": 1, "online": 0},
            {"name": "room", "members": 2, "online": 1},
        ], "total": 2})
    );
    let (_, v) = get(&http, &format!("{base}/admin/api/channels?limit=1"), &s).await;
    assert_eq!(v["channels"].as_array().unwrap().len(), 1);
    assert_eq!(v["total"], 2);
    let (_, v) = get(&http, &format!("{base}/admin/api/channels/room"), &s).await;
    assert_eq!(
        v,
        json!({"name": "room", "members": [
            {"client_id": "alice", "online": true},
            {"client_id": "bob", "online": false},
        ], "total_members": 2, "online": 1})
    );
    let (_, v) = get(&http, &format!("{base}/admin/api/channels/void"), &s).await;
    assert_eq!(
        v,
        json!({"name": "void", "members": [], "total_members": 0, "online": 0})
    );
    for (query, status, code) in [
        ("limit=0", 422, "invalid_request"),
        ("limit=1001", 422, "invalid_request"),
        ("limit=x", 400, "invalid_query"),
        ("other=1", 400, "invalid_query"),
    ] {
        for list in ["channels", "clients"] {
            let (got, v) = get(&http, &format!("{base}/admin/api/{list}?{query}"), &s).await;
            assert_eq!(
                (got.as_u16(), &v["error"]),
                (status, &json!(code)),
                "{list}?{query}"
            );
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn node_stats_need_the_api_key_and_count_this_nodes_sockets() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/node/stats");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let s = login(&http, &base).await;
    assert_eq!(
        get(&http, &url, &s).await.0,
        401,
        "a console session is no API key"
    );

    let helper = server.helper();
    let _a1 = Client::connect(&helper, "alice", 1).await;
    let _a2 = Client::connect(&helper, "alice", 2).await;
    let _b = Client::connect(&helper, "bob", 1).await;
    let stats = || async {
        let resp = http.get(&url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    };
    eventually(|| async {
        let v = stats().await;
        (&v["connections"], &v["clients"]) == (&json!(3), &json!(2))
    })
    .await;
    let v = stats().await;
    assert_eq!(v["node"], "n1");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["state"], "live");
    assert_eq!((&v["connections"], &v["clients"]), (&json!(3), &json!(2)));
    // Messages written are counted, and their rate shows within the sampling window.
    for i in 0..20 {
        helper
            .send_message(&support::id("x"), &[support::id("bob")], &json!(i), false)
            .await
            .unwrap();
    }
    eventually(|| async { stats().await["messages_total"] == 20 }).await;
    impush_tests::eventually_within("a message rate", Duration::from_secs(10), || async {
        stats().await["messages_per_second"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_cluster_view_shows_every_node_with_stats_fetched_from_the_others() {
    // n1 and n2 run; n3 is listed but never started (dead); n2 has a client.
    let spare = free_addrs(1)[0];
    let servers = start_cluster(2, |c| {
        // n3 is dead once it has held no lease for this long.
        c.cluster.node_lease = Duration::from_secs(1);
        c.cluster.nodes.push(NodeEntry {
            id: "n3".parse().unwrap(),
            url: format!("ws://{spare}"),
        });
    })
    .await;
    let base = base(&servers[0]);
    let http = reqwest::Client::new();
    let s = login(&http, &base).await;
    let helper = servers[0].helper();
    // A client that n2 owns.
    let on_n2 = (0..)
        .map(|i| format!("c{i}"))
        .find(|c| helper.cluster().owner(&support::id(c)).id.as_str() == "n2")
        .unwrap();
    let _c = Client::connect(&helper, &on_n2, 1).await;

    let cluster = format!("{base}/admin/api/cluster");
    eventually(|| async {
        let v = get(&http, &cluster, &s).await.1;
        v["nodes"][1]["stats"]["connections"] == 1 && v["nodes"][2]["status"] == "dead"
    })
    .await;
    let (_, v) = get(&http, &cluster, &s).await;
    assert_eq!(v["node"], "n1");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(
        (
            &nodes[0]["id"],
            &nodes[0]["status"],
            &nodes[0]["stats"]["node"]
        ),
        (&json!("n1"), &json!("live"), &json!("n1"))
    );
    assert_eq!(nodes[0]["stats"]["connections"], 0);
    assert_eq!(nodes[1]["stats"]["node"], "n2", "fetched from n2: {v}");
    assert_eq!(nodes[1]["stats"]["clients"], 1);
    assert_eq!(nodes[1]["url"], format!("ws://{}", servers[1].local_addr()));
    assert_eq!(nodes[2]["stats"], Value::Null);
    assert!(
        nodes[2].get("error").is_none(),
        "a dead node is not asked: {v}"
    );
    for s in servers {
        s.shutdown().await.unwrap();
    }

    // A node with another API key answers 401: the view says what to fix.
    let servers = start_cluster(2, |c| {
        if c.node.id.as_str() == "n2" {
            c.auth.api_key = Some(Secret::new("another-key"));
        }
    })
    .await;
    let base = self::base(&servers[0]);
    let s = login(&http, &base).await;
    let (status, v) = get(&http, &format!("{base}/admin/api/cluster"), &s).await;
    assert_eq!(status, 200);
    assert_eq!(v["nodes"][1]["stats"], Value::Null);
    let error = v["nodes"][1]["error"].as_str().unwrap();
    assert!(error.contains("auth.api_key"), "{error}");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_with_strict_headers() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let http = reqwest::Client::new();
    for (path, ct, needle) in [
        ("/admin", "text/html", "<title>impush admin</title>"),
        ("/admin/", "text/html", "/admin/app.js"),
        ("/admin/app.js", "text/javascript", "X-CSRF-Token"),
        ("/admin/style.css", "text/css", "#events"),
    ] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ct),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = resp.text().await.unwrap();
        assert!(body.contains(needle), "{path}");
        // Nothing is loaded from elsewhere.
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
    }
    let resp = http
        .get(format!("{base}/admin/api/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_generated_secret_logs_in_and_a_disabled_console_is_not_served() {
    let mut config = support::config();
    config.admin.secret = None;
    let server = ImServer::start(config).await.unwrap();
    let generated = server.generated().admin_secret.clone().expect("generated");
    assert_eq!(generated.expose().len(), 48);
    assert_ne!(generated.expose(), server.api_key());
    assert!(
        server.generated().api_key.is_none(),
        "the key was configured"
    );
    let http = reqwest::Client::new();
    let base = base(&server);
    assert_eq!(
        login_with(&http, &base, generated.expose()).await.status(),
        200
    );
    server.shutdown().await.unwrap();

    let server = start(|c| {
        c.admin.enabled = false;
        c.admin.secret = None;
    })
    .await;
    assert!(server.generated().admin_secret.is_none());
    let base = self::base(&server);
    for path in ["/admin", "/admin/app.js"] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    assert_eq!(login_with(&http, &base, ADMIN_SECRET).await.status(), 404);
    // Other nodes' consoles still read this one's stats.
    let resp = http
        .get(format!("{base}/api/v1/node/stats"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.shutdown().await.unwrap();
}

#[test]
fn admin_settings_are_checked_at_start() {
    let check = |f: &dyn Fn(&mut Config)| {
        let mut c = support::config();
        f(&mut c);
        c.validate().err().map(|e| e.to_string())
    };
    assert_eq!(check(&|_| {}), None);
    let short = check(&|c| c.admin.secret = Some(Secret::new("short")));
    assert!(
        short
            .as_deref()
            .is_some_and(|e| e.contains("admin.secret") && e.contains("16")),
        "{short:?}"
    );
    let same = check(&|c| {
        c.auth.api_key = Some(Secret::new(ADMIN_SECRET));
    });
    assert!(
        same.as_deref()
            .is_some_and(|e| e.contains("must differ from auth.api_key")),
        "{same:?}"
    );
    let ttl = check(&|c| c.admin.session_ttl = Duration::ZERO);
    assert!(
        ttl.as_deref()
            .is_some_and(|e| e.contains("admin.session_ttl")),
        "{ttl:?}"
    );
    let long = check(&|c| c.admin.session_ttl = Duration::from_secs(8 * 24 * 3600));
    assert!(
        long.as_deref()
            .is_some_and(|e| e.contains("admin.session_ttl")),
        "{long:?}"
    );
}
