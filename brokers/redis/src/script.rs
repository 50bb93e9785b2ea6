//! [`Script`]: a Lua script of operations (`ARGV[1]` = operation, `ARGV[2]` = key prefix), run
//! with `EVALSHA` and loaded again when Redis forgot it (a restart). The presence and offline
//! stores each keep their multi-key changes atomic this way.

use std::sync::Mutex;

use fred::{clients::Pool, interfaces::LuaInterface, types::Value};
use impush_core::Result;

use crate::error::{core, Error};

/// One loaded script.
#[derive(Debug)]
pub(crate) struct Script {
    source: &'static str,
    prefix: String,
    sha: Mutex<String>,
}

impl Script {
    /// Loads `source` into Redis.
    pub(crate) async fn load(pool: &Pool, source: &'static str, prefix: &str) -> Result<Self> {
        let sha: String = pool
            .script_load(source)
            .await
            .map_err(core("SCRIPT LOAD"))?;
        Ok(Self {
            source,
            prefix: prefix.to_owned(),
            sha: Mutex::new(sha),
        })
    }

    /// Runs operation `op` with `args`.
    pub(crate) async fn run(
        &self,
        pool: &Pool,
        op: &'static str,
        args: Vec<String>,
    ) -> Result<Value> {
        let mut argv = Vec::with_capacity(args.len() + 2);
        argv.push(op.to_owned());
        argv.push(self.prefix.clone());
        argv.extend(args);
        let sha = self.sha.lock().map(|s| s.clone()).unwrap_or_default();
        match pool.evalsha::<Value, _, _, _>(sha, (), argv.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let sha: String = pool
                    .script_load(self.source)
                    .await
                    .map_err(core("SCRIPT LOAD"))?;
                if let Ok(mut s) = self.sha.lock() {
                    s.clone_from(&sha);
                }
                pool.evalsha(sha, (), argv).await.map_err(core(op))
            }
            other => other.map_err(core(op)),
        }
    }

    /// Runs `op` and converts its reply.
    pub(crate) async fn run_as<T: fred::types::FromValue>(
        &self,
        pool: &Pool,
        op: &'static str,
        args: Vec<String>,
    ) -> Result<T> {
        self.run(pool, op, args).await?.convert().map_err(|e| {
            Error::Reply {
                op,
                detail: e.to_string(),
            }
            .into()
        })
    }
}
