//! The public gRPC API, `oms.v1.OrderService`.
//!
//! Handlers only translate: proto -> domain values (collecting every field violation),
//! call one application use case, domain -> proto. Errors become statuses in exactly one
//! place, [`status::to_status`].

pub mod codec;
pub mod convert;
pub mod deadline;
pub mod framing;
pub mod handlers;
pub mod idempotency;
pub mod listener;
pub mod page_token;
pub mod reason;
pub mod status;

pub use handlers::{ApiLimits, OrderApi, OrderServer};

/// Code generated from `proto/oms/v1/orders.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
    tonic::include_proto!("oms.v1");

    /// The encoded descriptor set of `oms.v1`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/oms_descriptor.bin"));
}
