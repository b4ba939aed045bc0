//! Plugin runtime benchmark (`cargo bench -p oms-plugin-runtime`, RUST_BACKTRACE unset).
//!
//! Reports: compile and precompiled-artifact load of fakepay; the full load pipeline from a
//! warm cache; time to first call after a "restart" (new engine, warm cache); instantiate +
//! call of `fakepay.authorize` (median, p99), with and without fuel metering; and the same
//! logic written natively in Rust against the same KV store, for the sandbox's cost ratio.
//! Needs `scripts/build-plugins` to have run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oms_plugin_runtime::clients::payment::{AuthorizeRequest, Money};
use oms_plugin_runtime::engine::PluginEngine;
use oms_plugin_runtime::kv::{BatchOutcome, BoundedAdd, MemoryKvStore, PluginKvStore, Swap};
use oms_plugin_runtime::{EngineOptions, PluginRuntime, RuntimeOptions};

const CALLS: usize = 20_000;
const WARMUP: usize = 2_000;

fn plugins_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target/plugins");
    if !dir.join("fakepay.wasm").is_file() {
        eprintln!(
            "{}: no fakepay.wasm; run scripts/build-plugins first",
            dir.display()
        );
        std::process::exit(1);
    }
    dir
}

fn options(cache: Option<&Path>, fuel: bool) -> RuntimeOptions {
    RuntimeOptions {
        engine: EngineOptions {
            cache_dir: cache.map(Path::to_path_buf),
            fuel_metering: fuel,
            ..EngineOptions::default()
        },
        ..RuntimeOptions::default()
    }
}

fn request(i: usize) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: format!("order-{i}"),
        amount: Money {
            amount_minor: 1250,
            currency: "EUR".into(),
        },
        payment_token: "tok_ok".into(),
        idempotency_key: format!("key-{i}"),
    }
}

struct Stats {
    median: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    let total: Duration = samples.iter().sum();
    Stats {
        median: samples[n / 2],
        p99: samples[(n * 99) / 100],
        mean: total / n as u32,
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

/// fakepay's `authorize` for `tok_ok`, natively: the same KV operations (idempotency lookup,
/// sequence bump, one two-key compare-and-swap with JSON records) and the same log record.
async fn native_authorize(kv: &MemoryKvStore, req: &AuthorizeRequest) -> Result<String, String> {
    let ns = "fakepay-native";
    let idem = format!("idem/{}", req.idempotency_key);
    if let Some(done) = kv.get(ns, &idem).await.map_err(|e| e.to_string())? {
        return Ok(String::from_utf8_lossy(&done).into_owned());
    }
    let seq = match kv
        .batch(
            ns,
            &[],
            &[BoundedAdd {
                key: "seq".into(),
                delta: 1,
                min: None,
                max: None,
            }],
        )
        .await
        .map_err(|e| e.to_string())?
    {
        BatchOutcome::Applied(v) => v[0],
        other => return Err(format!("{other:?}")),
    };
    let id = format!("fp_{seq:08}");
    let payment = serde_json::json!({
        "id": id, "order_id": req.order_id, "status": "authorized",
        "currency": req.amount.currency, "authorized": req.amount.amount_minor,
        "captured": 0, "refunded": 0,
    });
    let op = serde_json::json!({
        "fingerprint": format!("authorize|{}|{}|{}|{}", req.order_id, req.amount.amount_minor,
            req.amount.currency, req.payment_token),
        "payment_id": id, "result": { "ok": payment },
    });
    let swaps = [
        Swap {
            key: idem,
            expected: None,
            new: Some(serde_json::to_vec(&op).unwrap()),
        },
        Swap {
            key: format!("payment/{id}"),
            expected: None,
            new: Some(serde_json::to_vec(&payment).unwrap()),
        },
    ];
    match kv.batch(ns, &swaps, &[]).await.map_err(|e| e.to_string())? {
        BatchOutcome::Applied(_) => {
            tracing::info!(target: "plugin", plugin = "fakepay-native", "authorize recorded");
            Ok(id)
        }
        other => Err(format!("{other:?}")),
    }
}

async fn bench_plugin(rt: &PluginRuntime, offset: usize) -> Stats {
    let pay = rt.payment("fakepay");
    for i in 0..WARMUP {
        pay.authorize(request(offset + i)).await.unwrap();
    }
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let req = request(offset + WARMUP + i);
        let t = Instant::now();
        let r = pay.authorize(req).await;
        samples.push(t.elapsed());
        r.unwrap();
    }
    stats(samples)
}

fn main() {
    let dir = plugins_dir();
    let manifest = dir.join("fakepay.toml");
    let wasm = std::fs::read(dir.join("fakepay.wasm")).unwrap();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&wasm))
    };
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();

    println!(
        "## Plugin runtime benchmark (fakepay, {} bytes)\n",
        wasm.len()
    );

    // Compile (cold) and precompiled-artifact load (warm cache), engine level.
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..EngineOptions::default()
    })
    .unwrap();
    let t = Instant::now();
    engine.compile(&wasm, &digest).unwrap();
    println!(
        "- compile (cold, stored in the artifact cache): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let loads: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let (_, outcome) = engine.compile(&wasm, &digest).unwrap();
            assert_eq!(outcome, oms_plugin_runtime::CacheOutcome::Hit);
            t.elapsed()
        })
        .collect();
    let s = stats(loads);
    println!(
        "- precompiled artifact load (read + checksum + deserialize): median {}, p99 {}",
        us(s.median),
        us(s.p99)
    );
    drop(engine);

    // Full load pipeline and time to first call after a restart, warm cache.
    let kv = Arc::new(MemoryKvStore::new());
    let restart = tokio.block_on(async {
        let t = Instant::now();
        let rt = PluginRuntime::new(options(Some(cache.path()), true), Some(kv.clone())).unwrap();
        rt.install(&manifest).await.unwrap();
        rt.payment("fakepay")
            .authorize(request(usize::MAX / 2))
            .await
            .unwrap();
        t.elapsed()
    });
    println!(
        "- restart to first call (new engine + load from warm cache + instantiate + call): {:.2} ms",
        restart.as_secs_f64() * 1e3
    );
    let rt = PluginRuntime::new(options(Some(cache.path()), true), Some(kv.clone())).unwrap();
    let checks: Vec<Duration> = tokio.block_on(async {
        let mut v = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            rt.check(&manifest).await.unwrap();
            v.push(t.elapsed());
        }
        v
    });
    let s = stats(checks);
    println!(
        "- full load from warm cache (manifest, sha256, artifact, type-check): median {}, p99 {}",
        us(s.median),
        us(s.p99)
    );

    // Instantiate + call.
    let with_fuel = tokio.block_on(async {
        rt.install(&manifest).await.unwrap();
        bench_plugin(&rt, 0).await
    });
    let no_fuel_rt =
        PluginRuntime::new(options(Some(cache.path()), false), Some(kv.clone())).unwrap();
    let no_fuel = tokio.block_on(async {
        no_fuel_rt.install(&manifest).await.unwrap();
        bench_plugin(&no_fuel_rt, 10_000_000).await
    });
    let native = tokio.block_on(async {
        let kv = MemoryKvStore::new();
        for i in 0..WARMUP {
            native_authorize(&kv, &request(i)).await.unwrap();
        }
        let mut samples = Vec::with_capacity(CALLS);
        for i in 0..CALLS {
            let req = request(WARMUP + i);
            let t = Instant::now();
            let r = native_authorize(&kv, &req).await;
            samples.push(t.elapsed());
            r.unwrap();
        }
        stats(samples)
    });
    println!("\n| fakepay.authorize (tok_ok, {CALLS} calls, 1 at a time) | median | p99 | mean |");
    println!("|---|---|---|---|");
    for (name, s) in [
        (
            "wasm: fresh instance per call, fuel metering on (default)",
            &with_fuel,
        ),
        ("wasm: fresh instance per call, fuel metering off", &no_fuel),
        ("native Rust, same KV operations", &native),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            us(s.median),
            us(s.p99),
            us(s.mean)
        );
    }
    println!(
        "\nratio wasm/native (median): {:.1}x with fuel, {:.1}x without",
        with_fuel.median.as_secs_f64() / native.median.as_secs_f64(),
        no_fuel.median.as_secs_f64() / native.median.as_secs_f64()
    );
}
