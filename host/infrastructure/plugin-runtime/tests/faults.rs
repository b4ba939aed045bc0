//! Every fault kind is contained: the host keeps serving and the next call to a good plugin
//! succeeds. Load-time refusals name their cause.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use oms_plugin_runtime::breaker::BreakerConfig;
use oms_plugin_runtime::clients::payment::{PaymentError, PaymentLookup};
use oms_plugin_runtime::{
    BreakerCause, CallErrorKind, LoadError, PluginError, PluginRuntime, RuntimeOptions,
};

async fn good_call_still_works(rt: &PluginRuntime, key: &str) {
    let ok = rt
        .payment("fakepay")
        .authorize(authorize_request("tok_ok", key))
        .await
        .unwrap();
    assert_eq!(&*ok.info.plugin, "fakepay");
}

fn runtime_kind<T: std::fmt::Debug, E: std::fmt::Debug + std::fmt::Display>(
    r: Result<T, PluginError<E>>,
) -> CallErrorKind {
    match r {
        Err(PluginError::Runtime(e)) => e.kind,
        other => panic!("expected a runtime failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_is_contained() {
    let rt = runtime();
    rt.install(manifest("fakepay")).await.unwrap();
    rt.install(manifest("testing/trap")).await.unwrap();
    let kind = runtime_kind(
        rt.payment("trap")
            .authorize(authorize_request("tok_ok", "t1"))
            .await,
    );
    assert!(matches!(kind, CallErrorKind::Trapped { .. }), "{kind:?}");
    // A trapped store is dropped: the next call gets a fresh instance and traps the same way.
    let kind = runtime_kind(
        rt.payment("trap")
            .authorize(authorize_request("tok_ok", "t2"))
            .await,
    );
    assert!(matches!(kind, CallErrorKind::Trapped { .. }), "{kind:?}");
    good_call_still_works(&rt, "after-trap").await;
    let metrics = rt
        .metrics()
        .into_iter()
        .find(|(n, _)| n == "trap")
        .unwrap()
        .1;
    assert_eq!(metrics.errors.get("trap"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_at_its_deadline_without_blocking_others() {
    let rt = runtime();
    rt.install(manifest("fakepay")).await.unwrap();
    rt.install(manifest("testing/infinite-loop")).await.unwrap();
    let looping = rt.payment("infinite-loop");
    let spinning = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = looping.authorize(authorize_request("tok_ok", "loop")).await;
        (r, started.elapsed())
    });
    // While the loop spins (its deadline is 200 ms), another plugin is served: the deadline is
    // per store, and the spinning guest yields at every epoch tick.
    good_call_still_works(&rt, "during-loop").await;
    let (r, elapsed) = spinning.await.unwrap();
    assert_eq!(
        runtime_kind(r),
        CallErrorKind::DeadlineExceeded { deadline_ms: 200 }
    );
    assert!(
        elapsed >= std::time::Duration::from_millis(200),
        "{elapsed:?}"
    );
    assert!(elapsed < std::time::Duration::from_secs(3), "{elapsed:?}");
    good_call_still_works(&rt, "after-loop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_cap() {
    let rt = runtime();
    rt.install(manifest("fakepay")).await.unwrap();
    rt.install(manifest("testing/memory-bomb")).await.unwrap();
    let bomb = rt.payment("memory-bomb");
    let kind = runtime_kind(bomb.authorize(authorize_request("vec", "m1")).await);
    assert_eq!(
        kind,
        CallErrorKind::MemoryLimitExceeded {
            limit_bytes: 64 << 20
        }
    );
    // A guest that asks politely (try_reserve) gets an allocation error it can handle.
    match bomb.authorize(authorize_request("try-reserve", "m2")).await {
        Err(PluginError::Rejected {
            error: PaymentError::Transient(msg),
            ..
        }) => {
            assert!(msg.contains("allocation refused"), "{msg}")
        }
        other => panic!("expected the guest's own error, got {other:?}"),
    }
    good_call_still_works(&rt, "after-bomb").await;
}

/// The fault-injection harness breaks fakepay through its manifest (`[config] crash` and
/// `memory-bomb`): each must reach the host as what it is, on every operation including the
/// lookups that reconcile an unknown outcome, while the same component under its bundled
/// manifest keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fakepay_broken_by_its_manifest_traps_or_hits_its_memory_limit() {
    for (setting, limit) in [("crash", None), ("memory-bomb", Some(32u64 << 20))] {
        let rt = runtime();
        rt.install(manifest("fakepay")).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let broken = staged(dir.path(), "fakepay", |t| {
            t.replace("name = \"fakepay\"", "name = \"broken\"")
                .replace("[config]", &format!("[config]\n{setting} = \"true\""))
        });
        rt.install(broken).await.unwrap();
        let fakepay = rt.payment("broken");
        let authorize = runtime_kind(fakepay.authorize(authorize_request("tok_ok", "b1")).await);
        let lookup = runtime_kind(
            fakepay
                .get_payment(PaymentLookup::AuthorizeKey("b1".into()))
                .await,
        );
        for kind in [authorize, lookup] {
            match limit {
                None => assert!(matches!(kind, CallErrorKind::Trapped { .. }), "{kind:?}"),
                Some(limit_bytes) => assert_eq!(
                    kind,
                    CallErrorKind::MemoryLimitExceeded { limit_bytes },
                    "{setting}"
                ),
            }
        }
        // The same component under its bundled manifest keeps serving.
        good_call_still_works(&rt, "after").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_kv_is_denied() {
    let rt = runtime();
    rt.install(manifest("fakepay")).await.unwrap();
    rt.install(manifest("testing/ungranted-kv")).await.unwrap();
    match rt
        .payment("ungranted-kv")
        .authorize(authorize_request("tok_ok", "u1"))
        .await
    {
        Err(PluginError::Rejected {
            error: PaymentError::Invalid(msg),
            ..
        }) => {
            assert_eq!(msg, "kv denied")
        }
        other => panic!("expected kv denied, got {other:?}"),
    }
    good_call_still_works(&rt, "after-ungranted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_world_is_refused_at_load_with_the_cause() {
    let rt = runtime();
    rt.install(manifest("fakepay")).await.unwrap();
    let err = rt
        .install(manifest("testing/wrong-world"))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(
            "plugin wrong-world: the component does not implement the payment-provider world"
        ),
        "{msg}"
    );
    assert!(rt.status_of("wrong-world").is_none());
    good_call_still_works(&rt, "after-wrong-world").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_formatter_declared_as_payment_is_a_wrong_world() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let m = staged(dir.path(), "email-text", |t| {
        set_line(&t, "kind", "\"payment\"")
    });
    let err = rt.install(&m).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "plugin email-text: the component does not implement the payment-provider world"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_mismatch_is_refused_and_the_current_version_keeps_serving() {
    let rt = runtime();
    rt.install(manifest("fakepay")).await.unwrap();
    let before = rt.status_of("fakepay").unwrap().current;

    let dir = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let m = staged(dir.path(), "fakepay", |t| {
        set_line(
            &set_line(&t, "sha256", &format!("\"{wrong}\"")),
            "version",
            "\"9.9.9\"",
        )
    });
    let err = rt.install(&m).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "plugin fakepay: digest mismatch: the manifest declares sha256 {wrong} but "
        )),
        "{msg}"
    );
    assert!(
        msg.ends_with(&format!("has sha256 {}", before.digest)),
        "{msg}"
    );

    let status = rt.status_of("fakepay").unwrap();
    assert_eq!(status.current, before);
    assert!(status.last_error.unwrap().contains("digest mismatch"));
    good_call_still_works(&rt, "after-mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_contract_and_oversized_binary_are_refused() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let m = staged(dir.path(), "fakepay", |t| {
        set_line(&t, "contract", "\"oms:plugins@0.3.0\"")
    });
    let err = rt.install(&m).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "unsupported contract version oms:plugins@0.3.0: this host implements \
             oms:plugins@0.1.0 (every kind) or oms:plugins@0.2.0 (payment)"
        ),
        "{err}"
    );
    // A 0.1 component declared as 0.2 is checked against 0.2's world, and refused.
    let dir = tempfile::tempdir().unwrap();
    let m = staged(dir.path(), "fakepay", |t| {
        set_line(&t, "contract", "\"oms:plugins@0.2.0\"")
    });
    let err = rt.install(&m).await.unwrap_err().to_string();
    assert!(
        err.contains("does not implement the payment-provider@0.2.0 world"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let m = staged(dir.path(), "fakepay", |t| {
        t.replace("[limits]", "[limits]\nmax_wasm_mib = 1")
    });
    let wasm = dir.path().join("fakepay.wasm");
    // Pad the component past 1 MiB: the size check must fire before the digest check.
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.resize((1 << 20) + 1, 0);
    std::fs::write(&wasm, bytes).unwrap();
    let err = rt.install(&m).await.unwrap_err();
    assert!(matches!(err, LoadError::TooLarge { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("is 1048577 bytes, over the 1048576-byte limit"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_plugin_and_wrong_kind_calls_fail_typed() {
    let rt = runtime();
    rt.install(manifest("email-text")).await.unwrap();
    let kind = runtime_kind(
        rt.payment("nope")
            .authorize(authorize_request("tok_ok", "x"))
            .await,
    );
    assert_eq!(kind, CallErrorKind::NotInstalled);
    let kind = runtime_kind(
        rt.payment("email-text")
            .authorize(authorize_request("tok_ok", "x"))
            .await,
    );
    assert!(matches!(kind, CallErrorKind::WrongKind { .. }), "{kind:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_repeated_traps() {
    let rt = runtime();
    rt.install(manifest("testing/trap")).await.unwrap();
    let trap = rt.payment("trap");
    for i in 0..5 {
        let kind = runtime_kind(
            trap.authorize(authorize_request("tok_ok", &format!("b{i}")))
                .await,
        );
        assert!(matches!(kind, CallErrorKind::Trapped { .. }), "{kind:?}");
    }
    let kind = runtime_kind(trap.authorize(authorize_request("tok_ok", "b-open")).await);
    // The refusal names the failure that opened the circuit, not only "circuit open".
    match &kind {
        CallErrorKind::CircuitOpen { cause } => assert!(
            matches!(**cause, BreakerCause::Call(CallErrorKind::Trapped { .. })),
            "{cause:?}"
        ),
        other => panic!("expected an open circuit, got {other:?}"),
    }
    assert!(kind.to_string().contains("the last: trap"), "{kind}");
    assert_eq!(
        rt.status_of("trap").unwrap().breaker,
        oms_plugin_runtime::breaker::BreakerState::Open
    );
}

/// A half-open probe whose caller goes away mid-call (a cancelled request, a timeout around
/// the call) must not leave the circuit waiting for its outcome for good: before the fix,
/// every later call was refused as `CircuitOpen` until the host restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_dropped_mid_call_does_not_wedge_the_circuit() {
    let options = RuntimeOptions {
        breaker: BreakerConfig {
            failure_threshold: 1,
            open_for: std::time::Duration::from_millis(100),
        },
        ..RuntimeOptions::default()
    };
    let rt = runtime_from(options);
    rt.install(manifest("fakepay")).await.unwrap();
    let fakepay = rt.payment("fakepay");
    // One transient failure opens the circuit.
    assert!(matches!(
        fakepay
            .authorize(authorize_request("tok_flaky", "open"))
            .await,
        Err(PluginError::Rejected {
            error: PaymentError::Transient(_),
            ..
        })
    ));
    // Once the circuit lets a probe through, the probe spins (tok_slow) and its caller
    // gives up after 300 ms, dropping the call.
    let mut dropped = false;
    for _ in 0..100 {
        let slow = fakepay.authorize(authorize_request("tok_slow", "probe"));
        match tokio::time::timeout(std::time::Duration::from_millis(300), slow).await {
            Err(_elapsed) => {
                dropped = true;
                break;
            }
            Ok(refused) => {
                let kind = runtime_kind(refused);
                assert!(
                    matches!(kind, CallErrorKind::CircuitOpen { .. }),
                    "{kind:?}"
                );
                // Still open: ask again shortly (polling for the half-open moment).
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    assert!(dropped, "the circuit never let a probe through");
    // The next call is the new probe, and succeeds.
    good_call_still_works(&rt, "after-dropped-probe").await;
    assert_eq!(
        rt.status_of("fakepay").unwrap().breaker,
        oms_plugin_runtime::breaker::BreakerState::Closed
    );
}
