//! HTTP to registries: TLS per host (system roots plus custom CAs, or no
//! verification for insecure registries), HTTPS-then-HTTP fallback for
//! insecure registries, the `WWW-Authenticate` flow, redirects that never
//! carry `Authorization` to another host, and retries with back-off on
//! connection errors, 5xx and 429.
//!
//! Owns single requests. It does not know about manifests or blobs beyond
//! the scope string the caller passes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::auth::{
    Challenge, CredentialStore, Credentials, TokenAnswer, TokenCache, parse_challenge,
};
use super::reference::is_loopback_registry;
use super::{ClientConfig, Error, Result};
use crate::storage::ByteStream;

/// Request body type.
pub type ReqBody = UnsyncBoxBody<Bytes, std::io::Error>;
type Hc = HyperClient<HttpsConnector<HttpConnector>, ReqBody>;

/// A request body: replayable bytes, or a one-shot stream.
pub enum Body {
    /// No body.
    Empty,
    /// Bytes that can be sent again on retry.
    Bytes(Bytes),
    /// A stream; the request is not retried once sent.
    Stream(ByteStream),
}

impl Body {
    fn take(&mut self) -> ReqBody {
        match std::mem::replace(self, Body::Empty) {
            Body::Empty => Empty::new().map_err(|never| match never {}).boxed_unsync(),
            Body::Bytes(b) => {
                *self = Body::Bytes(b.clone());
                Full::new(b).map_err(|never| match never {}).boxed_unsync()
            }
            Body::Stream(s) => {
                use futures_util::StreamExt as _;
                http_body_util::StreamBody::new(s.map(|r| r.map(hyper::body::Frame::data)))
                    .boxed_unsync()
            }
        }
    }

    fn replayable(&self) -> bool {
        !matches!(self, Body::Stream(_))
    }
}

/// One registry endpoint (scheme + client) once decided.
#[derive(Clone)]
struct Endpoint {
    scheme: &'static str,
    client: Hc,
}

/// The shared transport.
pub struct Transport {
    cfg: ClientConfig,
    creds: CredentialStore,
    tokens: TokenCache,
    endpoints: Mutex<HashMap<String, Endpoint>>,
    /// Clients for token realms and redirect targets, by verify mode.
    plain: Hc,
    insecure: Hc,
}

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
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_client(tls: rustls::ClientConfig) -> Hc {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(30)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https)
}

fn read_pem_certs(path: &std::path::Path, roots: &mut rustls::RootCertStore) -> Result<()> {
    let pem = std::fs::read(path).map_err(|source| Error::Tls {
        host: path.display().to_string(),
        message: format!("read CA file: {source}"),
    })?;
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        let c = c.map_err(|e| Error::Tls {
            host: path.display().to_string(),
            message: format!("parse CA file: {e}"),
        })?;
        roots.add(c).map_err(|e| Error::Tls {
            host: path.display().to_string(),
            message: format!("add CA: {e}"),
        })?;
    }
    Ok(())
}

/// The TLS client configuration that verifies servers the way registries
/// are verified: the system's roots (if `cfg.system_roots`), every
/// `cfg.ca_files` bundle, and for `host`, the `*.crt` files of its
/// `certs.d` directory. Anything else that downloads over HTTPS for the
/// daemon (ADD <url> in builds) trusts the same.
pub fn verified_tls(cfg: &ClientConfig, host: Option<&str>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if cfg.system_roots {
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
    }
    for p in &cfg.ca_files {
        read_pem_certs(p, &mut roots)?;
    }
    if let (Some(dir), Some(host)) = (&cfg.certs_dir, host) {
        // Docker's layout: <certs.d>/<host[:port]>/*.crt
        let d = dir.join(host);
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "crt") {
                    read_pem_certs(&p, &mut roots)?;
                }
            }
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            host: host.unwrap_or("").to_string(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Transport {
    /// Build from configuration.
    pub fn new(cfg: ClientConfig, creds: CredentialStore) -> Result<Transport> {
        let verified = verified_tls(&cfg, None)?;
        let insecure = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls {
                host: String::new(),
                message: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth();
        Ok(Transport {
            plain: build_client(verified),
            insecure: build_client(insecure),
            cfg,
            creds,
            tokens: TokenCache::default(),
            endpoints: Mutex::new(HashMap::new()),
        })
    }

    /// The credential store.
    pub fn credentials(&self) -> &CredentialStore {
        &self.creds
    }

    /// Whether `host` may be reached without TLS verification / over HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        (self.cfg.loopback_insecure && is_loopback_registry(host))
            || self.cfg.insecure_registries.iter().any(|h| h == host)
    }

    async fn endpoint(&self, host: &str) -> Result<Endpoint> {
        if let Some(e) = self
            .endpoints
            .lock()
            .expect("endpoint lock is not poisoned")
            .get(host)
        {
            return Ok(e.clone());
        }
        let ep = if self.is_insecure(host) {
            self.probe_insecure(host).await?
        } else {
            let has_own_ca = self
                .cfg
                .certs_dir
                .as_ref()
                .is_some_and(|d| d.join(host).is_dir());
            let client = if has_own_ca {
                build_client(verified_tls(&self.cfg, Some(host))?)
            } else {
                self.plain.clone()
            };
            Endpoint {
                scheme: "https",
                client,
            }
        };
        self.endpoints
            .lock()
            .expect("endpoint lock is not poisoned")
            .insert(host.to_string(), ep.clone());
        Ok(ep)
    }

    /// Pick HTTPS (unverified) or HTTP for an insecure registry, as Docker
    /// does: HTTPS first, then HTTP. Only an answering scheme is settled on;
    /// a registry that is down now is probed again next time.
    async fn probe_insecure(&self, host: &str) -> Result<Endpoint> {
        let probe = |scheme: &str| {
            Request::get(format!("{scheme}://{host}/v2/"))
                .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
                .map_err(|e| Error::InvalidUrl(e.to_string()))
        };
        let limit = Duration::from_secs(15);
        if let Ok(Ok(_)) = tokio::time::timeout(limit, self.insecure.request(probe("https")?)).await
        {
            return Ok(Endpoint {
                scheme: "https",
                client: self.insecure.clone(),
            });
        }
        match tokio::time::timeout(limit, self.plain.request(probe("http")?)).await {
            Ok(Ok(_)) => Ok(Endpoint {
                scheme: "http",
                client: self.plain.clone(),
            }),
            Ok(Err(e)) => Err(Error::Connect {
                url: format!("{host}/v2/"),
                message: format!("neither https nor http answers: {}", crate::error_chain(&e)),
            }),
            Err(_) => Err(Error::Connect {
                url: format!("{host}/v2/"),
                message: "neither https nor http answers within 15s".into(),
            }),
        }
    }

    /// The base URL of a registry (`https://host`).
    pub async fn base_url(&self, host: &str) -> Result<String> {
        Ok(format!("{}://{host}", self.endpoint(host).await?.scheme))
    }

    async fn fetch_token(&self, host: &str, ch: &Challenge, scopes: &[String]) -> Result<String> {
        let realm = ch.params.get("realm").ok_or_else(|| Error::Unauthorized {
            host: host.to_string(),
            message: "bearer challenge without realm".into(),
        })?;
        let creds = self.creds.get(host).map_err(Error::Credentials)?;
        let mut q: Vec<(String, String)> = Vec::new();
        if let Some(s) = ch.params.get("service") {
            q.push(("service".into(), s.clone()));
        }
        for s in scopes {
            q.push(("scope".into(), s.clone()));
        }
        let client = if realm.starts_with("https://") && self.is_insecure(host) {
            self.insecure.clone()
        } else {
            self.plain.clone()
        };
        let resp = if let Some(Credentials::IdentityToken(t)) = &creds {
            // OAuth2 refresh-token grant.
            q.push(("grant_type".into(), "refresh_token".into()));
            q.push(("refresh_token".into(), t.clone()));
            q.push(("client_id".into(), self.cfg.user_agent.clone()));
            let body = q
                .iter()
                .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            let req = Request::post(realm.as_str())
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::USER_AGENT, &self.cfg.user_agent)
                .body(
                    Full::new(Bytes::from(body))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .map_err(|e| Error::InvalidUrl(format!("{realm}: {e}")))?;
            client.request(req).await
        } else {
            let sep = if realm.contains('?') { '&' } else { '?' };
            let qs = q
                .iter()
                .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            let url = if qs.is_empty() {
                realm.clone()
            } else {
                format!("{realm}{sep}{qs}")
            };
            let mut b = Request::get(url.as_str()).header(header::USER_AGENT, &self.cfg.user_agent);
            if let Some(h) = creds.as_ref().and_then(Credentials::basic_header) {
                b = b.header(header::AUTHORIZATION, h);
            }
            let req = b
                .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
                .map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
            client.request(req).await
        }
        .map_err(|e| Error::Connect {
            url: realm.clone(),
            message: crate::error_chain(&e),
        })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Connect {
                url: realm.clone(),
                message: e.to_string(),
            })?
            .to_bytes();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized {
                host: host.to_string(),
                message: format!("token endpoint {realm} refused the credentials"),
            });
        }
        if !status.is_success() {
            return Err(Error::Unauthorized {
                host: host.to_string(),
                message: format!("token endpoint {realm} answered {status}"),
            });
        }
        let ans: TokenAnswer = serde_json::from_slice(&body).map_err(|e| Error::Unauthorized {
            host: host.to_string(),
            message: format!("token endpoint {realm} sent an invalid answer: {e}"),
        })?;
        let (token, ttl) = ans.into_token().ok_or_else(|| Error::Unauthorized {
            host: host.to_string(),
            message: format!("token endpoint {realm} sent no token"),
        })?;
        self.tokens.put(host, &scopes.join(" "), token.clone(), ttl);
        Ok(token)
    }

    /// The Authorization header to send to `host` for `scopes`, based on
    /// the challenge seen so far (none before the first 401).
    async fn authorization(&self, host: &str, scopes: &[String]) -> Result<Option<String>> {
        let Some(ch) = self.tokens.challenge(host) else {
            return Ok(None);
        };
        match ch.scheme.as_str() {
            "bearer" => {
                let key = scopes.join(" ");
                if let Some(t) = self.tokens.get(host, &key) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                Ok(Some(format!(
                    "Bearer {}",
                    self.fetch_token(host, &ch, scopes).await?
                )))
            }
            "basic" => Ok(self
                .creds
                .get(host)
                .map_err(Error::Credentials)?
                .and_then(|c| c.basic_header())),
            _ => Ok(None),
        }
    }

    /// Send a request to `host` (a registry, `path` starting with `/v2/`
    /// or an absolute URL from a Location header) with the auth flow,
    /// redirects and retries. Returns the final response, whatever its
    /// status (the caller interprets statuses other than 401).
    pub async fn send(
        &self,
        host: &str,
        method: Method,
        path: &str,
        headers: HeaderMap,
        mut body: Body,
        scopes: &[String],
    ) -> Result<Response<Incoming>> {
        let ep = self.endpoint(host).await?;
        let mut url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}://{host}{path}", ep.scheme)
        };
        let registry_authority = format!("{}://{host}", ep.scheme);
        let mut attempt = 0u32;
        let mut auth_retried = false;
        let mut redirects = 0;
        loop {
            let same_host = url.starts_with(&registry_authority)
                && url[registry_authority.len()..].starts_with(['/', '?']);
            let mut b = Request::builder().method(method.clone()).uri(url.as_str());
            for (k, v) in &headers {
                b = b.header(k, v);
            }
            b = b.header(header::USER_AGENT, &self.cfg.user_agent);
            if same_host {
                if let Some(a) = self.authorization(host, scopes).await? {
                    b = b.header(header::AUTHORIZATION, a);
                }
            }
            let req = b
                .body(body.take())
                .map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
            let client = if same_host {
                ep.client.clone()
            } else if self.is_insecure(host) {
                self.insecure.clone()
            } else {
                self.plain.clone()
            };
            let resp = match client.request(req).await {
                Ok(r) => r,
                Err(e) => {
                    let chain = crate::error_chain(&e);
                    // A TLS failure is the same on every attempt: say
                    // what it means instead of retrying.
                    if let Some(hint) = tls_failure(&chain, host) {
                        return Err(Error::Connect {
                            url,
                            message: format!("{hint} ({chain})"),
                        });
                    }
                    if body.replayable() && attempt < self.cfg.max_retries {
                        let d = self.backoff(attempt, None);
                        tracing::debug!(url, attempt, error = %crate::error_chain(&e), delay_ms = d.as_millis() as u64, "retrying after a connection error");
                        tokio::time::sleep(d).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(Error::Connect {
                        url,
                        message: crate::error_chain(&e),
                    });
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_host && !auth_retried && body.replayable()
            {
                if let Some(ch) = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge)
                {
                    auth_retried = true;
                    self.tokens.invalidate(host, &scopes.join(" "));
                    let have_creds = self.creds.get(host).map_err(Error::Credentials)?.is_some();
                    let is_bearer = ch.scheme == "bearer";
                    self.tokens.set_challenge(host, ch);
                    if is_bearer || have_creds {
                        continue;
                    }
                }
                return Ok(resp);
            }
            if status.is_redirection() {
                if let Some(loc) = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                {
                    if redirects >= 10 {
                        return Err(Error::InvalidUrl(format!("{url}: too many redirects")));
                    }
                    redirects += 1;
                    url = resolve_url(&url, loc);
                    continue;
                }
            }
            let retriable = status == StatusCode::TOO_MANY_REQUESTS
                || matches!(status.as_u16(), 500 | 502 | 503 | 504);
            if retriable && body.replayable() && attempt < self.cfg.max_retries {
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let d = self.backoff(attempt, retry_after);
                tracing::debug!(url, attempt, %status, delay_ms = d.as_millis() as u64, "retrying");
                tokio::time::sleep(d).await;
                attempt += 1;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Delay before retry number `attempt` (0-based): exponential from the
    /// configured base, capped, honouring Retry-After up to the cap.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = Duration::from_secs(30);
        if let Some(r) = retry_after {
            return r.min(cap);
        }
        self.cfg
            .retry_base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(cap)
    }

    /// Check credentials against a registry (`/v2/` and, for token auth, a
    /// token without scope).
    pub async fn login(&self, host: &str) -> Result<()> {
        let resp = self
            .send(
                host,
                Method::GET,
                "/v2/",
                HeaderMap::new(),
                Body::Empty,
                &[],
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => Err(Error::Unauthorized {
                host: host.to_string(),
                message: "credentials refused".into(),
            }),
            s => Err(Error::Status {
                url: format!("{host}/v2/"),
                status: s.as_u16(),
                code: String::new(),
                message: String::new(),
            }),
        }
    }

    /// Where a CA bundle for `host` would be read from.
    pub fn certs_dir_for(&self, host: &str) -> Option<PathBuf> {
        self.cfg.certs_dir.as_ref().map(|d| d.join(host))
    }
}

fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What a TLS handshake failure means, from its error chain: a plain
/// HTTP server answering an HTTPS request, or a certificate nobody here
/// trusts. `None` for other connection errors.
fn tls_failure(chain: &str, host: &str) -> Option<String> {
    if chain.contains("InvalidContentType") || chain.contains("corrupt message") {
        return Some(format!(
            "server gave HTTP response to HTTPS client: {host} speaks plain HTTP, which is used only for a registry listed as insecure"
        ));
    }
    if chain.contains("invalid peer certificate") {
        return Some(format!(
            "the certificate of {host} is not trusted: add its CA under the certificates directory for {host}, or list {host} as an insecure registry"
        ));
    }
    None
}

/// Resolve a Location header against the URL it answered.
pub fn resolve_url(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_string();
    }
    let Ok(u) = base.parse::<Uri>() else {
        return loc.to_string();
    };
    let scheme = u.scheme_str().unwrap_or("https");
    let auth = u.authority().map_or("", |a| a.as_str());
    if loc.starts_with("//") {
        return format!("{scheme}:{loc}");
    }
    if loc.starts_with('/') {
        return format!("{scheme}://{auth}{loc}");
    }
    let path = u.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{scheme}://{auth}{dir}{loc}")
}

/// Header map with one header.
pub fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(k.clone(), v);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_explained() {
        let plain = tls_failure(
            "client error (Connect): received corrupt message of type InvalidContentType",
            "10.1.2.3:5000",
        )
        .unwrap();
        assert!(
            plain.starts_with("server gave HTTP response to HTTPS client: 10.1.2.3:5000"),
            "{plain}"
        );
        let cert = tls_failure(
            "client error (Connect): invalid peer certificate: UnknownIssuer",
            "r.example:443",
        )
        .unwrap();
        assert!(
            cert.contains("certificate of r.example:443 is not trusted"),
            "{cert}"
        );
        assert_eq!(tls_failure("connection refused", "h:1"), None);
    }

    #[test]
    fn locations_resolve() {
        assert_eq!(
            resolve_url(
                "http://h:1/v2/a/blobs/uploads/",
                "/v2/a/blobs/uploads/x?s=1"
            ),
            "http://h:1/v2/a/blobs/uploads/x?s=1"
        );
        assert_eq!(
            resolve_url("https://h/v2/a/", "https://cdn/x"),
            "https://cdn/x"
        );
        assert_eq!(resolve_url("https://h/v2/a/b", "c"), "https://h/v2/a/c");
        assert_eq!(resolve_url("https://h/v2/a/b", "//cdn/y"), "https://cdn/y");
    }
}
