//! Building fred clients from a [`RedisConfig`]: one pool for commands, and a dedicated client
//! per blocking reader (a blocking `XREAD` would otherwise stall everything pipelined behind it).

use std::time::Duration;

use fred::{
    clients::{Client, Pool},
    interfaces::ClientLike,
    types::{
        config::{Config, ReconnectPolicy},
        Builder,
    },
};

use crate::{
    config::RedisConfig,
    error::{Error, BACKEND},
};

/// How long a blocking stream read waits server-side before the reader loop comes round again
/// (to notice a dropped subscription or a shutdown).
pub(crate) const BLOCK: Duration = Duration::from_millis(1000);

/// A builder with impush's connection policy: reconnect forever with capped exponential backoff,
/// fail commands after `command_timeout` rather than queueing them while Redis is away, and do
/// not replay commands on a new connection (publishes are at-most-once).
pub(crate) fn builder(
    cfg: &RedisConfig,
    command_timeout: Duration,
) -> Result<Builder, impush_core::Error> {
    if impush_core::redact::ambiguous_userinfo(&cfg.url) {
        return Err(impush_core::Error::Config(format!(
            "redis url `{}` has an `@` after its host: percent-encode `/`, `?` and `#` in the \
             password (%2F, %3F, %23)",
            cfg.redacted_url()
        )));
    }
    let config = Config::from_url(&cfg.url).map_err(|_| {
        impush_core::Error::Config(format!(
            "redis url `{}` is not valid (expected redis://[:password@]host:port[/db] or rediss://...)",
            cfg.redacted_url()
        ))
    })?;
    let mut b = Builder::from_config(config);
    b.with_config(|c| c.fail_fast = true)
        .with_connection_config(|c| {
            c.connection_timeout = cfg.command_timeout;
            c.internal_command_timeout = cfg.command_timeout;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    Ok(b)
}

/// A connected command pool.
pub(crate) async fn pool(cfg: &RedisConfig) -> Result<Pool, impush_core::Error> {
    let pool = builder(cfg, cfg.command_timeout)?
        .build_pool(cfg.pool_size.max(1))
        .map_err(Error::command("build pool"))
        .map_err(impush_core::Error::from)?;
    pool.init()
        .await
        .map_err(|source| unreachable_at_start(cfg, source))?;
    Ok(pool)
}

/// A connected client for blocking reads.
pub(crate) async fn reader(cfg: &RedisConfig) -> Result<Client, impush_core::Error> {
    let client = builder(cfg, BLOCK + cfg.command_timeout)?
        .build()
        .map_err(Error::command("build client"))
        .map_err(impush_core::Error::from)?;
    client
        .init()
        .await
        .map_err(|source| unreachable_at_start(cfg, source))?;
    Ok(client)
}

fn unreachable_at_start(cfg: &RedisConfig, source: fred::error::Error) -> impush_core::Error {
    impush_core::Error::Unavailable {
        backend: BACKEND,
        source: Some(format!("cannot connect to {}: {source}", cfg.redacted_url()).into()),
    }
}
