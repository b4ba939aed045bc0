//! `oms plugin check` through the built binary, on the bundled plugins and on broken copies
//! of them: each broken file fails at the check the host would refuse it at.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn built_plugins() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins");
    assert!(
        dir.join("fakepay.wasm").is_file(),
        "{} has no built plugins: run scripts/build-plugins first",
        dir.display()
    );
    dir
}

fn check(args: &[&Path]) -> (Output, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oms"));
    cmd.args(["plugin", "check"]);
    for (i, arg) in args.iter().enumerate() {
        if i == 1 {
            cmd.arg("--manifest");
        }
        cmd.arg(arg);
    }
    let out = cmd.output().expect("run oms plugin check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// The line of check `name`.
fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line:\n{stdout}"))
}

/// `fakepay`'s manifest with its digest (and optionally its name) replaced.
fn fakepay_manifest(sha256: &str, name: &str) -> String {
    let text = std::fs::read_to_string(built_plugins().join("fakepay.toml")).unwrap();
    text.lines()
        .map(|l| {
            if l.starts_with("sha256 = ") {
                format!("sha256 = \"{sha256}\"")
            } else if l.starts_with("name = ") {
                format!("name = \"{name}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_bundled_plugin_passes_every_check() {
    for name in [
        "fakepay",
        "fakepay-strict",
        "local-stock",
        "email-text",
        "webhook-json",
    ] {
        let (out, stdout) = check(&[&built_plugins().join(format!("{name}.wasm"))]);
        assert!(out.status.success(), "{name}: {stdout}");
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.trim_start().starts_with("pass "))
                .count(),
            7,
            "{name}: {stdout}"
        );
        assert!(stdout.contains("passes every load check"), "{stdout}");
    }
}

#[test]
fn a_broken_plugin_fails_at_the_check_the_host_refuses_it_at() {
    let dir = tempfile::tempdir().unwrap();
    let fakepay = built_plugins().join("fakepay.wasm");
    let garbage = vec![0x5a_u8; 4096];
    let garbage_sha = hex::encode(Sha256::digest(&garbage));
    let garbage_path = dir.path().join("garbage.wasm");
    std::fs::write(&garbage_path, &garbage).unwrap();
    let local_stock = built_plugins().join("local-stock.wasm");
    let local_stock_sha = hex::encode(Sha256::digest(std::fs::read(&local_stock).unwrap()));

    let cases: [(&str, &Path, String, &str, &str); 4] = [
        (
            "digest",
            &fakepay,
            fakepay_manifest(&"1".repeat(64), "fakepay"),
            "digest mismatch",
            "component",
        ),
        (
            "component",
            &garbage_path,
            fakepay_manifest(&garbage_sha, "fakepay"),
            "is not WebAssembly",
            "world",
        ),
        (
            "world",
            &local_stock,
            fakepay_manifest(&local_stock_sha, "fakepay"),
            "payment-provider",
            "grants",
        ),
        (
            "manifest",
            &fakepay,
            "name = ".to_owned(),
            "invalid",
            "contract",
        ),
    ];
    for (failing, wasm, manifest, says, skipped) in cases {
        let manifest_path = dir.path().join(format!("{failing}.toml"));
        std::fs::write(&manifest_path, manifest).unwrap();
        let (out, stdout) = check(&[wasm, &manifest_path]);
        assert!(!out.status.success(), "{failing}: {stdout}");
        let failed = line(&stdout, failing);
        assert!(
            failed.trim_start().starts_with("FAIL") && failed.contains(says),
            "{failing}: {stdout}"
        );
        assert!(
            line(&stdout, skipped).trim_start().starts_with("skip"),
            "{failing}: {stdout}"
        );
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.trim_start().starts_with("FAIL"))
                .count(),
            1,
            "{stdout}"
        );
    }
}

/// A file over the manifest's size limit fails the size check from its length alone: a
/// 4 GiB sparse file (nothing on disk) is refused by a check whose data segment may not
/// exceed 1 GiB (`ulimit -d`), so reading the file first would abort it.
#[test]
fn an_oversized_file_is_refused_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.wasm");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let manifest = dir.path().join("huge.toml");
    std::fs::write(&manifest, fakepay_manifest(&"1".repeat(64), "fakepay")).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -d 1048576 && exec \"$0\" plugin check \"$1\" --manifest \"$2\"")
        .arg(env!("CARGO_BIN_EXE_oms"))
        .arg(&huge)
        .arg(&manifest)
        .output()
        .expect("run oms plugin check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let size = line(&stdout, "size");
    assert!(
        size.trim_start().starts_with("FAIL") && size.contains("4294967296 bytes, over the"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "digest").trim_start().starts_with("skip"),
        "{stdout}"
    );
}

#[test]
fn the_manifest_beside_the_component_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("plugin.wasm");
    std::fs::copy(built_plugins().join("fakepay.wasm"), &wasm).unwrap();
    // No manifest: the run fails at the manifest, naming the file it looked for.
    let (out, stdout) = check(&[&wasm]);
    assert!(!out.status.success());
    assert!(
        line(&stdout, "manifest").contains("manifest.toml"),
        "{stdout}"
    );
    std::fs::copy(
        built_plugins().join("fakepay.toml"),
        dir.path().join("plugin.toml"),
    )
    .unwrap();
    let (out, stdout) = check(&[&wasm]);
    assert!(out.status.success(), "{stdout}");
}

/// `oms plugin run FILE FUNCTION --input JSON`: (exit status, stdout as JSON, stderr).
fn run(wasm: &Path, function: &str, input: &str) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oms"))
        .args(["plugin", "run"])
        .arg(wasm)
        .args([function, "--input", input])
        .output()
        .expect("run oms plugin run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json, stderr)
}

fn authorize(token: &str) -> String {
    format!(
        r#"{{"order_id":"o-1","amount":{{"amount_minor":1250,"currency":"EUR"}},"payment_token":"{token}","idempotency_key":"k-1"}}"#
    )
}

#[test]
fn a_function_runs_locally_and_answers_in_json() {
    let fakepay = built_plugins().join("fakepay.wasm");
    let (ok, answer, stderr) = run(&fakepay, "authorize", &authorize("tok_ok"));
    assert!(ok, "{stderr}");
    assert_eq!(answer["ok"]["status"], "Authorized", "{answer}");
    assert_eq!(answer["ok"]["authorized"]["amount_minor"], 1250, "{answer}");
    let id = answer["ok"]["id"].as_str().unwrap().to_owned();

    // The plugin's own typed error is an answer too.
    let (ok, answer, _) = run(&fakepay, "authorize", &authorize("tok_decline"));
    assert!(ok);
    assert!(answer["rejected"]["Declined"].is_string(), "{answer}");

    // Parameters by their WIT names; each run starts from an empty store.
    let (ok, answer, _) = run(
        &fakepay,
        "void",
        &format!(r#"{{"id":"{id}","idempotency_key":"k-2"}}"#),
    );
    assert!(ok);
    assert!(
        answer["rejected"]["Invalid"].is_string(),
        "unknown in a fresh store: {answer}"
    );

    let stock = built_plugins().join("local-stock.wasm");
    let reserve =
        r#"{"order_id":"o-1","lines":[{"sku":"DEMO-1","quantity":2}],"idempotency_key":"r-1"}"#;
    let (ok, answer, stderr) = run(&stock, "reserve", reserve);
    assert!(ok, "{stderr}");
    assert!(answer["ok"].is_string(), "a reservation id: {answer}");

    // The example input `run` shows for `format` is one a formatter accepts.
    let event = r#"{"event_type":"order.confirmed","schema_version":1,"event_id":"e-1","occurred_at_ms":0,"order":{"id":"o-1","customer":{"id":"c-1","email":"ada@example.com"},"status":"confirmed","items":[],"total":{"amount_minor":1250,"currency":"EUR"},"created_at_ms":0},"metadata":[]}"#;
    let (ok, answer, stderr) = run(&built_plugins().join("email-text.wasm"), "format", event);
    assert!(ok, "{stderr}");
    assert_eq!(answer["ok"][0]["channel"], "Email", "{answer}");
    let (ok, _, stderr) = run(&built_plugins().join("email-text.wasm"), "format", "{}");
    assert!(!ok);
    assert!(stderr.contains(event), "the example is shown: {stderr}");
}

#[test]
fn a_plugin_that_does_not_answer_or_a_bad_call_exits_1_and_says_why() {
    // A trap: no answer, and the plugin's panic message is in its logs on stderr.
    let trap = built_plugins().join("testing/trap.wasm");
    let (ok, answer, stderr) = run(&trap, "authorize", &authorize("tok_ok"));
    assert!(!ok);
    assert_eq!(answer["failed"]["kind"], "trap", "{answer}");
    assert!(
        !answer["failed"]["message"].as_str().unwrap().contains('\n'),
        "{answer}"
    );
    assert!(stderr.contains("deliberate panic in authorize"), "{stderr}");

    let fakepay = built_plugins().join("fakepay.wasm");
    let (ok, _, stderr) = run(&fakepay, "reserve", "{}");
    assert!(!ok);
    assert!(
        stderr.contains("authorize, capture, void, refund, get-payment"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&fakepay, "void", r#"{"payment":"p-1"}"#);
    assert!(!ok);
    assert!(
        stderr.contains("does not fit void") && stderr.contains("idempotency_key"),
        "{stderr}"
    );
}

/// `oms plugin test FILE [ARGS]`: its exit status and stdout.
fn conformance(wasm: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oms"))
        .args(["plugin", "test"])
        .arg(wasm)
        .args(args)
        .output()
        .expect("run oms plugin test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// The conformance lines that start with `verdict` (`pass`, `FAIL`, `skip`).
fn findings<'a>(stdout: &'a str, verdict: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with(verdict) && !l.contains(" load: "))
        .collect()
}

/// The bundled plugins, and the example plugins in three languages that `oms plugin new`
/// scaffolds from (`scripts/build-example-plugins`).
#[test]
fn every_bundled_and_example_plugin_passes_the_conformance_suite() {
    let examples = built_plugins().join("../plugins-examples");
    for (dir, name, kind, checks) in [
        (built_plugins(), "fakepay", "payment", 11),
        (built_plugins(), "fakepay-strict", "payment", 11),
        (built_plugins(), "local-stock", "inventory", 6),
        (built_plugins(), "email-text", "notification", 2),
        (built_plugins(), "webhook-json", "notification", 2),
        // Contract 0.2: the payment suite (its 0.1 functions behave as 0.1's), then 0.2's
        // customer action, its cancellation and an unreadable webhook.
        (
            built_plugins().join("testing"),
            "redirectpay",
            "payment",
            14,
        ),
        (examples.clone(), "rust-pay", "payment", 11),
        (examples.clone(), "python-pay", "payment", 11),
        (examples.clone(), "js-pay", "payment", 11),
        (examples.clone(), "python-stock", "inventory", 6),
        (examples.clone(), "js-stock", "inventory", 6),
        (examples.clone(), "python-notify", "notification", 2),
        (examples.clone(), "js-notify", "notification", 2),
    ] {
        let wasm = dir.join(format!("{name}.wasm"));
        assert!(
            wasm.is_file(),
            "{} is missing: run scripts/build-plugins and scripts/build-example-plugins",
            wasm.display()
        );
        let (out, stdout) = conformance(&wasm, &["--kind", kind]);
        assert!(out.status.success(), "{name}: {stdout}");
        assert_eq!(findings(&stdout, "pass ").len(), checks, "{name}: {stdout}");
        assert!(
            stdout.contains(&format!("all {checks} conformance checks")),
            "{name}: {stdout}"
        );
    }
}

/// Each misbehaving test plugin fails, at the check and with the reason its misbehaviour
/// gives.
#[test]
fn each_misbehaving_plugin_fails_with_its_finding() {
    let testing = built_plugins().join("testing");
    for (name, failing, says) in [
        ("trap", "authorize holds the amount", "(trap)"),
        ("infinite-loop", "authorize holds the amount", "(deadline)"),
        ("memory-bomb", "authorize holds the amount", "memory"),
        ("formatter-trap", "formats an order event", "(trap)"),
        // Declared without a kv grant, it links (the host denies each call) and says so.
        ("ungranted-kv", "authorize holds the amount", "kv denied"),
        ("ungranted-http", "reserve takes stock", "HttpRequestDenied"),
        ("wrong-world", "load: world", "payment-provider"),
    ] {
        let (out, stdout) = conformance(&testing.join(format!("{name}.wasm")), &[]);
        assert!(!out.status.success(), "{name}: {stdout}");
        let failed = stdout
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with("FAIL"))
            .unwrap_or_else(|| panic!("{name}: no failure\n{stdout}"));
        assert!(
            failed.contains(failing) && failed.contains(says),
            "{name}: first failure {failed:?}, expected {failing:?} saying {says:?}\n{stdout}"
        );
    }
    // A plugin of another kind than `--kind` asks for is refused.
    let (out, stdout) = conformance(
        &built_plugins().join("local-stock.wasm"),
        &["--kind", "payment"],
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a payment-provider"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `oms plugin new` as an integrator runs it: the Rust project it writes for each kind
/// builds with its own `build.sh` and passes `oms plugin test` under its new name. (The
/// Python and JavaScript templates are `plugins/examples/python-*` and `js-*` with the name
/// replaced, which the conformance test above runs, and whose payment plugins
/// `tests/example_plugins.rs` places orders with.)
#[test]
fn a_scaffolded_rust_plugin_of_each_kind_builds_and_passes_the_suite() {
    let parent = tempfile::tempdir().unwrap();
    let new = |name: &str, kind: &str, lang: &str| {
        Command::new(env!("CARGO_BIN_EXE_oms"))
            .args([
                "plugin", "new", name, "--kind", kind, "--lang", lang, "--dir",
            ])
            .arg(parent.path())
            .output()
            .unwrap()
    };
    for (kind, checks) in [("payment", 11), ("inventory", 6), ("notification", 2)] {
        let name = format!("acme-{kind}");
        let made = new(&name, kind, "rust");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let project = parent.path().join(&name);
        // The guests' cargo target directory when one is set (CI's cache), else the project's.
        let mut build = Command::new(project.join("build.sh"));
        build.env_remove("CARGO_TARGET_DIR");
        if let Ok(dir) = std::env::var("OMS_PLUGINS_TARGET_DIR") {
            build.env("CARGO_TARGET_DIR", dir);
        }
        let built = build.output().unwrap();
        assert!(
            built.status.success(),
            "{name}: build.sh: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let wasm = project.join(format!("dist/{name}.wasm"));
        let (out, stdout) = conformance(&wasm, &["--kind", kind]);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains(&format!("{name} 0.1.0, a ")), "{stdout}");
        assert_eq!(findings(&stdout, "pass ").len(), checks, "{stdout}");
    }

    // The name is checked, and an existing project is never overwritten.
    for (name, kind, lang, says) in [
        ("Acme_Pay", "payment", "rust", "not a plugin name"),
        ("acme-payment", "payment", "python", "already exists"),
    ] {
        let refused = new(name, kind, lang);
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(says),
            "{name}"
        );
    }
}
