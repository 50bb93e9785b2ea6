//! `impush-nats`: the `impush` node binary with one more broker kind, `nats`.
//!
//! Run with `cargo run -p impush-example-nats --bin impush-nats -- --config nats.toml`
//! (see README.md); every flag, `IMPUSH_*` override and message is the one of `impush`.

use impush_example_nats::{NatsBroker, NatsConfig};
use impush_server::{BackendContext, Backends};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut backends = Backends::with_defaults();
    backends.register_broker("nats", |cfg: NatsConfig, ctx: BackendContext| async move {
        NatsBroker::connect_for(&cfg, &ctx).await
    });
    impush_server::run(backends).await
}
