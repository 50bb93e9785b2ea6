//! `shutdown_signal` catches a SIGTERM that arrives before its future is first polled: the
//! binary calls it before printing that it listens, so a supervisor that stops it at once gets
//! a graceful shutdown. Its own test binary, because a miss kills the whole process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{process::Command, time::Duration};

#[test]
fn a_sigterm_before_the_first_poll_is_caught() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stop = {
        let _in_runtime = rt.enter();
        impush_server::shutdown_signal()
    };
    let sent = Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(sent, "kill -TERM");
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), stop).await })
        .expect("the SIGTERM sent before the first poll was not seen");
}
