//! `impush`: run one ImServer node.
//!
//! `impush` alone runs the embedded default (one node, memory backends, 127.0.0.1:6001);
//! `impush --config impush.toml` reads a file; `IMPUSH_SECTION__KEY` variables override both.
//! The whole binary is [`impush_server::run`] with the built-in backend kinds: a custom binary
//! registers its own kinds and makes the same call.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    impush_server::run(impush_server::Backends::with_defaults()).await
}
