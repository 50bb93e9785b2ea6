//! [`Ledger`]: who the business believes is online from the events alone, kept by a task that
//! reads a helper's event stream, so a case can compare it with the queries and with the
//! sockets that exist (`docs/design.md` section 13: events and queries agree).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use futures_util::StreamExt;
use impush_core::{ClientId, ConnectionId, Event};
use impush_helper::ImHelper;
use tokio::time::Instant;

/// The events one helper received, and the connections they leave open per client.
#[derive(Debug, Default)]
struct Book {
    /// Every event with the moment it arrived.
    events: Vec<(Instant, Event)>,
    /// client -> connections the events say are open.
    open: BTreeMap<ClientId, BTreeSet<ConnectionId>>,
}

/// A running record of a helper's events. Dropping it stops the reading task.
#[derive(Debug)]
pub struct Ledger {
    book: Arc<Mutex<Book>>,
    task: tokio::task::JoinHandle<()>,
}

impl Ledger {
    /// Subscribes to `h`'s events and starts recording them.
    ///
    /// # Panics
    /// When the subscription fails.
    pub async fn start(h: &ImHelper) -> Ledger {
        let mut events = h.events().await.expect("subscribe to events");
        let book = Arc::new(Mutex::new(Book::default()));
        let task = tokio::spawn({
            let book = book.clone();
            async move {
                while let Some(Ok(ev)) = events.next().await {
                    let mut b = book.lock().expect("ledger");
                    // A connection is open from its online to its offline: repeats (a node
                    // re-announcing what a store forgot) change nothing.
                    match &ev {
                        Event::Online {
                            client, connection, ..
                        } => {
                            b.open
                                .entry(client.clone())
                                .or_default()
                                .insert(connection.clone());
                        }
                        Event::Offline {
                            client, connection, ..
                        } => {
                            if let Some(open) = b.open.get_mut(client) {
                                open.remove(connection);
                            }
                        }
                    }
                    b.events.push((Instant::now(), ev));
                }
            }
        });
        Ledger { book, task }
    }

    /// Whether the events say each of `clients` is online (has a connection open), in order.
    pub fn online(&self, clients: &[ClientId]) -> Vec<bool> {
        let b = self.book.lock().expect("ledger");
        clients
            .iter()
            .map(|c| b.open.get(c).is_some_and(|open| !open.is_empty()))
            .collect()
    }

    /// The events about `client` that arrived at or after `since`.
    pub fn events_of(&self, client: &ClientId, since: Instant) -> Vec<Event> {
        let b = self.book.lock().expect("ledger");
        b.events
            .iter()
            .filter(|(at, e)| *at >= since && e.client() == client)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// How many events arrived so far.
    pub fn len(&self) -> usize {
        self.book.lock().expect("ledger").events.len()
    }

    /// Whether no event arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.task.abort();
    }
}
