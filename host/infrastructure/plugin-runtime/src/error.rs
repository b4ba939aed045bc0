//! Typed errors of the runtime. Three families are kept apart on purpose so that the saga can
//! classify a failure without parsing strings:
//! - [`LoadError`]: a plugin version was refused; the version that was serving keeps serving.
//! - [`CallError`]: the sandbox stopped a call (limit, deadline, trap, broken contract, open
//!   breaker). The plugin's own answer never shows up here.
//! - [`PluginError`]: either the plugin's own typed error (declined, out of stock, ...) or a
//!   [`CallError`], with the [`CallInfo`] of the version that answered.

use std::path::PathBuf;

use crate::CallInfo;

/// Why a plugin version was refused at load; the message always names the cause.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin manifest {path}: invalid: {reason}")]
    ManifestInvalid { path: PathBuf, reason: String },

    #[error(
        "plugin {plugin}: digest mismatch: the manifest declares sha256 {declared} but {path} has sha256 {actual}"
    )]
    DigestMismatch {
        plugin: String,
        path: PathBuf,
        declared: String,
        actual: String,
    },

    #[error(
        "plugin {plugin}: unsupported contract version {found}: this host implements {supported}"
    )]
    UnsupportedContract {
        plugin: String,
        found: String,
        supported: String,
    },

    #[error("plugin {plugin}: {path} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        plugin: String,
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    #[error("plugin {plugin}: the component does not implement the {world} world: {reason}")]
    WrongWorld {
        plugin: String,
        world: &'static str,
        reason: String,
    },

    #[error("plugin {plugin}: not a valid Wasm component: {reason}")]
    Compile { plugin: String, reason: String },

    #[error("plugin {plugin}: capability {capability}: {reason}")]
    Capability {
        plugin: String,
        capability: &'static str,
        reason: String,
    },

    #[error("plugin {plugin}: cannot read {path}: {source}")]
    Io {
        plugin: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("plugin {plugin}: no previous version to roll back to")]
    NothingToRollBack { plugin: String },

    #[error("plugin {plugin}: not installed")]
    NotInstalled { plugin: String },

    #[error("plugin {plugin}: no canary is running")]
    NoCanary { plugin: String },

    #[error(
        "plugin {plugin}: {path} declares the name that {first} declares already; one name, \
         one manifest: remove or rename one of them"
    )]
    DuplicateName {
        plugin: String,
        path: PathBuf,
        first: PathBuf,
    },
}

/// What stopped a call inside the sandbox (as opposed to the plugin's own typed answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallErrorKind {
    #[error("memory limit of {limit_bytes} bytes exceeded")]
    MemoryLimitExceeded { limit_bytes: u64 },
    #[error("deadline of {deadline_ms} ms exceeded")]
    DeadlineExceeded { deadline_ms: u64 },
    #[error("trapped: {message}")]
    Trapped { message: String },
    #[error("contract violation: {message}")]
    ContractViolation { message: String },
    /// The breaker refused the call without running it. `cause` is the failure that opened
    /// it, so that whoever reports the refusal can say what is actually wrong.
    #[error("circuit open after repeated failures (the last: {}); retry later", cause.label())]
    CircuitOpen { cause: Box<BreakerCause> },
    #[error("no plugin of that name is installed")]
    NotInstalled,
    #[error("plugin is a {actual}, not a {expected}")]
    WrongKind {
        expected: &'static str,
        actual: &'static str,
    },
    #[error("could not instantiate: {message}")]
    Instantiate { message: String },
    /// Not called: the plugin has a network grant and the caller's earlier steps wait for
    /// this call's commit ([`KvMode::Buffered`](crate::KvMode)); the caller commits them
    /// first, then calls again. Nothing ran and the breaker did not count it.
    #[error(
        "the plugin has network access and earlier steps are not committed yet; commit them first"
    )]
    PendingSteps,
}

impl CallErrorKind {
    /// Stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::MemoryLimitExceeded { .. } => "memory_limit",
            Self::DeadlineExceeded { .. } => "deadline",
            Self::Trapped { .. } => "trap",
            Self::ContractViolation { .. } => "contract_violation",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::NotInstalled => "not_installed",
            Self::WrongKind { .. } => "wrong_kind",
            Self::Instantiate { .. } => "instantiate",
            Self::PendingSteps => "pending_steps",
        }
    }

    /// Whether the same call may succeed if retried later. A deadline or trap may have
    /// happened after the plugin's side effect: callers of mutating operations reconcile
    /// (e.g. `get-payment`) before retrying with the same idempotency key.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::DeadlineExceeded { .. }
                | Self::CircuitOpen { .. }
                | Self::Instantiate { .. }
                | Self::Trapped { .. }
        )
    }
}

/// The last failure a breaker counted before it opened: a call the sandbox stopped, or the
/// plugin's own typed `transient` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerCause {
    #[error("{0}")]
    Call(CallErrorKind),
    #[error("the plugin answered transient: {0}")]
    Transient(String),
}

impl BreakerCause {
    /// Stable label, as [`CallErrorKind::label`]; `transient` for the plugin's own error.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Call(kind) => kind.label(),
            Self::Transient(_) => "transient",
        }
    }
}

/// A call that the sandbox stopped; `info` is absent when no version was reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}: {kind}")]
pub struct CallError {
    pub plugin: String,
    /// Boxed: errors travel by value through every saga step, keep them small.
    pub info: Option<Box<CallInfo>>,
    pub kind: CallErrorKind,
}

/// A plugin's own typed error, or the sandbox stopping the call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError<E: std::fmt::Debug + std::fmt::Display> {
    #[error("plugin {} rejected the call: {error}", info.plugin)]
    Rejected { error: E, info: CallInfo },
    #[error(transparent)]
    Runtime(#[from] CallError),
}

impl<E: std::fmt::Debug + std::fmt::Display> PluginError<E> {
    /// The version that answered, when one did.
    pub fn info(&self) -> Option<&CallInfo> {
        match self {
            Self::Rejected { info, .. } => Some(info),
            Self::Runtime(e) => e.info.as_deref(),
        }
    }
}
