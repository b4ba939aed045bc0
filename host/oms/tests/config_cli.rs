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
