//! The operators' API, `oms.admin.v1.AdminService`: plugins, sagas and the outbox.
//!
//! Like the public API's handlers these only translate: request -> one application operation
//! -> response, errors through the one mapping ([`crate::status::to_status`]). Every call
//! passes [`BearerAuth`] first.

mod convert;

use std::sync::Arc;
use std::time::Duration;

use oms_application::operations::{DeadLetterFilter, OutboxOperations};
use oms_application::ports::{PluginCatalog, SagaQuery};
use oms_application::saga::{SagaId, SagaKind, SagaOperations, SagaStatus};
use oms_application::{AppError, FieldViolation};
use oms_domain::{OrderId, Timestamp};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

pub use crate::auth::BearerAuth;

use crate::admin_pb as pb;
use crate::admin_pb::admin_service_server::{AdminService, AdminServiceServer};
use crate::status::to_status;

/// Rows a list returns when the request does not say, and at most.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1_000;

/// What the admin API serves.
#[derive(Clone)]
pub struct AdminApi {
    sagas: SagaOperations,
    outbox: OutboxOperations,
    plugins: Arc<dyn PluginCatalog>,
    /// Largest component an upload may carry.
    max_upload_bytes: usize,
}

/// The admin service behind its authentication.
pub type AdminServer = InterceptedService<AdminServiceServer<AdminApi>, BearerAuth>;

impl AdminApi {
    pub fn new(
        sagas: SagaOperations,
        outbox: OutboxOperations,
        plugins: Arc<dyn PluginCatalog>,
        max_upload_bytes: usize,
    ) -> Self {
        Self {
            sagas,
            outbox,
            plugins,
            max_upload_bytes,
        }
    }

    /// The service, accepting only calls that carry `auth`'s token. Upload chunks may be up
    /// to 4 MiB each (tonic's default message limit).
    pub fn into_server(self, auth: BearerAuth) -> AdminServer {
        InterceptedService::new(AdminServiceServer::new(self), auth)
    }
}

fn invalid(field: &str, description: impl Into<String>) -> Status {
    to_status(&AppError::InvalidArgument(vec![FieldViolation::new(
        field,
        description,
    )]))
}

fn limit(requested: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(DEFAULT_LIMIT),
        n if n <= MAX_LIMIT => Ok(n),
        _ => Err(invalid("limit", format!("must be at most {MAX_LIMIT}"))),
    }
}

/// Who made a change, for the audit trail: the admin API has one token, so the caller is
/// known by where it connected from.
fn actor<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "admin".to_owned(), |peer| format!("admin@{peer}"))
}

fn saga_id(raw: &str) -> Result<SagaId, Status> {
    uuid::Uuid::parse_str(raw)
        .map(SagaId)
        .map_err(|_| invalid("saga_id", "must be a UUID"))
}

fn saga_query(r: pb::ListSagasRequest, now: Timestamp) -> Result<SagaQuery, Status> {
    let mut violations = Vec::new();
    let mut statuses = Vec::new();
    for (i, s) in r.statuses.iter().enumerate() {
        match SagaStatus::parse(s) {
            Some(status) => statuses.push(status),
            None => violations.push(FieldViolation::new(
                format!("statuses[{i}]"),
                "must be RUNNING, COMPENSATING, SUCCEEDED, COMPENSATED or COMPENSATION_FAILED",
            )),
        }
    }
    let kind = match r.kind.as_str() {
        "" => None,
        k => {
            let kind = SagaKind::parse(k);
            if kind.is_none() {
                violations.push(FieldViolation::new(
                    "kind",
                    "must be place_order, cancel_order, fulfill_order or refund_order",
                ));
            }
            kind
        }
    };
    let limit = match limit(r.limit) {
        Ok(l) => l,
        Err(_) => {
            violations.push(FieldViolation::new(
                "limit",
                format!("must be at most {MAX_LIMIT}"),
            ));
            0
        }
    };
    if !violations.is_empty() {
        return Err(to_status(&AppError::InvalidArgument(violations)));
    }
    let stuck = Duration::from_secs(r.stuck_for_seconds);
    Ok(SagaQuery {
        statuses,
        kind,
        updated_before: (r.stuck_for_seconds > 0).then(|| now.saturating_sub(stuck)),
        limit,
    })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_plugins(
        &self,
        _: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let plugins = self.plugins.list().iter().map(convert::plugin).collect();
        let disabled = self
            .plugins
            .disabled()
            .await
            .map_err(|e| to_status(&e))?
            .iter()
            .map(convert::disabled_plugin)
            .collect();
        Ok(Response::new(pb::ListPluginsResponse { plugins, disabled }))
    }

    async fn get_plugin(
        &self,
        request: Request<pb::GetPluginRequest>,
    ) -> Result<Response<pb::Plugin>, Status> {
        let name = request.into_inner().name;
        let found = self.plugins.list().into_iter().find(|p| p.name == name);
        match found {
            Some(p) => Ok(Response::new(convert::plugin(&p))),
            None => Err(to_status(&AppError::NotFound(format!("plugin {name:?}")))),
        }
    }

    async fn upload_plugin(
        &self,
        request: Request<Streaming<pb::UploadPluginRequest>>,
    ) -> Result<Response<pb::Plugin>, Status> {
        use pb::upload_plugin_request::Part;
        let actor = actor(&request);
        let mut parts = request.into_inner();
        let first = parts.next().await.transpose()?;
        let canary_percent = first.as_ref().map_or(0, |m| m.canary_percent);
        let manifest = match first.and_then(|m| m.part) {
            Some(Part::Manifest(m)) => m,
            _ => {
                return Err(invalid(
                    "manifest",
                    "the first message must carry the manifest",
                ));
            }
        };
        let mut wasm = Vec::new();
        while let Some(message) = parts.next().await.transpose()? {
            if message.canary_percent != 0 {
                return Err(invalid(
                    "canary_percent",
                    "only the first message may carry it",
                ));
            }
            match message.part {
                Some(Part::Chunk(bytes)) => {
                    if wasm.len().saturating_add(bytes.len()) > self.max_upload_bytes {
                        return Err(invalid(
                            "wasm",
                            format!(
                                "the component exceeds the upload limit of {} bytes \
                                 (admin.max_upload_bytes)",
                                self.max_upload_bytes
                            ),
                        ));
                    }
                    wasm.extend_from_slice(&bytes);
                }
                _ => return Err(invalid("manifest", "only the first message may carry it")),
            }
        }
        if wasm.is_empty() {
            return Err(invalid("wasm", "no component bytes were sent"));
        }
        let installed = match canary_percent {
            0 => self.plugins.install(&manifest, wasm, &actor).await,
            percent @ 1..=99 => {
                let percent = u8::try_from(percent).unwrap_or(99);
                (self.plugins)
                    .start_canary(&manifest, wasm, percent, &actor)
                    .await
            }
            other => {
                return Err(invalid(
                    "canary_percent",
                    format!("a canary serves 1 to 99 percent of new sagas, not {other}"),
                ));
            }
        };
        installed
            .map(|p| Response::new(convert::plugin(&p)))
            .map_err(|e| to_status(&e))
    }

    async fn promote_canary(
        &self,
        request: Request<pb::PromoteCanaryRequest>,
    ) -> Result<Response<pb::Plugin>, Status> {
        let actor = actor(&request);
        let name = request.into_inner().name;
        let plugin = self
            .plugins
            .promote(&name, &actor)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::plugin(&plugin)))
    }

    async fn rollback_plugin(
        &self,
        request: Request<pb::RollbackPluginRequest>,
    ) -> Result<Response<pb::Plugin>, Status> {
        let actor = actor(&request);
        let name = request.into_inner().name;
        let plugin = self
            .plugins
            .rollback(&name, &actor)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::plugin(&plugin)))
    }

    async fn disable_plugin(
        &self,
        request: Request<pb::DisablePluginRequest>,
    ) -> Result<Response<pb::DisabledPlugin>, Status> {
        let actor = actor(&request);
        let name = request.into_inner().name;
        let disabled = self
            .plugins
            .disable(&name, &actor)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::disabled_plugin(&disabled)))
    }

    async fn enable_plugin(
        &self,
        request: Request<pb::EnablePluginRequest>,
    ) -> Result<Response<pb::Plugin>, Status> {
        let actor = actor(&request);
        let name = request.into_inner().name;
        let plugin = self
            .plugins
            .enable(&name, &actor)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::plugin(&plugin)))
    }

    async fn list_plugin_changes(
        &self,
        request: Request<pb::ListPluginChangesRequest>,
    ) -> Result<Response<pb::ListPluginChangesResponse>, Status> {
        let r = request.into_inner();
        let plugin = (!r.plugin.is_empty()).then_some(r.plugin.as_str());
        let changes = self
            .plugins
            .history(plugin, limit(r.limit)?)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ListPluginChangesResponse {
            changes: changes.iter().map(convert::plugin_change).collect(),
        }))
    }

    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let query = saga_query(request.into_inner(), Timestamp::now())?;
        let sagas = self.sagas.list(query).await.map_err(|e| to_status(&e))?;
        let sagas = sagas.iter().map(convert::saga).collect();
        Ok(Response::new(pb::ListSagasResponse { sagas }))
    }

    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::SagaDetail>, Status> {
        let id = saga_id(&request.into_inner().saga_id)?;
        let (saga, steps) = self.sagas.show(id).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::SagaDetail {
            saga: Some(convert::saga(&saga)),
            steps: steps.iter().map(convert::step).collect(),
        }))
    }

    async fn retry_saga(
        &self,
        request: Request<pb::RetrySagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let id = saga_id(&request.into_inner().saga_id)?;
        let saga = self.sagas.retry(id).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::saga(&saga)))
    }

    async fn force_compensate_saga(
        &self,
        request: Request<pb::ForceCompensateSagaRequest>,
    ) -> Result<Response<pb::Saga>, Status> {
        let id = saga_id(&request.into_inner().saga_id)?;
        let saga = self
            .sagas
            .force_compensate(id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(convert::saga(&saga)))
    }

    async fn get_outbox_status(
        &self,
        _: Request<pb::GetOutboxStatusRequest>,
    ) -> Result<Response<pb::OutboxStatus>, Status> {
        let s = self.outbox.status().await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::OutboxStatus {
            unpublished: s.unpublished,
            oldest_unpublished_age_ms: i64::try_from(s.oldest_unpublished_age.as_millis())
                .unwrap_or(i64::MAX),
            dead_letters: s.dead_letters,
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let r = request.into_inner();
        let dead = self
            .outbox
            .dead_letters(r.include_redriven, limit(r.limit)?)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: dead.iter().map(convert::dead_letter).collect(),
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        use pb::redrive_dead_letters_request::Target;
        let request = request.into_inner();
        let (redriven, remaining) = match request.target {
            Some(Target::OutboxId(id)) => {
                let done = self.outbox.redrive(id).await.map_err(|e| to_status(&e))?;
                (u32::from(done), 0)
            }
            Some(Target::Matching(f)) => {
                let order_id = match f.order_id.as_str() {
                    "" => None,
                    raw => Some(
                        OrderId::parse(raw)
                            .map_err(|e| invalid("matching.order_id", e.to_string()))?,
                    ),
                };
                let filter = DeadLetterFilter {
                    event_type: (!f.event_type.is_empty()).then_some(f.event_type),
                    order_id,
                };
                let done = self
                    .outbox
                    .redrive_matching(&filter, request.max)
                    .await
                    .map_err(|e| to_status(&e))?;
                (done.redriven, done.remaining)
            }
            None => return Err(invalid("target", "name an outbox_id or a filter")),
        };
        Ok(Response::new(pb::RedriveDeadLettersResponse {
            redriven,
            remaining,
        }))
    }
}
