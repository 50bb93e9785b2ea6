//! [`FaultProxy`]: a TCP proxy between a client and one upstream address whose links a test
//! breaks and heals while traffic flows (partitions, frozen links, resets, latency).
//!
//! Each accepted connection gets its own connection to the upstream. Every byte is relayed
//! through a bounded queue per direction, and each direction has a [`Mode`] a test may switch
//! at any time; [`FaultProxy::reset`] ends every connection with an RST. The queues bound the
//! memory: a blackholed direction reads and drops, a paused one stops reading (the kernel's
//! socket buffers fill and TCP slows the sender down), a delayed one holds at most
//! `QUEUE_CHUNKS` chunks of `CHUNK` bytes before it stops reading.
//!
//! A proxy may act on some of its connections only ([`FaultProxy::start_selecting`], with a
//! [`Selector`] of `select`): the others always pass.

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{ReadHalf, WriteHalf},
        TcpListener, TcpStream,
    },
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

mod select;
pub use select::{Selector, Verdict};

/// Bytes read from a socket at once.
const CHUNK: usize = 16 * 1024;
/// Chunks a direction holds between reading and writing (1 MiB at most).
const QUEUE_CHUNKS: usize = 64;

/// Which way bytes flow through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// What the client sends, towards the upstream.
    ToUpstream,
    /// What the upstream sends, towards the client.
    ToClient,
    /// Both ways (for [`FaultProxy::set`] and its shortcuts).
    Both,
}

/// What a direction does with the bytes it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Relays them.
    #[default]
    Pass,
    /// Reads them and drops them; the connection stays open (a link that loses everything).
    Blackhole,
    /// Stops reading: nothing is lost, the sender's TCP stalls, and what waited flows after a
    /// switch back (a frozen link that TCP survives).
    Pause,
    /// Relays each chunk this long after it was read, without slowing the reading down (until
    /// the queue is full).
    Delay(Duration),
}

/// The switches, as the connections see them.
#[derive(Clone, Copy, Debug, Default)]
struct Switches {
    to_upstream: Mode,
    to_client: Mode,
    reset: bool,
}

impl Switches {
    fn mode(&self, dir: Direction) -> Mode {
        match dir {
            Direction::ToClient => self.to_client,
            // A pump is always one way; `Both` never reaches here.
            Direction::ToUpstream | Direction::Both => self.to_upstream,
        }
    }
}

/// What the proxy's tasks share with its handle.
#[derive(Debug)]
struct Shared {
    switches: watch::Sender<Switches>,
    /// What the connections a selector spared see: never switched.
    spared: watch::Sender<Switches>,
    selector: Option<Selector>,
    open: AtomicUsize,
    accepted: AtomicU64,
}

/// A TCP proxy on `127.0.0.1:0` in front of one upstream address, with switches per direction.
///
/// Dropping it stops accepting and resets every connection it still relays.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(upstream: std::net::SocketAddr) -> std::io::Result<()> {
/// use impush_tests::proxy::{Direction, FaultProxy};
///
/// let proxy = FaultProxy::start(upstream).await?;
/// // ... point a client at proxy.addr() ...
/// proxy.blackhole(Direction::ToClient); // the client hears nothing more
/// proxy.heal();
/// proxy.reset(); // every connection gets an RST, and so does every new one until heal()
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free loopback port and relays every connection to `upstream`.
    ///
    /// # Errors
    /// When the loopback port cannot be bound.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::start_with(upstream, None).await
    }

    /// Like [`FaultProxy::start`], but the switches act only on the connections `selector`
    /// says are [`Verdict::Faulted`]; the others always pass, and
    /// [`FaultProxy::connections`] and [`FaultProxy::accepted`] count only the faulted ones.
    ///
    /// # Errors
    /// When the loopback port cannot be bound.
    pub async fn start_selecting(
        upstream: SocketAddr,
        selector: Selector,
    ) -> io::Result<FaultProxy> {
        Self::start_with(upstream, Some(selector)).await
    }

    async fn start_with(upstream: SocketAddr, selector: Option<Selector>) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            switches: watch::Sender::new(Switches::default()),
            spared: watch::Sender::new(Switches::default()),
            selector,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            shared.clone(),
            stop.clone(),
        ));
        Ok(FaultProxy {
            addr,
            upstream,
            shared,
            stop,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it relays to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches `dir` to `mode`, for the connections open now and those to come.
    pub fn set(&self, dir: Direction, mode: Mode) {
        self.shared.switches.send_modify(|s| match dir {
            Direction::ToUpstream => s.to_upstream = mode,
            Direction::ToClient => s.to_client = mode,
            Direction::Both => {
                s.to_upstream = mode;
                s.to_client = mode;
            }
        });
    }

    /// [`Mode::Blackhole`] for `dir`.
    pub fn blackhole(&self, dir: Direction) {
        self.set(dir, Mode::Blackhole);
    }

    /// [`Mode::Pause`] for `dir`.
    pub fn pause(&self, dir: Direction) {
        self.set(dir, Mode::Pause);
    }

    /// [`Mode::Delay`] for `dir`.
    pub fn delay(&self, dir: Direction, by: Duration) {
        self.set(dir, Mode::Delay(by));
    }

    /// Ends every connection with an RST to both peers (`SO_LINGER` 0), and does the same to
    /// each new one as soon as it is accepted, until [`FaultProxy::heal`].
    ///
    /// A reset is for the link, not one direction: TCP has no half-reset.
    pub fn reset(&self) {
        self.shared.switches.send_modify(|s| s.reset = true);
    }

    /// Back to [`Mode::Pass`] both ways, and new connections are relayed again.
    pub fn heal(&self) {
        self.shared.switches.send_replace(Switches::default());
    }

    /// The mode of one direction (`Both` answers for [`Direction::ToUpstream`]).
    pub fn mode(&self, dir: Direction) -> Mode {
        self.shared.switches.borrow().mode(dir)
    }

    /// Connections open now (accepted and not yet ended).
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, _)) => {
                tokio::spawn(relay(client, upstream, shared.clone(), stop.clone()));
            }
            // Out of file descriptors and the like: pass, rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Counts a faulted connection as accepted, and as open until dropped.
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: Arc<Shared>) -> Self {
        shared.accepted.fetch_add(1, Ordering::AcqRel);
        shared.open.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Relays one client connection until both directions end, or resets it.
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let (first, verdict) = match &shared.selector {
        None => (Vec::new(), Verdict::Faulted),
        Some(selector) => {
            tokio::select! {
                () = stop.cancelled() => return rst(client),
                first = first_bytes(&mut client, selector) => first,
            }
        }
    };
    let (switches, _open) = if verdict == Verdict::Spared {
        (shared.spared.subscribe(), None)
    } else {
        (shared.switches.subscribe(), Some(Open::new(shared.clone())))
    };
    if switches.borrow().reset {
        rst(client);
        return;
    }
    let server = tokio::select! {
        () = stop.cancelled() => return rst(client),
        server = TcpStream::connect(upstream) => server,
    };
    let Ok(mut server) = server else {
        // The upstream refused: so does the proxy, as the upstream itself would have.
        return rst(client);
    };
    // Latency is what a test sets, not what Nagle adds.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Cancelled on any failure, or by a reset: the connection then ends with RSTs.
    let broken = stop.child_token();
    {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both_ways = async {
            tokio::join!(
                pump(
                    (client_read, first),
                    server_write,
                    Direction::ToUpstream,
                    switches.clone(),
                    &broken
                ),
                pump(
                    (server_read, Vec::new()),
                    client_write,
                    Direction::ToClient,
                    switches.clone(),
                    &broken
                ),
            )
        };
        let mut reset = switches.clone();
        tokio::select! {
            _ = both_ways => {}
            () = broken.cancelled() => {}
            // Err: the proxy is gone, which also ends its connections.
            _ = reset.wait_for(|s| s.reset) => broken.cancel(),
        }
    }
    if broken.is_cancelled() {
        rst(client);
        rst(server);
    }
}

/// Reads what `client` sends first until `selector` gives a verdict (at most
/// [`Selector::MAX_PREFIX`] bytes, for at most [`Selector::WAIT`]; then it is faulted). The
/// bytes read are relayed first.
async fn first_bytes(client: &mut TcpStream, selector: &Selector) -> (Vec<u8>, Verdict) {
    let mut first = Vec::new();
    let deadline = Instant::now() + Selector::WAIT;
    let mut buf = [0u8; 512];
    while first.len() < Selector::MAX_PREFIX {
        let read = tokio::time::timeout_at(deadline, client.read(&mut buf)).await;
        let Ok(Ok(n @ 1..)) = read else { break };
        first.extend_from_slice(&buf[..n]);
        match selector.verdict(&first) {
            Verdict::NeedMore => {}
            verdict => return (first, verdict),
        }
    }
    (first, Verdict::Faulted)
}

/// Closes `stream` with an RST instead of a FIN.
fn rst(stream: TcpStream) {
    // Zero linger makes close() send an RST at once, without blocking the thread.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// What travels between a direction's reader and writer.
enum Chunk {
    Data { bytes: Bytes, due: Instant },
    Eof,
}

/// One direction: reads `from` (after relaying what was read of it already), writes `to`, as
/// the switch of `dir` says.
async fn pump(
    from: (ReadHalf<'_>, Vec<u8>),
    to: WriteHalf<'_>,
    dir: Direction,
    switches: watch::Receiver<Switches>,
    broken: &CancellationToken,
) {
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    tokio::join!(
        read_side(from, tx, dir, switches.clone(), broken),
        write_side(to, rx, dir, switches, broken),
    );
}

async fn read_side(
    (mut from, mut first): (ReadHalf<'_>, Vec<u8>),
    tx: mpsc::Sender<Chunk>,
    dir: Direction,
    mut switches: watch::Receiver<Switches>,
    broken: &CancellationToken,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mode = switches.borrow_and_update().mode(dir);
        if mode == Mode::Pause {
            tokio::select! {
                () = broken.cancelled() => return,
                changed = switches.changed() => {
                    if changed.is_err() {
                        return broken.cancel();
                    }
                    continue;
                }
            }
        }
        // What was read before the relay began goes first, under the mode of now.
        let read = if first.is_empty() {
            None
        } else {
            let n = first.len();
            buf[..n].copy_from_slice(&first);
            first.clear();
            Some(Ok(n))
        };
        let read = match read {
            Some(read) => read,
            None => tokio::select! {
            () = broken.cancelled() => return,
            // A switch flipped while waiting: read again under the new mode (read is cancel
            // safe, nothing is lost).
            changed = switches.changed() => {
                if changed.is_err() {
                    return broken.cancel();
                }
                continue;
            }
            read = from.read(&mut buf) => read,
            },
        };
        let chunk = match read {
            Ok(0) => Chunk::Eof,
            Ok(n) => match switches.borrow().mode(dir) {
                Mode::Blackhole => continue,
                Mode::Delay(by) => Chunk::Data {
                    bytes: Bytes::copy_from_slice(&buf[..n]),
                    due: Instant::now() + by,
                },
                Mode::Pass | Mode::Pause => Chunk::Data {
                    bytes: Bytes::copy_from_slice(&buf[..n]),
                    due: Instant::now(),
                },
            },
            Err(_) => return broken.cancel(),
        };
        let eof = matches!(chunk, Chunk::Eof);
        tokio::select! {
            () = broken.cancelled() => return,
            sent = tx.send(chunk) => if sent.is_err() { return },
        }
        if eof {
            return;
        }
    }
}

async fn write_side(
    mut to: WriteHalf<'_>,
    mut rx: mpsc::Receiver<Chunk>,
    dir: Direction,
    mut switches: watch::Receiver<Switches>,
    broken: &CancellationToken,
) {
    loop {
        let chunk = tokio::select! {
            () = broken.cancelled() => return,
            chunk = rx.recv() => chunk,
        };
        let Some(chunk) = chunk else { return };
        if let Chunk::Data { due, .. } = &chunk {
            tokio::select! {
                () = broken.cancelled() => return,
                () = tokio::time::sleep_until(*due) => {}
            }
        }
        // What a switch says now decides: a pause holds the chunk, a blackhole drops data and
        // holds back the FIN (a dead link carries neither).
        let go = loop {
            let mode = switches.borrow_and_update().mode(dir);
            match (mode, &chunk) {
                (Mode::Blackhole, Chunk::Data { .. }) => break false,
                (Mode::Pause, _) | (Mode::Blackhole, Chunk::Eof) => {
                    tokio::select! {
                        () = broken.cancelled() => return,
                        changed = switches.changed() => if changed.is_err() {
                            return broken.cancel();
                        },
                    }
                }
                _ => break true,
            }
        };
        if !go {
            continue;
        }
        let written = tokio::select! {
            () = broken.cancelled() => return,
            written = async {
                match &chunk {
                    Chunk::Data { bytes, .. } => to.write_all(bytes).await,
                    Chunk::Eof => to.shutdown().await,
                }
            } => written,
        };
        if written.is_err() {
            return broken.cancel();
        }
        if matches!(chunk, Chunk::Eof) {
            return;
        }
    }
}
