//! The parent's side of the workers ([`Fleet`]) and of separately started nodes ([`NodeProc`]).

use std::{path::Path, process::Stdio, sync::OnceLock, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::{
    hist::LatHist,
    worker::{Plan, Stats},
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// CPU lists (for `taskset -c`) that node and worker processes are pinned to, when asked
/// (`--pin`): the node's own cost shows apart from the load generator's.
#[derive(Debug, Clone)]
pub(crate) struct Pin {
    pub(crate) node: String,
    pub(crate) workers: String,
}

/// Set once at start-up from the command line.
pub(crate) static PIN: OnceLock<Option<Pin>> = OnceLock::new();

/// `exe` with `args`, under `taskset -c cpus` when pinning.
fn command(exe: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(exe);
            cmd
        }
        None => Command::new(exe),
    }
}

pub(crate) fn pin() -> Option<&'static Pin> {
    PIN.get().and_then(Option::as_ref)
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// Client worker processes.
pub(crate) struct Fleet {
    workers: Vec<Worker>,
}

/// Merged reports of all workers.
#[derive(Debug, Default)]
pub(crate) struct Merged {
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) connect_secs: f64,
    pub(crate) received: u64,
    pub(crate) closed: u64,
    pub(crate) latency: LatHist,
    pub(crate) timeline: std::collections::BTreeMap<u64, u64>,
    pub(crate) seq_max: std::collections::BTreeMap<u64, u64>,
    pub(crate) warm: u64,
    pub(crate) acked: u64,
}

impl Fleet {
    /// Starts one worker per URL slice and waits until every worker has connected its sockets.
    pub(crate) async fn start(
        urls: Vec<String>,
        workers: usize,
        source_ips: u8,
        concurrency: usize,
        track_seq: bool,
    ) -> Res<(Fleet, Merged)> {
        Self::start_with(urls, workers, source_ips, concurrency, track_seq, false).await
    }

    /// [`Fleet::start`]; with `ack`, the clients ack every message frame that asks for it.
    pub(crate) async fn start_with(
        urls: Vec<String>,
        workers: usize,
        source_ips: u8,
        concurrency: usize,
        track_seq: bool,
        ack: bool,
    ) -> Res<(Fleet, Merged)> {
        let exe = std::env::current_exe()?;
        let per = urls.len().div_ceil(workers.max(1)).max(1);
        let mut fleet = Fleet {
            workers: Vec::new(),
        };
        for chunk in urls.chunks(per) {
            let mut child = command(&exe, pin().map(|p| p.workers.as_str()))
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let mut stdin = child.stdin.take().ok_or("no stdin")?;
            let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
            let plan = Plan {
                urls: chunk.to_vec(),
                source_ips,
                concurrency: concurrency.div_ceil(workers.max(1)).max(1),
                track_seq,
                ack,
            };
            let mut line = serde_json::to_vec(&plan)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            fleet.workers.push(Worker {
                child,
                stdin,
                stdout,
            });
        }
        let first = fleet.collect(false).await?;
        Ok((fleet, first))
    }

    async fn collect(&mut self, ask: bool) -> Res<Merged> {
        let mut m = Merged::default();
        for w in &mut self.workers {
            if ask {
                w.stdin.write_all(b"report\n").await?;
            }
        }
        for w in &mut self.workers {
            let line = tokio::time::timeout(Duration::from_secs(300), w.stdout.next_line())
                .await
                .map_err(|_| "worker did not answer")??
                .ok_or("worker exited")?;
            let s: Stats = serde_json::from_str(&line)?;
            m.connected += s.connected;
            m.failed += s.failed;
            m.connect_secs = m.connect_secs.max(s.connect_secs);
            m.received += s.received;
            m.closed += s.closed;
            m.warm += s.warm;
            m.acked += s.acked;
            m.latency.merge(&s.latency);
            for (k, v) in s.timeline {
                *m.timeline.entry(k).or_default() += v;
            }
            for (k, v) in s.seq_max {
                let e = m.seq_max.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
        Ok(m)
    }

    /// Current totals of every worker.
    pub(crate) async fn report(&mut self) -> Res<Merged> {
        self.collect(true).await
    }

    /// Polls the reports every `every` until `done` holds or `timeout` passed; the last report
    /// and whether `done` held.
    async fn poll_until(
        &mut self,
        done: impl Fn(&Merged) -> bool,
        timeout: Duration,
        every: Duration,
    ) -> Res<(Merged, bool)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = self.report().await?;
            if done(&m) {
                return Ok((m, true));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok((m, false));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Polls until `want` frames arrived (or `timeout`), then returns the final report.
    pub(crate) async fn wait_received(&mut self, want: u64, timeout: Duration) -> Res<Merged> {
        let every = Duration::from_millis(200);
        Ok(self
            .poll_until(|m| m.received >= want, timeout, every)
            .await?
            .0)
    }

    /// CPU seconds the worker processes used so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        let pids: Vec<u32> = self.workers.iter().filter_map(|w| w.child.id()).collect();
        crate::sys::cpu_total(&pids)
    }

    /// Waits until `want` warm-up frames (`{"warmup": true}`) arrived, which proves that many
    /// members are reachable before timing starts; an error after `timeout`.
    pub(crate) async fn wait_warm(&mut self, want: u64, timeout: Duration) -> Res<()> {
        let every = Duration::from_millis(20);
        match self.poll_until(|m| m.warm >= want, timeout, every).await? {
            (_, true) => Ok(()),
            (m, false) => Err(format!("warm-up reached {} of {want} members", m.warm).into()),
        }
    }

    pub(crate) async fn stop(mut self) {
        for w in &mut self.workers {
            let _ = w.stdin.write_all(b"quit\n").await;
        }
        for w in &mut self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
            let _ = w.child.kill().await;
        }
    }
}

/// A node started as a separate process (`impush-bench serve`), so its memory and CPU can be
/// measured apart from the load generator.
pub(crate) struct NodeProc {
    child: Child,
    pub(crate) addr: String,
}

impl NodeProc {
    pub(crate) async fn start(config: &Path) -> Res<NodeProc> {
        Self::start_with(config, false).await
    }

    /// Starts a node that, like `impush`, drains its clients to their next nodes when it gets
    /// SIGTERM (`drain`), or one that just shuts down.
    pub(crate) async fn start_with(config: &Path, drain: bool) -> Res<NodeProc> {
        let exe = std::env::current_exe()?;
        let mut cmd = command(&exe, pin().map(|p| p.node.as_str()));
        cmd.arg("serve").arg("--config").arg(config);
        if drain {
            cmd.arg("--drain");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), out.next_line())
            .await
            .map_err(|_| "node did not start")??
            .ok_or("node exited")?;
        let addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| format!("unexpected node output: {line}"))?
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        Ok(NodeProc { child, addr })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGTERM, then waits up to `within` for the node to exit (killing it after that);
    /// how long it took, or an error if it did not exit cleanly in time.
    pub(crate) async fn terminate(mut self, within: Duration) -> Res<Duration> {
        let asked = std::time::Instant::now();
        let pid = self.child.id().ok_or("node already exited")?;
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(asked.elapsed()),
            Ok(Ok(status)) => Err(format!("node exited with {status}").into()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!("node did not exit within {within:?} of SIGTERM").into())
            }
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}
