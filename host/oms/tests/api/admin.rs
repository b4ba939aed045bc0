//! The admin API and `omsctl` against a running host: authentication, plugin swap and
//! rollback under order load, refused uploads, dead-letter redrive.

use std::time::Duration;

use oms_grpc::admin_pb as pb;
use oms_grpc::admin_pb::admin_service_client::AdminServiceClient;
use oms_grpc::pb::OrderStatus as S;
use oms_persistence::testing::TestBackend;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{
    ADMIN_TOKEN, TestApp, built_plugins, error_info, fetch_for_order, omsctl, omsctl_json,
    order_with, renamed_plugin, settle, wait_until,
};

async fn admin_client(app: &TestApp) -> AdminServiceClient<Channel> {
    let addr = app.server().admin_addr.expect("admin API on");
    AdminServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("admin client connects")
}

fn with_token(token: &str) -> tonic::Request<pb::ListPluginsRequest> {
    let mut request = tonic::Request::new(pb::ListPluginsRequest {});
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// Without a token: UNAUTHENTICATED; with a wrong one: PERMISSION_DENIED; with the right
/// one, the call runs. A host without `admin.token` serves no admin API at all.
pub async fn admin_calls_need_the_token(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let mut admin = admin_client(&app).await;

    let err = admin
        .list_plugins(pb::ListPluginsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(error_info(&err).0, "UNAUTHENTICATED");
    let err = admin.list_plugins(with_token("guess")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(error_info(&err).0, "PERMISSION_DENIED");
    assert!(
        !err.message().contains(ADMIN_TOKEN),
        "the token never appears in errors"
    );
    let plugins = admin
        .list_plugins(with_token(ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .plugins;
    let fakepay = plugins.iter().find(|p| p.name == "fakepay").unwrap();
    assert_eq!(fakepay.kind, "payment-provider");
    assert_eq!(
        fakepay.current.as_ref().unwrap().contract,
        "oms:plugins@0.1.0"
    );
    assert_eq!(fakepay.circuit, "closed");
    assert!(
        fakepay.capabilities.contains(&"kv".to_owned()),
        "{fakepay:?}"
    );

    // omsctl with a wrong token fails, saying why.
    let addr = app.server().admin_addr.unwrap();
    let wrong = tokio::process::Command::new(env!("CARGO_BIN_EXE_omsctl"))
        .args(["plugins", "list"])
        .env("OMS_ADMIN_ADDR", format!("http://{addr}"))
        .env("OMS_ADMIN_TOKEN", "guess")
        .output()
        .await
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("not accepted"), "{stderr}");
    app.stop().await;

    let off = TestApp::spawn_with(backend, |c| c.admin.token.clear()).await;
    assert_eq!(off.server().admin_addr, None);
    off.stop().await;
}

/// A copy of the built `fakepay` in `dir` whose manifest says `version`: the same component,
/// a new plugin version.
fn fakepay_as(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    let built = built_plugins();
    let wasm = dir.join("fakepay.wasm");
    std::fs::copy(built.join("fakepay.wasm"), &wasm).unwrap();
    let manifest = std::fs::read_to_string(built.join("fakepay.toml"))
        .unwrap()
        .replace("version = \"0.1.0\"", &format!("version = \"{version}\""));
    std::fs::write(dir.join("fakepay.toml"), manifest).unwrap();
    wasm
}

/// `omsctl plugins swap` and `rollback` while clients keep placing orders: every order is
/// confirmed, and the plugin list shows each step.
pub async fn plugins_swap_and_roll_back_under_load(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let wasm = fakepay_as(dir.path(), "0.1.1");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let client = app.client.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut n = 0;
                while !*stop.borrow() {
                    let request = order_with(&format!("c-swap-{c}-{n}"), "DEMO-1", "tok_ok");
                    let order = client.clone().create_order(request).await.unwrap();
                    ids.push(order.into_inner().order_id);
                    n += 1;
                }
                ids
            })
        })
        .collect();

    let swapped = omsctl_json(
        &app,
        &["plugins", "swap", "fakepay", wasm.to_str().unwrap()],
    )
    .await;
    assert_eq!(swapped["current"]["version"], "0.1.1");
    assert_eq!(swapped["previous"]["version"], "0.1.0");
    let table = omsctl(&app, &["plugins", "list"]).await;
    assert!(table.status.success(), "{table:?}");
    let stdout = String::from_utf8(table.stdout).unwrap();
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("fakepay"))
        .unwrap_or_else(|| panic!("no fakepay row: {stdout}"));
    assert!(row.contains("0.1.1") && row.contains("0.1.0"), "{row}");
    let rolled_back = omsctl_json(&app, &["plugins", "rollback", "fakepay"]).await;
    assert_eq!(rolled_back["current"]["version"], "0.1.0");
    assert_eq!(rolled_back["previous"]["version"], "0.1.1");

    stop_tx.send(true).unwrap();
    let mut placed = Vec::new();
    for client in clients {
        placed.extend(client.await.unwrap());
    }
    assert!(placed.len() >= 4, "the clients placed orders meanwhile");
    for id in &placed {
        assert_eq!(settle(&app, id).await.status(), S::Confirmed, "order {id}");
    }
    app.stop().await;
}

/// Uploads that are not a valid plugin (corrupt bytes, a digest that does not match, another
/// kind under the same name) are refused with INVALID_ARGUMENT naming the part, and the
/// serving version keeps serving.
pub async fn refused_uploads_leave_the_serving_version(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let dir = tempfile::tempdir().unwrap();
    fakepay_as(dir.path(), "0.1.1");
    let manifest = std::fs::read_to_string(dir.path().join("fakepay.toml")).unwrap();
    let garbage = vec![0x5a_u8; 4096];
    let garbage_sha = hex::encode(Sha256::digest(&garbage));
    let good_sha = manifest
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the manifest has a digest")
        .to_owned();
    let local_stock = std::fs::read_to_string(built_plugins().join("local-stock.toml"))
        .unwrap()
        .replace("name = \"local-stock\"", "name = \"fakepay\"");
    let local_stock_wasm = std::fs::read(built_plugins().join("local-stock.wasm")).unwrap();
    let cases = [
        (
            "random bytes",
            manifest.replace(&good_sha, &garbage_sha),
            garbage.clone(),
            "wasm",
        ),
        ("wrong digest", manifest.clone(), garbage.clone(), "wasm"),
        ("not a manifest", "name = ".to_owned(), garbage, "manifest"),
        ("another world", local_stock, local_stock_wasm, "manifest"),
    ];
    let mut admin = admin_client(&app).await;
    for (case, manifest, wasm, field) in cases {
        let messages = vec![
            pb::UploadPluginRequest {
                part: Some(pb::upload_plugin_request::Part::Manifest(manifest)),
                canary_percent: 0,
            },
            pb::UploadPluginRequest {
                part: Some(pb::upload_plugin_request::Part::Chunk(wasm)),
                canary_percent: 0,
            },
        ];
        let mut request = tonic::Request::new(tokio_stream::iter(messages));
        let value = format!("Bearer {ADMIN_TOKEN}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
        let err = admin.upload_plugin(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        assert_eq!(
            crate::helpers::violated_fields(&err),
            [field],
            "{case}: {err:?}"
        );
        if case == "random bytes" {
            // Said in the integrator's terms, not the text parser's ("not valid utf-8").
            assert!(err.message().contains("is not WebAssembly"), "{err:?}");
        }
    }
    let fakepay = omsctl_json(&app, &["plugins", "show", "fakepay"]).await;
    assert_eq!(fakepay["current"]["version"], "0.1.0");
    assert_eq!(fakepay["previous"], serde_json::Value::Null);
    assert!(
        fakepay["last_error"].as_str().unwrap().contains("fakepay"),
        "the last refusal is shown: {fakepay}"
    );
    let order = app.create(order_with("c-after", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
    app.stop().await;
}

/// A poison outbox row is dead-lettered; the operator sees it with `omsctl outbox
/// dead-letters`, fixes it, and `omsctl outbox redrive --all` publishes it.
pub async fn dead_letters_are_listed_and_redriven(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let order = app.create(order_with("c-dlq", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
    let poison = uuid::Uuid::now_v7().to_string();
    // PostgreSQL stores ids as UUID, SQLite as text.
    let (insert, fix) = if app.db.is_postgres() {
        (
            "INSERT INTO outbox (event_id, aggregate_id, event_type, schema_version, payload, \
             headers, occurred_at, created_at, attempts, next_attempt_at) \
             SELECT CAST($1 AS UUID), aggregate_id, 'OrderNoted', 1, '{\"not\": \"an event\"}', \
             '{}', occurred_at, created_at, 0, created_at FROM outbox ORDER BY id LIMIT 1",
            "UPDATE dead_letters SET event_type = 'OrderCreated', payload = \
             (SELECT payload FROM outbox WHERE event_type = 'OrderCreated' ORDER BY id LIMIT 1) \
             WHERE event_id = CAST($1 AS UUID)",
        )
    } else {
        (
            "INSERT INTO outbox (event_id, aggregate_id, event_type, schema_version, payload, \
             headers, occurred_at, created_at, attempts, next_attempt_at) \
             SELECT $1, aggregate_id, 'OrderNoted', 1, '{\"not\": \"an event\"}', \
             '{}', occurred_at, created_at, 0, created_at FROM outbox ORDER BY id LIMIT 1",
            "UPDATE dead_letters SET event_type = 'OrderCreated', payload = \
             (SELECT payload FROM outbox WHERE event_type = 'OrderCreated' ORDER BY id LIMIT 1) \
             WHERE event_id = $1",
        )
    };
    // Three of them, so that a bulk redrive one per call (`--batch 1`) takes three calls.
    let poisons = [
        poison,
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    ];
    for poison in &poisons {
        assert_eq!(crate::helpers::execute(&app.db, insert, poison).await, 1);
    }
    let dead = eventually(&app, &["outbox", "dead-letters"], |v| {
        v.as_array().is_some_and(|a| a.len() == 3)
    })
    .await;
    let listed: std::collections::HashSet<&str> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, poisons.iter().map(String::as_str).collect());
    assert_eq!(dead[0]["event_type"], "OrderNoted");
    let status = omsctl_json(&app, &["outbox", "status"]).await;
    assert_eq!(status["dead_letters"], 3);

    // The cause fixed (here: the payload made a valid event again), the redrive publishes it.
    for poison in &poisons {
        assert_eq!(crate::helpers::execute(&app.db, fix, poison).await, 1);
    }
    let none = omsctl_json(
        &app,
        &["outbox", "redrive", "--all", "--event-type", "Nope"],
    )
    .await;
    assert_eq!(none["redriven"], 0, "the filter leaves it");
    let redriven = omsctl_json(
        &app,
        &[
            "outbox",
            "redrive",
            "--all",
            "--event-type",
            "OrderCreated",
            "--batch",
            "1",
        ],
    )
    .await;
    assert_eq!(redriven["redriven"], 3, "one per call until none remained");
    eventually(&app, &["outbox", "status"], |s| {
        s["dead_letters"] == 0 && s["unpublished"] == 0
    })
    .await;
    let all = omsctl_json(&app, &["outbox", "dead-letters", "--include-redriven"]).await;
    assert!(
        all[0]["redriven_at"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{all}"
    );
    app.stop().await;
}

/// Runs `omsctl --json ARGS` until `done` holds of its output (10 s at most).
async fn eventually(
    app: &TestApp,
    args: &[&str],
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = omsctl_json(app, args).await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "omsctl {args:?} never got there: {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An order naming a payment provider that is not installed is INVALID_ARGUMENT on
/// `payment.provider` at once (it used to wait out the step deadline and end PAYMENT_FAILED),
/// the message lists the installed providers, and the key is not consumed.
pub async fn an_unknown_payment_provider_is_refused_at_once(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let mut request = order_with("c-nopay", "DEMO-1", "tok_ok");
    request.payment.as_mut().unwrap().provider = "paypaw".into();
    let err = app
        .try_create(crate::helpers::keyed(request.clone(), "key-nopay"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(crate::helpers::violated_fields(&err), ["payment.provider"]);
    assert!(
        err.message().contains("paypaw") && err.message().contains("fakepay"),
        "names the provider and the installed ones: {}",
        err.message()
    );
    // Corrected, the same key places the order.
    request.payment.as_mut().unwrap().provider = "fakepay".into();
    let order = app
        .create(crate::helpers::keyed(request, "key-nopay"))
        .await;
    assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
    app.stop().await;
}

/// Polls `host` until it serves `version` of fakepay (10 s).
async fn serves(host: &oms::RunningServer, version: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = host
            .plugins()
            .status_of("fakepay")
            .map(|s| s.current.version);
        if current.as_deref() == Some(version) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other host serves {current:?}, not {version}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Disabling a plugin through one host uninstalls it in every host: orders naming it are
/// refused at once, a host starting later with it in its plugins directory does not serve
/// it, and enabling brings the same build back everywhere. Both changes are audited.
pub async fn a_disabled_plugin_is_served_nowhere_until_enabled(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let (other, _other_cache) = app.another_host().await;
    let off = omsctl_json(&app, &["plugins", "disable", "fakepay"]).await;
    assert_eq!(
        (off["name"].as_str(), off["disabled"].as_bool()),
        (Some("fakepay"), Some(true))
    );
    assert_eq!(off["version"], "0.1.0");
    let refused = app
        .try_create(order_with("c-off", "DEMO-1", "tok_ok"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while other.plugins().status_of("fakepay").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other host still serves fakepay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = omsctl_json(&app, &["plugins", "list"]).await;
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fakepay")
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["disabled"], true, "{listed}");
    // Disabling again changes nothing and is no error.
    omsctl_json(&app, &["plugins", "disable", "fakepay"]).await;
    // Its file is still in the plugins directory: a host starting now does not serve it.
    let (late, _late_cache) = app.another_host().await;
    assert!(late.plugins().status_of("fakepay").is_none());

    let on = omsctl_json(&app, &["plugins", "enable", "fakepay"]).await;
    assert_eq!(on["current"]["version"], "0.1.0", "{on}");
    let order = app.create(order_with("c-on", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
    serves(&other, "0.1.0").await;
    serves(&late, "0.1.0").await;
    let history = omsctl_json(&app, &["plugins", "history", "fakepay"]).await;
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(actions, ["enable", "disable", "seed"]);
    late.stop().await.unwrap();
    other.stop().await.unwrap();
    app.stop().await;
}

/// A swap and a rollback through one host process reach another on the same database
/// within seconds, a host started later serves the shared set rather than its directory
/// (and warns that its directory differs), and every change is in the audit trail.
pub async fn a_swap_through_one_host_reaches_every_host(backend: TestBackend) {
    let logs = crate::helpers::LogCapture::get();
    let app = TestApp::spawn(backend).await;
    let (other, _other_cache) = app.another_host().await;
    let dir = tempfile::tempdir().unwrap();
    let wasm = fakepay_as(dir.path(), "0.1.1");

    omsctl_json(
        &app,
        &["plugins", "swap", "fakepay", wasm.to_str().unwrap()],
    )
    .await;
    serves(&other, "0.1.1").await;
    omsctl_json(&app, &["plugins", "rollback", "fakepay"]).await;
    serves(&other, "0.1.0").await;
    omsctl_json(&app, &["plugins", "rollback", "fakepay"]).await;
    serves(&other, "0.1.1").await;

    // A host that starts now, with the bundled 0.1.0 in its directory, serves 0.1.1, and
    // says that the file it does not serve differs (a change nobody watched is not silent).
    let (late, _late_cache) = app.another_host().await;
    assert_eq!(
        late.plugins().status_of("fakepay").unwrap().current.version,
        "0.1.1"
    );
    let warned = logs.text().lines().any(|line| {
        line.contains("holds another build than the shared release set")
            && line.contains("fakepay")
            && line.contains("0.1.1")
    });
    assert!(warned, "no warning that the directory differs from the set");
    let history = omsctl_json(&app, &["plugins", "history", "fakepay"]).await;
    let changes: Vec<(String, String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("action"), s("from_version"), s("to_version"))
        })
        .collect();
    let expected = [
        ("rollback", "0.1.0", "0.1.1"),
        ("rollback", "0.1.1", "0.1.0"),
        ("upload", "0.1.0", "0.1.1"),
        ("seed", "", "0.1.0"),
    ]
    .map(|(a, f, t)| (a.to_owned(), f.to_owned(), t.to_owned()));
    assert_eq!(changes, expected);
    assert!(
        history[2]["actor"]
            .as_str()
            .unwrap()
            .starts_with("admin@127.0.0.1:"),
        "{history}"
    );
    late.stop().await.unwrap();
    other.stop().await.unwrap();
    app.stop().await;
}

/// A new build written into one host's watched plugins directory is published like an
/// upload: another host on the same database (with its own directory) follows it.
pub async fn a_file_dropped_in_a_watched_directory_reaches_every_host(backend: TestBackend) {
    let dir = crate::helpers::plugins_with_testing(&[]);
    let path = dir.path().to_owned();
    let app = TestApp::spawn_with(backend, |c| {
        c.plugins.dir = path;
        c.plugins.watch_interval_ms = 100;
    })
    .await;
    let (other, _other_cache) = {
        let mut config = app.config.clone();
        config.plugins.dir = built_plugins();
        config.plugins.watch_interval_ms = 0;
        let cache = tempfile::tempdir().unwrap();
        config.plugins.cache_dir = cache.path().to_owned();
        let other = oms::start(config).await.unwrap();
        other.plugins_loaded().await;
        (other, cache)
    };
    // The component first, then the manifest that names it (as docs/plugins.md says).
    let staged = tempfile::tempdir().unwrap();
    fakepay_as(staged.path(), "0.1.2");
    std::fs::copy(
        staged.path().join("fakepay.wasm"),
        dir.path().join("fakepay.wasm"),
    )
    .unwrap();
    std::fs::copy(
        staged.path().join("fakepay.toml"),
        dir.path().join("fakepay.toml"),
    )
    .unwrap();
    serves(&other, "0.1.2").await;
    let history = omsctl_json(&app, &["plugins", "history", "fakepay", "--limit", "1"]).await;
    assert_eq!(history[0]["action"], "upload");
    assert!(
        history[0]["actor"].as_str().unwrap().starts_with("dir:"),
        "{history}"
    );
    other.stop().await.unwrap();
    app.stop().await;
}

fn as_caller<T>(message: T, token: &str, key: &str) -> tonic::Request<T> {
    let mut request = crate::helpers::keyed(message, key);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// With `grpc.callers` set, the public API needs a caller's token (health does not), and an
/// idempotency key belongs to its caller: two callers' same key are two requests.
pub async fn callers_authenticate_and_own_their_keys(backend: TestBackend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.grpc.callers.insert("shop".into(), "shop-token".into());
        c.grpc.callers.insert("pos".into(), "pos-token".into());
    })
    .await;
    let request = order_with("c-auth", "DEMO-1", "tok_ok");
    let err = app
        .try_create(crate::helpers::keyed(request.clone(), "k-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = app
        .try_create(as_caller(request.clone(), "guess", "k-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(error_info(&err).0, "PERMISSION_DENIED");

    let shop = app
        .create(as_caller(request.clone(), "shop-token", "k-1"))
        .await;
    // The same key from another caller, with another body, is another request.
    let mut other = request.clone();
    other.customer_id = "c-auth-pos".into();
    let pos = app.create(as_caller(other, "pos-token", "k-1")).await;
    assert_ne!(shop.order_id, pos.order_id);
    // Within one caller the key replays.
    let again = app.create(as_caller(request, "shop-token", "k-1")).await;
    assert_eq!(again.order_id, shop.order_id);

    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let check = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    assert!(health.check(check).await.is_ok(), "health needs no token");
    app.stop().await;
}

/// With `grpc.tls_*` and `admin.tls_*`, both listeners speak TLS only: a client that trusts
/// the certificate gets answers (omsctl over `https://` with `--ca-cert`), a plaintext one
/// does not.
pub async fn both_listeners_serve_tls_when_configured(backend: TestBackend) {
    let pki = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (pki.path().join("cert.pem"), pki.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (c, k) = (cert.clone(), key.clone());
    let app = TestApp::spawn_with_tls(
        backend,
        move |config| {
            config.grpc.tls_cert_file = Some(c.clone());
            config.grpc.tls_key_file = Some(k.clone());
            config.admin.tls_cert_file = Some(c);
            config.admin.tls_key_file = Some(k);
        },
        &cert,
    )
    .await;
    // The public API over TLS (TestApp's own client trusts the certificate).
    let order = app.create(order_with("c-tls", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
    // A plaintext client gets nothing from it.
    let plain = Channel::from_shared(format!("http://{}", app.server().addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut client = oms_grpc::pb::order_service_client::OrderServiceClient::new(plain);
        let request = oms_grpc::pb::GetOrderRequest {
            order_id: order.order_id.clone(),
        };
        assert!(
            client.get_order(request).await.is_err(),
            "no plaintext answers"
        );
    }
    // The admin API over TLS, through omsctl.
    let port = app.server().admin_addr.unwrap().port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_omsctl"))
        .args(["--json", "plugins", "list"])
        .env("OMS_ADMIN_ADDR", format!("https://localhost:{port}"))
        .env("OMS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OMS_ADMIN_CA_CERT", &cert)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let plugins: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fakepay")
    );
    // Without the certificate's CA, omsctl refuses the server.
    let untrusted = tokio::process::Command::new(env!("CARGO_BIN_EXE_omsctl"))
        .args(["plugins", "list"])
        .env("OMS_ADMIN_ADDR", format!("https://localhost:{port}"))
        .env("OMS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("OMS_ADMIN_CA_CERT")
        .output()
        .await
        .unwrap();
    assert!(!untrusted.status.success(), "{untrusted:?}");
    app.stop().await;
}

/// `fakepay` as another build: the same code with a custom section appended (another
/// digest), staged in `dir` as `fakepay.wasm` and `fakepay.toml` with `version`.
fn fakepay_build(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    let wasm_path = fakepay_as(dir, version);
    let mut wasm = std::fs::read(&wasm_path).unwrap();
    // A custom section (id 0): size, name length, name; no payload.
    let name = format!("oms-test-{version}");
    let size = u8::try_from(name.len() + 1).unwrap();
    assert!(size < 0x80, "one LEB128 byte");
    wasm.extend([0, size, size - 1]);
    wasm.extend_from_slice(name.as_bytes());
    std::fs::write(&wasm_path, &wasm).unwrap();
    let manifest_path = dir.join("fakepay.toml");
    let manifest: String = std::fs::read_to_string(&manifest_path)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("sha256 = ") {
                format!("sha256 = \"{}\"", hex::encode(Sha256::digest(&wasm)))
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(manifest_path, manifest).unwrap();
    wasm_path
}

/// Whether a canary of `percent` takes the order: the host's rule (the first eight bytes of
/// the SHA-256 of the order id, big-endian, modulo 100, below the percent), written out
/// again here so that the test checks the rule, not only that some orders moved.
fn canary_takes(order_id: &str, percent: u64) -> bool {
    let digest = Sha256::digest(order_id.as_bytes());
    let first: [u8; 8] = digest[..8].try_into().unwrap();
    u64::from_be_bytes(first) % 100 < percent
}

/// The fakepay build (version) of each of an order's payment steps, `step -> version`, as
/// the saga history recorded them.
async fn payment_builds(app: &TestApp, order_id: &str) -> Vec<(String, String)> {
    let sql = "SELECT st.step, st.plugin_version FROM saga_steps st \
               JOIN saga_instances si ON si.id = st.saga_id \
               WHERE CAST(si.order_id AS TEXT) = $1 AND st.plugin_name = 'fakepay' \
               ORDER BY st.started_at, st.step";
    fetch_for_order(&app.db, sql, order_id).await
}

fn build_of<'a>(builds: &'a [(String, String)], step: &str) -> &'a str {
    builds
        .iter()
        .find(|(s, _)| s == step)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {step} step: {builds:?}"))
}

/// `omsctl plugins canary` sends exactly the orders the hash rule picks to the new build,
/// with its own figures; `rollback` ends it, and the orders it took are still captured by it
/// (pinned follow-ups) while the others are captured by the current build; a second canary
/// of the same build is promoted; the history tells the whole rollout.
pub async fn a_canary_takes_its_share_and_each_order_stays_on_its_build(backend: TestBackend) {
    let app = TestApp::spawn(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let wasm = fakepay_build(dir.path(), "0.2.0-canary");
    let wasm = wasm.to_str().unwrap();
    let started = omsctl_json(
        &app,
        &["plugins", "canary", "fakepay", wasm, "--percent", "50"],
    )
    .await;
    assert_eq!(started["current"]["version"], "0.1.0");
    assert_eq!(started["canary"]["build"]["version"], "0.2.0-canary");
    assert_eq!(started["canary"]["percent"], 50);

    // Orders until each build has taken two (bounded: 2^-60 odds of running out).
    let (mut on_canary, mut on_stable) = (Vec::new(), Vec::new());
    for n in 0..60 {
        if on_canary.len() >= 2 && on_stable.len() >= 2 {
            break;
        }
        let order = app
            .create(order_with(&format!("c-canary-{n}"), "DEMO-1", "tok_ok"))
            .await;
        assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
        let builds = payment_builds(&app, &order.order_id).await;
        let expected = if canary_takes(&order.order_id, 50) {
            on_canary.push(order.order_id.clone());
            "0.2.0-canary"
        } else {
            on_stable.push(order.order_id.clone());
            "0.1.0"
        };
        assert_eq!(
            build_of(&builds, "authorize-payment"),
            expected,
            "order {}",
            order.order_id
        );
    }
    assert!(on_canary.len() >= 2 && on_stable.len() >= 2);
    let shown = omsctl_json(&app, &["plugins", "show", "fakepay"]).await;
    assert!(
        shown["canary"]["calls"].as_u64().unwrap() >= on_canary.len() as u64,
        "{shown}"
    );
    assert_eq!(shown["canary"]["failures"], 0);
    let table = omsctl(&app, &["plugins", "list"]).await;
    let stdout = String::from_utf8(table.stdout).unwrap();
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("fakepay") && l.contains("0.2.0-canary") && l.contains("50%")),
        "{stdout}"
    );

    // Rolling back ends the canary; its orders keep their build for what follows.
    let ended = omsctl_json(&app, &["plugins", "rollback", "fakepay"]).await;
    assert_eq!(ended["canary"], serde_json::Value::Null);
    assert_eq!(ended["current"]["version"], "0.1.0");
    let retained: Vec<&str> = ended["retained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(retained, ["0.2.0-canary"]);
    for (order_id, build) in [(&on_canary[0], "0.2.0-canary"), (&on_stable[0], "0.1.0")] {
        app.fulfill(order_id).await;
        let done = wait_until(&app, order_id, Duration::from_secs(20), |o| {
            o.status() == S::Fulfilled
        })
        .await;
        assert_eq!(done.status(), S::Fulfilled);
        let builds = payment_builds(&app, order_id).await;
        assert_eq!(build_of(&builds, "capture-payment"), build, "{builds:?}");
    }
    // New orders all go to the current build again.
    let after = app.create(order_with("c-after", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &after.order_id).await.status(), S::Confirmed);
    let builds = payment_builds(&app, &after.order_id).await;
    assert_eq!(build_of(&builds, "authorize-payment"), "0.1.0");

    // The same build as a canary again, promoted.
    omsctl_json(
        &app,
        &["plugins", "canary", "fakepay", wasm, "--percent", "10"],
    )
    .await;
    let promoted = omsctl_json(&app, &["plugins", "promote", "fakepay"]).await;
    assert_eq!(promoted["current"]["version"], "0.2.0-canary");
    assert_eq!(promoted["previous"]["version"], "0.1.0");
    assert_eq!(promoted["canary"], serde_json::Value::Null);
    let again = omsctl(&app, &["plugins", "promote", "fakepay"]).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no canary is running"),
        "{again:?}"
    );

    let history = omsctl_json(&app, &["plugins", "history", "fakepay"]).await;
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["promote", "canary", "abort", "canary", "seed"]);
    app.stop().await;
}

/// A canary that crashes on every call is rolled back by the host by itself once it failed
/// more than `plugins.canary.max_failure_rate` of `min_calls` calls; orders placed after that
/// are served by the current build.
pub async fn a_failing_canary_is_rolled_back_by_the_host(backend: TestBackend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.plugins.canary.min_calls = 2;
        config.plugins.sync_interval_ms = 200;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = renamed_plugin(dir.path(), "trap", "fakepay", "0.2.0-trap");
    let wasm = dir.path().join("trap.wasm");
    let started = omsctl_json(
        &app,
        &[
            "plugins",
            "canary",
            "fakepay",
            wasm.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--percent",
            "99",
        ],
    )
    .await;
    assert_eq!(started["canary"]["build"]["version"], "0.2.0-trap");

    // Orders until the canary failed often enough to be rolled back.
    let mut placed = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let aborted = loop {
        let history = omsctl_json(&app, &["plugins", "history", "fakepay"]).await;
        let abort = history
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["action"] == "abort")
            .cloned();
        if let Some(abort) = abort {
            break abort;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failing canary was not rolled back: {history}"
        );
        let order = app
            .create(order_with(
                &format!("c-trap-{}", placed.len()),
                "DEMO-1",
                "tok_ok",
            ))
            .await;
        placed.push(order.order_id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        aborted["actor"]
            .as_str()
            .unwrap()
            .starts_with("auto-rollback:"),
        "{aborted}"
    );
    assert_eq!(aborted["from_version"], "0.2.0-trap");
    assert_eq!(aborted["to_version"], "0.1.0");
    let shown = omsctl_json(&app, &["plugins", "show", "fakepay"]).await;
    assert_eq!(shown["canary"], serde_json::Value::Null);
    assert_eq!(shown["current"]["version"], "0.1.0");
    // Every order placed meanwhile ends (its retries after the rollback reach the current
    // build), and a new one is served by the current build.
    for id in &placed {
        let done = settle(&app, id).await;
        assert!(
            matches!(done.status(), S::Confirmed | S::PaymentFailed),
            "{done:?}"
        );
    }
    let after = app
        .create(order_with("c-after-trap", "DEMO-1", "tok_ok"))
        .await;
    assert_eq!(settle(&app, &after.order_id).await.status(), S::Confirmed);
    let builds = payment_builds(&app, &after.order_id).await;
    assert_eq!(build_of(&builds, "authorize-payment"), "0.1.0");

    // Both changes reached the broker: outbox rows of the plugin's aggregate, written with
    // their audit rows, published by the relay in the order they were made.
    let plugin = oms_application::outbox::plugin_aggregate_id("fakepay").to_string();
    let sql = "SELECT CAST(payload AS TEXT), published_at FROM outbox \
               WHERE aggregate_type = 'plugin' AND CAST(aggregate_id AS TEXT) = $1 ORDER BY id";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let changes = loop {
        let rows: Vec<(String, Option<i64>)> = fetch_for_order(&app.db, sql, &plugin).await;
        if rows.len() >= 3 && rows.iter().all(|(_, published)| published.is_some()) {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "plugin changes not published: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let changes: Vec<serde_json::Value> = changes
        .iter()
        .map(|(payload, _)| serde_json::from_str(payload).unwrap())
        .collect();
    let actions: Vec<&str> = changes
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["seed", "canary", "abort"], "{changes:?}");
    assert_eq!(changes[2]["actor"], aborted["actor"]);
    assert_eq!(changes[2]["from"]["version"], "0.2.0-trap");
    app.stop().await;
}

/// A host process that starts after swaps loads, besides the current build (and its
/// directory's), the build an open order was authorised by, and not the one in between that
/// no order needs; it captures that order on it once it is the only host left.
pub async fn a_host_started_after_swaps_loads_the_builds_open_orders_need(backend: TestBackend) {
    let mut app = TestApp::spawn(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let swap = |version: &'static str| {
        let sub = dir.path().join(version);
        std::fs::create_dir(&sub).unwrap();
        fakepay_build(&sub, version)
    };
    let swap_to = async |app: &TestApp, wasm: std::path::PathBuf| {
        omsctl_json(app, &["plugins", "swap", "fakepay", wasm.to_str().unwrap()]).await;
    };
    swap_to(&app, swap("0.2.0")).await;
    let order = app.create(order_with("c-pinned", "DEMO-1", "tok_ok")).await;
    assert_eq!(settle(&app, &order.order_id).await.status(), S::Confirmed);
    let builds = payment_builds(&app, &order.order_id).await;
    assert_eq!(build_of(&builds, "authorize-payment"), "0.2.0");
    swap_to(&app, swap("0.3.0")).await;
    swap_to(&app, swap("0.4.0")).await;

    // Its directory holds the bundled 0.1.0, which it loads first and the release replaces.
    let (late, _late_cache) = app.another_host().await;
    let status = late.plugins().status_of("fakepay").unwrap();
    assert_eq!(status.current.version, "0.4.0");
    let retained: Vec<&str> = status.retained.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(retained, ["0.2.0"], "{status:?}");
    let loaded: Vec<&str> = std::iter::once(&status.current)
        .chain(status.previous.as_ref())
        .chain(&status.retained)
        .map(|v| v.version.as_str())
        .collect();
    assert!(
        !loaded.contains(&"0.3.0"),
        "no open order needs 0.3.0: {loaded:?}"
    );

    // Only the late host runs sagas now: the capture runs there, on the build that
    // authorised the payment.
    app.stop_host().await;
    let mut client = oms_grpc::pb::order_service_client::OrderServiceClient::connect(format!(
        "http://{}",
        late.addr
    ))
    .await
    .unwrap();
    client
        .fulfill_order(oms_grpc::pb::FulfillOrderRequest {
            order_id: order.order_id.clone(),
            expected_version: None,
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = client
            .get_order(oms_grpc::pb::GetOrderRequest {
                order_id: order.order_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if now.status() == S::Fulfilled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not fulfilled: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let builds = payment_builds(&app, &order.order_id).await;
    assert_eq!(build_of(&builds, "capture-payment"), "0.2.0", "{builds:?}");
    late.stop().await.unwrap();
    app.stop().await;
}
