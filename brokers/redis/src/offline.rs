//! [`RedisOfflineStore`]: offline inboxes in Redis, shared by every node (so a client's inbox
//! follows it whichever node owns it after the cluster changes). `offline.lua` holds the key
//! layout; every change is one atomic script call.

use async_trait::async_trait;
use fred::{clients::Pool, interfaces::ClientLike, types::Value};
use impush_core::{
    envelope::now_ms, ClientId, InboxLimits, InboxStats, MessageId, OfflineStore, Result, Stored,
    StoredMessage,
};

use crate::{
    client,
    config::RedisConfig,
    error::{core, Error},
    script::Script,
};

const SCRIPT: &str = include_str!("offline.lua");

/// An [`OfflineStore`] in Redis.
#[derive(Debug)]
pub struct RedisOfflineStore {
    pool: Pool,
    script: Script,
    limits: InboxLimits,
}

impl RedisOfflineStore {
    /// Connects and loads the inbox script. Keys live under `{prefix}:inbox...`.
    ///
    /// # Errors
    /// `Error::Unavailable` when Redis cannot be reached.
    pub async fn connect(cfg: &RedisConfig, prefix: &str, limits: InboxLimits) -> Result<Self> {
        let pool = client::pool(cfg).await?;
        let script = Script::load(&pool, SCRIPT, prefix).await?;
        Ok(Self {
            pool,
            script,
            limits,
        })
    }

    fn cutoff(&self) -> String {
        now_ms()
            .saturating_sub(self.limits.ttl.as_millis() as u64)
            .to_string()
    }
}

#[async_trait]
impl OfflineStore for RedisOfflineStore {
    async fn store(&self, client: &ClientId, message: StoredMessage) -> Result<Stored> {
        let json = serde_json::to_string(&message)
            .map_err(|e| impush_core::Error::codec("stored message", e))?;
        let args = vec![
            client.to_string(),
            message.id.to_string(),
            message.ts.to_string(),
            json,
            message.size().to_string(),
            self.cutoff(),
            self.limits.max_per_client.to_string(),
            self.limits.max_bytes.to_string(),
            self.limits.ttl.as_millis().max(1).to_string(),
        ];
        if message.ts < now_ms().saturating_sub(self.limits.ttl.as_millis() as u64)
            || message.size() > self.limits.max_bytes
        {
            return Ok(Stored {
                evicted: 0,
                kept: false,
            });
        }
        let (evicted, kept): (u64, u64) = self.script.run_as(&self.pool, "store", args).await?;
        Ok(Stored {
            evicted: evicted as usize,
            kept: kept == 1,
        })
    }

    async fn fetch(&self, client: &ClientId, limit: usize) -> Result<Vec<StoredMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let jsons: Vec<Option<String>> = self
            .script
            .run_as(
                &self.pool,
                "fetch",
                vec![client.to_string(), self.cutoff(), limit.to_string()],
            )
            .await?;
        jsons
            .into_iter()
            .flatten()
            .map(|j| {
                serde_json::from_str(&j).map_err(|e| {
                    Error::Reply {
                        op: "fetch",
                        detail: format!("stored message is not valid: {e}"),
                    }
                    .into()
                })
            })
            .collect()
    }

    async fn remove(&self, client: &ClientId, ids: &[MessageId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = vec![client.to_string()];
        args.extend(ids.iter().map(ToString::to_string));
        self.script.run(&self.pool, "remove", args).await.map(drop)
    }

    async fn stats(&self, client: &ClientId) -> Result<InboxStats> {
        let (count, bytes, oldest): (u64, u64, i64) = self
            .script
            .run_as(&self.pool, "stats", vec![client.to_string(), self.cutoff()])
            .await?;
        Ok(InboxStats {
            count: count as usize,
            bytes: bytes as usize,
            oldest_ts: u64::try_from(oldest).ok(),
        })
    }

    async fn clear(&self, client: &ClientId) -> Result<usize> {
        let n: u64 = self
            .script
            .run_as(&self.pool, "clear", vec![client.to_string(), self.cutoff()])
            .await?;
        Ok(n as usize)
    }

    async fn ping(&self) -> Result<()> {
        self.pool
            .ping::<Value>(None)
            .await
            .map(drop)
            .map_err(core("PING"))
    }

    async fn clients(&self, _limit: usize) -> Result<Vec<ClientId>> {
        // Shared by every node: an inbox never needs handing over.
        Ok(Vec::new())
    }

    fn is_shared(&self) -> bool {
        true
    }
}
