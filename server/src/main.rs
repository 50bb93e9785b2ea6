//! `impush`: run one ImServer node.
//!
//! `impush` alone runs the embedded default (one node, memory backends, 127.0.0.1:6001);
//! `impush --config impush.toml` reads a file; `IMPUSH_SECTION__KEY` variables override both.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use impush_server::{Config, ImServer};

/// impush: instant-messaging push server node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file; without it the embedded default runs. `IMPUSH_SECTION__KEY`
    /// environment variables override file values (e.g. IMPUSH_NODE__LISTEN=0.0.0.0:6001).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("impush: {e}");
            return ExitCode::from(2);
        }
    };
    let mut server = match ImServer::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("impush: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    let addr = server.local_addr();
    println!("impush listening on {addr} (WebSocket: ws://{addr}/ws?token=...)");
    if let Some(secret) = &server.generated().secret {
        println!("generated auth.secret = {secret}  (set auth.secret to keep it across restarts)");
    }
    if let Some(key) = &server.generated().api_key {
        println!("generated auth.api_key = {key}  (set auth.api_key to keep it across restarts)");
    }

    tokio::select! {
        () = impush_server::shutdown_signal() => {}
        () = server.closed() => {
            eprintln!("impush: listener stopped unexpectedly");
        }
    }
    match server.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("impush: shutdown: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
