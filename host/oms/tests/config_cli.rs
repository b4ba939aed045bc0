//! `oms config` through the built binary: what an operator pastes into a ticket must not
//! carry credentials, and a configuration that cannot work is refused by key at load.

use std::process::{Command, Output};

/// Runs `oms --config <file> config` with `env`, isolated from the caller's `OMS_*`.
fn oms_config(toml: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("oms.toml");
    std::fs::write(&file, toml).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oms"));
    for (key, _) in std::env::vars() {
        if key.starts_with("OMS_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--config")
        .arg(&file)
        .arg("config")
        .envs(env.iter().copied());
    cmd.output().expect("run oms config")
}

#[test]
fn printed_configuration_carries_no_secret() {
    let out = oms_config(
        "[broker]\nkind = \"kafka\"\n[broker.properties]\n\
         \"security.protocol\" = \"SASL_SSL\"\n\
         \"sasl.username\" = \"relay\"\n\
         \"sasl.password\" = \"s4sl-pa55\"\n\
         \"ssl.key.password\" = \"k3y-pa55\"\n",
        &[
            ("OMS_DATABASE__URL", "postgres://u:hunter2@h/db"),
            // All digits: an environment value that looks like a number is still a token.
            ("OMS_ADMIN__TOKEN", "020261203123"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for secret in [
        "hunter2",
        "s4sl-pa55",
        "k3y-pa55",
        "020261203123",
        "20261203123",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed:\n{stdout}{stderr}"
        );
    }
    // Everything else is still there: the output stays useful.
    assert!(stdout.contains("postgres://u:***@h/db"), "{stdout}");
    assert!(stdout.contains("\"sasl.password\" = \"***\""), "{stdout}");
    assert!(stdout.contains("token = \"***\""), "{stdout}");
    assert!(
        stdout.contains("SASL_SSL") && stdout.contains("relay"),
        "{stdout}"
    );
}

#[test]
fn a_zero_duration_is_refused_naming_the_key() {
    let out = oms_config("[saga]\nlease_secs = 0\n", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("saga.lease_secs must be greater than zero"),
        "{stderr}"
    );
    let out = oms_config("", &[("OMS_BROKER__RELAY__POLL_INTERVAL_MS", "0")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("broker.relay.poll_interval_ms must be greater than zero"),
        "{stderr}"
    );
}

/// The `OMS_*` variables the Dockerfile (`ENV`) and docker-compose.yml (`environment:`) set,
/// with their values; compose's `${VAR:-default}` substitutions become a sample value.
fn container_variables() -> Vec<(String, String, &'static str)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |name: &str| std::fs::read_to_string(root.join(name)).expect(name);
    let mut vars = Vec::new();
    let dockerfile = read("Dockerfile");
    let mut in_env = false;
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        let body = if let Some(rest) = trimmed.strip_prefix("ENV ") {
            rest
        } else if in_env {
            trimmed
        } else {
            continue;
        };
        in_env = body.ends_with('\\');
        let body = body.trim_end_matches('\\').trim();
        if let Some((key, value)) = body.split_once('=') {
            vars.push((key.to_owned(), value.to_owned(), "Dockerfile"));
        }
    }
    // Only the `environment:` blocks (build arguments are not configuration): the lines
    // indented deeper than their `environment:` line.
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut block: Option<usize> = None;
    for line in read("docker-compose.yml").lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if block.is_some_and(|depth| indent(line) <= depth) {
            block = None;
        }
        if line.trim() == "environment:" {
            block = Some(indent(line));
            continue;
        }
        if block.is_none() {
            continue;
        }
        let Some((key, value)) = line.trim().split_once(": ") else {
            panic!("docker-compose.yml: an environment entry that is not `KEY: value`: {line}");
        };
        if key.starts_with("OMS_") {
            let value = if value.starts_with("${") {
                "t0ken-from-compose"
            } else {
                value
            };
            vars.push((key.to_owned(), value.to_owned(), "docker-compose.yml"));
        }
    }
    vars
}

/// CI cannot run Docker: this keeps the container files in step with the configuration.
/// Every `OMS_*` variable they set is a configuration key the host accepts, with a value it
/// accepts, and it shows in the effective configuration.
#[test]
fn container_files_set_only_configuration_keys() {
    let vars = container_variables();
    let from = |file: &str| vars.iter().filter(|(_, _, f)| *f == file).count();
    assert!(
        from("Dockerfile") >= 5,
        "the image's defaults were not found: {vars:?}"
    );
    assert!(
        from("docker-compose.yml") >= 3,
        "compose's settings were not found: {vars:?}"
    );
    for file in ["Dockerfile", "docker-compose.yml"] {
        // Compose runs the image: its variables come on top of the image's defaults.
        let env: Vec<(&str, &str)> = vars
            .iter()
            .filter(|(_, _, f)| *f == file || file == "docker-compose.yml")
            .map(|(k, v, _)| (k.as_str(), v.as_str()))
            .collect();
        let out = oms_config("", &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}: {stderr}");
        for (key, value, _) in vars.iter().filter(|(_, _, f)| *f == file) {
            let shown = if key.contains("TOKEN") || key.contains("DATABASE__URL") {
                continue; // redacted or rewritten when printed
            } else {
                value.as_str()
            };
            assert!(
                stdout.contains(&format!("\"{shown}\"")),
                "{file}: {key}={value} does not show in the configuration:\n{stdout}"
            );
        }
    }
}
