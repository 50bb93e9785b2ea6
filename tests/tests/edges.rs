//! The node's HTTP edges (`docs/design.md` section 10, issue 14) against a live node: header, idle
//! and body timeouts, the cap on open connections, allowed Origins, the SSE group cap and the
//! API's list limits.
//!
//! Timeouts are configured short (about a second) and every check waits on the condition with a
//! generous bound, never on a fixed sleep alone.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use impush_server::ImServer;
use serde_json::{json, Value};
use support::{eventually, id, start, Client, WAIT};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

const KEY: &str = "test-api-key";

/// Reads until the peer closes (EOF or reset) and returns what arrived and when it closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return (got, Instant::now()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the node closes the connection within the bound")
}

/// One request on a raw connection; returns the status line's code and the body.
async fn request(s: &mut TcpStream, path: &str) -> (u16, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let code = head[9..12].parse().unwrap();
                return (code, body.to_owned());
            }
        }
    }
}

/// A sample of `/metrics` (`name{node="n1"...labels}`), read over a fresh connection.
async fn metric(server: &ImServer, sample: &str) -> u64 {
    let text = support::scrape(server).await;
    text.lines()
        .find(|l| l.starts_with(sample))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

fn no_pool() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn half_header_connections_are_closed_within_the_header_timeout() {
    let server = start(|c| c.limits.header_read_timeout = Duration::from_secs(1)).await;
    let addr = server.local_addr();
    let opened = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
            .await
            .unwrap();
        conns.push(s);
    }
    // One that sends nothing at all, one that trickles a byte every 200 ms (it never completes
    // its head, so the deadline from its first byte still holds).
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut drip = TcpStream::connect(addr).await.unwrap();
    let dripping = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if drip.write_all(&[*b]).await.is_err() {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the dripping connection was not closed");
    });
    eventually(|| async { server.metrics().open_http_connections() == 22 }).await;

    for s in conns.iter_mut().chain([&mut silent]) {
        let (got, closed) = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(got.is_empty(), "no answer to half a request");
        let after = closed - opened;
        assert!(
            after >= Duration::from_millis(900),
            "closed after {after:?}, before the timeout"
        );
    }
    let dripped = dripping.await.unwrap() - opened;
    assert!(
        dripped < Duration::from_secs(5),
        "drip closed after {dripped:?}"
    );

    eventually(|| async { server.metrics().open_http_connections() == 0 }).await;
    assert_eq!(
        metric(
            &server,
            r#"impush_http_timeouts_total{node="n1",kind="header"}"#
        )
        .await,
        22
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_keep_alive_outlasts_the_header_timeout_then_closes() {
    let server = start(|c| {
        c.limits.header_read_timeout = Duration::from_millis(500);
        c.limits.keep_alive_timeout = Duration::from_millis(2000);
    })
    .await;
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    assert_eq!(request(&mut s, "/healthz").await.0, 200);
    // Idle for longer than the header timeout: still open, the idle timeout applies.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(request(&mut s, "/healthz").await.0, 200);
    let answered = Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(6)).await;
    assert!(got.is_empty());
    let idle = closed - answered;
    assert!(
        idle >= Duration::from_millis(1800) && idle < Duration::from_secs(6),
        "idle connection closed after {idle:?}"
    );
    assert_eq!(
        metric(
            &server,
            r#"impush_http_timeouts_total{node="n1",kind="idle"}"#
        )
        .await,
        1
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_connection_closes() {
    let server = start(|c| c.limits.request_body_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    let sent = Instant::now();
    s.write_all(
        format!(
            "POST /api/v1/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Length: 100\r\n\r\n{{\"data\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains(r#""error":"body_timeout""#), "{text}");
    assert!(sent.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        metric(
            &server,
            r#"impush_http_timeouts_total{node="n1",kind="body"}"#
        )
        .await,
        1
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn streams_and_websockets_outlive_every_http_timeout() {
    let server = start(|c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
        c.limits.keep_alive_timeout = Duration::from_millis(300);
        c.limits.request_body_timeout = Duration::from_millis(300);
        c.limits.sse_keep_alive = Duration::from_millis(200);
    })
    .await;
    let helper = server.helper();
    let mut ws = Client::connect(&helper, "alice", 1).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/v1/events", server.local_addr()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut sse = resp.bytes_stream();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The SSE stream still flows (keep-alive comments) and the WebSocket still answers.
    let chunk = tokio::time::timeout(WAIT, sse.next()).await.unwrap();
    assert!(chunk.unwrap().is_ok());
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    let _bob = Client::connect(&helper, "bob", 1).await;
    let mut saw_online = false;
    while !saw_online {
        let chunk = tokio::time::timeout(WAIT, sse.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        saw_online = String::from_utf8_lossy(&chunk).contains("event: online");
    }
    drop((ws, _bob));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn beyond_the_connection_cap_connections_are_refused_fast_and_counted() {
    let server = start(|c| c.limits.max_connections = 3).await;
    let addr = server.local_addr();
    let helper = server.helper();
    // A WebSocket session holds its place through the upgrade, like idle HTTP connections.
    let ws = Client::connect(&helper, "alice", 1).await;
    let idle1 = TcpStream::connect(addr).await.unwrap();
    let idle2 = TcpStream::connect(addr).await.unwrap();
    eventually(|| async { server.metrics().open_http_connections() == 3 }).await;

    // Refused without being read: the answer comes before the request is even sent...
    let started = Instant::now();
    let mut quiet = TcpStream::connect(addr).await.unwrap();
    let (got, _) = read_until_closed(&mut quiet, Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains(r#""error":"overloaded""#), "{text}");
    // ... and a client that sends its request at once gets it too (an HTTP client library may
    // instead report an answer that came before its request as a connection error: fast too).
    let mut eager = TcpStream::connect(addr).await.unwrap();
    eager
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = read_until_closed(&mut eager, Duration::from_secs(2)).await;
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    let started = Instant::now();
    let resp = no_pool().get(format!("http://{addr}/healthz")).send().await;
    assert!(resp.map_or(true, |r| r.status() == 503));
    assert!(started.elapsed() < Duration::from_secs(1));
    // So does a WebSocket.
    let info = helper.prepare_connect(&id("bob"), Value::Null).unwrap();
    assert!(tokio_tungstenite::connect_async(info.url.as_str())
        .await
        .is_err());
    assert_eq!(server.metrics().refused_connections(), 4);
    assert_eq!(server.metrics().open_http_connections(), 3);

    // A place frees up when a connection closes, whatever kind it was.
    drop(idle1);
    drop(ws);
    eventually(|| async { server.metrics().open_http_connections() <= 1 }).await;
    assert_eq!(
        metric(
            &server,
            r#"impush_http_connections_refused_total{node="n1"}"#
        )
        .await,
        4
    );
    assert_eq!(
        metric(&server, r#"impush_http_connections{node="n1"}"#).await,
        2,
        "idle2 and the /metrics request itself"
    );
    drop(idle2);
    server.shutdown().await.unwrap();
}

async fn ws_with_origin(url: &str, origin: Option<&str>) -> Result<(), (u16, Value)> {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(o).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => {
            let _ = ws.close(None).await;
            Ok(())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap())
                .unwrap_or(Value::Null),
        )),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn a_websocket_from_another_origin_gets_403_before_the_upgrade() {
    let server = start(|c| {
        c.limits.allowed_origins = vec![
            "https://chat.example.com".into(),
            "http://localhost:3000/".into(),
        ]
    })
    .await;
    let helper = server.helper();
    let url = helper
        .prepare_connect(&id("alice"), Value::Null)
        .unwrap()
        .url;

    let (status, body) = ws_with_origin(&url, Some("https://evil.example.com"))
        .await
        .unwrap_err();
    assert_eq!(status, 403);
    assert_eq!(body["error"], "origin_not_allowed");
    assert_eq!(server.metrics().origin_rejections(), 1);
    // Refused before the token was looked at: the same token still works from a listed Origin
    // (case and a trailing slash do not matter).
    ws_with_origin(&url, Some("HTTPS://Chat.Example.com"))
        .await
        .unwrap();
    let url = helper
        .prepare_connect(&id("alice"), Value::Null)
        .unwrap()
        .url;
    ws_with_origin(&url, Some("http://localhost:3000"))
        .await
        .unwrap();
    // A client that is not a browser sends no Origin and is let in.
    let url = helper
        .prepare_connect(&id("alice"), Value::Null)
        .unwrap()
        .url;
    ws_with_origin(&url, None).await.unwrap();
    let url = helper
        .prepare_connect(&id("alice"), Value::Null)
        .unwrap()
        .url;
    assert_eq!(ws_with_origin(&url, Some("null")).await.unwrap_err().0, 403);
    assert_eq!(server.metrics().origin_rejections(), 2);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn any_origin_is_allowed_when_none_is_configured() {
    let server = start(|_| {}).await;
    let url = server
        .helper()
        .prepare_connect(&id("alice"), Value::Null)
        .unwrap()
        .url;
    ws_with_origin(&url, Some("https://anything.example"))
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}

async fn events(server: &ImServer, group: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("http://{}/api/v1/events", server.local_addr()))
        .query(&[("group", group)])
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn sse_groups_are_capped_and_idle_ones_make_room() {
    let server = start(|c| {
        c.limits.max_event_groups = 2;
        c.limits.event_group_idle = Duration::from_millis(300);
    })
    .await;
    let g1 = events(&server, "g1").await;
    let g2 = events(&server, "g2").await;
    assert_eq!((g1.status().as_u16(), g2.status().as_u16()), (200, 200));
    let full = events(&server, "g3").await;
    assert_eq!(full.status(), 429);
    let body: Value = full.json().await.unwrap();
    assert_eq!(body["error"], "too_many_groups");
    // A second reader of a group the node serves already is fine.
    let g2b = events(&server, "g2").await;
    assert_eq!(g2b.status(), 200);
    // Names are bounded too.
    assert_eq!(events(&server, &"x".repeat(257)).await.status(), 422);

    // The last reader of g1 leaves: after event_group_idle, g1's place goes to a new group.
    drop(g1);
    let deadline = Instant::now() + WAIT;
    let g3 = loop {
        let r = events(&server, "g3").await;
        if r.status() == 200 {
            break r;
        }
        assert_eq!(r.status(), 429);
        assert!(Instant::now() < deadline, "g1's place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(metric(&server, r#"impush_event_groups_refused_total{node="n1"}"#).await >= 1);
    assert_eq!(
        metric(&server, r#"impush_event_groups{node="n1"}"#).await,
        2
    );
    drop((g2, g2b, g3));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_or_join_over_the_list_limits_is_refused_before_the_store() {
    let server = start(|c| {
        c.limits.max_receivers_per_message = 3;
        c.limits.max_clients_per_join = 2;
    })
    .await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.local_addr());
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };

    let resp = post(
        "/api/v1/messages",
        json!({"from": "sys", "to": ["a", "b", "c", "d"], "data": 1}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "too_many_receivers");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("limits.max_receivers_per_message"));
    let ok = post(
        "/api/v1/messages",
        json!({"from": "sys", "to": ["a", "b", "c"], "data": 1}),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);

    let resp = post(
        "/api/v1/channels/room/members",
        json!({"client_ids": ["a", "b", "c"]}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "too_many_clients");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("limits.max_clients_per_join"));
    let room = "room".parse().unwrap();
    assert!(
        server
            .helper()
            .channel_members(&room)
            .await
            .unwrap()
            .value
            .is_empty(),
        "nothing reached the presence store"
    );
    let ok = post(
        "/api/v1/channels/room/members",
        json!({"client_ids": ["a", "b"]}),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_still_closes_websockets_with_1001() {
    let server = start(|c| c.limits.header_read_timeout = Duration::from_secs(1)).await;
    let mut ws = Client::connect(&server.helper(), "alice", 1).await;
    let idle = TcpStream::connect(server.local_addr()).await.unwrap();
    let addr = server.local_addr();
    let stopping = tokio::spawn(server.shutdown());
    assert_eq!(ws.close_code().await, 1001);
    let _ = ws.ws.send(Message::Close(None)).await;
    stopping.await.unwrap().unwrap();
    drop(idle);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
