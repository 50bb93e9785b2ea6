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
//! It prints every frame the clients receive and exits when done.

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
        if let Some(Ok(Event::Online { client, first, .. })) = events.next().await {
            println!("event: {client} online (first connection: {first})");
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
    alice_ws
        .send(Message::Text(
            json!({"type": "ack", "id": sent.id.as_str()})
                .to_string()
                .into(),
        ))
        .await?;
    println!("bob got:   {}", next_json(&mut bob_ws).await?); // delivered
    println!("bob got:   {}", next_json(&mut bob_ws).await?); // acked

    // A channel with both of them.
    let lobby: ChannelName = "lobby".parse()?;
    helper
        .join_channel(&lobby, &[alice.clone(), bob.clone()])
        .await?;
    println!(
        "lobby members: {:?}, online: {}",
        helper.channel_members(&lobby).await?,
        helper.channel_online(&lobby).await?.value
    );
    helper
        .send_channel_message(&alice, &lobby, &json!({"text": "hello lobby"}))
        .await?;
    println!("alice got: {}", next_json(&mut alice_ws).await?);
    println!("bob got:   {}", next_json(&mut bob_ws).await?);

    // Everyone.
    helper
        .broadcast(&json!({"notice": "maintenance at 02:00"}))
        .await?;
    println!("alice got: {}", next_json(&mut alice_ws).await?);
    println!("bob got:   {}", next_json(&mut bob_ws).await?);

    println!("online: {:?}", helper.online_clients().await?);
    alice_ws.close(None).await?;
    if let Some(Ok(Event::Offline { client, last, .. })) = events.next().await {
        println!("event: {client} offline (last connection: {last})");
    }

    server.shutdown().await?;
    println!("done");
    Ok(())
}

type BoxError = Box<dyn std::error::Error>;

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
