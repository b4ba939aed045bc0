//! `oms plugin test`: the conformance suite of each plugin kind, run in the host's own
//! runtime with an in-memory KV store. Each check calls the plugin as a saga step would and
//! names the order operation that makes that call, so an integrator knows what a failure
//! breaks. The rules checked are the contract's (`wit/*.wit`): typed errors instead of traps,
//! one effect per idempotency key, amounts that never exceed what they derive from.

use std::future::Future;

use oms_plugin_runtime::clients::inventory::{InventoryError, Line};
use oms_plugin_runtime::clients::notification::{Customer, Event, Item, OrderSnapshot};
use oms_plugin_runtime::clients::payment::{
    Authorization, AuthorizeRequest, Money, Payment, PaymentError, PaymentLookup, PaymentStatus,
};
use oms_plugin_runtime::{
    Called, InventoryPlugin, NotificationFormatter, PaymentPlugin, PluginError, PluginKind,
};

use super::{CheckReport, Outcome};

/// The inputs whose meaning is the plugin's own: the suite cannot know which token a provider
/// declines or which SKU an adapter has in stock, so they are named here (the defaults are
/// the bundled plugins' test values, which a new plugin is scaffolded with).
#[derive(Debug, Clone)]
pub struct Fixtures {
    /// A token `authorize` accepts.
    pub token_ok: String,
    /// A token `authorize` declines.
    pub token_decline: String,
    /// Contract 0.2: a token for which `authorize` asks for a customer action.
    pub token_action: String,
    /// A SKU with at least 10 units in stock.
    pub sku_in_stock: String,
    /// A SKU with none.
    pub sku_out_of_stock: String,
}

impl Default for Fixtures {
    fn default() -> Self {
        Self {
            token_ok: "tok_ok".to_owned(),
            token_decline: "tok_decline".to_owned(),
            token_action: "tok_3ds".to_owned(),
            sku_in_stock: "DEMO-1".to_owned(),
            sku_out_of_stock: "OUT-OF-STOCK".to_owned(),
        }
    }
}

/// One conformance check: what it asks, which order operation depends on it, and its outcome.
#[derive(Debug, Clone)]
pub struct Finding {
    pub name: &'static str,
    pub used_by: &'static str,
    pub outcome: Outcome,
}

/// The load checks, then the kind's conformance checks (none when loading failed).
#[derive(Debug, Clone)]
pub struct TestReport {
    pub load: CheckReport,
    pub kind: Option<PluginKind>,
    pub findings: Vec<Finding>,
}

impl TestReport {
    /// How many load and conformance checks failed or were not run.
    pub fn not_passed(&self) -> usize {
        let load = self.load.checks.iter().map(|(_, outcome)| outcome);
        let findings = self.findings.iter().map(|f| &f.outcome);
        load.chain(findings)
            .filter(|o| !matches!(o, Outcome::Passed(_)))
            .count()
    }
}

/// The findings so far, in order.
#[derive(Default)]
struct Suite {
    findings: Vec<Finding>,
}

impl Suite {
    /// Runs one check and records its outcome; its value, when it passed, feeds later checks.
    async fn check<T>(
        &mut self,
        name: &'static str,
        used_by: &'static str,
        check: impl Future<Output = Result<(T, String), String>>,
    ) -> Option<T> {
        let (outcome, value) = match check.await {
            Ok((value, detail)) => (Outcome::Passed(detail), Some(value)),
            Err(message) => (Outcome::Failed(message), None),
        };
        self.findings.push(Finding {
            name,
            used_by,
            outcome,
        });
        value
    }

    /// [`Self::check`] of what needs `input`, an earlier check's value: recorded as skipped,
    /// not run, when that check failed.
    async fn check_after<I, T, F>(
        &mut self,
        input: Option<I>,
        name: &'static str,
        used_by: &'static str,
        check: impl FnOnce(I) -> F,
    ) -> Option<T>
    where
        F: Future<Output = Result<(T, String), String>>,
    {
        let Some(input) = input else {
            self.findings.push(Finding {
                name,
                used_by,
                outcome: Outcome::Skipped,
            });
            return None;
        };
        self.check(name, used_by, check(input)).await
    }
}

/// Why a call did not give the value the contract asks for, in the integrator's terms.
fn describe<E: std::fmt::Debug + std::fmt::Display>(e: PluginError<E>) -> String {
    match e {
        PluginError::Rejected { error, .. } => format!("answered with the error {error:?}"),
        PluginError::Runtime(e) => format!(
            "the sandbox stopped the call ({}): {}",
            e.kind.label(),
            super::first_line(&e.kind.to_string())
        ),
    }
}

/// The plugin's value, or why there was none.
fn value<T, E: std::fmt::Debug + std::fmt::Display>(
    r: Result<Called<T>, PluginError<E>>,
) -> Result<T, String> {
    r.map(|c| c.value).map_err(describe)
}

/// The plugin's own typed error, or what it did instead.
fn rejection<T, E>(r: Result<Called<T>, PluginError<E>>) -> Result<E, String>
where
    T: std::fmt::Debug,
    E: std::fmt::Debug + std::fmt::Display,
{
    match r {
        Ok(c) => Err(format!("answered {:?} instead of an error", c.value)),
        Err(PluginError::Rejected { error, .. }) => Ok(error),
        Err(e) => Err(describe(e)),
    }
}

fn eur(amount_minor: i64) -> Money {
    Money {
        amount_minor,
        currency: "EUR".to_owned(),
    }
}

/// `payment`'s status and cumulative amounts are these.
fn expect_payment(
    p: &Payment,
    status: PaymentStatus,
    authorized: i64,
    captured: i64,
    refunded: i64,
) -> Result<(), String> {
    let amounts = (
        p.authorized.amount_minor,
        p.captured.amount_minor,
        p.refunded.amount_minor,
    );
    if p.status != status || amounts != (authorized, captured, refunded) {
        return Err(format!(
            "expected {status:?} with authorized/captured/refunded {authorized}/{captured}/{refunded}, \
             got {:?} with {}/{}/{}",
            p.status, amounts.0, amounts.1, amounts.2
        ));
    }
    if [&p.authorized, &p.captured, &p.refunded]
        .iter()
        .any(|m| m.currency != "EUR")
    {
        return Err(format!(
            "amounts must keep the authorization's currency EUR: {p:?}"
        ));
    }
    Ok(())
}

/// An authorize's answer as the payment it concerns: a customer action (contract 0.2) shows
/// as the payment's `requires-action` status, which the checks then report.
fn authorized(
    r: Result<Called<Authorization>, PluginError<PaymentError>>,
) -> Result<Called<Payment>, PluginError<PaymentError>> {
    r.map(|c| Called {
        value: c.value.payment().clone(),
        info: c.info,
    })
}

/// A call answered `invalid` (the contract's word for a request that can never succeed).
fn expect_invalid(
    what: &str,
    r: Result<Called<Payment>, PluginError<PaymentError>>,
) -> Result<(), String> {
    match rejection(r) {
        Ok(PaymentError::Invalid(_)) => Ok(()),
        Ok(other) => Err(format!("{what}: expected Invalid, got {other:?}")),
        Err(e) => Err(format!("{what}: expected Invalid, {e}")),
    }
}

const PLACE: &str = "CreateOrder (authorize-payment)";
const RECONCILE: &str = "CreateOrder, after a lost answer (get-payment)";
const FULFIL: &str = "FulfillOrder (capture-payment)";
const CANCEL: &str = "CancelOrder and a failed placement (void)";
const REFUND: &str = "RefundOrder (refund-payment)";

/// The payment-provider suite. Every check uses its own idempotency keys and payments.
pub(super) async fn payment(pay: &PaymentPlugin, fx: &Fixtures) -> Vec<Finding> {
    let mut s = Suite::default();
    let authorize = |order: &str, token: &str, key: &str, amount: i64| AuthorizeRequest {
        order_id: order.to_owned(),
        amount: eur(amount),
        payment_token: token.to_owned(),
        idempotency_key: key.to_owned(),
    };

    let held = s
        .check("authorize holds the amount", PLACE, async {
            let p = value(authorized(
                pay.authorize(authorize("ct-o1", &fx.token_ok, "ct-a1", 1250))
                    .await,
            ))?;
            expect_payment(&p, PaymentStatus::Authorized, 1250, 0, 0)?;
            if p.order_id != "ct-o1" {
                return Err(format!("order id {:?}, expected \"ct-o1\"", p.order_id));
            }
            let detail = format!("payment {} holds 1250 EUR", p.id);
            Ok((p, detail))
        })
        .await;

    s.check_after(
        held.as_ref(),
        "authorize replays its key",
        PLACE,
        |first| async move {
            let again = value(authorized(
                pay.authorize(authorize("ct-o1", &fx.token_ok, "ct-a1", 1250))
                    .await,
            ))?;
            if again.id != first.id {
                return Err(format!(
                    "a retry with the same key made a second payment ({} then {}): \
                     a retried saga step would hold the money twice",
                    first.id, again.id
                ));
            }
            Ok(((), "the same key returned the same payment".to_owned()))
        },
    )
    .await;
    s.check_after(
        held.as_ref(),
        "get-payment finds an authorization by its key",
        RECONCILE,
        |first| async move {
            let found = value(
                pay.get_payment(PaymentLookup::AuthorizeKey("ct-a1".to_owned()))
                    .await,
            )?;
            match found {
                Some(p) if p.id == first.id => Ok(((), format!("found {}", p.id))),
                other => Err(format!("expected payment {}, got {other:?}", first.id)),
            }
        },
    )
    .await;

    s.check(
        "get-payment answers none for an unknown key",
        RECONCILE,
        async {
            match value(
                pay.get_payment(PaymentLookup::AuthorizeKey("ct-never-used".to_owned()))
                    .await,
            )? {
                None => Ok(((), "none: the host may retry the authorization".to_owned())),
                Some(p) => Err(format!("an authorize key never used found {p:?}")),
            }
        },
    )
    .await;

    s.check("a declined token is a typed decline", PLACE, async {
        let r = authorized(
            pay.authorize(authorize("ct-o2", &fx.token_decline, "ct-a2", 1250))
                .await,
        );
        match rejection(r)? {
            PaymentError::Declined(why) => Ok(((), format!("declined: {why}"))),
            other => Err(format!(
                "expected Declined for token {:?}, got {other:?}",
                fx.token_decline
            )),
        }
    })
    .await;

    s.check("a malformed request is a typed error", PLACE, async {
        let empty_token = authorized(pay.authorize(authorize("ct-o3", "", "ct-a3", 1250)).await);
        match rejection(empty_token)? {
            PaymentError::Invalid(_) | PaymentError::Declined(_) => {}
            PaymentError::Transient(why) => {
                return Err(format!(
                    "an empty token answered Transient ({why}): the host would retry it forever"
                ));
            }
        }
        expect_invalid(
            "a negative amount",
            authorized(
                pay.authorize(authorize("ct-o3", &fx.token_ok, "ct-a4", -5))
                    .await,
            ),
        )?;
        Ok((
            (),
            "an empty token and a negative amount are refused".to_owned(),
        ))
    })
    .await;

    s.check(
        "unknown payment ids are invalid",
        "every follow-up call",
        async {
            let id = || "ct-no-such-payment".to_owned();
            expect_invalid("capture", pay.capture(id(), None, "ct-u1".to_owned()).await)?;
            expect_invalid("void", pay.void(id(), "ct-u2".to_owned()).await)?;
            expect_invalid("refund", pay.refund(id(), None, "ct-u3".to_owned()).await)?;
            match value(pay.get_payment(PaymentLookup::PaymentId(id())).await)? {
                None => Ok((
                    (),
                    "capture, void and refund refused; get-payment none".to_owned(),
                )),
                Some(p) => Err(format!("get-payment of an unknown id found {p:?}")),
            }
        },
    )
    .await;

    // Capture and refund run on one payment, in the order a fulfilled then refunded order has.
    let captured = s
        .check_after(
            held.as_ref(),
            "capture takes part, then the rest",
            FULFIL,
            |p| async move {
                let part = value(
                    pay.capture(p.id.clone(), Some(eur(500)), "ct-c1".into())
                        .await,
                )?;
                expect_payment(&part, PaymentStatus::PartiallyCaptured, 1250, 500, 0)?;
                let replay = value(
                    pay.capture(p.id.clone(), Some(eur(500)), "ct-c1".into())
                        .await,
                )?;
                expect_payment(&replay, PaymentStatus::PartiallyCaptured, 1250, 500, 0)
                    .map_err(|e| format!("a replayed capture moved money: {e}"))?;
                expect_invalid(
                    "capturing more than remains authorized",
                    pay.capture(p.id.clone(), Some(eur(5000)), "ct-c2".into())
                        .await,
                )?;
                expect_invalid(
                    "capturing in another currency",
                    pay.capture(
                        p.id.clone(),
                        Some(Money {
                            amount_minor: 10,
                            currency: "USD".to_owned(),
                        }),
                        "ct-c3".into(),
                    )
                    .await,
                )?;
                let rest = value(pay.capture(p.id.clone(), None, "ct-c4".into()).await)?;
                expect_payment(&rest, PaymentStatus::Captured, 1250, 1250, 0)?;
                Ok((
                    rest,
                    "500 then the remaining 750; the replay and an over-capture moved nothing"
                        .to_owned(),
                ))
            },
        )
        .await;
    s.check_after(
        captured.as_ref(),
        "void after a capture is invalid",
        CANCEL,
        |p| async move {
            expect_invalid("void", pay.void(p.id.clone(), "ct-v0".into()).await)?;
            Ok(((), "refused: the money was captured".to_owned()))
        },
    )
    .await;
    s.check_after(
        captured.as_ref(),
        "refund returns part, then the rest, never more",
        REFUND,
        |p| async move {
            let part = value(
                pay.refund(p.id.clone(), Some(eur(300)), "ct-r1".into())
                    .await,
            )?;
            expect_payment(&part, PaymentStatus::PartiallyRefunded, 1250, 1250, 300)?;
            let replay = value(
                pay.refund(p.id.clone(), Some(eur(300)), "ct-r1".into())
                    .await,
            )?;
            expect_payment(&replay, PaymentStatus::PartiallyRefunded, 1250, 1250, 300)
                .map_err(|e| format!("a replayed refund moved money: {e}"))?;
            expect_invalid(
                "refunding more than remains captured",
                pay.refund(p.id.clone(), Some(eur(5000)), "ct-r2".into())
                    .await,
            )?;
            let rest = value(pay.refund(p.id.clone(), None, "ct-r3".into()).await)?;
            expect_payment(&rest, PaymentStatus::Refunded, 1250, 1250, 1250)?;
            expect_invalid(
                "refunding a refunded payment",
                pay.refund(p.id.clone(), Some(eur(1)), "ct-r4".into()).await,
            )?;
            Ok((
                (),
                "300 then the remaining 950; the replay and over-refunds moved nothing".to_owned(),
            ))
        },
    )
    .await;

    s.check("void releases a hold, once", CANCEL, async {
        let p = value(authorized(
            pay.authorize(authorize("ct-o4", &fx.token_ok, "ct-a5", 800))
                .await,
        ))?;
        let voided = value(pay.void(p.id.clone(), "ct-v1".into()).await)?;
        expect_payment(&voided, PaymentStatus::Voided, 800, 0, 0)?;
        let again = value(pay.void(p.id.clone(), "ct-v2".into()).await)?;
        expect_payment(&again, PaymentStatus::Voided, 800, 0, 0)
            .map_err(|e| format!("voiding a voided payment must return it unchanged: {e}"))?;
        expect_invalid(
            "capturing a voided payment",
            pay.capture(p.id.clone(), None, "ct-v3".into()).await,
        )?;
        Ok((
            (),
            format!("{} voided; a second void changed nothing", p.id),
        ))
    })
    .await;

    s.findings
}

const ACTION: &str = "CreateOrder (authorize-payment), contract 0.2";
const EXPIRY: &str = "an expired customer action, or CancelOrder meanwhile (void)";
const WEBHOOK: &str = "POST /webhooks/<plugin> (handle-webhook)";

/// What contract 0.2 adds to the payment suite: a customer action, its cancellation, and a
/// webhook the plugin cannot read.
pub(super) async fn payment_v2(pay: &PaymentPlugin, fx: &Fixtures) -> Vec<Finding> {
    let mut s = Suite::default();
    let request = |key: &str| AuthorizeRequest {
        order_id: "ct-o5".to_owned(),
        amount: eur(900),
        payment_token: fx.token_action.clone(),
        idempotency_key: key.to_owned(),
    };
    let waiting = s
        .check("authorize asks for a customer action", ACTION, async {
            let (p, action) = match value(pay.authorize(request("ct-a6")).await)? {
                Authorization::RequiresAction(pair) => pair,
                Authorization::Authorized(p) => {
                    return Err(format!(
                        "token {:?} was authorized at once ({}); pass the token that asks for \
                         an action with --token-action",
                        fx.token_action, p.id
                    ));
                }
            };
            // Nothing is held yet; what `authorized` says meanwhile is the provider's choice.
            if p.status != PaymentStatus::RequiresAction || p.captured.amount_minor != 0 {
                return Err(format!(
                    "expected status RequiresAction, nothing captured: {p:?}"
                ));
            }
            if !(action.url.starts_with("https://") || action.url.starts_with("http://")) {
                return Err(format!("the action's URL {:?} is not http(s)", action.url));
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            if action.expires_at_ms <= now_ms {
                return Err(format!(
                    "the action expired already ({})",
                    action.expires_at_ms
                ));
            }
            match value(pay.authorize(request("ct-a6")).await)? {
                Authorization::RequiresAction((again, same))
                    if again.id == p.id && same == action => {}
                other => {
                    return Err(format!(
                        "a retry with the same key answered {other:?}, not the same action"
                    ));
                }
            }
            match value(
                pay.get_payment(PaymentLookup::AuthorizeKey("ct-a6".to_owned()))
                    .await,
            )? {
                Some(found) if found.status == PaymentStatus::RequiresAction => {}
                other => {
                    return Err(format!(
                        "get-payment by the authorize key found {other:?}, not requires-action"
                    ));
                }
            }
            let detail = format!("payment {} waits for {}", p.id, action.url);
            Ok((p, detail))
        })
        .await;
    s.check_after(
        waiting,
        "void cancels a payment waiting for the customer",
        EXPIRY,
        |p: Payment| async move {
            let voided = value(pay.void(p.id.clone(), "ct-v4".into()).await)?;
            if voided.status != PaymentStatus::Voided {
                return Err(format!("void answered {voided:?}"));
            }
            Ok(((), format!("{} voided before the customer acted", p.id)))
        },
    )
    .await;
    s.check(
        "a webhook it cannot read is answered, not trapped",
        WEBHOOK,
        async {
            let event = oms_plugin_runtime::clients::payment::Webhook {
                headers: vec![("content-type".to_owned(), "application/json".to_owned())],
                body: b"\xff not json".to_vec(),
            };
            match pay.handle_webhook(event).await {
                Ok(c) => Ok(((), format!("ignored: {:?}", c.value))),
                Err(PluginError::Rejected { error, .. }) if !error.is_transient() => {
                    Ok(((), format!("refused: {error:?}")))
                }
                Err(PluginError::Rejected { error, .. }) => Err(format!(
                    "answered {error:?}: the provider would redeliver it forever"
                )),
                Err(e) => Err(describe(e)),
            }
        },
    )
    .await;
    s.findings
}

const RESERVE: &str = "CreateOrder (reserve-inventory)";
const RELEASE: &str = "CancelOrder and a failed placement (release)";
const COMMIT: &str = "FulfillOrder (commit-inventory)";

/// The inventory-adapter suite.
pub(super) async fn inventory(inv: &InventoryPlugin, fx: &Fixtures) -> Vec<Finding> {
    let mut s = Suite::default();
    let lines = |sku: &str, quantity: u32| {
        vec![Line {
            sku: sku.to_owned(),
            quantity,
        }]
    };
    let key = |k: &str| k.to_owned();

    let reserved = s
        .check("reserve takes stock and replays its key", RESERVE, async {
            let first = value(
                inv.reserve("ct-o1".into(), lines(&fx.sku_in_stock, 2), key("ct-r1"))
                    .await,
            )?;
            let again = value(
                inv.reserve("ct-o1".into(), lines(&fx.sku_in_stock, 2), key("ct-r1"))
                    .await,
            )?;
            if again != first {
                return Err(format!(
                    "a retry with the same key made a second reservation ({first} then {again}): \
                     a retried saga step would take the stock twice"
                ));
            }
            Ok((first.clone(), format!("reservation {first}")))
        })
        .await;

    s.check(
        "out of stock is a typed error naming the SKU",
        RESERVE,
        async {
            let r = inv
                .reserve(
                    "ct-o2".into(),
                    vec![
                        Line {
                            sku: fx.sku_in_stock.clone(),
                            quantity: 1,
                        },
                        Line {
                            sku: fx.sku_out_of_stock.clone(),
                            quantity: 1,
                        },
                    ],
                    key("ct-r2"),
                )
                .await;
            match rejection(r)? {
                InventoryError::OutOfStock(skus) if skus.contains(&fx.sku_out_of_stock) => {
                    Ok(((), format!("out of stock: {}", skus.join(", "))))
                }
                other => Err(format!(
                    "expected OutOfStock naming {:?}, got {other:?}",
                    fx.sku_out_of_stock
                )),
            }
        },
    )
    .await;

    s.check("a malformed request is a typed error", RESERVE, async {
        match rejection(inv.reserve("ct-o3".into(), vec![], key("ct-r3")).await)? {
            InventoryError::Transient(why) => Err(format!(
                "no lines answered Transient ({why}): the host would retry it forever"
            )),
            _ => Ok(((), "a reservation without lines is refused".to_owned())),
        }
    })
    .await;

    s.check_after(
        reserved.as_ref(),
        "release frees a reservation, once",
        RELEASE,
        |id| async move {
            value(inv.release(id.clone(), key("ct-l1")).await)?;
            value(inv.release(id.clone(), key("ct-l1")).await)
                .map_err(|e| format!("replaying the release: {e}"))?;
            Ok(((), format!("{id} released; the replay answered the same")))
        },
    )
    .await;

    s.check("commit allocates a reservation, once", COMMIT, async {
        let id = value(
            inv.reserve("ct-o4".into(), lines(&fx.sku_in_stock, 1), key("ct-r4"))
                .await,
        )?;
        value(inv.commit(id.clone(), key("ct-m1")).await)?;
        value(inv.commit(id.clone(), key("ct-m1")).await)
            .map_err(|e| format!("replaying the commit: {e}"))?;
        match rejection(inv.release(id.clone(), key("ct-m2")).await)? {
            InventoryError::Invalid(_) => Ok((
                (),
                format!("{id} committed; the replay answered the same; a release is refused"),
            )),
            other => Err(format!(
                "releasing a committed reservation: expected Invalid, got {other:?}"
            )),
        }
    })
    .await;

    s.check(
        "unknown reservation ids are invalid",
        "every follow-up call",
        async {
            for (what, r) in [
                (
                    "release",
                    inv.release("ct-no-such".into(), key("ct-x1")).await,
                ),
                (
                    "commit",
                    inv.commit("ct-no-such".into(), key("ct-x2")).await,
                ),
            ] {
                match rejection(r)? {
                    InventoryError::Invalid(_) => {}
                    other => return Err(format!("{what}: expected Invalid, got {other:?}")),
                }
            }
            Ok(((), "release and commit refused".to_owned()))
        },
    )
    .await;

    s.findings
}

const NOTIFY: &str = "the notification consumer, for every order event";

/// An order event as the notification consumer passes it.
fn sample_event(event_type: &str) -> Event {
    Event {
        event_type: event_type.to_owned(),
        schema_version: 1,
        event_id: "ct-e1".to_owned(),
        occurred_at_ms: 1_700_000_000_000,
        order: OrderSnapshot {
            id: "ct-o1".to_owned(),
            customer: Customer {
                id: "c-1".to_owned(),
                name: Some("Ada Lovelace".to_owned()),
                email: Some("ada@example.com".to_owned()),
                phone: None,
            },
            status: "confirmed".to_owned(),
            items: vec![Item {
                sku: "DEMO-1".to_owned(),
                name: Some("Demo".to_owned()),
                quantity: 2,
                unit_price: eur(625),
                line_total: eur(1250),
            }],
            total: eur(1250),
            shipping_address: None,
            created_at_ms: 1_700_000_000_000,
        },
        metadata: vec![],
    }
}

/// The notification-formatter suite.
pub(super) async fn notification(fmt: &NotificationFormatter) -> Vec<Finding> {
    let mut s = Suite::default();
    s.check(
        "formats an order event, the same way twice",
        NOTIFY,
        async {
            let first = value(fmt.format(sample_event("order.confirmed")).await)?;
            let again = value(fmt.format(sample_event("order.confirmed")).await)?;
            if first != again {
                return Err(
                    "two calls with the same event gave different messages: a redelivered event \
                 must format the same"
                        .to_owned(),
                );
            }
            if let Some(m) = first.iter().find(|m| m.recipient.is_empty()) {
                return Err(format!("a message without a recipient: {m:?}"));
            }
            Ok(((), format!("{} message(s)", first.len())))
        },
    )
    .await;
    s.check(
        "an unknown event type is answered, not trapped",
        NOTIFY,
        async {
            match fmt.format(sample_event("order.ct-unknown")).await {
                Ok(c) => Ok(((), format!("{} message(s)", c.value.len()))),
                Err(PluginError::Rejected { error, .. }) => Ok(((), format!("refused: {error:?}"))),
                Err(e) => Err(describe(e)),
            }
        },
    )
    .await;
    s.findings
}
