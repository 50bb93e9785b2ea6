//! [`run`]: the whole `impush` binary as one library call, so a custom binary (with its own
//! backend kinds registered) keeps every flag, environment override and error message of
//! `impush`.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use impush_brokers::Backends;

use crate::{Config, ImServer};

/// impush: instant-messaging push server node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file; without it the embedded default runs. `IMPUSH_SECTION__KEY`
    /// environment variables override file values (e.g. IMPUSH_NODE__LISTEN=0.0.0.0:6001).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Runs one node the way the `impush` binary does: parses the command line, sets up logging
/// (`RUST_LOG`, default `info`, to stderr), loads the configuration, starts the node with the
/// kinds of `backends`, prints where it listens (and any generated credentials), and shuts
/// down gracefully on Ctrl-C or SIGTERM.
///
/// Exit codes: 0 after a clean shutdown, 2 for a bad configuration, 75 (`EX_TEMPFAIL`) when a
/// backend was unavailable at start (a broker not up yet, or too busy to answer within
/// `request_timeout`: starting again later may succeed, so a supervisor can retry on it), 1
/// for anything else.
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> std::process::ExitCode {
///     let mut backends = impush_server::Backends::with_defaults();
///     // backends.register_broker("nats", |cfg: NatsConfig, ctx| NatsBroker::connect(cfg, ctx));
///     impush_server::run(backends).await
/// }
/// ```
pub async fn run(backends: Backends) -> ExitCode {
    let args = Args::parse();
    // `try_init`: a binary that set up its own subscriber keeps it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();

    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("impush: {e}");
            return ExitCode::from(2);
        }
    };
    let admin_console = config.admin.enabled;
    let mut server = match ImServer::builder(config).backends(backends).start().await {
        Ok(s) => s,
        Err(crate::Error::Core(e)) if config_error(&e).is_some() => {
            eprintln!("impush: {}", config_error(&e).unwrap_or(&e));
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("impush: {}", error_chain(&e));
            return ExitCode::from(if start_may_succeed_later(&e) {
                EXIT_TEMPFAIL
            } else {
                1
            });
        }
    };
    // Installed before anything is printed: a supervisor that reads the first line and sends
    // SIGTERM at once must get a graceful stop.
    let stop = crate::shutdown_signal();
    let addr = server.local_addr();
    say(format_args!(
        "impush listening on {addr} (WebSocket: ws://{addr}/ws?token=...)"
    ));
    if let Some(secret) = &server.generated().secret {
        say(format_args!(
            "generated auth.secret = {}  (set auth.secret to keep it across restarts)",
            secret.expose()
        ));
    }
    if let Some(key) = &server.generated().api_key {
        say(format_args!(
            "generated auth.api_key = {}  (set auth.api_key to keep it across restarts)",
            key.expose()
        ));
    }
    if let Some(secret) = &server.generated().admin_secret {
        say(format_args!(
            "generated admin.secret = {}  (the admin console's login; set admin.secret to keep it across restarts)",
            secret.expose()
        ));
    }
    if admin_console {
        say(format_args!("admin console at http://{addr}/admin"));
    }

    let drain = server.drain_requested();
    let graceful = tokio::select! {
        () = stop => true,
        () = drain => true,
        () = server.closed() => {
            eprintln!("impush: listener stopped unexpectedly");
            false
        }
    };
    // A rolling deploy: move the clients to their next node before going (nothing to do
    // when no other node is live).
    if graceful {
        server.drain().await;
    }
    match server.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("impush: shutdown: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The exit code of a start that failed on a transient backend error (sysexits' `EX_TEMPFAIL`).
pub const EXIT_TEMPFAIL: u8 = 75;

/// Whether the start failed only because a backend was unavailable for now.
fn start_may_succeed_later(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Core(core) if core.is_transient())
}

/// The configuration error behind `e`, if that is what it is: also one a backend's factory
/// raised while starting (a bad option of a kind registered in code).
fn config_error(e: &impush_core::Error) -> Option<&impush_core::Error> {
    match e {
        impush_core::Error::Config(_) => Some(e),
        impush_core::Error::Start { source, .. } => config_error(source),
        _ => None,
    }
}

/// The error and its causes on one line: `a: b: c`.
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

/// Prints a line on stdout, ignoring a stdout that was closed: a supervisor (or `| head`) that
/// stopped reading must not bring the node down (`println!` panics on a broken pipe).
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}
