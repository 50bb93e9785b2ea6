//! `impush-bench`: measured capacity, throughput and latency of impush.
//!
//! Run with: `cargo run --release -p impush-bench -- <scenario> [options]` (see BENCHMARKS.md).
//!
//! Scenarios: `idle` (sockets held, memory and CPU per socket, connect rate), `p2p`
//! (point-to-point messages/s and latency), `batch` (point-to-point through the HTTP API's batch
//! endpoint), `fanout` (one channel, frames/s, last-member
//! latency), each on the memory broker or Redis; `paced` (one channel at an everyday rate:
//! last-member latency and node CPU per frame against the cost of one `write()`); `rolling`
//! (a rolling restart of 3 nodes under traffic: gaps, reconnect rates, losses). Nodes run as
//! separate processes (`impush-bench serve`) where their resources are measured, clients in
//! worker processes (`impush-bench worker`) spread over several loopback source addresses
//! (`rolling`'s reconnecting clients run in the bench process).

mod batch;
mod fleet;
mod hist;
mod idle;
mod inbox;
mod paced;
mod report;
mod rolling;
mod scenarios;
mod soak;
mod soak_chart;
mod soak_clients;
mod soak_samples;
mod sys;
mod worker;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use scenarios::Opts;

#[derive(Debug, Parser)]
#[command(about = "impush benchmarks")]
struct Args {
    /// Client worker processes (each holds its share of the sockets).
    #[arg(long, default_value_t = 2, global = true)]
    workers: usize,
    /// Loopback source addresses to spread client sockets over (127.0.0.1..=127.0.0.N).
    #[arg(long, default_value_t = 4, global = true)]
    source_ips: u8,
    /// Repetitions; summaries report the median.
    #[arg(long, default_value_t = 3, global = true)]
    runs: usize,
    /// Where result files go.
    #[arg(long, default_value = "bench/results", global = true)]
    out: PathBuf,
    /// Redis for `--broker redis` (default: $IMPUSH_TEST_REDIS_URL).
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// RabbitMQ for `--broker rabbitmq` (default: $IMPUSH_TEST_RABBITMQ_URL).
    #[arg(long, global = true)]
    rabbitmq_url: Option<String>,
    /// Kafka bootstrap servers for `--broker kafka` (default: $IMPUSH_TEST_KAFKA_URL).
    #[arg(long, global = true)]
    kafka_url: Option<String>,
    /// Pin node processes to the first CPU list and client workers to the second
    /// (`taskset -c`), e.g. `--pin 0 --pin 1`.
    #[arg(long, global = true, num_args = 1)]
    pin: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Idle capacity: hold N sockets on one node (or over `--nodes` node processes on a
    /// backbone); memory and CPU per socket; connect rate.
    Idle {
        /// memory (one node process) or redis, rabbitmq, kafka (`--nodes` node processes; the
        /// last two with `[presence] kind = "cluster"`).
        #[arg(long, default_value = "memory")]
        broker: String,
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        #[arg(long, default_value_t = 19_000)]
        sockets: usize,
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
        /// How long to sample idle CPU; longer than the 25 s ping interval so pings count.
        #[arg(long, default_value_t = 30)]
        idle_secs: u64,
    },
    /// Point-to-point messages through the HTTP API's batch endpoint
    /// (`POST /api/v1/messages/batch`) to one node process, memory backends.
    Batch {
        #[arg(long, default_value_t = 1000)]
        receivers: usize,
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// Messages per request (the node takes at most `limits.max_batch_messages`, 1,000).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        /// Send at this many messages per second (whole requests, evenly spaced) instead of as
        /// fast as `--in-flight` allows: latency at a rate the node keeps up with.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Point-to-point messages through ImHelper.
    P2p {
        /// memory (one in-process node), redis, rabbitmq or kafka (node processes; the last
        /// two with `[presence] kind = "cluster"`).
        #[arg(long, default_value = "memory")]
        broker: String,
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        #[arg(long, default_value_t = 1000)]
        receivers: usize,
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// Send at this many messages per second instead of as fast as possible.
        #[arg(long)]
        rate: Option<u64>,
        /// Sends in flight at once.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Turn the offline inbox on with this store (memory, redis, disk) and `require_ack`:
        /// every message stays pending in the store until its receiver acks it.
        #[arg(long)]
        inbox: Option<String>,
        /// Clients ack every message frame that asks for it (`"ack": true`).
        #[arg(long)]
        ack: bool,
    },
    /// The offline inbox: store `messages` for a client that is away, then drain them when it
    /// connects (one node on the memory broker, one store).
    Inbox {
        /// memory, redis or disk.
        #[arg(long, default_value = "memory")]
        store: String,
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        /// HTTP sends in flight at once.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
    },
    /// One channel with many local members.
    Fanout {
        /// memory (one in-process node), redis, rabbitmq or kafka (node processes; the last
        /// two with `[presence] kind = "cluster"`).
        #[arg(long, default_value = "memory")]
        broker: String,
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        #[arg(long, default_value_t = 50)]
        messages: u64,
        /// Pause between channel messages, in ms.
        #[arg(long, default_value_t = 0)]
        gap_ms: u64,
        /// `[history] size` of the nodes (default: the node's default, 100; 0 turns history
        /// and the sequencer hop off).
        #[arg(long)]
        history: Option<usize>,
    },
    /// One channel at an everyday rate: last-member latency, node CPU per delivered frame.
    Paced {
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Channel messages per second.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// How long to send for.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// A rolling restart of 3 node processes under traffic: each client's longest time
    /// without a connection, reconnects per second, messages lost.
    Rolling {
        /// redis, rabbitmq or kafka (the last two with `[presence] kind = "cluster"` and the
        /// offline inbox on disk).
        #[arg(long, default_value = "redis")]
        broker: String,
        #[arg(long, default_value_t = 1500)]
        clients: usize,
        /// Sends per second during the restart (four in five point to point, one in five to
        /// a channel every client is in).
        #[arg(long, default_value_t = 50)]
        rate: u64,
        /// `limits.connect_rate` of each node (0: none).
        #[arg(long, default_value_t = 200)]
        connect_rate: u32,
        /// `cluster.node_lease`, in seconds.
        #[arg(long, default_value_t = 10.0)]
        lease_secs: f64,
        /// `cluster.drain_period`, in seconds.
        #[arg(long, default_value_t = 10.0)]
        drain_secs: f64,
        /// `cluster.rebalance_period`, in seconds.
        #[arg(long, default_value_t = 10.0)]
        rebalance_secs: f64,
        /// `cluster.move_grace`, in seconds.
        #[arg(long, default_value_t = 5.0)]
        grace_secs: f64,
    },
    /// A long run of 3 nodes over Redis under connect/disconnect churn, direct and channel
    /// messages, one node restarted every few minutes: each node's RSS, open fds, threads and
    /// tokio tasks sampled every minute, charted, and checked flat after warm-up.
    Soak {
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Minutes between node restarts (0: none).
        #[arg(long, default_value_t = 5)]
        restart_every: u64,
        /// The sample the last one is compared with (minutes).
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Clients connected the whole run (members of the channels).
        #[arg(long, default_value_t = 300)]
        steady: usize,
        /// Clients that keep connecting and leaving.
        #[arg(long, default_value_t = 90)]
        churners: usize,
        #[arg(long, default_value_t = 10)]
        channels: usize,
        /// Direct messages per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Channel messages per second.
        #[arg(long, default_value_t = 10)]
        channel_rate: u64,
    },
    /// Every scenario at a tiny size: a smoke test that the tool works.
    Smoke,
    /// Internal: run a node (used by the scenarios).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// On SIGTERM, drain the clients to their next nodes before shutting down (as
        /// `impush` does).
        #[arg(long)]
        drain: bool,
    },
    /// Internal: a client worker (used by the scenarios).
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.cmd {
        // A worker is one thread: the machine's cores go to the node and the other workers.
        Cmd::Worker => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(worker::run()))
            .map_err(Into::into),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Into::into)
            .and_then(|rt| rt.block_on(run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("impush-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pin = match args.pin.as_slice() {
        [] => None,
        [node, workers] => Some(fleet::Pin {
            node: node.clone(),
            workers: workers.clone(),
        }),
        _ => return Err("--pin takes two CPU lists: the node's, then the workers'".into()),
    };
    let _ = fleet::PIN.set(pin);
    let o = Opts {
        workers: args.workers,
        source_ips: args.source_ips,
        runs: args.runs,
        out: args.out,
        redis_url: args
            .redis_url
            .or_else(|| std::env::var("IMPUSH_TEST_REDIS_URL").ok()),
        rabbitmq_url: args
            .rabbitmq_url
            .or_else(|| std::env::var("IMPUSH_TEST_RABBITMQ_URL").ok()),
        kafka_url: args
            .kafka_url
            .or_else(|| std::env::var("IMPUSH_TEST_KAFKA_URL").ok()),
    };
    match args.cmd {
        Cmd::Idle {
            broker,
            nodes,
            sockets,
            concurrency,
            idle_secs,
        } => {
            let plan = idle::IdlePlan {
                sockets,
                concurrency,
                idle_secs,
                broker,
                nodes,
            };
            idle::idle(&o, &plan).await
        }
        Cmd::Batch {
            receivers,
            messages,
            batch,
            in_flight,
            rate,
        } => {
            let plan = batch::BatchPlan {
                receivers,
                messages,
                batch,
                in_flight,
                rate,
            };
            batch::batch(&o, &plan).await
        }
        Cmd::P2p {
            broker,
            nodes,
            receivers,
            messages,
            rate,
            in_flight,
            inbox,
            ack,
        } => {
            let plan = scenarios::P2pPlan {
                broker: &broker,
                nodes,
                receivers,
                messages,
                rate,
                in_flight,
                node: scenarios::NodeOptions {
                    inbox,
                    history: None,
                },
                ack,
            };
            scenarios::p2p_with(&o, &plan).await
        }
        Cmd::Fanout {
            broker,
            nodes,
            members,
            messages,
            gap_ms,
            history,
        } => {
            let node = scenarios::NodeOptions {
                inbox: None,
                history,
            };
            scenarios::fanout_with(
                &o,
                &broker,
                nodes,
                members,
                messages,
                Duration::from_millis(gap_ms),
                &node,
            )
            .await
        }
        Cmd::Paced {
            members,
            rate,
            seconds,
        } => paced::paced(&o, members, rate, seconds).await,
        Cmd::Inbox {
            store,
            messages,
            in_flight,
        } => inbox::inbox(&o, &store, messages, in_flight).await,
        Cmd::Rolling {
            broker,
            clients,
            rate,
            connect_rate,
            lease_secs,
            drain_secs,
            rebalance_secs,
            grace_secs,
        } => {
            let secs = |s: f64, what: &str| {
                Duration::try_from_secs_f64(s).map_err(|e| format!("--{what}: {e}"))
            };
            let plan = rolling::RollingPlan {
                broker,
                clients,
                rate,
                connect_rate,
                lease: secs(lease_secs, "lease-secs")?,
                drain: secs(drain_secs, "drain-secs")?,
                rebalance: secs(rebalance_secs, "rebalance-secs")?,
                grace: secs(grace_secs, "grace-secs")?,
            };
            rolling::rolling(&o, &plan).await
        }
        Cmd::Soak {
            minutes,
            restart_every,
            warmup,
            nodes,
            steady,
            churners,
            channels,
            rate,
            channel_rate,
        } => {
            let plan = soak::SoakPlan {
                minutes,
                restart_every,
                warmup,
                nodes,
                steady,
                churners,
                channels,
                rate,
                channel_rate,
            };
            soak::soak(&o, &plan).await
        }
        Cmd::Smoke => {
            let o = Opts { runs: 1, ..o };
            paced::paced(&o, 20, 10.0, 1).await?;
            inbox::inbox(&o, "memory", 200, 8).await?;
            inbox::inbox(&o, "disk", 200, 8).await?;
            if o.redis_url.is_some() {
                inbox::inbox(&o, "redis", 200, 8).await?;
            }
            let lone = idle::IdlePlan {
                sockets: 20,
                concurrency: 8,
                idle_secs: 1,
                broker: "memory".into(),
                nodes: 1,
            };
            idle::idle(&o, &lone).await?;
            scenarios::p2p(&o, "memory", 1, 10, 200, None, 8).await?;
            scenarios::p2p(&o, "memory", 1, 10, 100, Some(1000), 8).await?;
            let tiny = batch::BatchPlan {
                receivers: 10,
                messages: 200,
                batch: 50,
                in_flight: 2,
                rate: Some(2000),
            };
            batch::batch(&o, &tiny).await?;
            scenarios::fanout(&o, "memory", 1, 20, 5, Duration::ZERO).await?;
            let clusters = [
                ("redis", &o.redis_url),
                ("rabbitmq", &o.rabbitmq_url),
                ("kafka", &o.kafka_url),
            ];
            for (broker, url) in clusters {
                if url.is_some() {
                    let spread = idle::IdlePlan {
                        broker: broker.into(),
                        nodes: 2,
                        ..lone.clone()
                    };
                    idle::idle(&o, &spread).await?;
                    scenarios::p2p(&o, broker, 2, 10, 200, None, 8).await?;
                    scenarios::fanout(&o, broker, 2, 20, 5, Duration::ZERO).await?;
                }
            }
            if o.redis_url.is_some() {
                let tiny = rolling::RollingPlan {
                    broker: "redis".into(),
                    clients: 30,
                    rate: 20,
                    connect_rate: 0,
                    lease: Duration::from_secs(2),
                    drain: Duration::from_millis(500),
                    rebalance: Duration::from_millis(500),
                    grace: Duration::from_millis(300),
                };
                rolling::rolling(&o, &tiny).await?;
            }
            Ok(())
        }
        Cmd::Serve { config, drain } => serve(&config, drain).await,
        Cmd::Worker => Ok(()),
    }
}

/// The `impush` binary's job, inside the bench so that no second binary is needed.
async fn serve(config: &std::path::Path, drain: bool) -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = impush_server::Config::load(Some(config))?;
    let server = impush_server::ImServer::start(config).await?;
    println!("listening {}", server.local_addr());
    impush_server::shutdown_signal().await;
    if drain {
        server.drain().await;
    }
    server.shutdown().await?;
    Ok(())
}
