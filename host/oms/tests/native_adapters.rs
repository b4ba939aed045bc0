//! The benchmark's native adapters (`oms::adapters::native`) against the Wasm plugins they
//! stand in for: the same calls, each on its own fresh store, must give the same answers and
//! the same key-value effects. Without this, a native-vs-Wasm throughput ratio could be
//! comparing two different programs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use oms::adapters::native::{NativeInventory, NativePayments};
use oms::adapters::{PluginInventory, PluginPayments};
use oms_application::plugin_kv::{AbsentKeys, Buffering, Expect, KvChanges};
use oms_application::ports::{
    GatewayFailure, GatewayResult, InventoryGateway, PaymentGateway, PluginCall, PluginKvStore,
};
use oms_domain::{Currency, LineItem, Money, OrderId, Quantity, Sku};
use oms_plugin_runtime::kv::MemoryKvStore;
use oms_plugin_runtime::{PluginRuntime, RuntimeOptions};

fn built_plugins() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins");
    assert!(
        dir.join("fakepay.wasm").is_file(),
        "{} has no built plugins: run scripts/build-plugins first",
        dir.display()
    );
    dir
}

/// One side of the comparison: gateways over their own store.
struct Side {
    store: Arc<MemoryKvStore>,
    payments: Box<dyn PaymentGateway>,
    inventory: Box<dyn InventoryGateway>,
}

async fn wasm_side(dir: &Path) -> Side {
    let store = Arc::new(MemoryKvStore::new());
    let runtime = PluginRuntime::new(RuntimeOptions::default(), Some(store.clone())).unwrap();
    for name in ["fakepay", "local-stock"] {
        runtime
            .install(dir.join(format!("{name}.toml")))
            .await
            .unwrap();
    }
    Side {
        store,
        payments: Box::new(PluginPayments::new(runtime.clone())),
        inventory: Box::new(PluginInventory::new(runtime, "local-stock")),
    }
}

fn native_side(dir: &Path) -> Side {
    let store = Arc::new(MemoryKvStore::new());
    // No Wasm plugin behind it: every call below is for fakepay, which must be served natively.
    let runtime = PluginRuntime::new(RuntimeOptions::default(), Some(store.clone())).unwrap();
    let kv: Arc<dyn PluginKvStore> = store.clone();
    Side {
        store,
        payments: Box::new(
            NativePayments::new(kv.clone(), dir, PluginPayments::new(runtime)).unwrap(),
        ),
        inventory: Box::new(NativeInventory::new(kv, dir).unwrap()),
    }
}

/// What a call answered, without who answered it (the versions differ by design).
#[derive(Debug, PartialEq)]
struct Answer<T> {
    value: Result<T, String>,
    kv: Option<KvChanges>,
}

/// Commits the call's writes as a saga step's commit would, and keeps what to compare.
async fn settle<T>(store: &MemoryKvStore, result: GatewayResult<T>) -> Answer<T> {
    let (value, call): (Result<T, String>, Option<PluginCall>) = match result {
        Ok((value, call)) => (Ok(value), Some(call)),
        Err(GatewayFailure { error, call }) => (
            Err(format!("{error:?}: {}", error.public_reason())),
            call.map(|c| *c),
        ),
    };
    // A lookup writes nothing: the runtime leaves its buffer unnamed, the native adapter
    // names it, and both mean "no changes".
    let kv = call
        .map(|call| {
            assert!(call.host_only, "{} must be host-only", call.plugin);
            (*call.kv).clone()
        })
        .filter(|changes| !changes.is_empty());
    if let Some(changes) = &kv {
        for (key, change) in &changes.keys {
            let current = store.get(&changes.namespace, key).await.unwrap();
            let next = change
                .next_value(key, current.as_deref())
                .unwrap()
                .unwrap_or_else(|| panic!("{key}: the change no longer applies"));
            match next {
                Some(value) => store.set(&changes.namespace, key, &value).await.unwrap(),
                None => store.delete(&changes.namespace, key).await.unwrap(),
            }
        }
    }
    Answer { value, kv }
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
}

fn lines(items: &[(&str, u32)]) -> Vec<LineItem> {
    items
        .iter()
        .map(|(sku, quantity)| LineItem {
            sku: Sku::parse(sku).unwrap(),
            quantity: Quantity::new(i64::from(*quantity)).unwrap(),
            unit_price: eur(500),
        })
        .collect()
}

/// Every operation the sagas call, through success, replay, refusal and retry.
async fn script(side: &Side, order: OrderId) -> Vec<String> {
    let s = &side.store;
    let inv = &side.inventory;
    let pay = &side.payments;
    // Replays must find their records: read as a step run again after a refused commit.
    const R: Buffering = Buffering {
        absent_keys: AbsentKeys::Read,
        pending_steps: false,
    };
    let mut log = Vec::new();
    macro_rules! step {
        ($call:expr) => {{
            let answer = settle(s, $call.await).await;
            log.push(format!("{answer:?}"));
            answer.value
        }};
    }

    let held = step!(inv.reserve(
        None,
        order,
        &lines(&[("DEMO-1", 2), ("DEMO-2", 1)]),
        "r1",
        R
    ))
    .unwrap();
    step!(inv.reserve(
        None,
        order,
        &lines(&[("DEMO-1", 2), ("DEMO-2", 1)]),
        "r1",
        R
    ))
    .unwrap();
    step!(inv.reserve(None, order, &lines(&[("DEMO-1", 3)]), "r1", R)).unwrap_err();
    step!(inv.reserve(None, order, &lines(&[("NO-SUCH-SKU", 1)]), "r2", R)).unwrap_err();
    step!(inv.reserve(None, order, &lines(&[("LIMITED-100", 101)]), "r3", R)).unwrap_err();
    step!(inv.reserve(None, order, &lines(&[("LIMITED-100", 101)]), "r3", R)).unwrap_err();
    step!(inv.reserve(None, order, &lines(&[("LIMITED-100", 100)]), "r4", R)).unwrap();
    step!(inv.release(None, &held, "x1", R)).unwrap();
    step!(inv.release(None, &held, "x2", R)).unwrap();
    step!(inv.commit(None, &held, "x3", R)).unwrap_err();
    step!(inv.commit(None, "rsv-unknown", "x4", R)).unwrap_err();

    let paid = step!(pay.authorize("fakepay", None, order, eur(1500), "tok_ok", "a1", R)).unwrap();
    step!(pay.authorize("fakepay", None, order, eur(1500), "tok_ok", "a1", R)).unwrap();
    step!(pay.authorize("fakepay", None, order, eur(9), "tok_ok", "a1", R)).unwrap_err();
    let id = paid.payment_id;
    step!(pay.capture("fakepay", None, &id, Some(eur(1000)), "c1", R)).unwrap();
    step!(pay.capture("fakepay", None, &id, Some(eur(1000)), "c2", R)).unwrap_err();
    step!(pay.capture("fakepay", None, &id, None, "c3", R)).unwrap();
    step!(pay.refund("fakepay", None, &id, Some(eur(200)), "f1", R)).unwrap();
    step!(pay.refund("fakepay", None, &id, Some(eur(200)), "f1", R)).unwrap();
    step!(pay.refund("fakepay", None, &id, None, "f2", R)).unwrap();
    step!(pay.void("fakepay", None, &id, "v1", R)).unwrap_err();
    step!(pay.find_by_authorize_key("fakepay", None, "a1")).unwrap();
    step!(pay.find_by_authorize_key("fakepay", None, "nobody")).unwrap();

    let held = step!(pay.authorize("fakepay", None, order, eur(700), "tok_ok", "a2", R)).unwrap();
    step!(pay.void("fakepay", None, &held.payment_id, "v2", R)).unwrap();
    step!(pay.void("fakepay", None, &held.payment_id, "v3", R)).unwrap();
    step!(pay.authorize("fakepay", None, order, eur(700), "tok_decline", "a3", R)).unwrap_err();
    step!(pay.authorize("fakepay", None, order, eur(700), "tok_nonsense", "a4", R)).unwrap_err();
    for _ in 0..3 {
        let _ = step!(pay.authorize("fakepay", None, order, eur(700), "tok_flaky", "a5", R));
    }
    step!(pay.capture("fakepay", None, "fp_nobody", None, "c4", R)).unwrap_err();
    log
}

#[tokio::test]
async fn native_adapters_answer_and_write_as_the_wasm_plugins_do() {
    let dir = built_plugins();
    let order = OrderId::generate();
    let wasm = script(&wasm_side(&dir).await, order).await;
    let native = script(&native_side(&dir), order).await;
    assert_eq!(wasm.len(), native.len());
    for (n, (wasm, native)) in wasm.iter().zip(&native).enumerate() {
        assert_eq!(wasm, native, "call {n} differs");
    }
}

/// A placement's and a fulfilment's first calls, as the engine makes them: the keys they
/// create left to the commit, the second call of each saga with the first one's step still
/// pending (neither side reaches the network, so neither refuses it). Both sides must leave
/// the same records to the commit, pinned to "absent" where nothing was read: fakepay's
/// authorisation reads nothing at all.
#[tokio::test]
async fn native_adapters_leave_the_same_new_keys_to_the_commit() {
    const C: Buffering = Buffering {
        absent_keys: AbsentKeys::CheckedAtCommit,
        pending_steps: false,
    };
    const P: Buffering = Buffering {
        pending_steps: true,
        ..C
    };
    async fn first_calls(side: &Side, order: OrderId) -> Vec<Answer<String>> {
        let (s, inv, pay) = (&side.store, &side.inventory, &side.payments);
        let mut log = Vec::new();
        let lines = lines(&[("DEMO-1", 2)]);
        let held = settle(s, inv.reserve(None, order, &lines, "r1", C).await).await;
        let held_id = held.value.clone().unwrap();
        log.push(held);
        let paid = pay.authorize("fakepay", None, order, eur(1000), "tok_ok", "a1", P);
        let paid = settle(s, paid.await).await;
        let id = paid.value.clone().unwrap().payment_id;
        log.push(Answer {
            value: Ok(id.clone()),
            kv: paid.kv,
        });
        let declined = pay.authorize("fakepay", None, order, eur(5), "tok_decline", "a2", P);
        let declined = settle(s, declined.await).await;
        log.push(Answer {
            value: declined.value.map(|p| p.payment_id),
            kv: declined.kv,
        });
        let captured = settle(s, pay.capture("fakepay", None, &id, None, "c1", P).await).await;
        log.push(Answer {
            value: captured.value.map(|p| p.payment_id),
            kv: captured.kv,
        });
        let committed = settle(s, inv.commit(None, &held_id, "x1", C).await).await;
        log.push(Answer {
            value: committed.value.map(|()| held_id.clone()),
            kv: committed.kv,
        });
        log
    }
    let dir = built_plugins();
    let order = OrderId::generate();
    let wasm = first_calls(&wasm_side(&dir).await, order).await;
    let native = first_calls(&native_side(&dir), order).await;
    assert_eq!(wasm, native);
    for authorization in &wasm[1..3] {
        let keys = &authorization
            .kv
            .as_ref()
            .expect("an authorisation writes")
            .keys;
        assert!(
            keys.values().all(|k| k.expect == Expect::Value(None)),
            "every key of an authorisation is left to the commit: {keys:?}"
        );
    }
}
