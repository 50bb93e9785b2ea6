//! The file's tables and the inbox operations on them, inside one write transaction.

use redb::{Database, ReadableTable, TableDefinition};

use crate::Error;

/// (client, ts, id) -> (size, message JSON): iteration order within a client is inbox order.
pub(crate) const MESSAGES: TableDefinition<(&str, u64, &str), (u64, &[u8])> =
    TableDefinition::new("messages");
/// (client, id) -> ts: finds a message by id.
pub(crate) const IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("ids");
/// client -> (count, bytes).
pub(crate) const TOTALS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("totals");

/// The open database and its path (for error messages).
#[derive(Debug)]
pub(crate) struct Db {
    pub(crate) db: Database,
    pub(crate) path: String,
}

impl Db {
    /// An error of this file, naming what failed.
    pub(crate) fn err<E: std::error::Error + Send + Sync + 'static>(
        &self,
        what: &'static str,
    ) -> impl FnOnce(E) -> impush_core::Error {
        let path = self.path.clone();
        move |e| {
            Error::Db {
                path,
                what,
                source: Box::new(e),
            }
            .into()
        }
    }

    /// Runs `f` in one write transaction and commits it: all of `f`'s changes or none.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> DbResult<T>,
    ) -> impush_core::Result<T> {
        let tx = self.db.begin_write().map_err(self.err("cannot write"))?;
        let out = {
            let mut tables = Tables {
                messages: tx
                    .open_table(MESSAGES)
                    .map_err(self.err("cannot open a table"))?,
                ids: tx
                    .open_table(IDS)
                    .map_err(self.err("cannot open a table"))?,
                totals: tx
                    .open_table(TOTALS)
                    .map_err(self.err("cannot open a table"))?,
            };
            f(&mut tables).map_err(self.err("cannot read or write"))?
        };
        tx.commit().map_err(self.err("cannot commit"))?;
        Ok(out)
    }
}

/// The open tables of one write transaction, with the inbox operations on them.
pub(crate) struct Tables<'t> {
    pub(crate) messages: redb::Table<'t, (&'static str, u64, &'static str), (u64, &'static [u8])>,
    pub(crate) ids: redb::Table<'t, (&'static str, &'static str), u64>,
    pub(crate) totals: redb::Table<'t, &'static str, (u64, u64)>,
}

pub(crate) type DbResult<T> = std::result::Result<T, redb::StorageError>;

impl Tables<'_> {
    /// The keys of `client`'s messages, oldest first, while `keep_going` says so.
    pub(crate) fn keys_of(
        &self,
        client: &str,
        mut keep_going: impl FnMut(u64) -> bool,
    ) -> DbResult<Vec<(u64, String, u64)>> {
        let mut out = Vec::new();
        for item in self.messages.range((client, 0u64, "")..)? {
            let (k, v) = item?;
            let (c, ts, id) = k.value();
            if c != client || !keep_going(ts) {
                break;
            }
            out.push((ts, id.to_owned(), v.value().0));
        }
        Ok(out)
    }

    pub(crate) fn drop_message(
        &mut self,
        client: &str,
        ts: u64,
        id: &str,
        size: u64,
    ) -> DbResult<()> {
        self.messages.remove((client, ts, id))?;
        self.ids.remove((client, id))?;
        let (count, bytes) = self.totals.get(client)?.map_or((0, 0), |v| v.value());
        if count <= 1 {
            self.totals.remove(client)?;
        } else {
            self.totals
                .insert(client, (count - 1, bytes.saturating_sub(size)))?;
        }
        Ok(())
    }

    pub(crate) fn expire(&mut self, client: &str, cutoff: u64) -> DbResult<()> {
        for (ts, id, size) in self.keys_of(client, |ts| ts < cutoff)? {
            self.drop_message(client, ts, &id, size)?;
        }
        Ok(())
    }

    pub(crate) fn totals(&self, client: &str) -> DbResult<(u64, u64)> {
        Ok(self.totals.get(client)?.map_or((0, 0), |v| v.value()))
    }
}
