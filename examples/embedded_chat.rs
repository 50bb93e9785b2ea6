//! Run with: `cargo run -p impush-examples --example embedded_chat`
//!
//! A business backend that embeds an ImServer node and uses its ImHelper, the way FreeIM's
//! WebApi demo does, all in one process with the memory backends:
//!
//! 1. start a node on a free loopback port;
//! 2. hand `alice` and `bob` connect URLs (what your login endpoint would return) and connect
//!    them as WebSocket clients;
//! 3. push: a message with a receipt (alice acks it), a channel message, a broadcast;
//! 4. watch online/offline events, then shut down gracefully.
//!
//! It prints every frame the clients receive, checks each is what it should be, and exits
//! with an error (never hangs: every wait has a timeout) when one is not; CI runs it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use impush_core::{ChannelName, ClientId, Event};
use impush_server::{Config, ImServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // The embedded default, on a free port so the example never clashes with a running impush.
    let mut config = Config::default();
    config.node.listen = "127.0.0.1:0".parse()?;
    let server = ImServer::start(config).await?;
    let helper = server.helper();
    println!("impush node listening on {}", server.local_addr());

    let mut events = helper.events().await?;

    // What the business login endpoint does after authenticating a user.
    let alice: ClientId = "alice".parse()?;
    let bob: ClientId = "bob".parse()?;
    let alice_url = helper
        .prepare_connect(&alice, json!({"device": "web"}))?
        .url;
    let bob_url = helper.prepare_connect(&bob, Value::Null)?.url;
    println!(
        "alice connects to {}",
        alice_url.split('?').next().unwrap_or_default()
    );

    let (mut alice_ws, _) = tokio_tungstenite::connect_async(alice_url.as_str()).await?;
    let (mut bob_ws, _) = tokio_tungstenite::connect_async(bob_url.as_str()).await?;
    for _ in 0..2 {
        match next_event(&mut events).await? {
            Event::Online { client, first, .. } => {
                println!("event: {client} online (first connection: {first})");
                check(first, "a first connection")?;
            }
            other => return Err(format!("expected an online event, got {other:?}").into()),
        }
    }

    // bob -> alice with a receipt; alice acks it when she has shown it.
    let sent = helper
        .send_message(
            &bob,
            std::slice::from_ref(&alice),
            &json!({"text": "hi alice"}),
            true,
        )
        .await?;
    let frame = next_json(&mut alice_ws).await?;
    println!("alice got: {frame}");
    check(
        frame["data"] == json!({"text": "hi alice"}) && frame["id"] == sent.id.as_str(),
        "alice gets bob's message",
    )?;
    alice_ws
        .send(Message::Text(
            json!({"type": "ack", "id": sent.id.as_str()})
                .to_string()
                .into(),
        ))
        .await?;
    for status in ["delivered", "acked"] {
        let receipt = next_json(&mut bob_ws).await?;
        println!("bob got:   {receipt}");
        check(
            receipt["type"] == "receipt" && receipt["status"] == status,
            &format!("a `{status}` receipt for bob"),
        )?;
    }

    // A channel with both of them.
    let lobby: ChannelName = "lobby".parse()?;
    helper
        .join_channel(&lobby, &[alice.clone(), bob.clone()])
        .await?;
    let members = helper.channel_members(&lobby).await?;
    let online = helper.channel_online(&lobby).await?.value;
    println!("lobby members: {members:?}, online: {online}");
    check(
        members.len() == 2 && online == 2,
        "two members in the lobby",
    )?;
    helper
        .send_channel_message(&alice, &lobby, &json!({"text": "hello lobby"}))
        .await?;
    for (who, ws) in [("alice", &mut alice_ws), ("bob", &mut bob_ws)] {
        let frame = next_json(ws).await?;
        println!("{who} got: {frame}");
        check(
            frame["type"] == "channel" && frame["channel"] == "lobby",
            "the lobby message",
        )?;
    }

    // Everyone.
    helper
        .broadcast(&json!({"notice": "maintenance at 02:00"}))
        .await?;
    for (who, ws) in [("alice", &mut alice_ws), ("bob", &mut bob_ws)] {
        let frame = next_json(ws).await?;
        println!("{who} got: {frame}");
        check(frame["type"] == "broadcast", "the broadcast")?;
    }

    let online = helper.online_clients().await?;
    println!("online: {online:?}");
    check(online.len() == 2, "two clients online")?;
    alice_ws.close(None).await?;
    match next_event(&mut events).await? {
        Event::Offline { client, last, .. } => {
            println!("event: {client} offline (last connection: {last})");
            check(
                client == alice && last,
                "alice's last connection went offline",
            )?;
        }
        other => return Err(format!("expected an offline event, got {other:?}").into()),
    }

    server.shutdown().await?;
    println!("done");
    Ok(())
}

type BoxError = Box<dyn std::error::Error>;

/// Fails the example (exit code 1) when what it just printed is not what it should be.
fn check(ok: bool, what: &str) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected {what}").into())
    }
}

async fn next_event(events: &mut impush_helper::EventStream) -> Result<Event, BoxError> {
    match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
        Ok(Some(Ok(ev))) => Ok(ev),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(None) => Err("the event stream ended".into()),
        Err(_) => Err("no event within 5 s".into()),
    }
}

async fn next_json(ws: &mut Ws) -> Result<Value, BoxError> {
    let frame = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return Ok::<Value, BoxError>(serde_json::from_str(&t)?)
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err("connection closed".into()),
            }
        }
    })
    .await??;
    Ok(frame)
}
