//! What operators do beside the saga operations (`crate::saga::operations`): the outbox's
//! dead letters. The admin API (`oms.admin.v1`) exposes them.

mod outbox;

pub use outbox::{DeadLetterFilter, OutboxOperations, OutboxStatus};
