//! Unit tests of the session: the queue, wake-ups, direct writes and the writer.

use std::{
    sync::{atomic::Ordering, Arc},
    task::{Context as TaskContext, Poll},
};

use impush_core::{config::LimitsConfig, ClientId, ConnectionId};

use super::*;
use crate::metrics::Metrics;

fn handle() -> SessionHandle {
    handle_with(|_| {})
}

fn handle_with(edit: impl FnOnce(&mut LimitsConfig)) -> SessionHandle {
    let mut limits = LimitsConfig::default();
    edit(&mut limits);
    SessionHandle::new(
        ClientId::new("alice").expect("valid id"),
        ConnectionId::new("n1-1").expect("valid id"),
        serde_json::Value::Null,
        &limits,
        Arc::new(Metrics::default()),
    )
}

fn frame() -> Outgoing {
    Outgoing::plain(Utf8Bytes::from_static("{}"))
}

#[test]
fn nothing_is_queued_once_the_queue_was_discarded() {
    // A connection whose peer went away has no close code, so the discard is what must
    // refuse later pushes, or frames would wait in a dead connection's queue.
    let h = handle();
    assert!(h.push(frame()));
    drop(h.take_unwritten());
    assert!(h.take().is_empty(), "discard left frames queued");
    assert!(!h.push(frame()), "a discarded queue took a frame");
    assert!(h.take().is_empty());
}

#[test]
fn a_closed_connection_refuses_frames_at_once() {
    let h = handle();
    assert!(h.push(frame()));
    h.kick();
    assert!(!h.push(frame()), "a kicked connection took a frame");
    assert_eq!(
        h.take().len(),
        1,
        "only the frame pushed before the kick is queued"
    );
}

/// Counts its wake-ups.
#[derive(Default)]
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_task_is_woken_for_frames_once_and_for_closing_always() {
    let h = handle();
    let wakes = Arc::new(Wakes::default());
    let waker = std::task::Waker::from(wakes.clone());
    let mut cx = TaskContext::from_waker(&waker);
    let count = || wakes.0.load(Ordering::SeqCst);

    assert_eq!(h.poll_wake(&mut cx), Poll::Pending);
    assert!(h.push(frame()));
    assert_eq!(count(), 1, "a push must wake the waiting task");
    assert_eq!(h.poll_wake(&mut cx), Poll::Ready(Wake::Frames));
    assert_eq!(h.take().len(), 1);
    assert_eq!(
        h.poll_wake(&mut cx),
        Poll::Pending,
        "frames already taken woke the task again"
    );
    assert_eq!(h.poll_closing(&mut cx), Poll::Pending);

    // Closing wins over frames queued before it, and is seen by both polls from then on.
    assert!(h.push(frame()));
    assert_eq!(count(), 2);
    h.kick();
    assert_eq!(
        h.poll_wake(&mut cx),
        Poll::Ready(Wake::Close(close::KICKED))
    );
    assert_eq!(h.poll_closing(&mut cx), Poll::Ready(close::KICKED));
    assert_eq!(
        h.poll_wake(&mut cx),
        Poll::Ready(Wake::Close(close::KICKED))
    );

    // A close wakes a waiting task.
    let other = handle();
    assert_eq!(other.poll_wake(&mut cx), Poll::Pending);
    other.replace();
    assert_eq!(count(), 3, "a close must wake the waiting task");
    assert_eq!(
        other.poll_wake(&mut cx),
        Poll::Ready(Wake::Close(close::REPLACED))
    );
}

// ------------------------------------------------------------------ direct writes and the writer

mod writes {
    use std::{
        io::Read,
        net::TcpStream as StdStream,
        time::{Duration, Instant},
    };

    use bytes::Bytes;
    use impush_core::{envelope::Deliver, Acker, MessageId};
    use serde_json::value::RawValue;
    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        session::{
            direct::{self, Mode},
            outbox::Step,
            socket::Socket,
        },
        settle::{Settlement, Tracked},
    };

    /// A session socket and the client end of it (blocking, with a read timeout).
    async fn pair() -> (socket::Conn, StdStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || StdStream::connect(addr).unwrap());
        let (server, _) = listener.accept().await.unwrap();
        let client = client.join().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let conn = Socket::new(server, Bytes::new(), None).into_parts().conn;
        (conn, client)
    }

    /// Reads `n` unmasked text frames from a server; their payloads.
    fn read_frames(client: &mut StdStream, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut read = |len: usize| {
            let mut b = vec![0u8; len];
            client.read_exact(&mut b).unwrap();
            b
        };
        while out.len() < n {
            let h = read(2);
            assert_eq!(h[0], 0x81, "a final text frame");
            let len = match h[1] {
                126 => u16::from_be_bytes(read(2).try_into().unwrap()) as usize,
                127 => u64::from_be_bytes(read(8).try_into().unwrap()) as usize,
                n => n as usize,
            };
            out.push(String::from_utf8(read(len)).unwrap());
        }
        out
    }

    fn text(s: String) -> Outgoing {
        Outgoing::plain(s.into())
    }

    fn counting_waker() -> (Arc<Wakes>, std::task::Waker) {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        (wakes, waker)
    }

    #[tokio::test]
    async fn a_fan_out_writes_to_an_idle_socket_without_waking_its_task() {
        let (conn, mut client) = pair().await;
        let h = handle();
        h.install(conn, false);
        let (wakes, waker) = counting_waker();
        let mut cx = TaskContext::from_waker(&waker);
        assert_eq!(
            h.poll_wake(&mut cx),
            Poll::Ready(Wake::Frames),
            "install wakes"
        );
        assert_eq!(h.poll_wake(&mut cx), Poll::Pending);
        let before = wakes.0.load(Ordering::SeqCst);

        let pacer = Pacer::new(Duration::ZERO, Some(Duration::ZERO));
        {
            let _direct = pacer.begin();
            assert!(h.push(text("direct".into())));
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), before, "the task was woken");
        assert!(h.take().is_empty(), "the frame was queued");
        assert_eq!(read_frames(&mut client, 1), vec!["direct"]);

        // Outside a delivery loop that allows it, a frame is queued and wakes the task.
        assert!(h.push(text("queued".into())));
        assert_eq!(wakes.0.load(Ordering::SeqCst), before + 1);
        assert_eq!(h.take().len(), 1);
    }

    /// Writes what is queued until nothing is left, waiting for room as the client reads.
    fn write_all_queued(h: &SessionHandle) -> Vec<Outgoing> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut written = Vec::new();
        loop {
            let mut budget = usize::MAX;
            match h.write_queued(&mut budget, &mut written) {
                Step::Done { .. } => return written,
                Step::Blocked => {
                    assert!(Instant::now() < deadline, "the writer made no progress");
                    std::thread::yield_now();
                }
                Step::Failed => panic!("the socket failed"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_a_full_socket_did_not_take_follow_in_order_and_whole() {
        let (conn, mut client) = pair().await;
        let h = handle_with(|l| {
            l.outbound_queue = 100_000;
            l.outbound_queue_bytes = 1 << 30;
        });
        h.install(conn, false);
        let pacer = Pacer::new(Duration::ZERO, Some(Duration::ZERO));
        // Big frames pushed directly while the client reads nothing: the socket buffer fills,
        // one frame goes out in part and the rest queue behind it.
        let payload = |i: usize| format!("{i:06}:{}", "x".repeat(20_000 + i % 7));
        let mut sent = 0;
        while h.take_len() < 20 {
            let _direct = pacer.begin();
            assert!(h.push(text(payload(sent))));
            sent += 1;
            assert!(sent < 100_000, "the socket never filled up");
        }
        // A control frame waits for the next frame boundary.
        h.send_control(wire::Control::ping());
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut pings = 0;
            while got.len() < sent {
                let mut h2 = [0u8; 2];
                client.read_exact(&mut h2).unwrap();
                if h2[0] == 0x89 {
                    assert_eq!(h2[1], 0, "an empty ping");
                    pings += 1;
                    continue;
                }
                assert_eq!(h2[0], 0x81, "frame {} starts where one should", got.len());
                let len = match h2[1] {
                    126 => {
                        let mut l = [0u8; 2];
                        client.read_exact(&mut l).unwrap();
                        usize::from(u16::from_be_bytes(l))
                    }
                    n => usize::from(n),
                };
                let mut b = vec![0u8; len];
                client.read_exact(&mut b).unwrap();
                got.push(String::from_utf8(b).unwrap());
            }
            (got, pings)
        });
        let written = write_all_queued(&h);
        let (got, pings) = reader.join().unwrap();
        assert_eq!(got.len(), sent);
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, &payload(i), "frame {i}");
        }
        assert_eq!(pings, 1);
        assert!(!written.is_empty() && h.take_len() == 0);
    }

    fn settlement(
        n: usize,
    ) -> (
        Arc<Settlement>,
        mpsc::UnboundedReceiver<crate::settle::Settled>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let d = Deliver {
            id: MessageId::new(format!("m{n}")).unwrap(),
            from: ClientId::new("s").unwrap(),
            to: Vec::new(),
            data: RawValue::from_string("1".into()).unwrap(),
            ts: 1,
            receipt: false,
            forwarded: false,
        };
        let s = Settlement::begin(d, vec![ClientId::new("alice").unwrap()], Acker::none(), tx);
        (s, rx)
    }

    #[tokio::test]
    async fn direct_writes_respect_flow_control_and_settle_once_written() {
        let (conn, mut client) = pair().await;
        let h = handle_with(|l| l.max_unacked = 2);
        h.install(conn, true);
        let pacer = Pacer::new(Duration::ZERO, Some(Duration::ZERO));
        let mut settled = Vec::new();
        for i in 0..3 {
            let (s, rx) = settlement(i);
            let out = Outgoing {
                frame: format!("m{i}").into(),
                token: Some(Tracked::Live(s.token(0))),
                published: 0,
            };
            {
                let _direct = pacer.begin();
                assert!(h.push(out));
            }
            s.queued();
            settled.push(rx);
        }
        // Two written and pending their ack; the third waits for one.
        assert_eq!(read_frames(&mut client, 2), vec!["m0", "m1"]);
        assert_eq!(h.unacked(), 2);
        assert_eq!(
            h.take_len(),
            1,
            "flow control let a third unacked frame out"
        );
        for rx in &mut settled[..2] {
            let out = rx.try_recv().expect("settled once written");
            assert_eq!(out.delivered.len(), 1);
        }
        assert!(settled[2].try_recv().is_err(), "settled before written");
    }

    /// A link replaced while it attached (its live frames held meanwhile) hands its held
    /// point-to-point frames back instead of dropping them: the node keeps them for the client
    /// at once (`Node::attach`), so the client's next connection reads them before newer ones.
    #[test]
    fn held_frames_of_a_link_closed_while_attaching_are_handed_back() {
        let h = handle();
        h.hold();
        let (s, _rx) = settlement(7);
        assert!(h.push(Outgoing {
            frame: "m7".into(),
            token: Some(Tracked::Live(s.token(0))),
            published: 0,
        }));
        h.replace();
        let refused = h.release_held();
        assert_eq!(refused.len(), 1, "the held frame was dropped");
        assert_eq!(refused[0].settlement().id().as_str(), "m7");
        assert_eq!(h.take_len(), 0, "queued on a closing link");
    }

    #[test]
    fn a_socket_no_session_drives_takes_nothing_directly() {
        let h = handle();
        let pacer = Pacer::new(Duration::ZERO, Some(Duration::ZERO));
        let _direct = pacer.begin();
        assert!(h.push(frame()));
        assert_eq!(h.take_len(), 1);
    }

    /// A fan-out to enough sockets that a share is left to flusher tasks on the other worker:
    /// every frame arrives, in order, and no session task is woken for a frame to an idle
    /// socket.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_out_fan_out_writes_every_socket_in_order_without_waking_tasks() {
        const N: usize = 300;
        let mut handles = Vec::new();
        let mut clients = Vec::new();
        let (wakes, waker) = counting_waker();
        let mut cx = TaskContext::from_waker(&waker);
        for _ in 0..N {
            let (conn, client) = pair().await;
            let h = Arc::new(handle());
            h.install(conn, false);
            assert_eq!(h.poll_wake(&mut cx), Poll::Ready(Wake::Frames));
            assert_eq!(h.poll_wake(&mut cx), Poll::Pending);
            handles.push(h);
            clients.push(client);
        }
        let reader = |clients: Vec<StdStream>, n: usize| {
            std::thread::spawn(move || {
                clients
                    .into_iter()
                    .map(|mut c| {
                        let got = read_frames(&mut c, n);
                        (c, got)
                    })
                    .collect::<Vec<_>>()
            })
        };
        let pacer = Pacer::new(Duration::ZERO, Some(Duration::ZERO));
        let deliver = |i: usize| {
            let _direct = pacer.begin();
            let n = shared_out(handles.clone(), |s| {
                assert!(s.push(text(format!("m{i}"))));
            });
            assert_eq!(n, N);
        };

        let read = reader(clients, 1);
        deliver(0);
        let read = tokio::task::spawn_blocking(move || read.join().unwrap())
            .await
            .unwrap();
        assert!(read.iter().all(|(_, got)| got == &["m0"]));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "a task was woken");

        // Back to back: the flushers of one delivery may still be at work when the next
        // queues behind them.
        let read = reader(read.into_iter().map(|(c, _)| c).collect(), 3);
        for i in 1..4 {
            deliver(i);
        }
        let read = tokio::task::spawn_blocking(move || read.join().unwrap())
            .await
            .unwrap();
        for (_, got) in &read {
            assert_eq!(got, &["m1", "m2", "m3"]);
        }
        assert!(
            handles.iter().all(|h| h.take_len() == 0),
            "frames left queued"
        );
    }

    /// A delivery that begins soon after the previous one (a burst, as at full speed) writes
    /// every socket itself: shared out, its flushers raced the next delivery's frames for the
    /// same sockets, and full-speed fan-out lost 23% of its frames a second (BENCHMARKS.md,
    /// issue 25). A paced one, with the same sockets, does share out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bursts_delivery_shares_nothing_out() {
        let handles: Vec<Arc<SessionHandle>> = (0..300).map(|_| Arc::new(handle())).collect();
        let pacer = Pacer::new(Duration::ZERO, Some(Duration::from_secs(3600)));
        let modes = |pacer: &Pacer| {
            let direct = pacer.begin();
            let mut seen = Vec::new();
            shared_out(handles.clone(), |_| seen.push(direct::mode()));
            drop(direct);
            pacer.end();
            seen
        };
        let paced = modes(&pacer);
        assert!(
            paced.contains(&Mode::Defer),
            "the first delivery is paced and shares out"
        );
        let burst = modes(&pacer);
        assert_eq!(burst.len(), 300);
        assert!(
            burst.iter().all(|m| *m == Mode::Write),
            "a burst's delivery shared out: {:?}",
            burst.iter().filter(|m| **m != Mode::Write).count()
        );
    }
}
