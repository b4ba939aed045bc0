//! The admin API client: a channel whose every call carries the bearer token.

use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use oms_grpc::admin_pb as pb;
use oms_grpc::admin_pb::admin_service_client::AdminServiceClient;
use tokio_stream::StreamExt as _;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Bytes per upload message: well under tonic's 4 MiB message limit.
const CHUNK: usize = 1024 * 1024;

/// Adds the bearer token to every call.
type AddToken =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Authorized = InterceptedService<Channel, AddToken>;

pub struct Admin {
    pub api: AdminServiceClient<Authorized>,
}

impl Admin {
    /// Connects to `addr`: `http://` in plaintext, `https://` over TLS, trusting `ca_cert`
    /// (PEM) when given and the public web roots otherwise.
    pub async fn connect(addr: &str, token: &str, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let mut endpoint = Channel::from_shared(addr.to_owned())
            .with_context(|| format!("{addr:?} is not a URL (e.g. http://127.0.0.1:50052)"))?;
        if addr.starts_with("https://") {
            let tls = match ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path).with_context(|| {
                        format!("reading the CA certificate {}", path.display())
                    })?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            endpoint = endpoint.tls_config(tls).context("TLS settings")?;
        } else if ca_cert.is_some() {
            anyhow::bail!("--ca-cert needs an https:// address");
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to the admin API at {addr}"))?;
        let mut value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .context("the token must be printable ASCII")?;
        value.set_sensitive(true);
        let auth: AddToken = Box::new(move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
            Ok(request)
        });
        Ok(Self {
            api: AdminServiceClient::with_interceptor(channel, auth),
        })
    }

    /// Streams the manifest then the component in chunks, with a progress bar when `show`.
    /// Streams FILE.wasm with its manifest: as the new current build, or with
    /// `canary_percent` 1..=99 as a canary.
    pub async fn upload(
        &mut self,
        name: &str,
        wasm: &Path,
        manifest: &Path,
        canary_percent: u32,
        show: bool,
    ) -> anyhow::Result<pb::Plugin> {
        use pb::upload_plugin_request::Part;
        let manifest_text = std::fs::read_to_string(manifest)
            .with_context(|| format!("reading the manifest {}", manifest.display()))?;
        let declared = manifest_text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("name").and_then(|n| n.as_str().map(str::to_owned)));
        anyhow::ensure!(
            declared.as_deref() == Some(name),
            "{} declares plugin {:?}, not {name:?}",
            manifest.display(),
            declared.unwrap_or_default()
        );
        let bytes = std::fs::read(wasm)
            .with_context(|| format!("reading the component {}", wasm.display()))?;
        let bar = if show {
            ProgressBar::new(bytes.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("uploading {bar:40} {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut messages = vec![pb::UploadPluginRequest {
            part: Some(Part::Manifest(manifest_text)),
            canary_percent,
        }];
        messages.extend(bytes.chunks(CHUNK).map(|c| pb::UploadPluginRequest {
            part: Some(Part::Chunk(c.to_vec())),
            canary_percent: 0,
        }));
        let progress = bar.clone();
        // The bar moves as tonic takes each message off the stream to send it.
        let stream = tokio_stream::iter(messages).map(move |m| {
            if let Some(Part::Chunk(c)) = &m.part {
                progress.inc(c.len() as u64);
            }
            m
        });
        let response = self.api.upload_plugin(stream).await;
        bar.finish_and_clear();
        Ok(response?.into_inner())
    }
}
