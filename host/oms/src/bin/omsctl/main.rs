//! `omsctl`: the operator's command line over the admin API (`oms.admin.v1`, see
//! docs/operations.md). Human tables by default, `--json` for scripts; the address and the
//! token come from flags or the environment.

mod client;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use oms_grpc::admin_pb as pb;

use crate::client::Admin;
use crate::render::Output;

#[derive(Parser)]
#[command(
    name = "omsctl",
    version,
    about = "Operate an OMS host through its admin API"
)]
struct Cli {
    /// The admin API's address: `http://` or, when the host serves TLS, `https://`.
    #[arg(
        long,
        global = true,
        env = "OMS_ADMIN_ADDR",
        default_value = "http://127.0.0.1:50052"
    )]
    addr: String,
    /// The CA certificate (PEM) that signed the admin API's TLS certificate, for an
    /// `https://` address whose certificate is not from a public CA.
    #[arg(long, global = true, env = "OMS_ADMIN_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The bearer token (the host's `admin.token`).
    #[arg(long, global = true, env = "OMS_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Installed plugins: list, inspect, swap, canary, promote, roll back, history.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Sagas: list, inspect, retry, force compensation.
    #[command(subcommand)]
    Sagas(SagasCommand),
    /// The outbox: lag, dead letters, redrive.
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Every installed plugin with its version, digest, circuit and call figures.
    List,
    /// One plugin in full.
    Show { name: String },
    /// Uploads FILE.wasm as the new current version of NAME (checked before it serves; the
    /// replaced version becomes the rollback target).
    Swap {
        name: String,
        wasm: PathBuf,
        /// The manifest; by default FILE.wasm's path with `.toml`.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Starts FILE.wasm as a canary of NAME for PERCENT of new orders, in every host process,
    /// beside the current version; `plugins show NAME` compares their figures. Promote it
    /// with `plugins promote NAME`, end it with `plugins rollback NAME` (a host process ends
    /// it by itself when it fails too often: `plugins.canary` in the configuration).
    Canary {
        name: String,
        wasm: PathBuf,
        /// Percent of new orders the canary serves (1..99).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=99))]
        percent: u32,
        /// The manifest; by default FILE.wasm's path with `.toml`.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Makes the canary of NAME its current version everywhere.
    Promote { name: String },
    /// Undoes the last rollout step of NAME: ends its canary if one runs, otherwise makes
    /// the previous version current again.
    Rollback { name: String },
    /// Turns NAME off in every host process (kept in the release set, so no plugins
    /// directory brings it back).
    Disable { name: String },
    /// Turns a disabled NAME on again everywhere, with the build it had.
    Enable { name: String },
    /// Every change of the plugin set (seed, upload, rollback, disable, enable, canary,
    /// promote, abort), newest first.
    History {
        /// Only this plugin's changes.
        name: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum SagasCommand {
    /// Sagas, oldest first; by default the unfinished ones.
    List(ListSagas),
    /// One saga with its step history.
    Show { saga_id: String },
    /// Resumes a saga parked in COMPENSATION_FAILED where it stopped.
    Retry { saga_id: String },
    /// Makes a parked placement saga undo what it did.
    ForceCompensate { saga_id: String },
}

#[derive(Args)]
struct ListSagas {
    /// Only this status (repeatable): RUNNING, COMPENSATING, SUCCEEDED, COMPENSATED,
    /// COMPENSATION_FAILED.
    #[arg(long = "status")]
    statuses: Vec<String>,
    /// Only this kind: place_order, cancel_order, fulfill_order, refund_order.
    #[arg(long)]
    kind: Option<String>,
    /// Only sagas unchanged for at least this long (`90s`, `10m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    stuck_for: Option<Duration>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Unpublished rows, the oldest one's age, and the dead letters waiting.
    Status,
    /// Dead letters, newest failure first.
    DeadLetters {
        /// Include the ones already redriven.
        #[arg(long)]
        include_redriven: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Puts dead letters back into the outbox: one by id, or all pending ones matching.
    Redrive(Redrive),
}

#[derive(Args)]
#[group(required = true, multiple = false, id = "target")]
struct RedriveTarget {
    /// The dead letter's outbox id.
    outbox_id: Option<i64>,
    /// Every pending dead letter (narrowed by --event-type and --order).
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct Redrive {
    #[command(flatten)]
    target: RedriveTarget,
    #[arg(long, requires = "all")]
    event_type: Option<String>,
    #[arg(long, requires = "all")]
    order: Option<String>,
    /// Dead letters per call with --all (the progress bar advances by as many).
    #[arg(long, default_value_t = 100, requires = "all")]
    batch: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("omsctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = cli
        .token
        .context("no token: pass --token or set OMS_ADMIN_TOKEN (the host's admin.token)")?;
    let mut admin = Admin::connect(&cli.addr, &token, cli.ca_cert.as_deref()).await?;
    let out = Output::new(cli.json);
    match cli.command {
        Command::Plugins(c) => plugins(&mut admin, &out, c).await,
        Command::Sagas(c) => sagas(&mut admin, &out, c).await,
        Command::Outbox(c) => outbox(&mut admin, &out, c).await,
    }
}

async fn plugins(admin: &mut Admin, out: &Output, command: PluginsCommand) -> anyhow::Result<()> {
    match command {
        PluginsCommand::List => {
            let r = admin.api.list_plugins(pb::ListPluginsRequest {}).await?;
            let r = r.into_inner();
            out.plugins(&r.plugins, &r.disabled);
        }
        PluginsCommand::Show { name } => {
            let r = admin.api.get_plugin(pb::GetPluginRequest { name }).await?;
            out.plugin(&r.into_inner());
        }
        PluginsCommand::Swap {
            name,
            wasm,
            manifest,
        } => {
            let manifest = manifest.unwrap_or_else(|| wasm.with_extension("toml"));
            let plugin = admin
                .upload(&name, &wasm, &manifest, 0, out.interactive())
                .await?;
            out.plugin(&plugin);
        }
        PluginsCommand::Canary {
            name,
            wasm,
            percent,
            manifest,
        } => {
            let manifest = manifest.unwrap_or_else(|| wasm.with_extension("toml"));
            let plugin = admin
                .upload(&name, &wasm, &manifest, percent, out.interactive())
                .await?;
            out.plugin(&plugin);
        }
        PluginsCommand::Promote { name } => {
            let r = admin
                .api
                .promote_canary(pb::PromoteCanaryRequest { name })
                .await?;
            out.plugin(&r.into_inner());
        }
        PluginsCommand::Rollback { name } => {
            let r = admin
                .api
                .rollback_plugin(pb::RollbackPluginRequest { name })
                .await?;
            out.plugin(&r.into_inner());
        }
        PluginsCommand::Disable { name } => {
            let r = admin
                .api
                .disable_plugin(pb::DisablePluginRequest { name })
                .await?;
            out.disabled_plugin(&r.into_inner());
        }
        PluginsCommand::Enable { name } => {
            let r = admin
                .api
                .enable_plugin(pb::EnablePluginRequest { name })
                .await?;
            out.plugin(&r.into_inner());
        }
        PluginsCommand::History { name, limit } => {
            let request = pb::ListPluginChangesRequest {
                plugin: name.unwrap_or_default(),
                limit,
            };
            let r = admin.api.list_plugin_changes(request).await?;
            out.plugin_changes(&r.into_inner().changes);
        }
    }
    Ok(())
}

async fn sagas(admin: &mut Admin, out: &Output, command: SagasCommand) -> anyhow::Result<()> {
    match command {
        SagasCommand::List(l) => {
            let request = pb::ListSagasRequest {
                statuses: l.statuses,
                kind: l.kind.unwrap_or_default(),
                stuck_for_seconds: l.stuck_for.map_or(0, |d| d.as_secs().max(1)),
                limit: l.limit,
            };
            let r = admin.api.list_sagas(request).await?;
            out.sagas(&r.into_inner().sagas);
        }
        SagasCommand::Show { saga_id } => {
            let r = admin.api.get_saga(pb::GetSagaRequest { saga_id }).await?;
            out.saga_detail(&r.into_inner());
        }
        SagasCommand::Retry { saga_id } => {
            let r = admin
                .api
                .retry_saga(pb::RetrySagaRequest { saga_id })
                .await?;
            out.sagas(&[r.into_inner()]);
        }
        SagasCommand::ForceCompensate { saga_id } => {
            let request = pb::ForceCompensateSagaRequest { saga_id };
            let r = admin.api.force_compensate_saga(request).await?;
            out.sagas(&[r.into_inner()]);
        }
    }
    Ok(())
}

async fn outbox(admin: &mut Admin, out: &Output, command: OutboxCommand) -> anyhow::Result<()> {
    use pb::redrive_dead_letters_request::Target;
    match command {
        OutboxCommand::Status => {
            let r = admin
                .api
                .get_outbox_status(pb::GetOutboxStatusRequest {})
                .await?;
            out.outbox_status(&r.into_inner());
        }
        OutboxCommand::DeadLetters {
            include_redriven,
            limit,
        } => {
            let request = pb::ListDeadLettersRequest {
                include_redriven,
                limit,
            };
            let r = admin.api.list_dead_letters(request).await?;
            out.dead_letters(&r.into_inner().dead_letters);
        }
        OutboxCommand::Redrive(r) => {
            let target = match r.target.outbox_id {
                Some(id) => Target::OutboxId(id),
                None => Target::Matching(pb::DeadLetterFilter {
                    event_type: r.event_type.unwrap_or_default(),
                    order_id: r.order.unwrap_or_default(),
                }),
            };
            let single = matches!(target, Target::OutboxId(_));
            // A bulk redrive runs in calls of `batch`, until none matching remain: the bar
            // learns the total from the first answer.
            let bar = out.progress("redriving dead letters");
            let mut redriven = 0u32;
            loop {
                let request = pb::RedriveDeadLettersRequest {
                    target: Some(target.clone()),
                    max: r.batch,
                };
                let response = admin.api.redrive_dead_letters(request).await;
                let done = match response {
                    Ok(done) => done.into_inner(),
                    Err(e) => {
                        bar.abandon();
                        return Err(e.into());
                    }
                };
                redriven = redriven.saturating_add(done.redriven);
                bar.set_length(u64::from(redriven) + u64::from(done.remaining));
                bar.set_position(u64::from(redriven));
                if single || done.remaining == 0 || done.redriven == 0 {
                    break;
                }
            }
            bar.finish_and_clear();
            out.redriven(redriven);
        }
    }
    Ok(())
}
