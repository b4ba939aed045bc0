//! `oms.v1.OrderService`: thin handlers that validate, call one use case and translate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use oms_application::ports::OrderQuery;
use oms_application::{AppError, FieldViolation, OrderService};
use oms_domain::{CustomerId, Order};
use tokio::sync::Semaphore;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::auth::CallerAuth;
use crate::concurrency::PerConnectionLimit;
use crate::convert::{
    Violations, order_to_proto, parse_address, parse_expected_version, parse_money,
    parse_new_order, parse_order_id, parse_reason, parse_status_filter,
};
use crate::framing::UnaryFraming;
use crate::pb::order_service_server::OrderService as OrderServiceApi;
use crate::{deadline, idempotency, page_token, pb, status};

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 500;

/// Bounds of the API's own work.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Calls of this service running at once; more wait for a place. Each running call holds
    /// at most one database connection, so keeping this below the pool size leaves
    /// connections for the saga workers, the outbox relay and the notification consumer.
    pub max_in_flight: usize,
    /// Largest request message, encoded.
    pub max_request_bytes: usize,
    /// Largest response message, encoded (a `ListOrders` page of big orders is the largest).
    pub max_response_bytes: usize,
    /// Request bytes being received by all calls together (see [`UnaryFraming`]).
    pub max_buffered_request_bytes: usize,
    /// Calls one connection may have running at once, `0` for unlimited (see
    /// [`PerConnectionLimit`]).
    pub max_calls_per_connection: usize,
    /// `WatchOrder` streams open at once on this server; more are refused, not queued (a
    /// stream lasts until its order is terminal, so a queue could wait for days).
    pub max_watch_streams: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 12,
            max_request_bytes: 256 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            max_buffered_request_bytes: 64 * 1024 * 1024,
            max_calls_per_connection: 0,
            max_watch_streams: 1024,
        }
    }
}

/// The gRPC face of the application's [`OrderService`].
#[derive(Clone)]
pub struct OrderApi {
    service: OrderService,
    in_flight: Arc<Semaphore>,
    watch_streams: Arc<Semaphore>,
    limits: ApiLimits,
}

/// The server as added to tonic: the generated service behind the callers' authentication,
/// behind the framing check, behind the per-connection bound of calls.
pub type OrderServer = PerConnectionLimit<
    UnaryFraming<
        InterceptedService<pb::order_service_server::OrderServiceServer<OrderApi>, CallerAuth>,
    >,
>;

impl OrderApi {
    pub fn new(service: OrderService, limits: ApiLimits) -> Self {
        Self {
            service,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            watch_streams: Arc::new(Semaphore::new(
                limits.max_watch_streams.clamp(1, Semaphore::MAX_PERMITS),
            )),
            limits,
        }
    }

    /// A tonic service ready to add to a server, with the message size limits applied and
    /// `auth` checked on every call.
    pub fn into_server(self, auth: CallerAuth) -> OrderServer {
        let limits = self.limits;
        let server = pb::order_service_server::OrderServiceServer::new(self)
            .max_decoding_message_size(limits.max_request_bytes)
            .max_encoding_message_size(limits.max_response_bytes);
        PerConnectionLimit::new(
            UnaryFraming::new(
                InterceptedService::new(server, auth),
                limits.max_request_bytes,
                limits.max_buffered_request_bytes,
            ),
            limits.max_calls_per_connection,
        )
    }

    /// Runs `work` once one of the `max_in_flight` places is free.
    async fn admitted<T>(
        &self,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        // The semaphore is never closed; should it be, refusing is the safe answer.
        let _place = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| status::unavailable("the server is shutting down"))?;
        work.await
    }
}

fn method(name: &str) -> String {
    format!("/oms.v1.OrderService/{name}")
}

fn reply(result: Result<Order, AppError>) -> Result<Response<pb::Order>, Status> {
    result
        .map(|o| Response::new(order_to_proto(&o)))
        .map_err(|e| status::to_status(&e))
}

fn invalid(violations: Vec<FieldViolation>) -> Status {
    status::invalid_argument(&violations)
}

/// Reads the idempotency key (a bad key is a field violation like any other).
fn key_of<T: prost::Message>(
    request: &Request<T>,
    name: &str,
    v: &mut Violations,
) -> Option<oms_application::idempotency::IdempotencyRequest> {
    match idempotency::from_request(request, &method(name)) {
        Ok(k) => k,
        Err(violation) => {
            v.0.push(violation);
            None
        }
    }
}

fn filters_fingerprint(status: i32, customer: &str) -> String {
    format!("status={status};customer={customer}")
}

#[tonic::async_trait]
impl OrderServiceApi for OrderApi {
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let budget = deadline::budget(&request);
        let mut v = Violations::default();
        let key = key_of(&request, "CreateOrder", &mut v);
        let new = parse_new_order(request.get_ref());
        if !v.0.is_empty() || new.is_err() {
            let mut all = v.0;
            if let Err(e) = new {
                all.extend(e);
            }
            return Err(invalid(all));
        }
        let new = new.map_err(invalid)?;
        deadline::within(
            budget,
            self.admitted(async { reply(self.service.create_order(new, key).await) }),
        )
        .await
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let budget = deadline::budget(&request);
        let mut v = Violations::default();
        let id = parse_order_id(&request.get_ref().order_id, "order_id", &mut v);
        let id = v.into_result(id).map_err(invalid)?;
        deadline::within(
            budget,
            self.admitted(async { reply(self.service.get_order(id).await) }),
        )
        .await
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let budget = deadline::budget(&request);
        let r = request.get_ref();
        let mut v = Violations::default();
        let limit = match u32::try_from(r.page_size) {
            Ok(0) => Some(DEFAULT_PAGE_SIZE),
            Ok(n) if n <= MAX_PAGE_SIZE => Some(n),
            _ => {
                v.add(
                    "page_size",
                    format!("must be between 0 and {MAX_PAGE_SIZE}"),
                );
                None
            }
        };
        let status_filter = parse_status_filter(r.status, &mut v);
        let customer = if r.customer_id.is_empty() {
            Some(None)
        } else {
            v.check("customer_id", CustomerId::parse(&r.customer_id))
                .map(Some)
        };
        let filters = filters_fingerprint(r.status, &r.customer_id);
        let before = if r.page_token.is_empty() {
            Some(None)
        } else {
            v.check("page_token", page_token::decode(&r.page_token, &filters))
                .map(Some)
        };
        let query = match (limit, status_filter, customer, before) {
            (Some(limit), Some(status), Some(customer_id), Some(before)) => Some(OrderQuery {
                status,
                customer_id,
                before,
                limit,
            }),
            _ => None,
        };
        let query = v.into_result(query).map_err(invalid)?;
        deadline::within(
            budget,
            self.admitted(async {
                let page = self
                    .service
                    .list_orders(query)
                    .await
                    .map_err(|e| status::to_status(&e))?;
                Ok(Response::new(pb::ListOrdersResponse {
                    orders: page.orders.iter().map(order_to_proto).collect(),
                    next_page_token: page
                        .next
                        .map(|last| page_token::encode(last, &filters))
                        .unwrap_or_default(),
                }))
            }),
        )
        .await
    }

    type WatchOrderStream = Pin<Box<dyn Stream<Item = Result<pb::Order, Status>> + Send>>;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let budget = deadline::budget(&request);
        let mut v = Violations::default();
        let id = parse_order_id(&request.get_ref().order_id, "order_id", &mut v);
        let id = v.into_result(id).map_err(invalid)?;
        // The stream's place among the host's streams, held until the stream is dropped.
        let place = Arc::clone(&self.watch_streams)
            .try_acquire_owned()
            .map_err(|_| {
                status::concurrency_limited(
                    "this host",
                    self.limits.max_watch_streams,
                    "`WatchOrder` streams open (all callers together); retry when one ends",
                )
            })?;
        // An unknown order fails the call instead of opening a stream that errors at once;
        // the read that finds it is the stream's first update.
        let updates = self
            .admitted(async {
                self.service
                    .watch_order(id)
                    .await
                    .map_err(|e| status::to_status(&e))
            })
            .await?
            .map(move |r| {
                let _held = &place;
                r.map(|o| order_to_proto(&o))
                    .map_err(|e| status::to_status(&e))
            });
        let stream: Self::WatchOrderStream = match budget {
            None => Box::pin(updates),
            Some(budget) => {
                // The stream ends at the deadline with DEADLINE_EXCEEDED as its final status,
                // or earlier, normally, when the order reaches a terminal status.
                let deadline = Box::pin(tokio::time::sleep(budget));
                Box::pin(futures::stream::unfold(
                    (Box::pin(updates), deadline, false),
                    |(mut updates, mut deadline, expired)| async move {
                        if expired {
                            return None;
                        }
                        tokio::select! {
                            item = updates.next() => item.map(|i| (i, (updates, deadline, false))),
                            () = &mut deadline => Some((
                                Err(crate::status::deadline_exceeded(
                                    "deadline exceeded before the order reached a terminal status",
                                )),
                                (updates, deadline, true),
                            )),
                        }
                    },
                ))
            }
        };
        Ok(Response::new(stream))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let budget = deadline::budget(&request);
        let mut v = Violations::default();
        let key = key_of(&request, "CancelOrder", &mut v);
        let r = request.get_ref();
        let id = parse_order_id(&r.order_id, "order_id", &mut v);
        let expected = parse_expected_version(r.expected_version, "expected_version", &mut v);
        let reason = parse_reason(&r.reason, "reason", &mut v);
        let (id, (expected, reason)) = v
            .into_result(id.zip(expected.zip(reason)))
            .map_err(invalid)?;
        deadline::within(
            budget,
            self.admitted(async {
                reply(
                    self.service
                        .cancel_order(id, reason.into_string(), expected, key)
                        .await,
                )
            }),
        )
        .await
    }

    async fn fulfill_order(
        &self,
        request: Request<pb::FulfillOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let budget = deadline::budget(&request);
        let mut v = Violations::default();
        let key = key_of(&request, "FulfillOrder", &mut v);
        let r = request.get_ref();
        let id = parse_order_id(&r.order_id, "order_id", &mut v);
        let expected = parse_expected_version(r.expected_version, "expected_version", &mut v);
        let (id, expected) = v.into_result(id.zip(expected)).map_err(invalid)?;
        deadline::within(
            budget,
            self.admitted(async { reply(self.service.fulfill_order(id, expected, key).await) }),
        )
        .await
    }

    async fn refund_order(
        &self,
        request: Request<pb::RefundOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let budget = deadline::budget(&request);
        let mut v = Violations::default();
        let key = key_of(&request, "RefundOrder", &mut v);
        let r = request.get_ref();
        let id = parse_order_id(&r.order_id, "order_id", &mut v);
        let expected = parse_expected_version(r.expected_version, "expected_version", &mut v);
        let amount = match &r.amount {
            None => Some(None),
            Some(m) => parse_money(Some(m), "amount", &mut v).map(Some),
        };
        let reason = parse_reason(&r.reason, "reason", &mut v);
        let (id, (expected, (amount, reason))) = v
            .into_result(id.zip(expected.zip(amount.zip(reason))))
            .map_err(invalid)?;
        deadline::within(
            budget,
            self.admitted(async {
                reply(
                    self.service
                        .refund_order(id, amount, reason, expected, key)
                        .await,
                )
            }),
        )
        .await
    }

    async fn update_shipping_address(
        &self,
        request: Request<pb::UpdateShippingAddressRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let budget = deadline::budget(&request);
        let mut v = Violations::default();
        let key = key_of(&request, "UpdateShippingAddress", &mut v);
        let r = request.get_ref();
        let id = parse_order_id(&r.order_id, "order_id", &mut v);
        let address = parse_address(r.shipping_address.as_ref(), "shipping_address", &mut v);
        let expected = if r.expected_version >= 1 {
            Some(oms_domain::Version(r.expected_version))
        } else {
            v.add(
                "expected_version",
                "is required: the version the client last saw (>= 1)",
            );
            None
        };
        let (id, (address, expected)) = v
            .into_result(id.zip(address.zip(expected)))
            .map_err(invalid)?;
        deadline::within(
            budget,
            self.admitted(async {
                reply(
                    self.service
                        .update_shipping_address(id, address, expected, key)
                        .await,
                )
            }),
        )
        .await
    }
}
