//! Hot swap with calls in flight, rollback, the watched directory, and the artifact cache.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use oms_plugin_runtime::clients::payment::PaymentLookup;
use oms_plugin_runtime::kv::{BatchOutcome, BoundedAdd, MemoryKvStore, PluginKvStore, Swap};
use oms_plugin_runtime::{CacheOutcome, DirWatcher, KvError, PluginRuntime, RuntimeOptions};
use tokio::sync::{Notify, watch};

/// A KV store that holds every operation while the gate is closed, so that calls can be kept
/// in flight (inside a host call, on the version they started with) for as long as a test
/// needs, without sleeping.
struct GatedKv {
    inner: MemoryKvStore,
    closed: AtomicBool,
    open: watch::Sender<bool>,
    waiting: AtomicUsize,
    arrived: Notify,
}

impl GatedKv {
    fn new() -> Self {
        Self {
            inner: MemoryKvStore::new(),
            closed: AtomicBool::new(true),
            open: watch::channel(false).0,
            waiting: AtomicUsize::new(0),
            arrived: Notify::new(),
        }
    }

    async fn pass(&self) {
        if !self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut rx = self.open.subscribe();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_one();
        rx.wait_for(|open| *open).await.unwrap();
    }

    async fn until_waiting(&self, n: usize) {
        while self.waiting.load(Ordering::SeqCst) < n {
            self.arrived.notified().await;
        }
    }

    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        self.open.send_replace(true);
    }
}

#[async_trait::async_trait]
impl PluginKvStore for GatedKv {
    async fn get_many(
        &self,
        ns: &str,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<u8>>, KvError> {
        self.pass().await;
        self.inner.get_many(ns, keys).await
    }
    async fn set(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.pass().await;
        self.inner.set(ns, key, value).await
    }
    async fn delete(&self, ns: &str, key: &str) -> Result<(), KvError> {
        self.pass().await;
        self.inner.delete(ns, key).await
    }
    async fn batch(&self, ns: &str, s: &[Swap], a: &[BoundedAdd]) -> Result<BatchOutcome, KvError> {
        self.pass().await;
        self.inner.batch(ns, s, a).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_with_100_calls_in_flight_then_rollback() {
    let kv = Arc::new(GatedKv::new());
    let rt = runtime_with(kv.clone());
    let dir = tempfile::tempdir().unwrap();
    let v1 = staged(dir.path(), "fakepay", |t| {
        set_line(
            &set_line(&t, "version", "\"1.0.0\""),
            "deadline_ms",
            "60000",
        )
    });
    rt.install(&v1).await.unwrap();
    let pay = rt.payment("fakepay");

    let old_calls: Vec<_> = (0..100)
        .map(|i| {
            let pay = pay.clone();
            tokio::spawn(async move {
                pay.authorize(authorize_request("tok_ok", &format!("old-{i}")))
                    .await
            })
        })
        .collect();
    // Every old call is now inside the plugin, blocked in its first KV call.
    kv.until_waiting(100).await;

    let dir2 = tempfile::tempdir().unwrap();
    let v2 = staged(dir2.path(), "fakepay", |t| {
        set_line(
            &set_line(&t, "version", "\"2.0.0\""),
            "deadline_ms",
            "60000",
        )
    });
    let installed = rt.install(&v2).await.unwrap();
    assert_eq!(installed.version, "2.0.0");
    let status = rt.status_of("fakepay").unwrap();
    assert_eq!(status.current.version, "2.0.0");
    assert_eq!(status.previous.unwrap().version, "1.0.0");

    let new_calls: Vec<_> = (0..100)
        .map(|i| {
            let pay = pay.clone();
            tokio::spawn(async move {
                pay.authorize(authorize_request("tok_ok", &format!("new-{i}")))
                    .await
            })
        })
        .collect();
    kv.until_waiting(200).await;
    kv.open();

    for call in old_calls {
        let done = call
            .await
            .unwrap()
            .expect("an in-flight call failed across the swap");
        assert_eq!(&*done.info.version, "1.0.0");
    }
    for call in new_calls {
        let done = call.await.unwrap().expect("a call after the swap failed");
        assert_eq!(&*done.info.version, "2.0.0");
    }

    let back = rt.rollback("fakepay").unwrap();
    assert_eq!(back.version, "1.0.0");
    let after = pay
        .authorize(authorize_request("tok_ok", "after-rollback"))
        .await
        .unwrap();
    assert_eq!(&*after.info.version, "1.0.0");
    // Rolling back again rolls forward.
    assert_eq!(rt.rollback("fakepay").unwrap().version, "2.0.0");
}

/// Which build answered a lookup made through `pay` (a call with no effect).
async fn served_by(pay: &oms_plugin_runtime::PaymentPlugin) -> String {
    let called = pay
        .get_payment(PaymentLookup::AuthorizeKey("nobody".into()))
        .await
        .unwrap();
    called.info.digest.to_string()
}

#[tokio::test]
async fn pinned_calls_reach_the_build_they_name_while_it_is_loaded() {
    // No minimum stay: released as soon as no open order refers to it.
    let options = RuntimeOptions {
        retain_at_least: Some(std::time::Duration::ZERO),
        ..RuntimeOptions::default()
    };
    let rt = PluginRuntime::new(options, Some(Arc::new(MemoryKvStore::new()))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut builds = Vec::new();
    for (version, tag) in [("1.0.0", "one"), ("2.0.0", "two"), ("3.0.0", "three")] {
        let sub = dir.path().join(tag);
        std::fs::create_dir(&sub).unwrap();
        let (manifest, digest) = rebuilt(&sub, "fakepay", version, tag);
        rt.install(&manifest).await.unwrap();
        builds.push(digest);
    }
    let [one, two, three] = <[String; 3]>::try_from(builds).unwrap();
    let pay = rt.payment("fakepay");

    // Current, rollback target, retained; an unknown pin falls back to the current build.
    assert_eq!(served_by(&pay).await, three);
    assert_eq!(served_by(&pay.clone().pinned(Some(&three))).await, three);
    assert_eq!(served_by(&pay.clone().pinned(Some(&two))).await, two);
    assert_eq!(served_by(&pay.clone().pinned(Some(&one))).await, one);
    assert_eq!(served_by(&pay.clone().pinned(Some("f00d"))).await, three);

    let status = rt.status_of("fakepay").unwrap();
    assert_eq!(status.previous.unwrap().digest, two);
    let retained: Vec<_> = status.retained.iter().map(|v| v.digest.clone()).collect();
    assert_eq!(retained, std::slice::from_ref(&one));

    // Kept while an open order refers to it, unloaded once none does.
    let in_use = std::collections::HashSet::from([("fakepay".to_owned(), one.clone())]);
    assert!(rt.release_unreferenced(&in_use).is_empty());
    assert_eq!(served_by(&pay.clone().pinned(Some(&one))).await, one);
    let released = rt.release_unreferenced(&std::collections::HashSet::new());
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].digest, one);
    assert!(!rt.retains_any());
    assert_eq!(served_by(&pay.clone().pinned(Some(&one))).await, three);
    // The rollback target is never released that way: a rollback must stay instant.
    assert_eq!(served_by(&pay.clone().pinned(Some(&two))).await, two);
}

/// A process that starts after swaps loads an older build for the calls pinned to it
/// (`retain_bytes`, from the stored manifest and component): it serves those calls only and
/// is released like any retained build.
#[tokio::test]
async fn an_older_build_loaded_from_bytes_serves_only_its_pinned_calls() {
    let options = RuntimeOptions {
        retain_at_least: Some(std::time::Duration::ZERO),
        ..RuntimeOptions::default()
    };
    let rt = PluginRuntime::new(options, Some(Arc::new(MemoryKvStore::new()))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut builds = Vec::new();
    for (version, tag) in [("1.0.0", "one"), ("2.0.0", "two")] {
        let sub = dir.path().join(tag);
        std::fs::create_dir(&sub).unwrap();
        builds.push((sub.clone(), rebuilt(&sub, "fakepay", version, tag)));
    }
    let (one_dir, (one_manifest, one)) = builds.remove(0);
    let (_, (two_manifest, two)) = builds.remove(0);
    rt.install(&two_manifest).await.unwrap();
    let text = std::fs::read_to_string(&one_manifest).unwrap();
    let wasm_name = text
        .lines()
        .find_map(|l| l.strip_prefix("wasm = "))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap();
    let wasm = std::fs::read(one_dir.join(wasm_name)).unwrap();

    let info = rt.retain_bytes(&text, wasm.clone()).await.unwrap();
    assert_eq!(
        (info.digest.as_str(), info.version.as_str()),
        (one.as_str(), "1.0.0")
    );
    let pay = rt.payment("fakepay");
    assert_eq!(
        served_by(&pay).await,
        two,
        "new work stays on the current build"
    );
    assert_eq!(served_by(&pay.clone().pinned(Some(&one))).await, one);
    // Loaded once however often it is asked for; not a rollback target.
    rt.retain_bytes(&text, wasm.clone()).await.unwrap();
    let status = rt.status_of("fakepay").unwrap();
    assert_eq!(status.retained.len(), 1);
    assert!(status.previous.is_none());
    // Released once no open order refers to it.
    assert_eq!(
        rt.release_unreferenced(&std::collections::HashSet::new())
            .len(),
        1
    );
    assert_eq!(served_by(&pay.clone().pinned(Some(&one))).await, two);
    // Only an installed plugin has older builds.
    let ghost = text.replace("name = \"fakepay\"", "name = \"ghost\"");
    assert!(matches!(
        rt.retain_bytes(&ghost, wasm).await,
        Err(oms_plugin_runtime::LoadError::NotInstalled { .. })
    ));
}

/// A canary that crashes is ended; the follow-ups of the orders it took still go to it (pinned)
/// and keep failing there, against its own breaker: the circuit of the build that serves
/// everyone else stays closed.
#[tokio::test]
async fn an_ended_canary_fails_against_its_own_breaker() {
    let (rt, _dir, text, wasm) = fakepay_and_a_trapping_build().await;
    let canary = rt.start_canary_bytes(&text, wasm, 99).await.unwrap();
    assert!(rt.abort_canary("fakepay").is_some());

    fails_without_opening_the_current_circuit(&rt, &canary.digest).await;
    let status = rt.status_of("fakepay").unwrap();
    assert!(status.canary.is_none());
    assert_eq!(status.retained[0].digest, canary.digest);
}

/// A runtime serving fakepay, and the trap plugin staged as another build of fakepay: its
/// manifest text and component (the directory holds the files).
async fn fakepay_and_a_trapping_build() -> (PluginRuntime, tempfile::TempDir, String, Vec<u8>) {
    let rt = runtime();
    rt.install(manifest("fakepay")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trap = staged(dir.path(), "testing/trap", |t| {
        set_line(&t, "name", "\"fakepay\"")
    });
    let text = std::fs::read_to_string(&trap).unwrap();
    let wasm = std::fs::read(dir.path().join("trap.wasm")).unwrap();
    (rt, dir, text, wasm)
}

/// Ten calls pinned to `digest` (a trapping build) all fail, and the circuit of fakepay's
/// current build stays closed: new work is still served by it.
async fn fails_without_opening_the_current_circuit(rt: &PluginRuntime, digest: &str) {
    let pinned = rt.payment("fakepay").pinned(Some(digest));
    for _ in 0..10 {
        let failed = pinned
            .get_payment(PaymentLookup::AuthorizeKey("k".into()))
            .await;
        assert!(failed.is_err(), "the build still serves its pinned calls");
    }
    let status = rt.status_of("fakepay").unwrap();
    assert_eq!(
        status.breaker,
        oms_plugin_runtime::breaker::BreakerState::Closed
    );
    assert_eq!(
        served_by(&rt.payment("fakepay")).await,
        status.current.digest
    );
}

/// An older build loaded by a starting process may be a canary that was aborted for
/// failing: its pinned calls fail against a breaker of its own, never the current build's.
#[tokio::test]
async fn an_older_build_loaded_from_bytes_fails_against_its_own_breaker() {
    let (rt, _dir, text, wasm) = fakepay_and_a_trapping_build().await;
    let older = rt.retain_bytes(&text, wasm).await.unwrap();
    fails_without_opening_the_current_circuit(&rt, &older.digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_directory_installs_changes_and_survives_a_bad_drop() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    staged(dir.path(), "fakepay", |t| {
        set_line(&t, "version", "\"1.0.0\"")
    });
    let mut watcher = DirWatcher::new(rt.clone(), dir.path());
    let first = watcher.scan().await;
    assert_eq!(first.installed.len(), 1, "{:?}", first.refused);
    assert!(watcher.scan().await.installed.is_empty(), "nothing changed");

    // A broken drop (wrong digest) is refused; 1.0.0 keeps serving.
    staged(dir.path(), "fakepay", |t| {
        set_line(
            &set_line(&t, "version", "\"1.1.0\""),
            "sha256",
            &format!("\"{}\"", "1".repeat(64)),
        )
    });
    let bad = watcher.scan().await;
    assert_eq!(bad.refused.len(), 1);
    assert_eq!(rt.status_of("fakepay").unwrap().current.version, "1.0.0");
    rt.payment("fakepay")
        .authorize(authorize_request("tok_ok", "w1"))
        .await
        .unwrap();

    // The fixed drop goes live.
    staged(dir.path(), "fakepay", |t| {
        set_line(&t, "version", "\"1.1.0\"")
    });
    let good = watcher.scan().await;
    assert_eq!(good.installed.len(), 1, "{:?}", good.refused);
    let r = rt
        .payment("fakepay")
        .authorize(authorize_request("tok_ok", "w2"))
        .await
        .unwrap();
    assert_eq!(&*r.info.version, "1.1.0");

    // Deleting the files is reported by name and uninstalls nothing (the host decides).
    let manifest = dir.path().join("fakepay.toml");
    std::fs::remove_file(&manifest).unwrap();
    let gone = watcher.scan().await;
    assert_eq!(gone.removed, [(manifest, Some("fakepay".to_owned()))]);
    assert_eq!(rt.status_of("fakepay").unwrap().current.version, "1.1.0");
    assert!(watcher.scan().await.removed.is_empty(), "reported once");
}

/// Two manifests declaring one name: the first in file-name order is the plugin, the other
/// is refused with both files named (the last one loaded used to win, silently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_manifest_of_one_name_is_refused_naming_both_files() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let first = staged(dir.path(), "fakepay", |t| {
        set_line(&t, "version", "\"1.0.0\"")
    });
    let text = std::fs::read_to_string(&first).unwrap();
    let second = dir.path().join("zz-fakepay-copy.toml");
    std::fs::write(&second, set_line(&text, "version", "\"9.9.9\"")).unwrap();

    let mut watcher = DirWatcher::new(rt.clone(), dir.path());
    let report = watcher.scan().await;
    assert_eq!(report.installed.len(), 1, "{:?}", report.refused);
    assert_eq!(rt.status_of("fakepay").unwrap().current.version, "1.0.0");
    assert_eq!(report.refused.len(), 1);
    let (path, error) = &report.refused[0];
    assert_eq!(path, &second);
    let message = error.to_string();
    assert!(
        message.contains("zz-fakepay-copy.toml") && message.contains("fakepay.toml"),
        "{message}"
    );
    assert!(matches!(
        error,
        oms_plugin_runtime::LoadError::DuplicateName { .. }
    ));
    assert!(watcher.scan().await.refused.is_empty(), "reported once");

    // A newcomer whose file name sorts first does not take the name from its owner.
    let newcomer = dir.path().join("aa-fakepay.toml");
    std::fs::write(&newcomer, set_line(&text, "version", "\"5.0.0\"")).unwrap();
    let report = watcher.scan().await;
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    assert_eq!(report.refused[0].0, newcomer);
    assert_eq!(rt.status_of("fakepay").unwrap().current.version, "1.0.0");

    // When the owner goes, the name passes to the first remaining file, which is installed.
    std::fs::remove_file(&first).unwrap();
    let report = watcher.scan().await;
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.installed.len(), 1, "{:?}", report.refused);
    assert_eq!(rt.status_of("fakepay").unwrap().current.version, "5.0.0");
    assert!(
        report.refused.iter().any(|(p, _)| *p == second),
        "the other copy is refused in favour of the new owner: {:?}",
        report.refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_cached_artifact() {
    let cache = tempfile::tempdir().unwrap();
    let first = runtime_cached(cache.path());
    let loaded = first.check(manifest("fakepay")).await.unwrap();
    assert_eq!(loaded.cache, CacheOutcome::Miss);
    drop(first);
    let second = runtime_cached(cache.path());
    let loaded = second.check(manifest("fakepay")).await.unwrap();
    assert_eq!(loaded.cache, CacheOutcome::Hit);
    second.install(manifest("fakepay")).await.unwrap();
    second
        .payment("fakepay")
        .authorize(authorize_request("tok_ok", "cached"))
        .await
        .unwrap();
    // A corrupted artifact is detected by its checksum and recompiled, never executed.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let third = runtime_cached(cache.path());
    assert_eq!(
        third.check(manifest("fakepay")).await.unwrap().cache,
        CacheOutcome::Miss
    );
}
