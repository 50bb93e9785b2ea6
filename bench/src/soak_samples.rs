//! What the soak samples (each node's figures each minute, the restarts), shared by the run
//! (`soak`) and its chart (`soak_chart`).

/// One node's figures at one sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) minute: u64,
    pub(crate) node: usize,
    pub(crate) pid: u32,
    pub(crate) rss: u64,
    pub(crate) fds: u64,
    pub(crate) threads: u64,
    pub(crate) tasks: Option<u64>,
    pub(crate) connections: Option<u64>,
}

/// A restart: when (seconds since the start), which node, how long until it listened again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Restart {
    pub(crate) at_secs: f64,
    pub(crate) node: usize,
    pub(crate) took_secs: f64,
}

/// One figure of a sample, for flatness and the chart.
pub(crate) fn figure(s: &Sample, what: &str) -> Option<f64> {
    match what {
        "rss_mib" => Some(mib(s.rss)),
        "fds" => Some(s.fds as f64),
        "threads" => Some(s.threads as f64),
        "tasks" => s.tasks.map(|t| t as f64),
        _ => None,
    }
}

pub(crate) fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}
