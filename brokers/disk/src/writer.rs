//! Group commit: one thread runs every write of the file, as many as are waiting in one
//! transaction and one commit.
//!
//! A commit is durable (redb syncs the file), which on a real disk costs a fraction of a
//! millisecond or more, and redb runs one write transaction at a time. With a transaction per
//! write, a node keeping each written message until its ack (a store, then a removal per
//! delivery) fell tens of seconds behind at a few thousand deliveries a second, and clients
//! waited that long for their inbox. Here the writes that arrive while a commit is under way
//! all go into the next one: each still returns only once its change is durable, and in the
//! order they were queued.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    mpsc, Arc, Weak,
};

use impush_core::Result;
use tokio::sync::oneshot;

use crate::{
    tables::{Db, DbResult, Tables},
    Error,
};

/// Most writes in one transaction: bounds the work a failed batch repeats.
const MAX_BATCH: usize = 512;

/// One write waiting for the writer thread.
trait Job: Send {
    /// Applies the write in `t`; called again, in a transaction of its own, when another write
    /// of its batch failed.
    fn apply(&mut self, t: &mut Tables<'_>) -> DbResult<()>;
    /// Reports the outcome once its transaction committed, or failed.
    fn finish(self: Box<Self>, committed: Result<()>);
}

/// A write and where its result goes.
struct Pending<T, F> {
    f: F,
    out: Option<T>,
    done: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: Fn(&mut Tables<'_>) -> DbResult<T> + Send,
{
    fn apply(&mut self, t: &mut Tables<'_>) -> DbResult<()> {
        self.out = Some((self.f)(t)?);
        Ok(())
    }

    fn finish(self: Box<Self>, committed: Result<()>) {
        let Pending { out, done, .. } = *self;
        let result = committed.and_then(|()| out.ok_or_else(|| Error::WriterGone.into()));
        let _ = done.send(result);
    }
}

/// The handle to the writer thread; the thread ends when the handle is dropped.
#[derive(Debug)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    writes: AtomicU64,
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer thread of `db`. The thread holds the file only while it writes: once
    /// the store is dropped, the file is closed (and can be opened again) at once.
    pub(crate) fn start(db: &Arc<Db>) -> Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let path = db.path.clone();
        let db = Arc::downgrade(db);
        std::thread::Builder::new()
            .name("impush-disk-writer".into())
            .spawn(move || run(&db, &queue, &counted))
            .map_err(|e| Error::Db {
                path,
                what: "cannot start the writer thread",
                source: Box::new(e),
            })?;
        Ok(Writer {
            jobs,
            writes: AtomicU64::new(0),
            commits,
        })
    }

    /// Runs `f` in a write transaction (shared with the writes queued beside it) and returns
    /// its result once that transaction committed. `f` may run twice (see [`Job::apply`]):
    /// it must not change anything outside the tables.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Tables<'_>) -> DbResult<T> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job = Box::new(Pending { f, out: None, done });
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.jobs.send(job).map_err(|_| Error::WriterGone)?;
        result.await.map_err(|_| Error::WriterGone)?
    }

    /// Writes queued so far.
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Commits so far (each holding one or more writes).
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// The writer thread: takes every write waiting (up to [`MAX_BATCH`]), applies them in order in
/// one transaction and commits it. When one of them fails, the transaction is dropped and each
/// write is run again alone, so only the failing one reports the failure.
fn run(db: &Weak<Db>, queue: &mpsc::Receiver<Box<dyn Job>>, commits: &AtomicU64) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcomes: Vec<Result<()>> = {
            // A write is queued only through the store, which holds the file open.
            let Some(db) = db.upgrade() else { break };
            let together = db.write(|t| batch.iter_mut().try_for_each(|job| job.apply(t)));
            commits.fetch_add(1, Ordering::Relaxed);
            match together {
                Ok(()) => batch.iter().map(|_| Ok(())).collect(),
                Err(e) if batch.len() == 1 => vec![Err(e)],
                Err(_) => batch
                    .iter_mut()
                    .map(|job| {
                        commits.fetch_add(1, Ordering::Relaxed);
                        db.write(|t| job.apply(t))
                    })
                    .collect(),
            }
            // The file is let go before any caller hears back: one that drops the store then
            // can open the file again at once.
        };
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            job.finish(outcome);
        }
    }
}
