//! The multi-process cluster suite: real node processes over a real broker, `kill -9`, SIGSTOP
//! of nodes and brokers, broker restarts, floods, broken links; what the business sees from
//! events and queries must match the sockets that exist, and an accepted message must not be
//! lost (`docs/design.md` section 13).
//!
//! A backbone's test file defines its [`harness::Backend`] and calls
//! [`cluster_suite!`](crate::cluster_suite), which expands to one `#[tokio::test]` per case
//! (named after it) of the standard group and of each group listed:
//!
//! ```ignore
//! use impush_tests::cluster::{brokers::private_redis, harness::Backend};
//!
//! fn redis() -> Backend {
//!     Backend::new("redis", env!("CARGO_BIN_EXE_impush"), |url| format!(
//!         "[broker]\nkind = \"redis\"\nurl = \"{url}\"\n[presence]\nkind = \"redis\"\n"
//!     ), || impush_tests::env_or_skip("IMPUSH_TEST_REDIS_URL"))
//!     .private(private_redis)
//!     .offline("kind = \"redis\"")
//! }
//!
//! impush_tests::cluster_suite!(redis; private_broker, broker_proxy);
//! ```
//!
//! The groups, each a list in [`__cluster_group!`](crate::__cluster_group):
//! - the standard group, always: delivery, node kills, restarts and freezes, floods, inboxes
//!   waiting for their node, a client link reset through a proxy, the loss probes, channel
//!   resume, a frozen client link;
//! - `private_broker`: the broker stalled, frozen and restarted (needs [`Backend::private`]);
//! - `durable_broker`: what waits in the broker survives its restart (needs a private broker
//!   whose [`keeps_data`](brokers::PrivateBroker::keeps_data) is true);
//! - `cluster_presence`: the nodes answer queries (`[presence] kind = "cluster"`);
//! - `failover`: 1,500 clients of a killed node reconnect elsewhere and come home;
//! - `rolling`: a rolling restart of every node under traffic (its gap bound is timing: a
//!   backbone opts in once it holds there on the CI machine);
//! - `partitions`: a node cut from the broker for two leases (both ways, or only its writes
//!   lost), then healed, and the node whose API takes the sends cut the same way (needs the
//!   `broker_proxy` setup, and a broker client whose readiness check asks the broker for an
//!   answer, so it sees a link that stopped carrying);
//! - `broker_proxy`: a node's broker link through a [`FaultProxy`](crate::proxy::FaultProxy)
//!   ([`Backend::proxied_broker`]; a backbone whose broker tells clients where to connect, as
//!   Kafka's does, says so with [`Backend::broker_link`]).
//!
//! A new case is a `pub async fn(&Backend)` in a file of [`cases`] and one line in its group's
//! list. A case that needs something a backend may lack starts a new group.
//!
//! [`Backend::private`]: harness::Backend::private
//! [`Backend::proxied_broker`]: harness::Backend::proxied_broker
//! [`Backend::broker_link`]: harness::Backend::broker_link

mod backend;
mod broker_link;
pub mod brokers;
pub mod cases;
pub mod clients;
pub mod harness;
pub mod http;
mod launch;
pub mod ledger;
pub mod loss;
pub mod probe;

pub use broker_link::ProxiedBroker;

/// Expands to one `#[tokio::test]` per cluster case that applies to `$backend` (an `fn() ->
/// Backend`): the standard group and each group listed after `;`.
///
/// The tests run on a multi-threaded runtime (the harness blocks in place while processes
/// start), reached through this crate's re-export of tokio, so the calling crate must not
/// rename the `impush-tests` dependency.
#[macro_export]
macro_rules! cluster_suite {
    ($backend:path $(; $($group:ident),+ $(,)?)?) => {
        $crate::__cluster_group!(standard $backend);
        $($( $crate::__cluster_group!($group $backend); )+)?
    };
}

/// The cases of each group of [`cluster_suite!`]: add a case to its group's list.
#[doc(hidden)]
#[macro_export]
macro_rules! __cluster_group {
    (standard $backend:path) => {
        $crate::__cluster_cases!($backend;
            cross_node_delivery_channels_kick_and_events,
            killed_node_drops_its_clients_within_the_lease,
            restarted_node_announces_the_connections_it_lost,
            frozen_node_is_declared_dead_then_announces_itself_again,
            flood_with_receipts_survives_a_receiver_node_kill,
            flood_with_inbox_reaches_the_receiver_despite_a_node_kill,
            inbox_waits_for_its_node_across_a_kill_and_restart,
            client_link_reset_through_a_proxy_is_an_offline_event,
            loss_probe_links_reset_and_frozen,
            loss_probe_with_a_node_killed,
            channel_resume_after_a_short_absence_and_past_the_window,
            frozen_client_link_is_closed_and_its_pending_messages_stored,
        );
    };
    (private_broker $backend:path) => {
        $crate::__cluster_cases!($backend;
            stalled_broker_declares_nobody_dead,
            failed_presence_writes_are_reconciled,
            broker_restart_keeps_sockets_and_delivery_resumes,
            traffic_through_a_broker_restart,
        );
    };
    (cluster_presence $backend:path) => {
        $crate::__cluster_cases!($backend;
            silent_node_gives_partial_answers_then_goes_offline,
            memberships_outlive_their_owner,
        );
    };
    (durable_broker $backend:path) => {
        $crate::__cluster_cases!($backend;
            inbox_survives_a_broker_restart_while_its_node_is_down,
        );
    };
    (broker_proxy $backend:path) => {
        $crate::__cluster_cases!($backend;
            paused_broker_link_holds_delivery_until_healed,
        );
    };
    (partitions $backend:path) => {
        $crate::__cluster_cases!($backend;
            node_whose_broker_writes_are_lost_then_healed,
            node_cut_from_the_broker_then_healed,
            api_node_cut_from_the_broker_answers_503_and_retries_complete,
        );
    };
    (failover $backend:path) => {
        $crate::__cluster_cases!($backend;
            killed_nodes_clients_reconnect_elsewhere_and_come_home,
        );
    };
    (rolling $backend:path) => {
        $crate::__cluster_cases!($backend;
            rolling_restart_loses_nothing,
        );
    };
    ($other:ident $backend:path) => {
        ::std::compile_error!(::std::concat!(
            "cluster_suite!: no case group `",
            ::std::stringify!($other),
            "` (groups: private_broker, durable_broker, cluster_presence, broker_proxy, partitions, failover, rolling)"
        ));
    };
}

/// One `#[tokio::test]` per listed case, calling `$crate::cluster::cases::$case(&$backend())`.
#[doc(hidden)]
#[macro_export]
macro_rules! __cluster_cases {
    ($backend:path; $($case:ident),+ $(,)?) => {
        $(
            #[$crate::tokio::test(
                crate = "impush_tests::tokio",
                flavor = "multi_thread",
                worker_threads = 2
            )]
            async fn $case() {
                $crate::cluster::cases::$case(&$backend()).await;
            }
        )+
    };
}
