//! `oms saga ...`: the operator's saga commands, run against the configured database until the
//! admin API exposes [`SagaOperations`]. They only change the saga's row: the workers of a
//! running `oms serve` (any host process on that database) carry the saga on.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use oms_application::changes::OrderChanges;
use oms_application::clock::SystemClock;
use oms_application::saga::{SagaId, SagaInstance, SagaOperations};
use uuid::Uuid;

use crate::config::Config;

/// Operator commands on sagas (docs/saga.md, "Operator operations").
#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Sagas not finished yet (running, compensating, parked), oldest first.
    List {
        /// Only the operator queue: sagas parked in COMPENSATION_FAILED.
        #[arg(long)]
        parked: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Resume a parked saga where it stopped, in the direction it was going, with fresh
    /// retries. Fix the cause first (roll back a broken plugin, restore the provider).
    Retry { saga_id: Uuid },
    /// Make a parked placement saga undo what it did instead of going on.
    ForceCompensate { saga_id: Uuid },
}

/// Runs `command`, writing its report to `out`.
pub async fn run(
    config: &Config,
    command: SagaCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // A command makes a few statements: a small pool leaves the serving hosts theirs.
    let db = crate::server::open_database(config, 2).await?;
    let operations = SagaOperations::new(
        db.orders(),
        db.sagas(),
        Arc::new(SystemClock),
        OrderChanges::default(),
        // No workers in this process to wake: the serving hosts poll.
        Arc::new(tokio::sync::Notify::new()),
    );
    let result = execute(&operations, command, out).await;
    db.close().await;
    result
}

async fn execute(
    operations: &SagaOperations,
    command: SagaCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        SagaCommand::List { parked, limit } => {
            let sagas = if parked {
                operations.parked(limit).await?
            } else {
                operations.unfinished(limit).await?
            };
            writeln!(
                out,
                "SAGA_ID\tORDER_ID\tKIND\tSTATUS\tSTEP\tATTEMPTS\tLAST_ERROR"
            )?;
            for saga in &sagas {
                writeln!(out, "{}", row(saga))?;
            }
        }
        SagaCommand::Retry { saga_id } => {
            let saga = operations
                .retry(SagaId(saga_id))
                .await
                .with_context(|| format!("retrying saga {saga_id}"))?;
            writeln!(out, "resumed\t{}", row(&saga))?;
        }
        SagaCommand::ForceCompensate { saga_id } => {
            let saga = operations
                .force_compensate(SagaId(saga_id))
                .await
                .with_context(|| format!("force-compensating saga {saga_id}"))?;
            writeln!(out, "compensating\t{}", row(&saga))?;
        }
    }
    Ok(())
}

/// One saga as a tab-separated line; the error text is flattened so a line stays a row.
fn row(saga: &SagaInstance) -> String {
    let error: String = saga
        .last_error
        .as_deref()
        .unwrap_or("-")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        saga.id,
        saga.order_id,
        saga.kind.as_str(),
        saga.status.as_str(),
        saga.current_step().unwrap_or("-"),
        saga.attempts,
        error
    )
}
