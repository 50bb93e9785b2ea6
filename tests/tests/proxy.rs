//! The fault proxy (`impush_tests::proxy`) between plain TCP clients and an echo server: each
//! switch does what it says, in each direction, and heals; memory stays bounded.

#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use impush_tests::proxy::{Direction, FaultProxy, Mode, Selector, Verdict};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Instant,
};

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched.
const QUIET: Duration = Duration::from_millis(300);

/// An echo server; each connection reports how it ended (`None`: a clean EOF, or the error
/// kind of its failed read).
async fn echo_server() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Option<std::io::ErrorKind>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let end = loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break None,
                        Ok(n) => {
                            if let Err(e) = s.write_all(&buf[..n]).await {
                                break Some(e.kind());
                            }
                        }
                        Err(e) => break Some(e.kind()),
                    }
                };
                let _ = tx.send(end);
            });
        }
    });
    (addr, rx)
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `want.len()` bytes within [`WAIT`] and checks them.
async fn expect(s: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("bytes in time")
        .expect("read");
    assert_eq!(got, want);
}

/// Nothing arrives for [`QUIET`], and the connection is still open.
async fn expect_quiet(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    match tokio::time::timeout(QUIET, s.read(&mut b)).await {
        Err(_) => {}
        Ok(r) => panic!("expected nothing, got {r:?} ({b:?})"),
    }
}

/// The next read fails with a reset.
async fn expect_reset(s: &mut TcpStream) {
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(WAIT, s.read(&mut b))
        .await
        .expect("an answer in time");
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "expected an RST"
    );
}

#[tokio::test]
async fn pass_relays_both_ways_and_counts_connections() {
    let (echo, mut ends) = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    a.write_all(b"hello").await.unwrap();
    expect(&mut a, b"hello").await;
    b.write_all(b"world").await.unwrap();
    expect(&mut b, b"world").await;
    assert_eq!((proxy.connections(), proxy.accepted()), (2, 2));
    // A clean close goes through as a FIN, and the connection is no longer counted.
    drop(a);
    let end = tokio::time::timeout(WAIT, ends.recv()).await.unwrap();
    assert_eq!(end, Some(None), "the upstream saw a clean EOF");
    impush_tests::eventually_within("one connection left", WAIT, || async {
        proxy.connections() == 1
    })
    .await;
}

#[tokio::test]
async fn blackhole_to_upstream_drops_what_the_client_sends_until_healed() {
    let (echo, _ends) = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let mut c = connect(&proxy).await;
    proxy.blackhole(Direction::ToUpstream);
    c.write_all(b"lost").await.unwrap();
    expect_quiet(&mut c).await;
    assert_eq!(proxy.connections(), 1, "the connection stays open");
    proxy.heal();
    c.write_all(b"after").await.unwrap();
    expect(&mut c, b"after").await;
}

#[tokio::test]
async fn blackhole_to_client_drops_what_the_upstream_sends_until_healed() {
    let (echo, _ends) = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let mut c = connect(&proxy).await;
    proxy.blackhole(Direction::ToClient);
    c.write_all(b"lost").await.unwrap(); // reaches the echo server; its answer is dropped
    expect_quiet(&mut c).await;
    proxy.heal();
    c.write_all(b"after").await.unwrap();
    expect(&mut c, b"after").await;
}

#[tokio::test]
async fn pause_holds_bytes_and_delivers_them_after_the_heal() {
    let (echo, _ends) = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let mut c = connect(&proxy).await;
    proxy.pause(Direction::ToClient);
    c.write_all(b"held").await.unwrap();
    expect_quiet(&mut c).await;
    proxy.heal();
    expect(&mut c, b"held").await;
}

#[tokio::test]
async fn reset_sends_rst_both_ways_and_refuses_new_connections_until_healed() {
    let (echo, mut ends) = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let mut c = connect(&proxy).await;
    c.write_all(b"hi").await.unwrap();
    expect(&mut c, b"hi").await;

    proxy.reset();
    expect_reset(&mut c).await;
    let end = tokio::time::timeout(WAIT, ends.recv()).await.unwrap();
    assert_eq!(
        end,
        Some(Some(std::io::ErrorKind::ConnectionReset)),
        "the upstream got an RST too"
    );
    impush_tests::eventually_within("no connection left", WAIT, || async {
        proxy.connections() == 0
    })
    .await;
    // A new connection is accepted by the kernel, then reset at once.
    let mut late = connect(&proxy).await;
    expect_reset(&mut late).await;

    proxy.heal();
    let mut again = connect(&proxy).await;
    again.write_all(b"back").await.unwrap();
    expect(&mut again, b"back").await;
}

#[tokio::test]
async fn latency_delays_each_direction_and_heals() {
    const DELAY: Duration = Duration::from_millis(400);
    let (echo, _ends) = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let mut c = connect(&proxy).await;
    for dir in [Direction::ToUpstream, Direction::ToClient] {
        proxy.delay(dir, DELAY);
        let t = Instant::now();
        c.write_all(b"slow").await.unwrap();
        expect(&mut c, b"slow").await;
        assert!(
            t.elapsed() >= DELAY,
            "{dir:?}: round trip {:?}",
            t.elapsed()
        );
        proxy.heal();
    }
    proxy.delay(Direction::Both, DELAY);
    let t = Instant::now();
    c.write_all(b"slower").await.unwrap();
    expect(&mut c, b"slower").await;
    assert!(
        t.elapsed() >= DELAY * 2,
        "both: round trip {:?}",
        t.elapsed()
    );
    proxy.heal();
    let t = Instant::now();
    c.write_all(b"fast").await.unwrap();
    expect(&mut c, b"fast").await;
    assert!(t.elapsed() < DELAY, "healed: round trip {:?}", t.elapsed());
}

/// A server that reads and discards everything, as fast as it comes.
async fn sink_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A paused or slow direction does not buffer without bound: with an upstream that reads
/// everything at once, the sender still stalls (the proxy holds at most its queue, then stops
/// reading). A blackholed one drops what it reads, so its sender never stalls.
#[tokio::test]
async fn held_bytes_are_bounded_and_a_blackhole_keeps_reading() {
    const BIG: usize = 64 << 20;
    let proxy = FaultProxy::start(sink_server().await).await.unwrap();
    let big = vec![7u8; BIG];
    // The baseline: passing, 64 MiB go through.
    let mut c = connect(&proxy).await;
    tokio::time::timeout(Duration::from_secs(30), c.write_all(&big))
        .await
        .expect("64 MiB pass")
        .unwrap();
    for mode in [
        Mode::Pause,
        Mode::Delay(Duration::from_secs(60)),
        Mode::Blackhole,
    ] {
        let mut c = connect(&proxy).await;
        proxy.set(Direction::ToUpstream, mode);
        let sent = tokio::time::timeout(Duration::from_secs(3), c.write_all(&big)).await;
        if mode == Mode::Blackhole {
            assert!(matches!(sent, Ok(Ok(()))), "{mode:?}: {sent:?}");
        } else {
            assert!(
                sent.is_err(),
                "{mode:?}: {BIG} bytes went in without stalling"
            );
        }
        proxy.heal();
    }
}

#[tokio::test]
async fn an_upstream_that_refuses_is_a_reset() {
    let gone = impush_tests::free_addrs(1)[0]; // nothing listens there
    let proxy = FaultProxy::start(gone).await.unwrap();
    let mut c = connect(&proxy).await;
    expect_reset(&mut c).await;
}

#[tokio::test]
async fn dropping_the_proxy_resets_its_connections() {
    let (echo, _ends) = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let mut c = connect(&proxy).await;
    c.write_all(b"hi").await.unwrap();
    expect(&mut c, b"hi").await;
    drop(proxy);
    expect_reset(&mut c).await;
}

/// A selecting proxy acts on the connections its selector faults, told by their first bytes
/// (which reach the upstream first, even when they took several reads to tell), and the
/// others pass whatever the switches say: a pause, a blackhole and a reset leave them alone,
/// and only the faulted ones are counted.
#[tokio::test]
async fn a_selecting_proxy_acts_only_on_the_connections_it_selects() {
    let (echo, _ends) = echo_server().await;
    let selector = Selector::new(|first| match first.get(..4) {
        None => Verdict::NeedMore,
        Some(b"cut:") => Verdict::Faulted,
        Some(_) => Verdict::Spared,
    });
    let proxy = FaultProxy::start_selecting(echo, selector).await.unwrap();
    let mut cut = connect(&proxy).await;
    let mut kept = connect(&proxy).await;
    // The selector needs four bytes: the faulted client sends them in two writes.
    cut.write_all(b"cu").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    cut.write_all(b"t:a").await.unwrap();
    expect(&mut cut, b"cut:a").await;
    kept.write_all(b"own:a").await.unwrap();
    expect(&mut kept, b"own:a").await;
    assert_eq!((proxy.connections(), proxy.accepted()), (1, 1));

    proxy.pause(Direction::Both);
    cut.write_all(b"b").await.unwrap();
    expect_quiet(&mut cut).await;
    kept.write_all(b"b").await.unwrap();
    expect(&mut kept, b"b").await;
    proxy.heal();
    expect(&mut cut, b"b").await;

    proxy.blackhole(Direction::ToClient);
    kept.write_all(b"c").await.unwrap();
    expect(&mut kept, b"c").await;
    proxy.reset();
    expect_reset(&mut cut).await;
    kept.write_all(b"d").await.unwrap();
    expect(&mut kept, b"d").await;
    // A new faulted connection is refused while the reset holds; a spared one is not.
    let mut again = connect(&proxy).await;
    again.write_all(b"cut:e").await.unwrap();
    expect_reset(&mut again).await;
    let mut other = connect(&proxy).await;
    other.write_all(b"own:e").await.unwrap();
    expect(&mut other, b"own:e").await;
}
