//! Host bindings generated from `wit/` (package `oms:plugins@0.1.0`) and `wit/v0.2/` (its
//! payment interface at `oms:plugins@0.2.0`). The capability
//! interfaces are generated once (world `capabilities`) and shared by the three plugin worlds
//! through `with`, so each capability has exactly one host implementation. Every type is
//! (de)serializable for `oms plugin run`, which takes and prints them as JSON. The `http-*`
//! variants of the worlds need no bindings of their own: they differ only by importing
//! `wasi:http`, which the linker always provides (and the HTTP policy guards).

/// Capability imports: log, config, clock, kv.
pub mod caps {
    wasmtime::component::bindgen!({
        world: "oms:plugins/capabilities",
        path: "../../../wit",
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
        imports: { default: async | trappable },
    });
}

/// World `payment-provider`; also owns the shared `types` interface.
pub mod payment {
    wasmtime::component::bindgen!({
        world: "oms:plugins/payment-provider",
        path: "../../../wit",
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "oms:plugins/log": super::caps::oms::plugins::log,
            "oms:plugins/config": super::caps::oms::plugins::config,
            "oms:plugins/clock": super::caps::oms::plugins::clock,
            "oms:plugins/kv": super::caps::oms::plugins::kv,
        },
    });
}

/// World `inventory-adapter`.
pub mod inventory {
    wasmtime::component::bindgen!({
        world: "oms:plugins/inventory-adapter",
        path: "../../../wit",
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "oms:plugins/log": super::caps::oms::plugins::log,
            "oms:plugins/config": super::caps::oms::plugins::config,
            "oms:plugins/clock": super::caps::oms::plugins::clock,
            "oms:plugins/kv": super::caps::oms::plugins::kv,
            "oms:plugins/types": super::payment::oms::plugins::types,
        },
    });
}

/// World `notification-formatter`.
pub mod notification {
    wasmtime::component::bindgen!({
        world: "oms:plugins/notification-formatter",
        path: "../../../wit",
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "oms:plugins/log": super::caps::oms::plugins::log,
            "oms:plugins/config": super::caps::oms::plugins::config,
            "oms:plugins/clock": super::caps::oms::plugins::clock,
            "oms:plugins/kv": super::caps::oms::plugins::kv,
            "oms:plugins/types": super::payment::oms::plugins::types,
        },
    });
}

/// World `payment-provider` of `oms:plugins@0.2.0` (`wit/v0.2/`). It reuses 0.1's value types
/// and capabilities, so those map onto the 0.1 modules above: one host implementation of each
/// capability serves both contract versions.
pub mod payment_v2 {
    wasmtime::component::bindgen!({
        world: "oms:plugins/payment-provider@0.2.0",
        path: "../../../wit/v0.2",
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "oms:plugins/log": super::caps::oms::plugins::log,
            "oms:plugins/config": super::caps::oms::plugins::config,
            "oms:plugins/clock": super::caps::oms::plugins::clock,
            "oms:plugins/kv": super::caps::oms::plugins::kv,
            "oms:plugins/types": super::payment::oms::plugins::types,
        },
    });
}
