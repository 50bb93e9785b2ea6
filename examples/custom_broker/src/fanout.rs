//! `Fanout` subscriptions: a core NATS subscription, read by a task into a bounded buffer, so
//! that what a slow subscriber loses is counted and reported (`Error::Lagged`), never silent.
//!
//! Losses the task cannot count are reported as `Lagged { dropped: 0 }` (count unknown): the
//! broker's connection was lost and came back (NATS core keeps nothing for a disconnected
//! subscriber), or the NATS client itself dropped messages (a "slow consumer" event). The
//! broker signals both on the `gaps` watch.

use async_nats::Subscriber;
use futures_util::StreamExt;
use impush_core::{Delivery, Error, Result};
use tokio::sync::{mpsc, watch};

/// A loss not yet reported to the subscriber.
#[derive(Debug, Default)]
struct Unreported {
    /// Messages dropped because the buffer was full.
    dropped: u64,
    /// A gap of unknown size (reconnect, slow consumer in the client).
    gap: bool,
}

impl Unreported {
    fn any(&self) -> bool {
        self.dropped > 0 || self.gap
    }
}

/// Forwards `sub`'s messages to `tx` until the subscriber drops the stream or the connection
/// is closed (shutdown). A loss is reported as soon as the buffer has room for the report,
/// before any later message.
pub(crate) async fn run(
    mut sub: Subscriber,
    mut gaps: Option<watch::Receiver<u64>>,
    tx: mpsc::Sender<Result<Delivery>>,
) {
    let mut lost = Unreported::default();
    loop {
        let gap_signal = async {
            match gaps.as_mut() {
                Some(g) => g.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = tx.closed() => return,
            permit = tx.reserve(), if lost.any() => {
                let Ok(permit) = permit else { return };
                permit.send(Err(Error::Lagged { dropped: lost.dropped }));
                lost = Unreported::default();
            }
            open = gap_signal => {
                if open {
                    lost.gap = true;
                } else {
                    gaps = None; // the broker is gone; its connection goes on serving us
                }
            }
            msg = sub.next() => {
                let Some(msg) = msg else { return };
                if lost.any() {
                    // Order: the loss is reported before anything that came after it.
                    lost.dropped += 1;
                    continue;
                }
                match tx.try_send(Ok(Delivery::new(msg.payload))) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => lost.dropped += 1,
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
    }
}
