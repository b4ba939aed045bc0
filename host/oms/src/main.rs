//! `oms`: the command-line entry point of the OMS host.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use oms::Config;
use tracing::info;

/// The host's allocator: jemalloc. Every request, plugin call and statement builds and drops
/// small buffers on whichever worker thread runs it; glibc's malloc and free took about an
/// eighth of the host's CPU samples under load (perf, 32 clients on PostgreSQL), jemalloc's
/// about 3%. Measured in the same session: 10% less host CPU per order and 4-8% more
/// orders/s, peak RSS within 10% (mimalloc was a little faster still but nearly doubled the
/// peak RSS). docs/benchmarks.md has the runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "oms",
    version,
    about = "Order Management System host with Wasm plugins"
)]
struct Cli {
    /// TOML configuration file; `OMS_*` environment variables override it.
    #[arg(long, global = true, env = "OMS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: gRPC API, database, background workers.
    Serve,
    /// Print the effective configuration (defaults + file + environment) as TOML, secrets
    /// redacted.
    Config,
    /// Ask the running host's public listener (`grpc.listen`, plaintext) whether it serves
    /// (`grpc.health.v1`): exit 0 when SERVING, 1 otherwise. For container health checks.
    Health {
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Tools for plugin authors; they need no database and no Rust toolchain.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a new plugin project: the contract's WIT, a manifest, an implementation that
    /// passes `oms plugin test`, a `build.sh` and a README with the exact commands.
    New {
        /// The plugin's name (a-z, 0-9, '-'): the project directory, the manifest's name.
        name: String,
        #[arg(long, value_enum)]
        kind: KindArg,
        #[arg(long, value_enum)]
        lang: oms::plugin_kit::scaffold::Lang,
        /// Where the project directory is created.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run every check the host makes before it loads a plugin (manifest, contract version,
    /// size, digest, component, world, grants) and report each one; exit 1 if any fails.
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
        /// Its manifest; default: `FILE` with `.toml` for `.wasm`, else `manifest.toml`
        /// beside it.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Run the load checks, then the conformance suite of the plugin's kind (idempotency,
    /// typed errors, amounts, every call the sagas make) in the host's runtime with an
    /// in-memory KV store; one line per check, exit 1 if any fails.
    Test {
        /// The component (`.wasm`).
        file: PathBuf,
        /// Its manifest; default as for `check`.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The kind the plugin must be (`payment`, `inventory`, `notification`); default:
        /// the manifest's.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Payment: a token `authorize` accepts.
        #[arg(long, default_value = "tok_ok")]
        token_ok: String,
        /// Payment: a token `authorize` declines.
        #[arg(long, default_value = "tok_decline")]
        token_decline: String,
        /// Payment, contract 0.2: a token for which `authorize` asks for a customer action.
        #[arg(long, default_value = "tok_3ds")]
        token_action: String,
        /// Inventory: a SKU with at least 10 units in stock.
        #[arg(long, default_value = "DEMO-1")]
        sku_in_stock: String,
        /// Inventory: a SKU with none.
        #[arg(long, default_value = "OUT-OF-STOCK")]
        sku_out_of_stock: String,
    },
    /// Call one function of a plugin locally (an in-memory KV store, no database) and print
    /// its answer as JSON on stdout and its logs and output on stderr. Exit 0 when the
    /// plugin answered (a value or its own typed error), 1 when it did not (a trap, the
    /// deadline, a limit) or the input does not fit.
    Run {
        /// The component (`.wasm`).
        file: PathBuf,
        /// `authorize`, `capture`, `void`, `refund`, `get-payment` (payment); `reserve`,
        /// `release`, `commit` (inventory); `format` (notification).
        function: String,
        /// The function's parameters by their WIT names in snake_case as JSON, or the one
        /// record it takes; variant cases by their CamelCase name. E.g. `void`:
        /// `{"id":"p-1","idempotency_key":"k"}`.
        #[arg(long)]
        input: String,
        /// Its manifest; default as for `check`.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
}

/// A plugin kind as `oms plugin new` and `test --kind` name it (the manifest's `kind` values).
#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Payment,
    Inventory,
    Notification,
}

impl From<KindArg> for oms_plugin_runtime::PluginKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Payment => Self::PaymentProvider,
            KindArg::Inventory => Self::InventoryAdapter,
            KindArg::Notification => Self::NotificationFormatter,
        }
    }
}

/// Errors are printed as their chain of causes, never with a backtrace: they are expected
/// outcomes (a plugin that fails its checks, a configuration error), not crashes.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The plugin tools read no host configuration.
    let load = || Config::load(cli.config.as_deref());
    match cli.command {
        Command::Health { timeout } => health(&load()?, timeout).await,
        Command::Plugin {
            command: PluginCommand::Check { file, manifest },
        } => plugin_check(&file, manifest).await,
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    kind,
                    lang,
                    dir,
                },
        } => plugin_new(&dir, &name, kind.into(), lang),
        Command::Plugin {
            command:
                PluginCommand::Test {
                    file,
                    manifest,
                    kind,
                    token_ok,
                    token_decline,
                    token_action,
                    sku_in_stock,
                    sku_out_of_stock,
                },
        } => {
            let fixtures = oms::plugin_kit::Fixtures {
                token_ok,
                token_decline,
                token_action,
                sku_in_stock,
                sku_out_of_stock,
            };
            plugin_test(&file, manifest, kind.map(Into::into), &fixtures).await
        }
        Command::Plugin {
            command:
                PluginCommand::Run {
                    file,
                    function,
                    input,
                    manifest,
                },
        } => plugin_run(&file, &function, &input, manifest).await,
        Command::Config => {
            // Secrets (database password, broker credentials) are shown as `***`.
            print!("{}", toml::to_string_pretty(&load()?.redacted())?);
            Ok(())
        }
        Command::Serve => {
            let config = load()?;
            let _telemetry = oms::telemetry::init(&config.log, &config.tracing);
            let server = oms::start(config).await?;
            let stop = server.shutdown_handle();
            tokio::spawn(async move {
                shutdown_signal().await;
                info!("shutdown requested; finishing in-flight calls");
                let _ = stop.send(true);
            });
            server.wait().await.context("server stopped with an error")
        }
    }
}

/// `oms plugin check`: one line per check, then the verdict.
async fn plugin_check(file: &std::path::Path, manifest: Option<PathBuf>) -> anyhow::Result<()> {
    use oms::plugin_kit::{self, Outcome};
    let manifest = manifest.unwrap_or_else(|| plugin_kit::default_manifest(file));
    println!("checking {} with {}", file.display(), manifest.display());
    let report = plugin_kit::check(file, &manifest).await;
    for (name, outcome) in &report.checks {
        match outcome {
            Outcome::Passed(detail) => println!("  pass  {name:<9}  {detail}"),
            Outcome::Failed(why) => println!("  FAIL  {name:<9}  {why}"),
            Outcome::Skipped => println!("  skip  {name:<9}  (not run: an earlier check failed)"),
        }
    }
    anyhow::ensure!(
        report.passed(),
        "{} would be refused by the host",
        file.display()
    );
    println!("{} passes every load check", file.display());
    Ok(())
}

/// Sends the plugin's log records and printed output from `level` up to stderr, for the
/// plugin tools; the host's own records only when something goes wrong.
fn plugin_records_to_stderr(level: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "error,plugin={level}"
        )))
        .init();
}

/// `oms plugin new`: the project, and what to do next.
fn plugin_new(
    dir: &std::path::Path,
    name: &str,
    kind: oms_plugin_runtime::PluginKind,
    lang: oms::plugin_kit::scaffold::Lang,
) -> anyhow::Result<()> {
    let project = oms::plugin_kit::scaffold::new_project(dir, name, kind, lang)?;
    println!("wrote {}", project.display());
    println!(
        "next: cd {} && ./build.sh && oms plugin test dist/{name}.wasm",
        project.display()
    );
    Ok(())
}

/// `oms plugin test`: one line per load check and per conformance check, then the verdict.
async fn plugin_test(
    file: &std::path::Path,
    manifest: Option<PathBuf>,
    expected: Option<oms_plugin_runtime::PluginKind>,
    fixtures: &oms::plugin_kit::Fixtures,
) -> anyhow::Result<()> {
    use oms::plugin_kit::{self, Outcome};
    // What the plugin logs at warn and above (and its printed output) explains a failure.
    plugin_records_to_stderr("warn");
    let manifest = manifest.unwrap_or_else(|| plugin_kit::default_manifest(file));
    println!("testing {} with {}", file.display(), manifest.display());
    let report = plugin_kit::test(file, &manifest, fixtures).await;
    let line = |outcome: &Outcome, name: &str, extra: &str| match outcome {
        Outcome::Passed(detail) => println!("  pass  {name}{extra}: {detail}"),
        Outcome::Failed(why) => println!("  FAIL  {name}{extra}: {why}"),
        Outcome::Skipped => println!("  skip  {name}{extra} (an earlier check failed)"),
    };
    for (name, outcome) in &report.load.checks {
        line(outcome, &format!("load: {name}"), "");
    }
    for f in &report.findings {
        line(&f.outcome, f.name, &format!(" [{}]", f.used_by));
    }
    if let (Some(expected), Some(actual)) = (expected, report.kind) {
        anyhow::ensure!(
            expected == actual,
            "{} is a {actual} plugin, not a {expected} one",
            file.display()
        );
    }
    let failed = report.not_passed();
    anyhow::ensure!(
        failed == 0,
        "{} fails conformance: {failed} check(s) failed or were not run",
        file.display()
    );
    println!(
        "{} passes every load check and all {} conformance checks",
        file.display(),
        report.findings.len()
    );
    Ok(())
}

/// `oms plugin run`: the answer on stdout, the plugin's records on stderr.
async fn plugin_run(
    file: &std::path::Path,
    function: &str,
    input: &str,
    manifest: Option<PathBuf>,
) -> anyhow::Result<()> {
    use oms::plugin_kit::{self, Answer};
    // The plugin's log records and printed output, all levels its manifest lets through.
    plugin_records_to_stderr("trace");
    let manifest = manifest.unwrap_or_else(|| plugin_kit::default_manifest(file));
    match plugin_kit::run(file, &manifest, function, input).await? {
        Answer::Ok(value) => println!("{}", serde_json::json!({ "ok": value })),
        Answer::Rejected(error) => println!("{}", serde_json::json!({ "rejected": error })),
        Answer::Failed { kind, message } => {
            let failed = serde_json::json!({ "failed": { "kind": kind, "message": message } });
            println!("{failed}");
            anyhow::bail!("the plugin did not answer ({kind})");
        }
    }
    Ok(())
}

/// `oms health`: one `grpc.health.v1.Health/Check` of the whole server.
async fn health(config: &Config, timeout: Duration) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    anyhow::ensure!(
        config.grpc.tls_cert_file.is_none(),
        "`oms health` speaks plaintext and grpc.tls_* is set: probe with a TLS-capable client"
    );
    // A wildcard listen address is reached on loopback from inside the host or container.
    let mut addr = config.grpc.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let response = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await?;
        anyhow::Ok(response.into_inner().status())
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {timeout:?}"))?
        .with_context(|| format!("asking {addr}"))?;
    println!("{}", status.as_str_name());
    anyhow::ensure!(status == ServingStatus::Serving, "not serving");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
