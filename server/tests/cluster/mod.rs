//! The multi-process cluster suite, shared by one test file per backbone
//! (`cluster_redis.rs`, ...): [`cluster_suite!`] expands to one `#[tokio::test]` per case in
//! `cases`, run against the given [`harness::Backend`].

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod cases;
pub mod harness;

/// One test per cluster case, each against `$backend()`.
#[macro_export]
macro_rules! cluster_suite {
    ($backend:path) => {
        $crate::cluster_suite!(@cases $backend;
            cross_node_delivery_channels_kick_and_events,
            killed_node_drops_its_clients_within_the_lease,
            restarted_node_announces_the_connections_it_lost,
            stalled_broker_declares_nobody_dead,
            frozen_node_is_declared_dead_then_announces_itself_again,
            failed_presence_writes_are_reconciled,
            broker_restart_keeps_sockets_and_delivery_resumes,
            flood_with_receipts_survives_a_receiver_node_kill,
            flood_with_inbox_reaches_the_receiver_despite_a_node_kill,
        );
    };
    (@cases $backend:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                cluster::cases::$case(&$backend()).await;
            }
        )+
    };
}
