//! Test harness shared by the end-to-end tests: real nodes on loopback port 0 and real
//! WebSocket clients.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use impush_core::{
    config::Secret, Answer, Broker, ChannelInfo, ChannelName, ClientId, ConnectionId,
    DroppedConnection, MemoryBroker, MemoryPresenceStore, NodeEntry, NodeId, NodeLease, NodeState,
    NodeSync, PresenceStore, Result as PResult,
};
use impush_helper::ImHelper;
use impush_server::{Config, ImServer};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{protocol::frame::coding::CloseCode, Message},
    MaybeTlsStream, WebSocketStream,
};

pub const SECRET: &str = "test-secret";
/// The admin console's login of a test node (`[admin] secret`).
pub const ADMIN_SECRET: &str = "test-admin-secret-0123456789";
pub const WAIT: Duration = Duration::from_secs(5);

/// A config for a test node: port 0, known secret, short shutdown grace.
pub fn config() -> Config {
    let mut c = Config::default();
    c.node.listen = "127.0.0.1:0".parse().unwrap();
    c.auth.secret = Some(Secret::new(SECRET));
    c.auth.api_key = Some(Secret::new("test-api-key"));
    c.admin.secret = Some(Secret::new(ADMIN_SECRET));
    c.limits.shutdown_grace = Duration::from_secs(3);
    c
}

pub async fn start(f: impl FnOnce(&mut Config)) -> ImServer {
    let mut c = config();
    f(&mut c);
    ImServer::start(c).await.expect("server starts")
}

pub use impush_tests::free_addrs;

/// Starts `n` nodes in this process sharing one memory broker and presence store: a cluster
/// without any external broker.
pub async fn start_cluster(n: usize, f: impl Fn(&mut Config)) -> Vec<ImServer> {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
    let presence: Arc<dyn PresenceStore> = Arc::new(MemoryPresenceStore::new());
    start_cluster_over(broker, vec![presence; n], f).await
}

/// [`start_cluster`] with the offline inbox on, every node handed `inbox` (one store they all
/// read, as they would a central one: [`impush_core::MemoryOfflineStore::shared_by_nodes`]).
pub async fn start_cluster_sharing_inbox(
    n: usize,
    inbox: Arc<dyn impush_core::OfflineStore>,
    f: impl Fn(&mut Config),
) -> Vec<ImServer> {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
    let presence: Arc<dyn PresenceStore> = Arc::new(MemoryPresenceStore::new());
    let on = |c: &mut Config| {
        c.offline.enabled = true;
        f(c);
    };
    start_nodes(broker, vec![presence; n], Some(inbox), on).await
}

/// Starts one node in this process per entry of `presences` (node `i` sees the presence store
/// `presences[i]`), all over `broker`, ids `n1`, `n2`, ...
pub async fn start_cluster_over(
    broker: Arc<dyn Broker>,
    presences: Vec<Arc<dyn PresenceStore>>,
    f: impl Fn(&mut Config),
) -> Vec<ImServer> {
    start_nodes(broker, presences, None, f).await
}

async fn start_nodes(
    broker: Arc<dyn Broker>,
    presences: Vec<Arc<dyn PresenceStore>>,
    inbox: Option<Arc<dyn impush_core::OfflineStore>>,
    f: impl Fn(&mut Config),
) -> Vec<ImServer> {
    let addrs = free_addrs(presences.len());
    let nodes: Vec<NodeEntry> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| NodeEntry {
            id: format!("n{}", i + 1).parse().unwrap(),
            url: format!("ws://{a}"),
        })
        .collect();
    let mut servers = Vec::new();
    for (i, (a, presence)) in addrs.iter().zip(presences).enumerate() {
        let mut c = config();
        c.node.id = nodes[i].id.clone();
        c.node.listen = *a;
        c.cluster.nodes = nodes.clone();
        f(&mut c);
        let mut node = ImServer::builder(c)
            .broker(broker.clone())
            .presence(presence);
        if let Some(inbox) = &inbox {
            node = node.offline(inbox.clone());
        }
        servers.push(node.start().await.expect("node starts"));
    }
    servers
}

/// A helper over `h`'s backends whose view has node `dead` dead: it routes messages and hands
/// out connect URLs as a helper or node that missed `dead`'s lease would.
pub fn helper_seeing_dead(h: &ImHelper, dead: &str) -> ImHelper {
    let cluster =
        impush_core::Cluster::new(h.cluster().nodes().to_vec(), Default::default()).unwrap();
    cluster.set_status(&dead.parse().unwrap(), impush_core::NodeStatus::Dead);
    ImHelper::new(impush_helper::HelperParts {
        cluster,
        signer: impush_core::token::TokenSigner::new(
            SECRET.as_bytes(),
            Duration::from_secs(60),
            4096,
        )
        .unwrap(),
        broker: h.broker().clone(),
        presence: h.presence().clone(),
        prefix: "impush".into(),
        history: false,
    })
}

/// The first of `{tag}0`, `{tag}1`, ... whose home (in `h`'s view) is node `n{i+1}`.
pub fn homed_on(h: &ImHelper, i: usize, tag: &str) -> String {
    let want = format!("n{}", i + 1);
    (0..)
        .map(|k| format!("{tag}{k}"))
        .find(|c| h.cluster().home(&id(c)).id.as_str() == want)
        .unwrap()
}

pub fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client of the test.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    /// Connects `client` through `helper.prepare_connect` and waits until the node has
    /// registered the connection (presence shows `expected_connections`).
    pub async fn connect(helper: &ImHelper, client: &str, expected_connections: usize) -> Client {
        let c = Self::connect_with(helper, client, Value::Null).await;
        let cid = id(client);
        eventually(|| async { helper.connections(&cid).await.unwrap() >= expected_connections })
            .await;
        c
    }

    pub async fn connect_with(helper: &ImHelper, client: &str, metadata: Value) -> Client {
        let info = helper.prepare_connect(&id(client), metadata).unwrap();
        Self::connect_url(info.url.as_str()).await
    }

    /// Connects with a connect URL as given (no wait for the node to register it).
    pub async fn connect_url(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// The next JSON frame (skipping WebSocket control frames).
    pub async fn next_json(&mut self) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("a frame within the timeout")
    }

    /// Asserts that no text frame arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        let got = tokio::time::timeout(d, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return other,
                }
            }
        })
        .await;
        if let Ok(frame) = got {
            panic!("expected silence, got {frame:?}");
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_owned().into()))
            .await
            .unwrap();
    }

    /// Drops the TCP connection with a reset (no close handshake, no FIN), as a phone losing
    /// its link does from the server's point of view.
    pub fn reset(self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_ref() {
            // Deprecated because a non-zero linger blocks the dropping thread; zero never does.
            #[allow(deprecated)]
            tcp.set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(self);
    }

    /// Reads until the server's close frame and returns its code (skipping data frames).
    pub async fn close_code(&mut self) -> u16 {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                    Some(Ok(Message::Close(None))) => return u16::from(CloseCode::Status),
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("a close frame within the timeout")
    }
}

/// Whether a publish is an offline event (`{prefix}.events`, `"type":"offline"`): test
/// brokers that hold or slow those down pick them out with this.
pub fn is_offline_event(topic: &str, payload: &[u8]) -> bool {
    topic.ends_with(".events")
        && std::str::from_utf8(payload).is_ok_and(|p| p.contains(r#""type":"offline""#))
}

/// Polls `cond` until it holds, failing after [`WAIT`].
pub async fn eventually<F, Fut>(cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    impush_tests::eventually_within("condition", WAIT, cond).await;
}

/// Tries to connect with a raw URL and returns the HTTP status of a refusal.
pub async fn refused_status(url: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("connection to {url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    // VmRSS is in kB whatever the page size; a test that measures memory must not pass
    // because it could not measure.
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/self/status"));
    kb * 1024
}

/// How many messages `client`'s offline inbox holds, through the node's HTTP API.
pub async fn inbox_count(server: &ImServer, client: &str) -> u64 {
    let url = format!(
        "http://{}/api/v1/clients/{client}/inbox",
        server.local_addr()
    );
    let body: Value = reqwest::Client::new()
        .get(url)
        .bearer_auth(server.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["count"].as_u64().unwrap()
}

/// The node's `/metrics` text, read over a fresh connection.
pub async fn scrape(server: &ImServer) -> String {
    reqwest::get(format!("http://{}/metrics", server.local_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A memory presence store whose `connect` and `disconnect` take a while, as a real store's
/// round trips do: the windows in which a connection is registered but not yet attached, or
/// closed but not yet detached.
#[derive(Debug)]
pub struct SlowPresence {
    inner: MemoryPresenceStore,
    connect: Duration,
    disconnect: Duration,
}

impl SlowPresence {
    pub fn new(connect: Duration, disconnect: Duration) -> Self {
        Self {
            inner: MemoryPresenceStore::new(),
            connect,
            disconnect,
        }
    }
}

#[async_trait::async_trait]
impl PresenceStore for SlowPresence {
    async fn connect(&self, n: &NodeId, c: &ClientId, k: &ConnectionId) -> PResult<usize> {
        tokio::time::sleep(self.connect).await;
        self.inner.connect(n, c, k).await
    }
    async fn disconnect(
        &self,
        n: &NodeId,
        c: &ClientId,
        k: &ConnectionId,
        clear: bool,
    ) -> PResult<usize> {
        tokio::time::sleep(self.disconnect).await;
        self.inner.disconnect(n, c, k, clear).await
    }
    async fn clear_node(&self, n: &NodeId, clear: bool) -> PResult<Vec<DroppedConnection>> {
        self.inner.clear_node(n, clear).await
    }
    async fn sync_node(
        &self,
        n: &NodeId,
        c: &[(ClientId, ConnectionId)],
        clear: bool,
    ) -> PResult<NodeSync> {
        self.inner.sync_node(n, c, clear).await
    }
    async fn heartbeat(&self, n: &NodeId, lease: Duration, st: NodeState) -> PResult<bool> {
        self.inner.heartbeat(n, lease, st).await
    }
    async fn live_nodes(&self) -> PResult<Vec<NodeLease>> {
        self.inner.live_nodes().await
    }
    async fn reap_expired(&self, clear: bool) -> PResult<Vec<DroppedConnection>> {
        self.inner.reap_expired(clear).await
    }
    async fn connections(&self, c: &ClientId) -> PResult<Answer<usize>> {
        self.inner.connections(c).await
    }
    async fn online(&self, c: &[ClientId]) -> PResult<Answer<Vec<bool>>> {
        self.inner.online(c).await
    }
    async fn online_clients(&self) -> PResult<Answer<Vec<ClientId>>> {
        self.inner.online_clients().await
    }
    async fn leave_all_if_offline(&self, c: &ClientId) -> PResult<bool> {
        self.inner.leave_all_if_offline(c).await
    }
    async fn join_channel(&self, ch: &ChannelName, c: &[ClientId]) -> PResult<()> {
        self.inner.join_channel(ch, c).await
    }
    async fn leave_channel(&self, ch: &ChannelName, c: &[ClientId]) -> PResult<()> {
        self.inner.leave_channel(ch, c).await
    }
    async fn channel_members(&self, ch: &ChannelName) -> PResult<Answer<Vec<ClientId>>> {
        self.inner.channel_members(ch).await
    }
    async fn channel_online(&self, ch: &ChannelName) -> PResult<Answer<usize>> {
        self.inner.channel_online(ch).await
    }
    async fn client_channels(&self, c: &ClientId) -> PResult<Answer<Vec<ChannelName>>> {
        self.inner.client_channels(c).await
    }
    async fn channels(&self) -> PResult<Answer<Vec<ChannelInfo>>> {
        self.inner.channels().await
    }
    async fn ping(&self) -> PResult<()> {
        self.inner.ping().await
    }
}
