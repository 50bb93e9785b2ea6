//! Starting one node process: [`Launch`] runs `impush --config <file>`, sends its log where the
//! test asked, and waits for its "listening" line, starting it again when it exits because a
//! backend was unavailable for now.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

/// `impush`'s exit code for a start that failed on a backend unavailable for now (`EX_TEMPFAIL`).
const TEMPFAIL: i32 = 75;

/// Where a node's log goes: the test's stderr, or with `IMPUSH_TEST_NODE_LOG_DIR` set, a file
/// per node there (`<cluster>-n2.log`, appended to across restarts), so the nodes' lines of a
/// failing case can be told apart.
fn node_stderr(config: &Path) -> Stdio {
    let Some(dir) = std::env::var_os("IMPUSH_TEST_NODE_LOG_DIR") else {
        return Stdio::inherit();
    };
    let cluster = config
        .parent()
        .and_then(Path::file_name)
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let node = config
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = Path::new(&dir).join(format!("{cluster}-{node}.log"));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(f) => Stdio::from(f),
        Err(e) => panic!("IMPUSH_TEST_NODE_LOG_DIR: open {}: {e}", path.display()),
    }
}

/// What a node logs unless `IMPUSH_TEST_NODE_LOG` says otherwise: warnings, and how inboxes
/// and clients move between nodes (a few lines per fault; a failing case prints them).
const NODE_LOG: &str = "warn,impush_server::node::ownership=info,\
    impush_server::node::handover=info,impush_server::node::takeover=info";

/// Starts `bin --config path` and waits for its "listening" line.
pub(super) fn spawn_node(bin: &Path, config: &Path) -> Child {
    Launch::start(bin, config)
        .listening()
        .unwrap_or_else(|why| panic!("{why}"))
}

/// A node process started and not yet known to listen.
pub(super) struct Launch {
    child: Child,
    first_line: std::sync::mpsc::Receiver<String>,
    bin: PathBuf,
    config: PathBuf,
}

impl Launch {
    /// Starts `bin --config path`, its stdout read on a thread of its own.
    pub(super) fn start(bin: &Path, config: &Path) -> Launch {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("IMPUSH_TEST_NODE_LOG").unwrap_or(NODE_LOG.into()),
            )
            .stdout(Stdio::piped())
            .stderr(node_stderr(config))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, first_line) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {} // keep draining so the node never blocks on stdout
        });
        Launch {
            child,
            first_line,
            bin: bin.to_owned(),
            config: config.to_owned(),
        }
    }

    /// The node once it printed its "listening" line (within 60 s); otherwise it is killed,
    /// its config printed, and the error says what it printed instead.
    ///
    /// A node that exits with `EX_TEMPFAIL` (75: a backend unavailable at start, see README's
    /// "Exit codes") is started again within the same 60 s, as a supervisor would: a broker busy
    /// with the cases beside this one can miss a start's request (a Kafka topic creation timed
    /// out at the suite's `request_timeout` in a CI run). Any other exit fails at once.
    pub(super) fn listening(mut self) -> Result<Child, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let other = match self.first_line.recv_timeout(left) {
                Ok(first) if first.starts_with("impush listening on") => return Ok(self.child),
                Err(RecvTimeoutError::Disconnected) => {
                    let code = self.child.wait().ok().and_then(|s| s.code());
                    let again = Duration::from_millis(200);
                    if code == Some(TEMPFAIL) && Instant::now() + again < deadline {
                        let _ = writeln!(
                            std::io::stderr(),
                            "{}: a backend was unavailable at start; starting it again",
                            self.config.display()
                        );
                        std::thread::sleep(again);
                        self = Launch::start(&self.bin, &self.config);
                        continue;
                    }
                    format!("exited ({code:?}) before listening")
                }
                other => format!("{other:?}"),
            };
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = writeln!(std::io::stderr(), "{}:", self.config.display());
            let _ = std::io::stderr().write_all(&std::fs::read(&self.config).unwrap_or_default());
            return Err(format!("{} did not start: {other}", self.bin.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A stand-in for `impush`: a script that exits with each code of `exits` on its first
    /// starts (one per start, counted in a file beside it), then says it listens and waits.
    fn fake_node(dir: &Path, exits: &[i32]) -> PathBuf {
        let codes = exits
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let script = format!(
            "#!/bin/sh\n\
             n=$(cat {dir}/starts 2>/dev/null || echo 0); echo $((n + 1)) > {dir}/starts\n\
             set -- {codes}\n\
             shift $n 2>/dev/null && [ $# -gt 0 ] && exit $1\n\
             echo 'impush listening on 127.0.0.1:1'\n\
             exec sleep 30\n",
            dir = dir.display()
        );
        let bin = dir.join("fake-impush");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    fn starts(dir: &Path) -> u32 {
        std::fs::read_to_string(dir.join("starts"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("impush-launch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_node_whose_backend_was_unavailable_at_start_is_started_again() {
        let dir = scratch("tempfail");
        let bin = fake_node(&dir, &[TEMPFAIL, TEMPFAIL]);
        let mut child = Launch::start(&bin, &dir.join("n1.toml"))
            .listening()
            .expect("started on the third try");
        assert_eq!(starts(&dir), 3);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_node_that_fails_otherwise_is_not_started_again() {
        let dir = scratch("fail");
        let bin = fake_node(&dir, &[1]);
        let why = Launch::start(&bin, &dir.join("n1.toml"))
            .listening()
            .expect_err("exit 1 is final");
        assert!(why.contains("exited (Some(1))"), "{why}");
        assert_eq!(starts(&dir), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
