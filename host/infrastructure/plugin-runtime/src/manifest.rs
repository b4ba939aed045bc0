//! The plugin manifest (`NAME.toml` next to `NAME.wasm`): what a plugin claims to be and what
//! it asks for. Parsing checks shape and contract version only; the digest and the world are
//! checked against the binary by the loader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest;

use crate::error::LoadError;
use crate::limits::LimitsSpec;

/// The oldest WIT package version this host implements (every kind has it). A plugin must
/// declare a contract whose major.minor is one the host supports (0.x versions break on
/// minor, per semver): see [`Contract`].
pub const CONTRACT_VERSION: &str = "0.1.0";

/// The contract versions this host loads, side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Contract {
    /// `oms:plugins@0.1.x`: every kind.
    #[default]
    V0_1,
    /// `oms:plugins@0.2.x`: payment plugins only (`wit/v0.2/`): customer actions and webhooks.
    V0_2,
}

impl Contract {
    /// The version a manifest's `contract` declares, if this host supports it: `0.1.0`,
    /// `0.1.3` or `oms:plugins@0.1.0` are 0.1; `0.2.x` is 0.2; `0.3.0` or `1.0.0` are not.
    pub fn parse(declared: &str) -> Option<Self> {
        let v = declared.trim();
        let v = v.strip_prefix("oms:plugins@").unwrap_or(v);
        let mut parts = v.split('.');
        let (Some(major), Some(minor), Some(patch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if major != "0" || patch.parse::<u32>().is_err() {
            return None;
        }
        match minor {
            "1" => Some(Self::V0_1),
            "2" => Some(Self::V0_2),
            _ => None,
        }
    }

    /// The package version, as a manifest spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => "oms:plugins@0.1.0",
            Self::V0_2 => "oms:plugins@0.2.0",
        }
    }
}

/// Where a payment plugin's inbound webhooks are authenticated (`[webhook]`, 0.2 only): the
/// host checks every delivery's signature before the plugin sees it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// The signing secret shared with the provider.
    pub secret: SecretRef,
    /// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
    #[serde(default = "WebhookSpec::default_header")]
    pub signature_header: String,
    /// How old (or how far in the future) a signature's timestamp may be, in seconds: a
    /// recorded delivery cannot be replayed after it.
    #[serde(default = "WebhookSpec::default_tolerance")]
    pub tolerance_secs: u64,
}

impl WebhookSpec {
    fn default_header() -> String {
        "webhook-signature".to_owned()
    }

    fn default_tolerance() -> u64 {
        300
    }
}

/// The identity of a manifest text (lower-case hex SHA-256), as [`Manifest::manifest_sha256`]
/// records it.
pub fn manifest_digest(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Which world a plugin implements; decides which typed client can call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    #[serde(alias = "payment", alias = "payment-provider")]
    PaymentProvider,
    #[serde(alias = "inventory", alias = "inventory-adapter")]
    InventoryAdapter,
    #[serde(alias = "notification", alias = "notification-formatter")]
    NotificationFormatter,
}

impl PluginKind {
    /// The WIT world name in `oms:plugins`.
    pub fn world(self) -> &'static str {
        match self {
            Self::PaymentProvider => "payment-provider",
            Self::InventoryAdapter => "inventory-adapter",
            Self::NotificationFormatter => "notification-formatter",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.world())
    }
}

/// Capabilities a plugin asks for. Logging, config and secrets are always available; the clock,
/// the key-value store and outbound HTTP only when granted here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesSpec {
    #[serde(default)]
    pub clock: bool,
    #[serde(default)]
    pub kv: bool,
    #[serde(default)]
    pub http: Option<HttpSpec>,
    /// Most verbose log level forwarded to the host log (`error`..`trace`); default `info`.
    #[serde(default)]
    pub log_level: Option<String>,
}

impl CapabilitiesSpec {
    /// The grants as operators read them: `clock`, `kv`, then `http:<host:port>` per target.
    pub fn granted(&self) -> Vec<String> {
        let mut grants = Vec::new();
        if self.clock {
            grants.push("clock".to_owned());
        }
        if self.kv {
            grants.push("kv".to_owned());
        }
        if let Some(http) = &self.http {
            grants.extend(http.allow.iter().map(|target| format!("http:{target}")));
        }
        grants
    }
}

/// Outbound HTTP grant: exact `host:port` pairs, nothing else.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    #[serde(default)]
    pub allow: Vec<String>,
    /// Lets the allowlisted names resolve to loopback/private/link-local addresses. For tests
    /// and local development only; the metadata address stays refused unless this is set too.
    #[serde(default)]
    pub allow_private: bool,
}

/// A secret the host resolves for the plugin; the value never appears in logs or errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretRef {
    /// `api-key = { env = "FAKEPAY_API_KEY" }`
    Env { env: String },
    /// `api-key = { file = "/run/secrets/fakepay-api-key" }` (a mounted secret)
    File { file: PathBuf },
    /// `api-key = "env:FAKEPAY_API_KEY"` or `"file:/run/secrets/fakepay-api-key"`
    Short(String),
}

/// Where a [`SecretRef`] points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource<'a> {
    /// An environment variable of the host process.
    Env(&'a str),
    /// A file (absolute path) whose content, without a trailing newline, is the secret.
    File(&'a Path),
}

impl SecretRef {
    /// Where the value is; `None` for a reference of neither form (refused at parse time).
    pub fn source(&self) -> Option<SecretSource<'_>> {
        let source = match self {
            Self::Env { env } => SecretSource::Env(env),
            Self::File { file } => SecretSource::File(file),
            Self::Short(s) => match (s.strip_prefix("env:"), s.strip_prefix("file:")) {
                (Some(var), _) => SecretSource::Env(var),
                (None, Some(path)) => SecretSource::File(Path::new(path)),
                (None, None) => return None,
            },
        };
        match source {
            SecretSource::Env("") => None,
            SecretSource::File(path) if !path.is_absolute() => None,
            ok => Some(ok),
        }
    }

    /// Name of the environment variable holding the value, for an `env` reference.
    pub fn env_var(&self) -> Option<&str> {
        match self.source()? {
            SecretSource::Env(var) => Some(var),
            SecretSource::File(_) => None,
        }
    }

    /// Reads the value now; the error names where it looked, never the value.
    pub fn resolve(&self) -> Result<String, String> {
        match self.source() {
            Some(SecretSource::Env(var)) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is unset"))
            }
            Some(SecretSource::File(path)) => std::fs::read_to_string(path)
                .map(|v| v.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            None => Err("not an env: or file: reference".to_owned()),
        }
    }
}

/// The parsed manifest, plus where it was found.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub kind: PluginKind,
    #[serde(alias = "contract-version", alias = "contract_version")]
    pub contract: String,
    pub version: String,
    pub sha256: String,
    /// File name of the component, relative to the manifest; default `NAME.wasm`.
    #[serde(default)]
    pub wasm: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub capabilities: CapabilitiesSpec,
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Inbound webhooks (0.2 payment plugins only).
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    #[serde(skip)]
    pub path: PathBuf,
    /// Which contract version `contract` names (checked at parse time).
    #[serde(skip)]
    pub contract_version: Contract,
    /// sha256 of the manifest text: two loads with the same component and the same manifest
    /// are the same plugin version; any change (a grant, a limit, config) is a new one.
    #[serde(skip)]
    pub manifest_sha256: String,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::ManifestInvalid {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates manifest text; `path` locates the component and names errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, LoadError> {
        let invalid = |reason: String| LoadError::ManifestInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut m: Manifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        m.path = path.to_path_buf();
        m.manifest_sha256 = manifest_digest(text);
        if !valid_name(&m.name) {
            return Err(invalid(format!(
                "name {:?} must be 1-64 chars of a-z, 0-9, '-' or '_'",
                m.name
            )));
        }
        m.sha256 = m.sha256.trim().to_ascii_lowercase();
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "sha256 {:?} is not 64 hex digits (fill it in with `sha256sum {}.wasm`)",
                m.sha256, m.name
            )));
        }
        if m.version.trim().is_empty() {
            return Err(invalid("version is empty".into()));
        }
        m.contract_version = match Contract::parse(&m.contract) {
            Some(Contract::V0_2) if m.kind != PluginKind::PaymentProvider => {
                return Err(invalid(format!(
                    "contract {} defines payment plugins only; a {} plugin declares oms:plugins@0.1.0",
                    m.contract.trim(),
                    m.kind
                )));
            }
            Some(version) => version,
            None => {
                return Err(LoadError::UnsupportedContract {
                    plugin: m.name.clone(),
                    found: m.contract.clone(),
                    supported: "oms:plugins@0.1.0 (every kind) or oms:plugins@0.2.0 (payment)"
                        .to_owned(),
                });
            }
        };
        if let Some(webhook) = &m.webhook {
            if m.contract_version != Contract::V0_2 {
                return Err(invalid(
                    "[webhook] needs contract oms:plugins@0.2.0 (0.1 has no handle-webhook)".into(),
                ));
            }
            if webhook.secret.source().is_none() {
                return Err(invalid(
                    "webhook.secret must be \"env:VAR\" or \"file:/absolute/path\"".into(),
                ));
            }
            let header = &webhook.signature_header;
            if header.is_empty()
                || !header
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(invalid(format!(
                    "webhook.signature_header {header:?} must be a lower-case header name"
                )));
            }
            if webhook.tolerance_secs == 0 || webhook.tolerance_secs > 3600 {
                return Err(invalid(format!(
                    "webhook.tolerance_secs {} must be 1..=3600",
                    webhook.tolerance_secs
                )));
            }
        }
        for (key, secret) in &m.secrets {
            if secret.source().is_none() {
                return Err(invalid(format!(
                    "secret {key:?} must be \"env:VAR\", \"file:/absolute/path\", \
                     {{ env = \"VAR\" }} or {{ file = \"/absolute/path\" }}"
                )));
            }
        }
        if let Some(level) = &m.capabilities.log_level {
            crate::capabilities::log::parse_level(level)
                .ok_or_else(|| invalid(format!("log_level {level:?} is not error..trace")))?;
        }
        m.limits.validate().map_err(invalid)?;
        Ok(m)
    }

    /// Which contract version the plugin implements.
    pub fn contract_version(&self) -> Contract {
        self.contract_version
    }

    /// Where the component binary is.
    pub fn wasm_path(&self) -> PathBuf {
        let file = self
            .wasm
            .clone()
            .unwrap_or_else(|| format!("{}.wasm", self.name));
        match self.path.parent() {
            Some(dir) => dir.join(file),
            None => PathBuf::from(file),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "fakepay"
kind = "payment-provider"
contract = "0.1.0"
version = "1.2.0"
sha256 = "AB00000000000000000000000000000000000000000000000000000000000000"
[limits]
memory_mib = 32
deadline_ms = 250
[capabilities]
kv = true
http = { allow = ["api.example.com:443"] }
[config]
currency = "EUR"
[secrets]
api-key = { env = "FAKEPAY_KEY" }
other = "env:OTHER"
"#;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(GOOD, Path::new("/p/fakepay.toml")).unwrap();
        assert_eq!(m.kind, PluginKind::PaymentProvider);
        assert_eq!(m.sha256, format!("ab{}", "0".repeat(62)));
        assert_eq!(m.wasm_path(), PathBuf::from("/p/fakepay.wasm"));
        assert_eq!(m.secrets["other"].env_var(), Some("OTHER"));
        assert!(m.capabilities.kv);
    }

    #[test]
    fn refuses_an_unknown_contract_with_its_number() {
        let text = GOOD.replace("contract = \"0.1.0\"", "contract = \"0.3.0\"");
        let err = Manifest::parse(&text, Path::new("x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unsupported contract version 0.3.0"), "{msg}");
        assert!(msg.contains("0.1.0"), "{msg}");
    }

    #[test]
    fn refuses_bad_digest_and_unknown_fields() {
        let text = GOOD.replace("AB00", "zz");
        assert!(Manifest::parse(&text, Path::new("x.toml")).is_err());
        let text = format!("{GOOD}\n[extra]\na = 1\n");
        assert!(Manifest::parse(&text, Path::new("x.toml")).is_err());
    }

    #[test]
    fn contract_0_2_is_for_payment_plugins_and_brings_webhooks() {
        let v2 = GOOD.replace("contract = \"0.1.0\"", "contract = \"oms:plugins@0.2.0\"");
        let with_webhook =
            format!("{v2}\n[webhook]\nsecret = \"env:PAY_HOOK\"\ntolerance_secs = 60\n");
        let m = Manifest::parse(&with_webhook, Path::new("x.toml")).expect("a 0.2 payment plugin");
        assert_eq!(m.contract_version(), Contract::V0_2);
        let hook = m.webhook.expect("the webhook table");
        assert_eq!(hook.secret.env_var(), Some("PAY_HOOK"));
        assert_eq!(hook.signature_header, "webhook-signature");
        assert_eq!(hook.tolerance_secs, 60);

        let inventory = v2.replace("kind = \"payment-provider\"", "kind = \"inventory\"");
        let msg = Manifest::parse(&inventory, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("defines payment plugins only"), "{msg}");

        let old_with_webhook = format!("{GOOD}\n[webhook]\nsecret = \"env:PAY_HOOK\"\n");
        let msg = Manifest::parse(&old_with_webhook, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("[webhook] needs contract oms:plugins@0.2.0"),
            "{msg}"
        );
    }

    #[test]
    fn contract_matching_is_major_minor() {
        assert_eq!(Contract::parse("0.1.7"), Some(Contract::V0_1));
        assert_eq!(Contract::parse("oms:plugins@0.1.0"), Some(Contract::V0_1));
        assert_eq!(Contract::parse("0.2.0"), Some(Contract::V0_2));
        assert_eq!(Contract::parse("0.3.0"), None);
        assert_eq!(Contract::parse("0.1"), None);
        assert_eq!(Contract::parse("1.1.0"), None);
        assert_eq!(Contract::parse("01.1.0"), None);
    }
}
