//! The saga engine: durable, orchestrated, with compensations.
//!
//! A saga is declared as data, a table of [`definition::StepDef`] (forward operation,
//! compensation, retry policy, deadline, what a failure makes of the order); the generic
//! [`engine::SagaEngine`] runs any table. The OMS flows are in [`flows`].
//!
//! Every step's outcome is committed in one transaction with the order change and outbox
//! rows it causes, and with the saga's own progress, so a crash between steps loses nothing
//! and a crash inside a step repeats the same provider call (same idempotency key).

pub mod definition;
pub mod engine;
mod executor;
pub mod flows;
mod instance;
pub mod operations;
pub mod worker;

pub use engine::{EngineConfig, SagaEngine, SagaPorts};
pub use instance::{Direction, SagaData, SagaId, SagaInstance, SagaKind, SagaStatus};
pub use operations::SagaOperations;
