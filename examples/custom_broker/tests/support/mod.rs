//! What the example's test files share: a `nats-server` of one test's own.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use impush_tests::cluster::brokers::ProcessBroker;

/// A `nats-server` (from the PATH) on a free port with JetStream on file storage in its own
/// directory, so its streams survive a restart; `None` (skipped) when it is not installed.
pub(crate) fn private_nats() -> Option<ProcessBroker> {
    let broker = ProcessBroker::start(
        "nats-server",
        |port: u16, dir: &Path| {
            let mut c = Command::new("nats-server");
            c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        },
        |port| format!("nats://127.0.0.1:{port}"),
    )?;
    Some(broker.keeping_data())
}
