//! Black-box tests of the gRPC API: a real server on a loopback socket, a real tonic client,
//! and a fresh PostgreSQL database or SQLite file per test. Every scenario runs on both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod contract;
mod edge;
mod health;
mod helpers;
mod loading;
mod metrics;
mod races;
mod sagas;
mod scenarios;

/// Instantiates every scenario once per backend, so a failure names both.
macro_rules! on_both_backends {
    ($group:ident => $module:ident: $($name:ident),* $(,)?) => {
        mod $group {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(oms_persistence::testing::TestBackend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(oms_persistence::testing::TestBackend::Sqlite).await;
                }
            )*
        }
        }
    };
}

on_both_backends!(
    api => scenarios:
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

on_both_backends!(
    saga => sagas:
    placement_confirms_with_stock_and_a_hold,
    a_networked_provider_is_called_once_the_reservation_is_committed,
    out_of_stock_rejects_without_touching_payment,
    declined_payment_releases_the_stock,
    transient_failures_are_retried_to_success,
    a_provider_past_its_deadline_fails_the_payment,
    a_trapping_payment_plugin_fails_the_payment,
    cancel_after_confirmation_voids_and_releases,
    cancel_while_placing_leaves_nothing_held,
    fulfillment_captures_and_refunds_are_bounded,
    operator_retries_a_parked_cancellation_after_a_rollback,
    a_missing_inventory_adapter_rejects_after_its_deadline,
    a_confirmed_order_notifies_its_customer,
    misbehaving_payment_plugins_fail_with_their_own_code,
    an_open_circuit_names_the_failure_that_opened_it,
    confirmation_emails_stay_out_of_the_logs,
    operations_during_fulfillment_are_refused_without_a_trace,
    operations_during_a_cancellation_wait_for_it,
    a_parked_fulfillment_refuses_cancel_and_the_operator_finishes_it,
    a_cancel_before_anything_is_held_stops_the_placement,
    an_address_change_beside_the_placement_is_kept,
    a_hot_sku_never_oversells,
);

on_both_backends!(
    hostile => edge:
    oversized_requests_get_bounded_errors,
    mixed_currencies_name_the_line_not_an_overflow,
    free_text_is_bounded_and_printable,
    refund_arguments_are_invalid_not_preconditions,
    refund_reason_reaches_the_outbox_event,
    malformed_bodies_are_the_callers_fault,
    connections_beyond_the_limit_are_closed,
    silent_connections_are_closed_after_the_idle_timeout,
    one_connection_has_a_bounded_number_of_streams,
    a_connection_over_its_call_rate_is_slowed_down,
    concurrent_calls_are_bounded_per_connection_and_streams_per_host,
);

on_both_backends!(
    operators => admin:
    admin_calls_need_the_token,
    plugins_swap_and_roll_back_under_load,
    refused_uploads_leave_the_serving_version,
    dead_letters_are_listed_and_redriven,
    an_unknown_payment_provider_is_refused_at_once,
    a_swap_through_one_host_reaches_every_host,
    a_disabled_plugin_is_served_nowhere_until_enabled,
    a_file_dropped_in_a_watched_directory_reaches_every_host,
    callers_authenticate_and_own_their_keys,
    both_listeners_serve_tls_when_configured,
    a_canary_takes_its_share_and_each_order_stays_on_its_build,
    a_failing_canary_is_rolled_back_by_the_host,
    a_host_started_after_swaps_loads_the_builds_open_orders_need,
);

on_both_backends!(
    contract_0_2 => contract:
    a_customer_action_is_shown_and_a_signed_webhook_moves_the_order_on,
    an_expired_customer_action_fails_the_payment_and_cancels_it,
    a_customer_who_fails_the_action_fails_the_payment_without_parking,
);

on_both_backends!(
    startup => loading:
    grpc_serves_while_plugins_load_and_orders_wait_for_them,
);

on_both_backends!(
    probes => health:
    health_needs_the_plugins_the_sagas_call,
);

on_both_backends!(
    scraped => metrics:
    metrics_show_the_traffic,
    events_carry_the_callers_trace_context,
);

/// An embedded SQLite file does not go away: the database outage is PostgreSQL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database() {
    health::health_follows_the_database().await;
}

on_both_backends!(
    racing => races:
    racing_operations_on_one_order_end_in_one_outcome,
    concurrent_refunds_never_exceed_the_capture,
);
