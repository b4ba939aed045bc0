//! How `omsctl` prints: tables for people, JSON (one document per command) for scripts.

use std::io::IsTerminal;
use std::time::Duration;

use comfy_table::{Table, presets::NOTHING};
use indicatif::ProgressBar;
use oms_grpc::admin_pb as pb;
use serde_json::{Value, json};

pub struct Output {
    json: bool,
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| {
        let nanos = u32::try_from(t.nanos).ok()?;
        let at = std::time::UNIX_EPOCH
            .checked_add(Duration::new(u64::try_from(t.seconds).ok()?, nanos))?;
        Some(humantime::format_rfc3339_millis(at).to_string())
    })
    .unwrap_or_default()
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// A table without borders, headers first: reads like `kubectl get`.
fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    t
}

fn version_json(v: Option<&pb::PluginVersion>) -> Value {
    v.map_or(Value::Null, |v| {
        json!({
            "version": v.version,
            "sha256": v.sha256,
            "contract": v.contract,
            "loaded_at": time(v.loaded_at.as_ref()),
        })
    })
}

fn disabled_json(d: &pb::DisabledPlugin) -> Value {
    json!({
        "name": d.name,
        "disabled": true,
        "version": d.version,
        "sha256": d.sha256,
    })
}

/// A canary in one line, its figures beside the ones the current version shows above.
fn canary_line(canary: Option<&pb::Canary>) -> String {
    canary.map_or("-".to_owned(), |c| {
        let build = c.build.clone().unwrap_or_default();
        let errors: Vec<String> = c.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} ({}) for {}% of new orders: circuit {}, {} calls, {} failed, errors {}, \
             p50/p99 {} us / {} us",
            build.version,
            short(&build.sha256),
            c.percent,
            c.circuit,
            c.calls,
            c.failures,
            dash(&errors.join(" ")),
            c.latency_p50_us,
            c.latency_p99_us
        )
    })
}

fn plugin_json(p: &pb::Plugin) -> Value {
    json!({
        "name": p.name,
        "disabled": false,
        "kind": p.kind,
        "current": version_json(p.current.as_ref()),
        "previous": version_json(p.previous.as_ref()),
        "retained": p.retained.iter().map(|v| version_json(Some(v))).collect::<Vec<_>>(),
        "canary": p.canary.as_ref().map_or(Value::Null, |c| json!({
            "build": version_json(c.build.as_ref()),
            "percent": c.percent,
            "circuit": c.circuit,
            "calls": c.calls,
            "errors": c.errors,
            "failures": c.failures,
            "latency_p50_us": c.latency_p50_us,
            "latency_p99_us": c.latency_p99_us,
        })),
        "circuit": p.circuit,
        "calls": p.calls,
        "errors": p.errors,
        "latency_p50_us": p.latency_p50_us,
        "latency_p99_us": p.latency_p99_us,
        "max_memory_bytes": p.max_memory_bytes,
        "deadline_ms": p.deadline_ms,
        "capabilities": p.capabilities,
        "last_error": p.last_error,
    })
}

fn change_json(c: &pb::PluginChange) -> Value {
    json!({
        "at": time(c.at.as_ref()),
        "actor": c.actor,
        "action": c.action,
        "plugin": c.plugin,
        "from_version": c.from_version,
        "from_sha256": c.from_sha256,
        "to_version": c.to_version,
        "to_sha256": c.to_sha256,
    })
}

fn saga_json(s: &pb::Saga) -> Value {
    json!({
        "saga_id": s.saga_id,
        "order_id": s.order_id,
        "kind": s.kind,
        "status": s.status,
        "step": s.step,
        "attempts": s.attempts,
        "last_error": s.last_error,
        "next_attempt_at": time(s.next_attempt_at.as_ref()),
        "created_at": time(s.created_at.as_ref()),
        "updated_at": time(s.updated_at.as_ref()),
    })
}

fn step_json(s: &pb::SagaStep) -> Value {
    json!({
        "step": s.step,
        "direction": s.direction,
        "status": s.status,
        "attempts": s.attempts,
        "last_error": s.last_error,
        "plugin": s.plugin,
        "plugin_version": s.plugin_version,
        "plugin_sha256": s.plugin_sha256,
        "idempotency_key": s.idempotency_key,
        "updated_at": time(s.updated_at.as_ref()),
    })
}

fn dead_letter_json(d: &pb::DeadLetter) -> Value {
    json!({
        "outbox_id": d.outbox_id,
        "event_id": d.event_id,
        "aggregate_type": d.aggregate_type,
        "order_id": d.order_id,
        "event_type": d.event_type,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "failed_at": time(d.failed_at.as_ref()),
        "redriven_at": time(d.redriven_at.as_ref()),
    })
}

/// The first 12 hex digits of a digest: enough to tell builds apart in a table.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Progress is drawn only for a person at a terminal, never into `--json` output.
    pub fn interactive(&self) -> bool {
        !self.json && std::io::stderr().is_terminal()
    }

    /// A bar whose length is set as the work learns it (`set_length`).
    pub fn progress(&self, message: &'static str) -> ProgressBar {
        if !self.interactive() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(0).with_message(message);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }

    fn print_json(&self, value: &Value) {
        println!("{value:#}");
    }

    /// The installed plugins, then the disabled ones (`"disabled": true` in JSON).
    pub fn plugins(&self, plugins: &[pb::Plugin], disabled: &[pb::DisabledPlugin]) {
        if self.json {
            let all = plugins
                .iter()
                .map(plugin_json)
                .chain(disabled.iter().map(disabled_json));
            return self.print_json(&Value::Array(all.collect()));
        }
        let mut t = table(&[
            "NAME", "KIND", "VERSION", "SHA256", "PREVIOUS", "CIRCUIT", "CALLS", "ERRORS", "P99_US",
        ]);
        for p in plugins {
            let current = p.current.clone().unwrap_or_default();
            let previous = p
                .previous
                .as_ref()
                .map_or("-".to_owned(), |v| v.version.clone());
            let errors: u64 = p.errors.values().sum();
            t.add_row(vec![
                p.name.clone(),
                p.kind.clone(),
                current.version,
                short(&current.sha256).to_owned(),
                previous,
                p.circuit.clone(),
                p.calls.to_string(),
                errors.to_string(),
                p.latency_p99_us.to_string(),
            ]);
        }
        println!("{t}");
        let canaries: Vec<_> = plugins
            .iter()
            .filter_map(|p| p.canary.as_ref().map(|c| (p, c)))
            .collect();
        if !canaries.is_empty() {
            let mut t = table(&[
                "CANARY", "VERSION", "SHA256", "PERCENT", "CIRCUIT", "CALLS", "FAILURES", "P99_US",
            ]);
            for (p, c) in canaries {
                let build = c.build.clone().unwrap_or_default();
                t.add_row(vec![
                    p.name.clone(),
                    build.version,
                    short(&build.sha256).to_owned(),
                    format!("{}%", c.percent),
                    c.circuit.clone(),
                    c.calls.to_string(),
                    c.failures.to_string(),
                    c.latency_p99_us.to_string(),
                ]);
            }
            println!("{t}");
        }
        if !disabled.is_empty() {
            let mut t = table(&["DISABLED", "VERSION", "SHA256"]);
            for d in disabled {
                t.add_row(vec![
                    d.name.clone(),
                    d.version.clone(),
                    short(&d.sha256).to_owned(),
                ]);
            }
            println!("{t}");
        }
    }

    pub fn disabled_plugin(&self, d: &pb::DisabledPlugin) {
        if self.json {
            return self.print_json(&disabled_json(d));
        }
        println!(
            "{} disabled everywhere (it had {} {}); `omsctl plugins enable {}` brings it back",
            d.name,
            d.version,
            short(&d.sha256),
            d.name
        );
    }

    pub fn plugin(&self, p: &pb::Plugin) {
        if self.json {
            return self.print_json(&plugin_json(p));
        }
        let current = p.current.clone().unwrap_or_default();
        let mut t = Table::new();
        t.load_preset(NOTHING);
        let errors: Vec<String> = p.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let rows = [
            ("name", p.name.clone()),
            ("kind", p.kind.clone()),
            ("version", current.version),
            ("sha256", current.sha256),
            ("contract", current.contract),
            ("loaded at", time(current.loaded_at.as_ref())),
            (
                "previous",
                p.previous.as_ref().map_or("-".to_owned(), |v| {
                    format!("{} ({})", v.version, short(&v.sha256))
                }),
            ),
            (
                "retained",
                dash(
                    &p.retained
                        .iter()
                        .map(|v| format!("{} ({})", v.version, short(&v.sha256)))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
                .to_owned(),
            ),
            ("circuit", p.circuit.clone()),
            ("calls", p.calls.to_string()),
            ("errors", dash(&errors.join(" ")).to_owned()),
            (
                "latency p50/p99",
                format!("{} us / {} us", p.latency_p50_us, p.latency_p99_us),
            ),
            ("memory limit", format!("{} bytes", p.max_memory_bytes)),
            ("deadline", format!("{} ms", p.deadline_ms)),
            ("capabilities", dash(&p.capabilities.join(" ")).to_owned()),
            ("last refusal", dash(&p.last_error).to_owned()),
            ("canary", canary_line(p.canary.as_ref())),
        ];
        for (k, v) in rows {
            t.add_row(vec![k.to_owned(), v]);
        }
        println!("{t}");
    }

    pub fn plugin_changes(&self, changes: &[pb::PluginChange]) {
        if self.json {
            return self.print_json(&Value::Array(changes.iter().map(change_json).collect()));
        }
        let mut t = table(&["AT", "PLUGIN", "ACTION", "FROM", "TO", "TO_SHA256", "ACTOR"]);
        for c in changes {
            t.add_row(vec![
                time(c.at.as_ref()),
                c.plugin.clone(),
                c.action.clone(),
                dash(&c.from_version).to_owned(),
                c.to_version.clone(),
                short(&c.to_sha256).to_owned(),
                c.actor.clone(),
            ]);
        }
        println!("{t}");
    }

    pub fn sagas(&self, sagas: &[pb::Saga]) {
        if self.json {
            return self.print_json(&Value::Array(sagas.iter().map(saga_json).collect()));
        }
        let mut t = table(&[
            "SAGA_ID",
            "ORDER_ID",
            "KIND",
            "STATUS",
            "STEP",
            "ATTEMPTS",
            "UPDATED",
            "LAST_ERROR",
        ]);
        for s in sagas {
            t.add_row(vec![
                s.saga_id.clone(),
                s.order_id.clone(),
                s.kind.clone(),
                s.status.clone(),
                dash(&s.step).to_owned(),
                s.attempts.to_string(),
                time(s.updated_at.as_ref()),
                dash(&s.last_error).to_owned(),
            ]);
        }
        println!("{t}");
    }

    pub fn saga_detail(&self, d: &pb::SagaDetail) {
        if self.json {
            let saga = d.saga.as_ref().map_or(Value::Null, saga_json);
            let steps: Vec<Value> = d.steps.iter().map(step_json).collect();
            return self.print_json(&json!({ "saga": saga, "steps": steps }));
        }
        if let Some(s) = &d.saga {
            self.sagas(std::slice::from_ref(s));
            println!();
        }
        let mut t = table(&[
            "STEP",
            "DIRECTION",
            "STATUS",
            "ATTEMPTS",
            "PLUGIN",
            "VERSION",
            "UPDATED",
            "LAST_ERROR",
        ]);
        for s in &d.steps {
            t.add_row(vec![
                s.step.clone(),
                s.direction.clone(),
                s.status.clone(),
                s.attempts.to_string(),
                dash(&s.plugin).to_owned(),
                dash(&s.plugin_version).to_owned(),
                time(s.updated_at.as_ref()),
                dash(&s.last_error).to_owned(),
            ]);
        }
        println!("{t}");
    }

    pub fn outbox_status(&self, s: &pb::OutboxStatus) {
        if self.json {
            return self.print_json(&json!({
                "unpublished": s.unpublished,
                "oldest_unpublished_age_ms": s.oldest_unpublished_age_ms,
                "dead_letters": s.dead_letters,
            }));
        }
        let mut t = table(&["UNPUBLISHED", "OLDEST_AGE_MS", "DEAD_LETTERS"]);
        t.add_row(vec![
            s.unpublished.to_string(),
            s.oldest_unpublished_age_ms.to_string(),
            s.dead_letters.to_string(),
        ]);
        println!("{t}");
    }

    pub fn dead_letters(&self, dead: &[pb::DeadLetter]) {
        if self.json {
            return self.print_json(&Value::Array(dead.iter().map(dead_letter_json).collect()));
        }
        let mut t = table(&[
            "OUTBOX_ID",
            "EVENT_TYPE",
            "ORDER_ID",
            "ATTEMPTS",
            "FAILED",
            "REDRIVEN",
            "LAST_ERROR",
        ]);
        for d in dead {
            t.add_row(vec![
                d.outbox_id.to_string(),
                d.event_type.clone(),
                dash(&d.order_id).to_owned(),
                d.attempts.to_string(),
                time(d.failed_at.as_ref()),
                dash(&time(d.redriven_at.as_ref())).to_owned(),
                d.last_error.clone(),
            ]);
        }
        println!("{t}");
    }

    pub fn redriven(&self, n: u32) {
        if self.json {
            return self.print_json(&json!({ "redriven": n }));
        }
        println!("redriven: {n}");
    }
}
