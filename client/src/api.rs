//! The Docker Engine API over HTTP/1.1: connections, version negotiation,
//! requests, error bodies, streaming bodies and hijacked (upgraded)
//! connections for attach and exec.
//!
//! This module knows the wire protocol and nothing about commands or
//! output. Every request opens its own connection (unix socket, TCP, or TCP
//! with TLS), which keeps long streams (attach, events, logs -f) independent.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::endpoint::{Endpoint, Tls};

/// The newest API version this client speaks.
pub const MAX_API_VERSION: &str = "1.47";
/// The version assumed when the daemon does not say.
pub const FALLBACK_API_VERSION: &str = "1.24";

/// API client errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon answered with an error status; `message` is its
    /// `{"message": ...}` body (or the raw body).
    #[error("Error response from daemon: {message}")]
    Daemon { status: u16, message: String },
    #[error("Cannot connect to the daemon at {endpoint}. Is the daemon running?")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tls setup for {endpoint}")]
    Tls {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("http exchange with {endpoint}")]
    Http {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
    #[error("decoding the daemon's answer to {what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the daemon did not upgrade the connection for {0} (status {1})")]
    NoUpgrade(String, u16),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status of a daemon error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Daemon { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether this is a daemon 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// A request body.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// An empty body.
pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A body of bytes.
pub fn bytes_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A streaming body fed through a channel; the sender half is returned. Send
/// `Err` to abort the upload.
pub fn channel_body(depth: usize) -> (tokio::sync::mpsc::Sender<std::io::Result<Bytes>>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(depth);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

/// A connection stream of any transport.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A hijacked connection after `101 Switching Protocols`.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// The Docker Engine API client.
pub struct Client {
    endpoint: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Fixed by `DOCKER_API_VERSION`, or negotiated on first use.
    version: Mutex<Option<String>>,
    fixed_version: bool,
    /// Headers sent with every request (from config.json `HttpHeaders`).
    extra_headers: HeaderMap,
}

impl Client {
    /// A client for `endpoint`. `version` fixes the API version (as
    /// `DOCKER_API_VERSION` does); otherwise it is negotiated with `/_ping`.
    pub fn new(endpoint: Endpoint, version: Option<String>) -> Result<Client> {
        let tls = match &endpoint {
            Endpoint::Tcp { tls: Some(t), .. } => {
                Some(Arc::new(tls_config(t).map_err(|e| Error::Tls {
                    endpoint: endpoint.display(),
                    source: e,
                })?))
            }
            _ => None,
        };
        Ok(Client {
            endpoint,
            tls,
            fixed_version: version.is_some(),
            version: Mutex::new(version),
            extra_headers: HeaderMap::new(),
        })
    }

    /// Add headers sent with every request.
    pub fn set_extra_headers(&mut self, headers: HeaderMap) {
        self.extra_headers = headers;
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&self) -> Result<Box<dyn Io>> {
        let endpoint = self.endpoint.display();
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| Error::Connect { endpoint, source })?;
                Ok(Box::new(s))
            }
            Endpoint::Tcp { host, port, .. } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|source| Error::Connect {
                        endpoint: endpoint.clone(),
                        source,
                    })?;
                let _ = s.set_nodelay(true);
                match &self.tls {
                    None => Ok(Box::new(s)),
                    Some(cfg) => {
                        let name =
                            rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                                Error::Tls {
                                    endpoint: endpoint.clone(),
                                    source: Box::new(e),
                                }
                            })?;
                        let conn = tokio_rustls::TlsConnector::from(cfg.clone())
                            .connect(name, s)
                            .await
                            .map_err(|source| Error::Connect { endpoint, source })?;
                        Ok(Box::new(conn))
                    }
                }
            }
        }
    }

    /// The API version in use, negotiating it with `/_ping` on first call.
    pub async fn version(&self) -> String {
        if let Some(v) = self.version.lock().expect("version lock").clone() {
            return v;
        }
        let negotiated = match self.ping().await {
            Ok(p) => p.api_version.map_or_else(
                || FALLBACK_API_VERSION.to_string(),
                |v| min_version(&v, MAX_API_VERSION),
            ),
            Err(_) => MAX_API_VERSION.to_string(),
        };
        let mut g = self.version.lock().expect("version lock");
        if g.is_none() && !self.fixed_version {
            *g = Some(negotiated.clone());
        }
        negotiated
    }

    /// `GET /_ping` (unversioned).
    pub async fn ping(&self) -> Result<Ping> {
        let resp = self
            .raw(Method::GET, "/_ping", HeaderMap::new(), empty())
            .await?;
        let h = resp.headers();
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let ping = Ping {
            api_version: get("api-version"),
            os_type: get("ostype"),
            builder_version: get("builder-version"),
            experimental: get("docker-experimental").is_some_and(|v| v == "true"),
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(self.error_from(resp).await);
        }
        Ok(ping)
    }

    fn request_builder(
        &self,
        method: Method,
        uri: &str,
        mut headers: HeaderMap,
        body: Body,
    ) -> Request<Body> {
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "docker".to_string(),
            Endpoint::Tcp { host, port, .. } => format!("{host}:{port}"),
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        for (k, v) in &self.extra_headers {
            headers.entry(k).or_insert(v.clone());
        }
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(&host).unwrap_or(HeaderValue::from_static("docker")),
        );
        headers
            .entry(http::header::USER_AGENT)
            .or_insert(HeaderValue::from_static(concat!(
                "vessel/",
                env!("CARGO_PKG_VERSION")
            )));
        *req.headers_mut() = headers;
        req
    }

    /// Send a request to an exact path (no version prefix).
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>> {
        tracing::debug!(%method, uri, "request");
        let io = self.connect().await?;
        let endpoint = self.endpoint.display();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| Error::Http {
                endpoint: endpoint.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
        let req = self.request_builder(method, uri, headers, body);
        sender
            .send_request(req)
            .await
            .map_err(|source| Error::Http { endpoint, source })
    }

    /// Send a request to `/vX.Y{path}` and turn error statuses into
    /// [`Error::Daemon`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>> {
        let v = self.version().await;
        let resp = self
            .raw(method, &format!("/v{v}{path}"), headers, body)
            .await?;
        if resp.status().is_success() || resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            Ok(resp)
        } else {
            Err(self.error_from(resp).await)
        }
    }

    async fn error_from(&self, resp: Response<Incoming>) -> Error {
        let status = resp.status().as_u16();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Error::Http {
                    endpoint: self.endpoint.display(),
                    source: e,
                };
            }
        };
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&body).trim().to_string();
                if text.is_empty() {
                    format!(
                        "{} {}",
                        status,
                        StatusCode::from_u16(status)
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("")
                    )
                } else {
                    text
                }
            });
        Error::Daemon { status, message }
    }

    /// GET and decode JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .send(Method::GET, path, HeaderMap::new(), empty())
            .await?;
        decode(path, resp).await
    }

    /// GET and return the raw body bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes> {
        let resp = self
            .send(Method::GET, path, HeaderMap::new(), empty())
            .await?;
        collect(&self.endpoint, resp).await
    }

    /// POST a JSON body; returns the response (already checked for errors).
    pub async fn post_json<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        mut headers: HeaderMap,
    ) -> Result<Response<Incoming>> {
        let data = serde_json::to_vec(body).map_err(|source| Error::Json {
            what: path.to_string(),
            source,
        })?;
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.send(Method::POST, path, headers, bytes_body(data))
            .await
    }

    /// POST with no body; discards the answer.
    pub async fn post_empty(&self, path: &str) -> Result<Bytes> {
        let resp = self
            .send(Method::POST, path, HeaderMap::new(), empty())
            .await?;
        collect(&self.endpoint, resp).await
    }

    /// DELETE; returns the body.
    pub async fn delete(&self, path: &str) -> Result<Bytes> {
        let resp = self
            .send(Method::DELETE, path, HeaderMap::new(), empty())
            .await?;
        collect(&self.endpoint, resp).await
    }

    /// Decode a JSON response.
    pub async fn json_of<T: DeserializeOwned>(
        &self,
        what: &str,
        resp: Response<Incoming>,
    ) -> Result<T> {
        decode(what, resp).await
    }

    /// Collect a response body.
    pub async fn bytes_of(&self, resp: Response<Incoming>) -> Result<Bytes> {
        collect(&self.endpoint, resp).await
    }

    /// POST with `Connection: Upgrade` / `Upgrade: tcp` and return the
    /// hijacked stream (attach, exec start).
    pub async fn upgrade(
        &self,
        path: &str,
        json_body: Option<&serde_json::Value>,
    ) -> Result<Upgraded> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
        headers.insert(http::header::UPGRADE, HeaderValue::from_static("tcp"));
        let body = match json_body {
            Some(v) => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                bytes_body(serde_json::to_vec(v).map_err(|source| Error::Json {
                    what: path.to_string(),
                    source,
                })?)
            }
            None => empty(),
        };
        let resp = self.send(Method::POST, path, headers, body).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::NoUpgrade(path.to_string(), resp.status().as_u16()));
        }
        let endpoint = self.endpoint.display();
        let up = hyper::upgrade::on(resp)
            .await
            .map_err(|source| Error::Http { endpoint, source })?;
        Ok(TokioIo::new(up))
    }
}

/// What `/_ping` says.
#[derive(Clone, Debug, Default)]
pub struct Ping {
    pub api_version: Option<String>,
    pub os_type: Option<String>,
    pub builder_version: Option<String>,
    pub experimental: bool,
}

/// The lower of two `X.Y` versions.
pub fn min_version(a: &str, b: &str) -> String {
    if version_lt(a, b) {
        a.to_string()
    } else {
        b.to_string()
    }
}

/// `a < b` for `X.Y` versions.
pub fn version_lt(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

async fn collect(endpoint: &Endpoint, resp: Response<Incoming>) -> Result<Bytes> {
    resp.into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|source| Error::Http {
            endpoint: endpoint.display(),
            source,
        })
}

async fn decode<T: DeserializeOwned>(what: &str, resp: Response<Incoming>) -> Result<T> {
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|source| Error::Http {
            endpoint: what.to_string(),
            source,
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|source| Error::Json {
        what: what.to_string(),
        source,
    })
}

/// Read a response body frame by frame.
pub struct BodyReader {
    body: Incoming,
}

impl BodyReader {
    /// Wrap a response.
    pub fn new(resp: Response<Incoming>) -> BodyReader {
        BodyReader {
            body: resp.into_body(),
        }
    }

    /// The next data chunk, or `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(Error::Io(std::io::Error::other(e))),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        if !d.is_empty() {
                            return Ok(Some(d));
                        }
                    }
                }
            }
        }
    }
}

/// A stream of JSON values separated by whitespace or newlines (progress
/// messages, events, build output), as the daemon writes them.
pub struct JsonStream {
    reader: BodyReader,
    buf: Vec<u8>,
}

impl JsonStream {
    /// Wrap a response.
    pub fn new(resp: Response<Incoming>) -> JsonStream {
        JsonStream {
            reader: BodyReader::new(resp),
            buf: Vec::new(),
        }
    }

    /// The next value, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<serde_json::Value>> {
        loop {
            // Skip leading whitespace, then try to decode one value.
            let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
            if let Some(start) = start {
                let mut de = serde_json::Deserializer::from_slice(&self.buf[start..])
                    .into_iter::<serde_json::Value>();
                match de.next() {
                    Some(Ok(v)) => {
                        let used = start + de.byte_offset();
                        self.buf.drain(..used);
                        return Ok(Some(v));
                    }
                    Some(Err(e)) if e.is_eof() => {}
                    Some(Err(e)) => {
                        return Err(Error::Json {
                            what: "stream".to_string(),
                            source: e,
                        });
                    }
                    None => {}
                }
            } else {
                self.buf.clear();
            }
            match self.reader.chunk().await? {
                Some(c) => self.buf.extend_from_slice(&c),
                None => {
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Ok(None);
                    }
                    let e = serde_json::from_slice::<serde_json::Value>(&self.buf)
                        .err()
                        .unwrap_or_else(|| {
                            serde_json::Error::io(std::io::ErrorKind::UnexpectedEof.into())
                        });
                    return Err(Error::Json {
                        what: "stream".to_string(),
                        source: e,
                    });
                }
            }
        }
    }
}

/// Percent-encode a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Build a query string from pairs (`?a=1&b=2`, or empty).
pub fn query(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

/// The `X-Registry-Auth` header value for an auth config.
pub fn registry_auth_header(auth: &serde_json::Value) -> HeaderValue {
    let json = serde_json::to_vec(auth).unwrap_or_default();
    let b64 = base64::engine::general_purpose::URL_SAFE.encode(json);
    HeaderValue::from_str(&b64).unwrap_or(HeaderValue::from_static(""))
}

fn tls_config(t: &Tls) -> Result<rustls::ClientConfig, Box<dyn std::error::Error + Send + Sync>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if t.verify {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &t.ca {
            for cert in read_certs(ca)? {
                roots.add(cert)?;
            }
        } else {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert)?;
            let mut r =
                std::io::BufReader::new(std::fs::File::open(key).map_err(|e| with_path(key, &e))?);
            let key = rustls_pemfile::private_key(&mut r)
                .map_err(|e| with_path(key, &e))?
                .ok_or_else(|| format!("{}: no private key", key.display()))?;
            Ok(builder.with_client_auth_cert(certs, key)?)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn with_path(p: &std::path::Path, e: &std::io::Error) -> Box<dyn std::error::Error + Send + Sync> {
    format!("{}: {e}", p.display()).into()
}

fn read_certs(
    p: &PathBuf,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, Box<dyn std::error::Error + Send + Sync>>
{
    let mut r = std::io::BufReader::new(std::fs::File::open(p).map_err(|e| with_path(p, &e))?);
    let certs: Vec<_> = rustls_pemfile::certs(&mut r)
        .collect::<Result<_, _>>()
        .map_err(|e| with_path(p, &e))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates", p.display()).into());
    }
    Ok(certs)
}

/// `--tls` without `--tlsverify`: encrypt, but accept any server
/// certificate, as docker does.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A pinned, boxed future (for recursion-free async helpers).
pub type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_lt("1.9", "1.41"));
        assert_eq!(min_version("1.41", MAX_API_VERSION), "1.41");
        assert_eq!(min_version("1.51", MAX_API_VERSION), MAX_API_VERSION);
    }

    #[test]
    fn query_encodes() {
        assert_eq!(
            query(&[("filters", r#"{"a":["b c"]}"#.to_string())]),
            "?filters=%7B%22a%22%3A%5B%22b%20c%22%5D%7D"
        );
    }
}
