//! Black-box tests of the gRPC API: a real server on a loopback socket, a real tonic client,
//! and a fresh PostgreSQL database or SQLite file per test. Every scenario runs on both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod scenarios;

/// Instantiates every scenario once per backend, so a failure names both.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::scenarios::$name(crate::helpers::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::scenarios::$name(crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
    };
}

on_both_backends!(
    create_then_get_returns_the_same_order,
    list_paginates_newest_first_with_filters,
    every_validation_error_names_its_field,
    failed_validation_does_not_consume_the_key,
    idempotent_replay_returns_the_identical_response,
    key_reused_with_another_request_is_refused,
    concurrent_identical_creates_make_one_order,
    concurrent_address_updates_admit_exactly_one,
    stale_version_is_aborted_with_the_current_version,
    watch_ends_with_deadline_exceeded,
    watch_follows_a_cancellation_to_its_end,
    unknown_order_is_not_found,
    illegal_transitions_fail_precondition,
    every_change_writes_its_outbox_event,
    health_and_reflection_are_served,
);
