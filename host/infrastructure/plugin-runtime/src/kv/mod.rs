//! Durable key-value storage behind the `kv` capability. The runtime only sees the
//! application's [`PluginKvStore`] port: `oms-persistence` implements it over the `plugin_kv`
//! table on both databases, and [`MemoryKvStore`] serves unit tests and demos.
//!
//! Every store evaluates a batch with [`evaluate`], so the semantics (conditions, bounds,
//! counter encoding, which failure wins) are written once; a store only has to make "read
//! these keys, evaluate, write the result" atomic.

mod memory;

pub use memory::MemoryKvStore;
pub use oms_application::plugin_kv::{
    AbsentKeys, BatchOutcome, BoundedAdd, Buffering, Evaluation, KvChanges, KvError, KvTransaction,
    Swap, Write, apply_batch_in, batch_keys, evaluate,
};
pub use oms_application::ports::PluginKvStore;
