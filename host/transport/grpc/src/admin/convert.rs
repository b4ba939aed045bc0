//! Application values -> `oms.admin.v1` messages.

use oms_application::ports::{
    AuditEntry, DeadLetter, DisabledPlugin, PluginBuild, PluginInfo, StepHistory,
};
use oms_application::saga::SagaInstance;

use crate::admin_pb as pb;
use crate::convert::to_proto::timestamp;

fn build(b: &PluginBuild) -> pb::PluginVersion {
    pb::PluginVersion {
        version: b.version.clone(),
        sha256: b.sha256.clone(),
        contract: b.contract.clone(),
        loaded_at: Some(timestamp(b.loaded_at)),
    }
}

pub(super) fn plugin(p: &PluginInfo) -> pb::Plugin {
    pb::Plugin {
        name: p.name.clone(),
        kind: p.kind.clone(),
        current: Some(build(&p.current)),
        previous: p.previous.as_ref().map(build),
        retained: p.retained.iter().map(build).collect(),
        canary: p.canary.as_ref().map(|c| pb::Canary {
            build: Some(build(&c.build)),
            percent: u32::from(c.percent),
            circuit: c.circuit.clone(),
            calls: c.calls,
            errors: c.errors.clone().into_iter().collect(),
            failures: c.failures,
            latency_p50_us: c.latency_p50_us.unwrap_or(0),
            latency_p99_us: c.latency_p99_us.unwrap_or(0),
        }),
        circuit: p.circuit.clone(),
        calls: p.calls,
        errors: p.errors.clone().into_iter().collect(),
        latency_p50_us: p.latency_p50_us.unwrap_or(0),
        latency_p99_us: p.latency_p99_us.unwrap_or(0),
        max_memory_bytes: p.max_memory_bytes,
        deadline_ms: p.deadline_ms,
        capabilities: p.capabilities.clone(),
        last_error: p.last_error.clone().unwrap_or_default(),
    }
}

pub(super) fn disabled_plugin(d: &DisabledPlugin) -> pb::DisabledPlugin {
    pb::DisabledPlugin {
        name: d.name.clone(),
        version: d.version.clone(),
        sha256: d.sha256.clone(),
    }
}

pub(super) fn saga(s: &SagaInstance) -> pb::Saga {
    pb::Saga {
        saga_id: s.id.to_string(),
        order_id: s.order_id.to_string(),
        kind: s.kind.as_str().to_owned(),
        status: s.status.as_str().to_owned(),
        step: s.current_step().unwrap_or_default().to_owned(),
        attempts: s.attempts,
        last_error: s.last_error.clone().unwrap_or_default(),
        next_attempt_at: Some(timestamp(s.next_attempt_at)),
        created_at: Some(timestamp(s.created_at)),
        updated_at: Some(timestamp(s.updated_at)),
    }
}

pub(super) fn step(s: &StepHistory) -> pb::SagaStep {
    let (plugin, version, digest) = s.plugin.clone().unwrap_or_default();
    pb::SagaStep {
        step: s.step.clone(),
        direction: s.direction.clone(),
        status: s.status.clone(),
        attempts: s.attempts,
        last_error: s.last_error.clone().unwrap_or_default(),
        plugin,
        plugin_version: version,
        plugin_sha256: digest,
        idempotency_key: s.idempotency_key.clone(),
        updated_at: s.finished_at.or(s.started_at).map(timestamp),
    }
}

pub(super) fn dead_letter(d: &DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        outbox_id: d.id,
        event_id: d.event_id.to_string(),
        order_id: d.order_id().map(|o| o.to_string()).unwrap_or_default(),
        aggregate_type: d.aggregate_type.as_str().to_owned(),
        event_type: d.event_type.clone(),
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        failed_at: Some(timestamp(d.failed_at)),
        redriven_at: d.redriven_at.map(timestamp),
    }
}

pub(super) fn plugin_change(c: &AuditEntry) -> pb::PluginChange {
    pb::PluginChange {
        at: Some(timestamp(c.at)),
        actor: c.actor.clone(),
        action: c.action.clone(),
        plugin: c.plugin.clone(),
        from_version: c.from_version.clone().unwrap_or_default(),
        from_sha256: c.from_sha256.clone().unwrap_or_default(),
        to_version: c.to_version.clone(),
        to_sha256: c.to_sha256.clone(),
    }
}
