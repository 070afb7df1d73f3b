//! The registry client the daemon uses to pull and push images.
//!
//! # Interface for callers (the daemon, the CLI)
//!
//! - Build a [`Client`] once from a [`ClientConfig`] (insecure registries,
//!   CA files, `certs.d` directory, concurrency limits, retries) and a
//!   [`CredentialStore`] (docker's config.json, or credentials set by
//!   `/auth`).
//! - Parse what the user typed with [`Reference::parse`] (Docker Hub
//!   normalization included).
//! - [`Client::pull`] resolves the reference (picking a platform from an
//!   index), then downloads the config and layers into a caller-supplied
//!   [`BlobSink`] — the daemon's content store — skipping blobs the sink
//!   already has, resuming partial ones with `Range`, verifying each digest
//!   while streaming, and reporting [`ProgressEvent`]s to a
//!   [`ProgressSink`]. It returns the manifest bytes for the caller to store.
//! - [`Client::push`] uploads the blobs of a [`PushImage`] from a
//!   caller-supplied [`BlobSource`], checking existence and trying
//!   cross-repository mounts first, then puts the manifest(s).
//! - [`Client::login`] checks credentials (for `POST /auth`).
//!
//! Progress events map one-to-one onto Docker's JSON progress messages
//! ("Pulling fs layer", "Waiting", "Downloading", "Download complete",
//! "Already exists", "Pushing", "Pushed", "Mounted from", "Layer already
//! exists"); extraction is the daemon's business and has no event here.
//!
//! [`FsStore`] is a directory-backed sink and source (an OCI layout's
//! `blobs/` tree) used by tests and tools.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::storage::ByteStream;

pub mod auth;
mod fs_store;
mod pull;
mod push;
pub mod reference;
pub mod transport;

pub use auth::{CredentialStore, Credentials};
pub use fs_store::FsStore;
pub use reference::Reference;
use transport::Transport;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference does not parse.
    #[error("invalid reference")]
    Reference(#[from] reference::Error),
    /// Credentials could not be loaded.
    #[error("credentials")]
    Credentials(#[source] auth::Error),
    /// TLS setup failed.
    #[error("tls for {host}: {message}")]
    Tls {
        /// Registry or file.
        host: String,
        /// What failed.
        message: String,
    },
    /// A URL could not be built.
    #[error("invalid url {0}")]
    InvalidUrl(String),
    /// The connection failed (after retries).
    #[error("request {url}: {message}")]
    Connect {
        /// URL.
        url: String,
        /// Cause chain.
        message: String,
    },
    /// The registry refused the credentials or demands some.
    #[error("{host}: unauthorized: {message}")]
    Unauthorized {
        /// Registry.
        host: String,
        /// Detail.
        message: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{url}: {status} {code} {message}")]
    Status {
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// OCI error code, if any.
        code: String,
        /// Message from the error body, if any.
        message: String,
    },
    /// The manifest or blob does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// Content does not match its digest.
    #[error("{what}: content hashes to {actual}, expected {expected}")]
    DigestMismatch {
        /// What was fetched.
        what: String,
        /// Expected digest.
        expected: Digest,
        /// Actual digest.
        actual: Digest,
    },
    /// Content size differs from its descriptor.
    #[error("{what}: {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// What was fetched.
        what: String,
        /// Expected size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// A manifest could not be understood.
    #[error("manifest of {reference}")]
    Manifest {
        /// Reference.
        reference: String,
        /// Cause.
        #[source]
        source: crate::oci::Error,
    },
    /// A manifest type we do not handle.
    #[error("manifest of {reference} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// Reference.
        reference: String,
        /// Type.
        media_type: String,
    },
    /// An index has no entry for the wanted platform.
    #[error("{reference}: no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        /// Reference.
        reference: String,
        /// Wanted platform.
        platform: String,
        /// Platforms in the index.
        available: String,
    },
    /// The sink failed.
    #[error("store blob {digest}")]
    Sink {
        /// Blob.
        digest: Digest,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The source failed.
    #[error("read blob {digest}")]
    Source {
        /// Blob.
        digest: Digest,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Registries (`host[:port]`) reached over HTTP or unverified TLS.
    pub insecure_registries: Vec<String>,
    /// Treat loopback registries as insecure (Docker does).
    pub loopback_insecure: bool,
    /// Trust the system's CA store.
    pub system_roots: bool,
    /// Extra CA bundles (PEM) trusted for every registry.
    pub ca_files: Vec<PathBuf>,
    /// Docker's `certs.d` layout: `<dir>/<host[:port]>/*.crt`.
    pub certs_dir: Option<PathBuf>,
    /// Parallel layer downloads per pull (Docker: 3).
    pub max_concurrent_downloads: usize,
    /// Parallel layer uploads per push (Docker: 5).
    pub max_concurrent_uploads: usize,
    /// Retries of one request or transfer.
    pub max_retries: u32,
    /// First retry delay; doubles each time.
    pub retry_base_delay: Duration,
    /// Upload in chunks of this size (PATCH with Content-Range), falling
    /// back to a monolithic PUT if the registry refuses chunks. `None`
    /// streams each blob in one PATCH.
    pub chunk_size: Option<u64>,
    /// User-Agent.
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            insecure_registries: Vec::new(),
            loopback_insecure: true,
            system_roots: true,
            ca_files: Vec::new(),
            certs_dir: None,
            max_concurrent_downloads: 3,
            max_concurrent_uploads: 5,
            max_retries: 5,
            retry_base_delay: Duration::from_millis(200),
            chunk_size: None,
            user_agent: concat!("vessel/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// A progress event, per layer or for the whole transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// Resolving a tag to a manifest.
    Resolving {
        /// The reference.
        reference: String,
    },
    /// The manifest (after platform selection) is known.
    Resolved {
        /// Digest of what the reference names (index or manifest).
        digest: Digest,
        /// Digest of the platform manifest used.
        manifest: Digest,
    },
    /// A layer is queued behind the concurrency limit.
    Waiting {
        /// Blob.
        digest: Digest,
    },
    /// The destination already has the blob.
    AlreadyExists {
        /// Blob.
        digest: Digest,
    },
    /// Bytes moved so far for a blob (download or upload).
    Progress {
        /// Blob.
        digest: Digest,
        /// Bytes done.
        current: u64,
        /// Total size.
        total: u64,
        /// Upload (push) rather than download.
        upload: bool,
    },
    /// A transfer failed and will be retried (resuming when possible).
    Retrying {
        /// Blob.
        digest: Digest,
        /// Attempt number (1-based).
        attempt: u32,
        /// Why.
        error: String,
    },
    /// A blob was downloaded and verified.
    DownloadComplete {
        /// Blob.
        digest: Digest,
    },
    /// A blob was mounted from another repository.
    Mounted {
        /// Blob.
        digest: Digest,
        /// Source repository.
        from: String,
    },
    /// A blob was uploaded.
    Pushed {
        /// Blob.
        digest: Digest,
    },
    /// A manifest was stored under a tag or digest.
    ManifestPushed {
        /// Manifest digest.
        digest: Digest,
        /// Size in bytes.
        size: u64,
        /// Tag, when pushed by tag.
        tag: Option<String>,
    },
}

/// Receives progress events; must be cheap and must not block.
pub trait ProgressSink: Send + Sync {
    /// One event.
    fn event(&self, e: ProgressEvent);
}

/// Discards events.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _e: ProgressEvent) {}
}

/// Where pulled blobs go (the daemon's content store). The client verifies
/// every digest; the sink only stores bytes and makes them visible on
/// [`BlobSink::commit`].
#[async_trait::async_trait]
pub trait BlobSink: Send + Sync {
    /// Whether the blob is already stored (then it is not downloaded).
    async fn has(&self, digest: &Digest) -> std::io::Result<bool>;

    /// Bytes kept from an earlier, interrupted download, with a stream of
    /// them so the client can re-hash before resuming. `None` when nothing.
    async fn partial(&self, digest: &Digest) -> std::io::Result<Option<(u64, ByteStream)>>;

    /// Write `data` at `offset` of the partial blob; offset 0 truncates.
    async fn write(&self, digest: &Digest, offset: u64, data: Bytes) -> std::io::Result<()>;

    /// The partial blob is complete and verified: publish it.
    async fn commit(&self, digest: &Digest, size: u64) -> std::io::Result<()>;

    /// Throw the partial blob away (it failed verification).
    async fn discard(&self, digest: &Digest) -> std::io::Result<()>;
}

/// Where pushed blobs come from (the daemon's content store).
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync {
    /// The blob's bytes.
    async fn open(&self, digest: &Digest) -> std::io::Result<ByteStream>;

    /// The blob's bytes from `offset` on (for resuming chunked uploads).
    async fn open_at(&self, digest: &Digest, offset: u64) -> std::io::Result<ByteStream>;

    /// Repositories on the target registry known to hold the blob (for
    /// cross-repository mount), e.g. where it was pulled from.
    fn mount_candidates(&self, _digest: &Digest) -> Vec<Reference> {
        Vec::new()
    }
}

/// What to push: an image manifest with its blobs, or an index over
/// pushed images.
#[derive(Debug, Clone)]
pub enum PushImage {
    /// Image manifest (OCI or Docker) and the blobs it names.
    Image {
        /// Manifest bytes, sent byte-exact.
        manifest: Bytes,
        /// Its media type.
        media_type: String,
        /// Config and layers.
        blobs: Vec<Descriptor>,
    },
    /// Index (or manifest list) and its child images.
    Index {
        /// Index bytes, sent byte-exact.
        manifest: Bytes,
        /// Its media type.
        media_type: String,
        /// Child images, pushed by digest first.
        children: Vec<PushImage>,
    },
}

impl PushImage {
    fn manifest(&self) -> (&Bytes, &str) {
        match self {
            PushImage::Image {
                manifest,
                media_type,
                ..
            }
            | PushImage::Index {
                manifest,
                media_type,
                ..
            } => (manifest, media_type),
        }
    }
}

/// The outcome of a pull.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// What was asked for.
    pub reference: Reference,
    /// Digest of what the reference names (the index for multi-platform).
    pub digest: Digest,
    /// The index, when the reference named one.
    pub index: Option<(Bytes, String)>,
    /// The platform manifest bytes and media type.
    pub manifest: (Bytes, String),
    /// Digest of the platform manifest.
    pub manifest_digest: Digest,
    /// Config descriptor.
    pub config: Descriptor,
    /// Layer descriptors in order.
    pub layers: Vec<Descriptor>,
}

/// The outcome of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResult {
    /// Digest of the top manifest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// The platform to pick from an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`...
    pub architecture: String,
    /// `v8`, `v7`... (optional).
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// The platform this process runs on.
    pub fn host() -> PlatformSpec {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        PlatformSpec {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(String::from),
        }
    }

    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<PlatformSpec> {
        let mut it = s.split('/');
        let os = it.next()?.to_string();
        let architecture = it.next()?.to_string();
        let variant = it.next().map(String::from);
        if os.is_empty() || architecture.is_empty() || it.next().is_some() {
            return None;
        }
        Some(PlatformSpec {
            os,
            architecture,
            variant,
        })
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The registry client.
#[derive(Clone)]
pub struct Client {
    transport: Arc<Transport>,
    cfg: Arc<ClientConfig>,
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

impl Client {
    /// Build a client.
    pub fn new(cfg: ClientConfig, creds: CredentialStore) -> Result<Client> {
        Ok(Client {
            transport: Arc::new(Transport::new(cfg.clone(), creds)?),
            cfg: Arc::new(cfg),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Check the stored credentials for `registry` (a normalized host such
    /// as `docker.io` or `localhost:5000`).
    pub async fn login(&self, registry: &str) -> Result<()> {
        let host = if registry == reference::DOCKER_HUB {
            reference::DOCKER_HUB_API
        } else {
            registry
        };
        self.transport.login(host).await
    }

    /// List the tags of a repository, following pagination.
    pub async fn list_tags(&self, r: &Reference) -> Result<Vec<String>> {
        let host = r.api_host().to_string();
        let scopes = [pull_scope(&r.repository)];
        let mut out = Vec::new();
        let mut next = Some(format!("/v2/{}/tags/list", r.repository));
        while let Some(path) = next.take() {
            let resp = self
                .transport
                .send(
                    &host,
                    http::Method::GET,
                    &path,
                    http::HeaderMap::new(),
                    transport::Body::Empty,
                    &scopes,
                )
                .await?;
            let url = format!("{host}{path}");
            let link = resp
                .headers()
                .get(http::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_next_link);
            let body = check(resp, &url).await?;
            let t: TagList = serde_json::from_slice(&body).map_err(|e| Error::Status {
                url: url.clone(),
                status: 200,
                code: String::new(),
                message: format!("invalid tag list: {e}"),
            })?;
            out.extend(t.tags.unwrap_or_default());
            next = link;
        }
        Ok(out)
    }
}

#[derive(serde::Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The target of `Link: <...>; rel="next"`.
fn parse_next_link(h: &str) -> Option<String> {
    for part in h.split(',') {
        let part = part.trim();
        if part.contains("rel=\"next\"") || part.contains("rel=next") {
            let s = part.find('<')? + 1;
            let e = part.find('>')?;
            return Some(part[s..e].to_string());
        }
    }
    None
}

/// Read a response; success statuses give the body, others an error.
async fn check(resp: http::Response<hyper::body::Incoming>, url: &str) -> Result<Bytes> {
    use http_body_util::BodyExt as _;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Connect {
            url: url.to_string(),
            message: e.to_string(),
        })?
        .to_bytes();
    if status.is_success() {
        return Ok(body);
    }
    Err(status_error(url, status.as_u16(), &body))
}

/// The error for a response whose status is not the one the request
/// expects: its body is read (a body that breaks off counts as empty, as it
/// only supplies the OCI error code and message) and becomes
/// [`Error::Unauthorized`], [`Error::NotFound`] or [`Error::Status`].
async fn failed(resp: http::Response<hyper::body::Incoming>, url: &str) -> Error {
    use http_body_util::BodyExt as _;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    status_error(url, status.as_u16(), &body)
}

/// Read a response to its end (so that its connection can be reused) and,
/// when `ok` refuses its status, give the error [`failed`] makes of it.
async fn expect_status(
    resp: http::Response<hyper::body::Incoming>,
    url: &str,
    ok: impl FnOnce(http::StatusCode) -> bool,
) -> Result<()> {
    use http_body_util::BodyExt as _;
    if !ok(resp.status()) {
        return Err(failed(resp, url).await);
    }
    let _ = resp.into_body().collect().await;
    Ok(())
}

fn status_error(url: &str, status: u16, body: &[u8]) -> Error {
    let (code, message) = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            Some((
                e.get("code")?.as_str().unwrap_or("").to_string(),
                e.get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .to_string(),
            ))
        })
        .unwrap_or_default();
    if status == 401 {
        return Error::Unauthorized {
            host: url.split('/').next().unwrap_or(url).to_string(),
            message: if message.is_empty() {
                "authentication required".into()
            } else {
                message
            },
        };
    }
    if status == 404 {
        return Error::NotFound(url.to_string());
    }
    Error::Status {
        url: url.to_string(),
        status,
        code,
        message,
    }
}

/// Platforms listed in an index, for error messages.
fn describe_platforms(entries: &[Descriptor]) -> String {
    let v: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Pick the best index entry for `want`: exact variant first, then an
/// entry without variant, then any variant of the architecture.
fn select_platform<'a>(entries: &'a [Descriptor], want: &PlatformSpec) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
        .collect();
    let variant_of = |d: &Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
    let mut ranked: BTreeMap<u8, &Descriptor> = BTreeMap::new();
    for d in candidates {
        let rank = match (&want.variant, variant_of(d)) {
            (Some(w), Some(v)) if *w == v => 0,
            (None, None) => 0,
            (_, None) => 1,
            _ => 2,
        };
        ranked.entry(rank).or_insert(d);
    }
    ranked.into_values().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Platform;

    fn entry(arch: &str, variant: Option<&str>, seed: &[u8]) -> Descriptor {
        Descriptor {
            media_type: crate::oci::OCI_MANIFEST.into(),
            digest: Digest::sha256_of(seed),
            size: 1,
            artifact_type: None,
            annotations: None,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                os_version: None,
                variant: variant.map(String::from),
            }),
            urls: None,
        }
    }

    #[test]
    fn platform_selection() {
        let entries = vec![
            entry("arm", Some("v6"), b"1"),
            entry("arm", Some("v7"), b"2"),
            entry("amd64", None, b"3"),
            entry("arm64", Some("v8"), b"4"),
        ];
        let pick = |s: &str| {
            select_platform(&entries, &PlatformSpec::parse(s).unwrap()).map(|d| d.digest.clone())
        };
        assert_eq!(pick("linux/amd64"), Some(Digest::sha256_of(b"3")));
        assert_eq!(pick("linux/arm/v7"), Some(Digest::sha256_of(b"2")));
        assert_eq!(pick("linux/arm64/v8"), Some(Digest::sha256_of(b"4")));
        assert_eq!(pick("linux/arm64"), Some(Digest::sha256_of(b"4")));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(
            describe_platforms(&entries[..2]),
            "linux/arm/v6, linux/arm/v7"
        );
    }

    #[test]
    fn next_links() {
        assert_eq!(
            parse_next_link("</v2/a/tags/list?n=2&last=b>; rel=\"next\""),
            Some("/v2/a/tags/list?n=2&last=b".into())
        );
        assert_eq!(parse_next_link("<x>; rel=\"prev\""), None);
    }
}
