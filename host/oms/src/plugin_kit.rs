//! `oms plugin`: tools for integrators, which need neither a database nor a Rust toolchain.
//! `check` runs every load check the host makes on a `.wasm` and its manifest, in the
//! host's order, and says which passed and which failed, in the integrator's terms.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oms_plugin_runtime::breaker::BreakerConfig;
use oms_plugin_runtime::kv::MemoryKvStore;
use oms_plugin_runtime::plugin::LoadedPlugin;
use oms_plugin_runtime::{EngineOptions, LoadError, PluginRuntime, RuntimeOptions};

mod conformance;
pub mod scaffold;
pub use conformance::{Finding, Fixtures, TestReport};

/// The load checks, in the order the host makes them (`docs/plugins.md`, section 5).
pub const CHECKS: [&str; 7] = [
    "manifest",
    "contract",
    "size",
    "digest",
    "component",
    "world",
    "grants",
];

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed(String),
    Failed(String),
    /// Not run: an earlier check failed.
    Skipped,
}

/// Every check of one plugin, in order.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub wasm: PathBuf,
    pub manifest: PathBuf,
    pub checks: Vec<(&'static str, Outcome)>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.checks
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Passed(_)))
    }

    /// One failure at check `failed` (one of [`CHECKS`]): the ones before it passed (the
    /// host stops at the first failure).
    fn failure(wasm: &Path, manifest: &Path, failed: &str, message: String) -> Self {
        let failed = CHECKS.iter().position(|c| *c == failed).unwrap_or(0);
        let checks = CHECKS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let outcome = match i.cmp(&failed) {
                    std::cmp::Ordering::Less => Outcome::Passed(String::new()),
                    std::cmp::Ordering::Equal => Outcome::Failed(message.clone()),
                    std::cmp::Ordering::Greater => Outcome::Skipped,
                };
                (*name, outcome)
            })
            .collect();
        Self {
            wasm: wasm.to_owned(),
            manifest: manifest.to_owned(),
            checks,
        }
    }
}

/// The manifest of `wasm` when none is named: `NAME.toml` beside `NAME.wasm`, else
/// `manifest.toml` in its directory (a plugin project's layout).
pub fn default_manifest(wasm: &Path) -> PathBuf {
    let beside = wasm.with_extension("toml");
    if beside.is_file() {
        return beside;
    }
    wasm.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("manifest.toml")
}

/// A runtime of the tools' own: an in-memory KV store (a `kv` grant resolves, nothing is
/// kept), a small instance pool, no artifact cache, and no circuit breaker (each call is
/// reported for what it did, not refused because earlier ones failed).
fn local_runtime() -> Result<PluginRuntime, oms_plugin_runtime::SetupError> {
    let store: Arc<dyn oms_plugin_runtime::kv::PluginKvStore> = Arc::new(MemoryKvStore::new());
    let options = RuntimeOptions {
        engine: EngineOptions {
            pool_instances: 4,
            cache_dir: None,
            ..EngineOptions::default()
        },
        breaker: BreakerConfig {
            failure_threshold: u32::MAX,
            ..BreakerConfig::default()
        },
        ..RuntimeOptions::default()
    };
    PluginRuntime::new(options, Some(store))
}

/// Which of [`CHECKS`] a load error belongs to.
fn check_of(e: &LoadError) -> &'static str {
    match e {
        LoadError::ManifestInvalid { .. } | LoadError::Io { .. } => "manifest",
        LoadError::UnsupportedContract { .. } => "contract",
        LoadError::TooLarge { .. } => "size",
        LoadError::DigestMismatch { .. } => "digest",
        LoadError::WrongWorld { .. } => "world",
        LoadError::Capability { .. } => "grants",
        // Compile, and what an install (not a check) refuses.
        _ => "component",
    }
}

/// Runs every load check on `wasm` with the manifest at `manifest` (its `wasm` key is not
/// read: the file checked is `wasm`). A `kv` grant is checked against an in-memory store.
pub async fn check(wasm: &Path, manifest: &Path) -> CheckReport {
    match local_runtime() {
        Ok(runtime) => check_in(&runtime, wasm, manifest).await.0,
        Err(e) => {
            let message = format!("the plugin runtime did not start: {e}");
            CheckReport::failure(wasm, manifest, "component", message)
        }
    }
}

/// [`check`] in `runtime`, and the plugin when every check passed (compiled once, for
/// [`test`] to install).
async fn check_in(
    runtime: &PluginRuntime,
    wasm: &Path,
    manifest: &Path,
) -> (CheckReport, Option<LoadedPlugin>) {
    let fail =
        |check: &str, message: String| (CheckReport::failure(wasm, manifest, check, message), None);
    let text = match std::fs::read_to_string(manifest) {
        Ok(text) => text,
        Err(e) => {
            return fail(
                "manifest",
                format!("cannot read {}: {e}", manifest.display()),
            );
        }
    };
    // The size first, from the file's metadata, as an install checks it: an oversized file
    // is refused without being read into memory. (A manifest that does not parse is
    // reported by the full check below.)
    if let Ok(parsed) = oms_plugin_runtime::Manifest::parse(&text, manifest)
        && let Err(too_large @ LoadError::TooLarge { .. }) =
            oms_plugin_runtime::plugin::check_file_size(&parsed, wasm)
    {
        return fail("size", too_large.to_string());
    }
    let bytes = match std::fs::read(wasm) {
        Ok(bytes) => bytes,
        Err(e) => return fail("size", format!("cannot read {}: {e}", wasm.display())),
    };
    let size = bytes.len();
    let plugin = match runtime.check_bytes(&text, manifest, bytes).await {
        Ok(plugin) => plugin,
        Err(e) => return fail(check_of(&e), e.to_string()),
    };
    let m = &plugin.manifest;
    let world = m.kind.world();
    // The clock is always granted: listed with log and config, not again when declared.
    let grants: Vec<String> = m
        .capabilities
        .granted()
        .into_iter()
        .filter(|g| g != "clock")
        .collect();
    let grants = if grants.is_empty() {
        "nothing beyond log, config and clock".to_owned()
    } else {
        format!("{} (besides log, config and clock)", grants.join(", "))
    };
    let passed = [
        format!("{} {}, a {world}", m.name, m.version),
        m.contract.clone(),
        format!("{size} bytes, limit {}", plugin.limits.max_wasm_bytes),
        format!("sha256 {} as declared", plugin.digest),
        "a Wasm component; it compiles".to_owned(),
        format!("exports the {world} world; every import links"),
        grants,
    ];
    let report = CheckReport {
        wasm: wasm.to_owned(),
        manifest: manifest.to_owned(),
        checks: CHECKS
            .into_iter()
            .zip(passed)
            .map(|(name, detail)| (name, Outcome::Passed(detail)))
            .collect(),
    };
    (report, Some(plugin))
}

/// Runs the load checks, then the conformance suite of the plugin's kind (`docs/plugins.md`,
/// section 8) in a runtime of its own with an empty in-memory KV store.
pub async fn test(wasm: &Path, manifest: &Path, fixtures: &Fixtures) -> TestReport {
    let runtime = match local_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            let message = format!("the plugin runtime did not start: {e}");
            return TestReport {
                load: CheckReport::failure(wasm, manifest, "component", message),
                kind: None,
                findings: Vec::new(),
            };
        }
    };
    let (load, plugin) = check_in(&runtime, wasm, manifest).await;
    let Some(plugin) = plugin else {
        return TestReport {
            load,
            kind: None,
            findings: Vec::new(),
        };
    };
    let kind = plugin.kind();
    let contract = plugin.manifest.contract_version();
    let info = match runtime.install_loaded(plugin) {
        Ok(info) => info,
        Err(e) => {
            return TestReport {
                load: CheckReport::failure(wasm, manifest, check_of(&e), e.to_string()),
                kind: Some(kind),
                findings: Vec::new(),
            };
        }
    };
    use oms_plugin_runtime::PluginKind as K;
    let name = info.name.as_str();
    let findings = match kind {
        K::PaymentProvider => {
            let pay = runtime.payment(name);
            let mut findings = conformance::payment(&pay, fixtures).await;
            if contract == oms_plugin_runtime::manifest::Contract::V0_2 {
                findings.extend(conformance::payment_v2(&pay, fixtures).await);
            }
            findings
        }
        K::InventoryAdapter => conformance::inventory(&runtime.inventory(name), fixtures).await,
        K::NotificationFormatter => conformance::notification(&runtime.notification(name)).await,
    };
    TestReport {
        load,
        kind: Some(kind),
        findings,
    }
}

/// Why `oms plugin run` could not call the function.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the plugin was refused: {0}")]
    Refused(#[from] LoadError),
    #[error("the plugin runtime did not start: {0}")]
    Runtime(String),
    #[error(
        "a {kind} plugin has no function {function:?}; it has: {}",
        functions.join(", ")
    )]
    UnknownFunction {
        kind: &'static str,
        function: String,
        functions: &'static [&'static str],
    },
    #[error("--input does not fit {function}: {reason} (expected, e.g.: {example})")]
    Input {
        function: String,
        reason: String,
        example: &'static str,
    },
}

/// What one call answered: the plugin's value or its own typed error (both as JSON), or why
/// the sandbox stopped it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Ok(serde_json::Value),
    /// The plugin's typed error (declined, out of stock...): a legitimate answer.
    Rejected(serde_json::Value),
    /// A trap, the deadline, a limit: the plugin did not answer. `kind` is the runtime's
    /// stable label (`trap`, `deadline`, `memory_limit`...), `message` its first line (a
    /// trap's Wasm backtrace stays out; the plugin's own panic message is in its logs).
    Failed {
        kind: &'static str,
        message: String,
    },
}

/// The functions of each world `run` can call, with an example input each.
const PAYMENT: &[&str] = &[
    "authorize",
    "capture",
    "void",
    "refund",
    "get-payment",
    "handle-webhook",
];
const INVENTORY: &[&str] = &["reserve", "release", "commit"];
const NOTIFICATION: &[&str] = &["format"];

pub(crate) fn example(function: &str) -> &'static str {
    match function {
        "authorize" => {
            r#"{"order_id":"o-1","amount":{"amount_minor":1250,"currency":"EUR"},"payment_token":"tok_ok","idempotency_key":"k-1"}"#
        }
        "capture" | "refund" => {
            r#"{"id":"p-1","amount":{"amount_minor":1250,"currency":"EUR"},"idempotency_key":"k-2"}"#
        }
        "void" => r#"{"id":"p-1","idempotency_key":"k-2"}"#,
        "get-payment" => r#"{"AuthorizeKey":"k-1"}"#,
        // Contract 0.2; the body is bytes (here `{}`).
        "handle-webhook" => r#"{"headers":[["content-type","application/json"]],"body":[123,125]}"#,
        "reserve" => {
            r#"{"order_id":"o-1","lines":[{"sku":"DEMO-1","quantity":1}],"idempotency_key":"k-1"}"#
        }
        "release" | "commit" => r#"{"reservation_id":"r-1","idempotency_key":"k-2"}"#,
        _ => {
            r#"{"event_type":"order.confirmed","schema_version":1,"event_id":"e-1","occurred_at_ms":0,"order":{"id":"o-1","customer":{"id":"c-1","email":"ada@example.com"},"status":"confirmed","items":[],"total":{"amount_minor":1250,"currency":"EUR"},"created_at_ms":0},"metadata":[]}"#
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentIdArgs {
    id: String,
    #[serde(default)]
    amount: Option<oms_plugin_runtime::clients::payment::Money>,
    idempotency_key: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VoidArgs {
    id: String,
    idempotency_key: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveArgs {
    order_id: String,
    lines: Vec<oms_plugin_runtime::clients::inventory::Line>,
    idempotency_key: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservationArgs {
    reservation_id: String,
    idempotency_key: String,
}

fn parse<T: serde::de::DeserializeOwned>(function: &str, input: &str) -> Result<T, RunError> {
    serde_json::from_str(input).map_err(|e| RunError::Input {
        function: function.to_owned(),
        reason: e.to_string(),
        example: example(function),
    })
}

fn answer<T, E>(
    result: Result<oms_plugin_runtime::Called<T>, oms_plugin_runtime::PluginError<E>>,
) -> Answer
where
    T: serde::Serialize,
    E: serde::Serialize + std::fmt::Debug + std::fmt::Display,
{
    match result {
        Ok(called) => Answer::Ok(to_json(&called.value)),
        Err(oms_plugin_runtime::PluginError::Rejected { error, .. }) => {
            Answer::Rejected(to_json(&error))
        }
        Err(oms_plugin_runtime::PluginError::Runtime(e)) => Answer::Failed {
            kind: e.kind.label(),
            message: first_line(&e.kind.to_string()),
        },
    }
}

/// The first line of a runtime error, without the lead-in to a Wasm backtrace.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.trim_end_matches("error while executing at wasm backtrace:")
        .trim_end_matches([':', ' '])
        .to_owned()
}

/// The generated types serialize infallibly; a failure is shown, not lost.
fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value)
        .unwrap_or_else(|e| serde_json::Value::String(format!("(unprintable: {e})")))
}

/// Loads `wasm` with `manifest` into a runtime of its own (an in-memory KV store, no
/// database) and calls `function` once with `input`: JSON of the function's parameters by
/// their WIT names in snake_case, or of the one record or variant it takes (`authorize`,
/// `get-payment`, `format`); variant cases by their CamelCase name.
pub async fn run(
    wasm: &Path,
    manifest: &Path,
    function: &str,
    input: &str,
) -> Result<Answer, RunError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| RunError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let text = String::from_utf8_lossy(&read(manifest)?).into_owned();
    let bytes = read(wasm)?;
    let runtime = local_runtime().map_err(|e| RunError::Runtime(e.to_string()))?;
    let info = runtime.install_bytes(&text, bytes).await?;
    let name = info.name.as_str();
    // The plugin's own contract decides the shape its answers are printed in.
    let v0_1 = oms_plugin_runtime::manifest::Contract::parse(&info.contract)
        == Some(oms_plugin_runtime::manifest::Contract::V0_1);
    let unknown = |kind: &'static str, functions: &'static [&'static str]| {
        Err(RunError::UnknownFunction {
            kind,
            function: function.to_owned(),
            functions,
        })
    };
    use oms_plugin_runtime::PluginKind as K;
    Ok(match info.kind {
        K::PaymentProvider => {
            let pay = runtime.payment(name);
            match function {
                // In the plugin's own contract's shape: a 0.1 authorize answers a payment.
                "authorize" if v0_1 => {
                    answer(pay.authorize(parse(function, input)?).await.map(|c| {
                        oms_plugin_runtime::Called {
                            value: c.value.payment().clone(),
                            info: c.info,
                        }
                    }))
                }
                "authorize" => answer(pay.authorize(parse(function, input)?).await),
                "capture" => {
                    let a: PaymentIdArgs = parse(function, input)?;
                    answer(pay.capture(a.id, a.amount, a.idempotency_key).await)
                }
                "void" => {
                    let a: VoidArgs = parse(function, input)?;
                    answer(pay.void(a.id, a.idempotency_key).await)
                }
                "refund" => {
                    let a: PaymentIdArgs = parse(function, input)?;
                    answer(pay.refund(a.id, a.amount, a.idempotency_key).await)
                }
                "get-payment" => answer(pay.get_payment(parse(function, input)?).await),
                "handle-webhook" => answer(pay.handle_webhook(parse(function, input)?).await),
                _ => return unknown("payment-provider", PAYMENT),
            }
        }
        K::InventoryAdapter => {
            let inv = runtime.inventory(name);
            match function {
                "reserve" => {
                    let a: ReserveArgs = parse(function, input)?;
                    answer(inv.reserve(a.order_id, a.lines, a.idempotency_key).await)
                }
                "release" => {
                    let a: ReservationArgs = parse(function, input)?;
                    answer(inv.release(a.reservation_id, a.idempotency_key).await)
                }
                "commit" => {
                    let a: ReservationArgs = parse(function, input)?;
                    answer(inv.commit(a.reservation_id, a.idempotency_key).await)
                }
                _ => return unknown("inventory-adapter", INVENTORY),
            }
        }
        K::NotificationFormatter => match function {
            "format" => {
                let formatted = runtime
                    .notification(name)
                    .format(parse(function, input)?)
                    .await;
                answer(formatted)
            }
            _ => return unknown("notification-formatter", NOTIFICATION),
        },
    })
}
