//! `oms:plugins/config`: the manifest's `[config]` values and the secrets it names. Secrets are
//! resolved by the host at load (from environment variables today) and never logged: their
//! `Debug` prints a placeholder.

use std::collections::BTreeMap;

use crate::bindings::caps::oms::plugins::config as wit;
use crate::manifest::Manifest;
use crate::state::HostState;

/// A secret value; formatting it never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The value, for handing to the plugin only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Config values (as strings) and resolved secrets of one plugin version.
#[derive(Debug, Default)]
pub struct PluginConfig {
    values: BTreeMap<String, String>,
    secrets: BTreeMap<String, Secret>,
}

impl PluginConfig {
    /// Strings are passed as-is; numbers, booleans, arrays and tables as their TOML text.
    /// A secret whose variable is unset is left out (the plugin sees `none`) with a warning
    /// that names the variable, never a value.
    pub fn from_manifest(m: &Manifest) -> Self {
        let values = m
            .config
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect();
        let mut secrets = BTreeMap::new();
        for (name, reference) in &m.secrets {
            match reference.resolve() {
                Ok(v) => {
                    secrets.insert(name.clone(), Secret(v));
                }
                Err(why) => tracing::warn!(
                    plugin = %m.name,
                    secret = %name,
                    %why,
                    "plugin secret not provisioned"
                ),
            }
        }
        Self { values, secrets }
    }

    /// A `[config]` value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// A resolved secret.
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }
}

impl wit::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.ctx.config.get(&key).map(str::to_string))
    }

    async fn get_secret(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .ctx
            .config
            .secret(&name)
            .map(|s| s.expose().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn values_as_strings_and_secrets_redacted() {
        let text = r#"
name = "p"
kind = "payment-provider"
contract = "0.1.0"
version = "1"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[config]
currency = "EUR"
retries = 3
[secrets]
key = "env:PATH"
missing = "env:OMS_TEST_SURELY_UNSET_VARIABLE"
"#;
        let m = Manifest::parse(text, Path::new("p.toml")).unwrap();
        let c = PluginConfig::from_manifest(&m);
        assert_eq!(c.get("currency"), Some("EUR"));
        assert_eq!(c.get("retries"), Some("3"));
        assert!(c.secret("missing").is_none());
        let s = c.secret("key").unwrap();
        assert!(!format!("{c:?}").contains(s.expose()));
    }
}
