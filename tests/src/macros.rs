//! The conformance macros: each expands to one `#[tokio::test]` per case, named after it.
//! A case is added to a suite by adding its name to one list here.

/// One `#[tokio::test]` per listed case, calling `$crate::$case(&*backend, &$crate::unique_ns())`
/// with `backend` from `$setup($arg)` (or `$setup()`).
///
/// The runtime is reached through this crate's re-export (`crate = "impush_tests::tokio"`), so
/// callers need no tokio dependency but must not rename the `impush-tests` dependency.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($setup:path; $($case:ident),+ $(,)?) => {
        $crate::__conformance_cases!(@call $setup, (); $($case),+);
    };
    ($setup:path, $arg:expr; $($case:ident),+ $(,)?) => {
        $crate::__conformance_cases!(@call $setup, ($arg); $($case),+);
    };
    (@call $setup:path, $args:tt; $($case:ident),+) => {
        $(
            #[$crate::tokio::test(
                crate = "impush_tests::tokio",
                flavor = "multi_thread",
                worker_threads = 2
            )]
            async fn $case() {
                // None means the backend is not configured; setup has already said so.
                let Some(backend) = $setup $args.await else { return };
                $crate::$case(&*backend, &$crate::unique_ns()).await;
            }
        )+
    };
}

/// Expands to one `#[tokio::test]` per [`Broker`](impush_core::Broker) behaviour.
///
/// `$setup` is an `async fn() -> Option<Arc<dyn Broker>>`, called once per test (each test has
/// its own runtime, so it must create a fresh client); `None` skips the test (use
/// [`env_or_skip`](crate::env_or_skip)). Test names are the case function names of this crate.
#[macro_export]
macro_rules! broker_conformance {
    ($setup:path) => {
        $crate::__conformance_cases!($setup;
            fanout_reaches_every_subscriber,
            fanout_delivers_only_messages_published_after_subscribe,
            fanout_preserves_publisher_order,
            concurrent_publishes_all_arrive_once,
            topics_are_isolated,
            queue_delivers_each_message_to_one_member,
            queue_groups_each_get_every_message,
            queue_retains_messages_while_group_has_no_member,
            fanout_and_queue_on_same_topic_both_receive,
            dropping_subscription_unsubscribes,
            payloads_are_byte_exact,
            large_payload_is_byte_exact,
            queue_redelivers_unacked_when_member_leaves,
            only_queue_deliveries_need_an_ack,
            broker_ping_succeeds,
            shutdown_twice_is_fine,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`OfflineStore`](impush_core::OfflineStore) behaviour.
///
/// `$setup` is an `async fn(InboxLimits) -> Option<Arc<dyn OfflineStore>>` returning a fresh
/// store built with the limits it is given: [`OFFLINE_LIMITS`](crate::OFFLINE_LIMITS) for most
/// cases, [`LARGE_INBOX_LIMITS`](crate::LARGE_INBOX_LIMITS) for
/// [`offline_large_inbox_is_fetched_whole`](crate::offline_large_inbox_is_fetched_whole).
/// `None` skips the test.
#[macro_export]
macro_rules! offline_conformance {
    ($setup:path) => {
        $crate::__conformance_cases!($setup, $crate::OFFLINE_LIMITS;
            offline_returns_oldest_first,
            offline_bounds_drop_the_oldest,
            offline_remove_and_clear,
            offline_messages_expire,
            offline_ping_succeeds,
            offline_lists_clients_with_messages,
        );
        $crate::__conformance_cases!($setup, $crate::LARGE_INBOX_LIMITS;
            offline_large_inbox_is_fetched_whole,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`PresenceStore`](impush_core::PresenceStore) behaviour.
///
/// `$setup` is an `async fn() -> Option<Arc<dyn PresenceStore>>`, called once per test; `None`
/// skips the test. The cases only touch ids inside their namespace, so they may share a store
/// (one Redis database) with each other and with leftovers of earlier runs.
#[macro_export]
macro_rules! presence_conformance {
    ($setup:path) => {
        $crate::__conformance_cases!($setup;
            presence_counts_connections_across_nodes,
            presence_online_lists_are_sorted,
            presence_disconnect_clears_channels_on_last_connection,
            presence_disconnect_without_clear_keeps_channels,
            presence_clear_node_removes_only_that_node,
            presence_clear_node_clears_channels,
            presence_join_and_leave_are_idempotent,
            presence_channel_listings_are_sorted_with_counts,
            presence_empty_channel_disappears,
            presence_offline_client_can_join,
            presence_channel_online_counts_online_members,
            presence_disconnect_unknown_is_harmless,
            presence_ping_succeeds,
            presence_sync_node_makes_the_store_match,
            presence_expired_lease_is_known_until_reaped,
            presence_leases_expire_and_reap_drops_connections,
            presence_live_nodes_follow_leases_and_states,
            presence_leave_all_if_offline_spares_online_clients,
        );
    };
}
