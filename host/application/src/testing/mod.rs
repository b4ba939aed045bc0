//! The application test kit (cargo feature `testing`).
//!
//! - [`MemoryStore`]: every store port the saga engine and the use cases need, in memory,
//!   honouring the same fences as the SQL stores (order and saga versions, the saga lease,
//!   the idempotency lease, one active saga per order). `oms-persistence` runs its contract
//!   tests against it as well as against PostgreSQL and SQLite, so it cannot drift.
//! - [`ManualClock`]: time that moves only when a test moves it.
//! - [`sample_order`]: a valid new order.
//! - [`ScriptedGateways`]: a payment provider and an inventory adapter whose answers a test
//!   scripts per operation, and which record every call in order.
//!
//! With them an engine test drives a saga step by step in microseconds, with no database, no
//! Wasm and no sleeps:
//!
//! ```ignore
//! let store = Arc::new(MemoryStore::default());
//! let clock = Arc::new(ManualClock::at(T0));
//! let gateways = Arc::new(ScriptedGateways::default());
//! gateways.fail("authorize", [transient()]);
//! // ... build a SagaEngine over them, place an order, then:
//! engine.run_due(10).await?;
//! assert_eq!(gateways.operations(), ["reserve", "authorize"]);
//! ```

mod clock;
mod fixtures;
mod gateways;
mod memory;

pub use clock::ManualClock;
pub use fixtures::sample_order;
pub use gateways::{Call, SCRIPTED_PLUGINS, Scripted, ScriptedGateways, transient};
pub use memory::{MemoryStore, StoredStep};
