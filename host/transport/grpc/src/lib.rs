//! The gRPC APIs: the public `oms.v1.OrderService`, and the operators'
//! `oms.admin.v1.AdminService` ([`admin`]).
//!
//! Handlers only translate: proto -> domain values (collecting every field violation),
//! call one application use case, domain -> proto. Errors become statuses in exactly one
//! place, [`status::to_status`].

pub mod admin;
pub mod auth;
pub mod codec;
pub mod concurrency;
pub mod convert;
pub mod deadline;
pub mod framing;
pub mod handlers;
pub mod idempotency;
pub mod listener;
pub mod metrics;
pub mod page_token;
pub mod reason;
pub mod status;

pub use handlers::{ApiLimits, OrderApi, OrderServer};

/// Code generated from `proto/oms/v1/orders.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
    tonic::include_proto!("oms.v1");

    /// The encoded descriptor set of `oms.v1`, served by the public listener's reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/oms_descriptor.bin"));
}

/// Code generated from `proto/oms/admin/v1/admin.proto`.
pub mod admin_pb {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
    tonic::include_proto!("oms.admin.v1");

    /// The encoded descriptor set of `oms.admin.v1`, served by the admin listener's reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
}
