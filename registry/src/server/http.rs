//! HTTP translation for the distribution API: routes, headers, bodies, and
//! the one place where core errors become status codes and OCI error JSON.
//!
//! Owns URL parsing (repository names contain slashes, so routes are found
//! from the right), content negotiation headers, Range and Content-Range,
//! pagination links, access requirements per route, request logs and
//! metrics. It does not own protocol rules ([`crate::registry`]) or
//! credential checks ([`crate::auth`]).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;

use super::State;
use crate::auth::Access;
use crate::digest::Digest;
use crate::registry::{Error, Registry};
use crate::storage::ByteStream;

/// Response body type.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

const API_VERSION: &str = "registry/2.0";

fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    UploadStart(String),
    Upload(String, String),
    Referrers(String, String),
    Token,
    Metrics,
    NotFound,
}

impl Route {
    fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "blob_upload",
            Route::Referrers(..) => "referrers",
            Route::Token => "token",
            Route::Metrics => "metrics",
            Route::NotFound => "not_found",
        }
    }
}

fn route(path: &str) -> Route {
    match path {
        "/token" => return Route::Token,
        "/metrics" => return Route::Metrics,
        "/v2" | "/v2/" => return Route::Base,
        "/v2/_catalog" => return Route::Catalog,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::NotFound;
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::Tags(name.to_string());
    }
    // The marker nearest the end wins: names may contain "manifests" or
    // "blobs" as components.
    let markers = ["/manifests/", "/blobs/", "/referrers/"];
    let Some((pos, marker)) = markers
        .iter()
        .filter_map(|m| rest.rfind(m).map(|p| (p, *m)))
        .max_by_key(|(p, _)| *p)
    else {
        return Route::NotFound;
    };
    let name = rest[..pos].to_string();
    let tail = &rest[pos + marker.len()..];
    match marker {
        "/manifests/" => Route::Manifest(name, tail.to_string()),
        "/referrers/" => Route::Referrers(name, tail.to_string()),
        _ => {
            if tail == "uploads" || tail == "uploads/" {
                Route::UploadStart(name)
            } else if let Some(id) = tail.strip_prefix("uploads/") {
                Route::Upload(name, id.to_string())
            } else {
                Route::Blob(name, tail.to_string())
            }
        }
    }
}

fn query_params(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                if let Ok(v) =
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    out.push(v);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// An HTTP-level error: status, OCI code, message, extra headers.
struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: serde_json::Value,
    headers: Vec<(&'static str, String)>,
}

impl HttpError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: Vec::new(),
        }
    }
}

/// The one mapping from core errors to HTTP.
impl From<Error> for HttpError {
    fn from(e: Error) -> HttpError {
        let msg = crate::error_chain(&e);
        let (status, code) = match &e {
            Error::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            Error::UploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            Error::UploadInvalid { .. } => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            Error::RangeOutOfOrder { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID")
            }
            Error::DigestInvalid { .. } => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            Error::ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            Error::ManifestInvalid(_) | Error::TagInvalid(_) => {
                (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
            }
            Error::ManifestUnknown(_) | Error::ManifestNotAcceptable { .. } => {
                (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
            }
            Error::ManifestTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            Error::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            Error::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            Error::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "SIZE_INVALID")
            }
            Error::PaginationInvalid(_) => (StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
            Error::ReadOnly => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Error::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        };
        let mut he = HttpError::new(status, code, msg);
        match &e {
            Error::RangeOutOfOrder { id, size, .. } => {
                he.headers.push(("range", range_header(*size)));
                he.headers.push(("docker-upload-uuid", id.clone()));
            }
            Error::RangeNotSatisfiable { size, .. } => he
                .headers
                .push(("content-range", format!("bytes */{size}"))),
            Error::BlobUnknown(d) | Error::ManifestBlobUnknown(d) => {
                he.detail = json!({ "digest": d.to_string() });
            }
            Error::Storage(inner) => {
                tracing::error!(error = %crate::error_chain(inner), "storage failure");
            }
            _ => {}
        }
        he
    }
}

fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn error_response(e: &HttpError, head_only: bool) -> Response<Body> {
    let body =
        json!({ "errors": [ { "code": e.code, "message": e.message, "detail": e.detail } ] })
            .to_string();
    let mut b = Response::builder()
        .status(e.status)
        .header("docker-distribution-api-version", API_VERSION)
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in &e.headers {
        b = b.header(*k, v);
    }
    let resp = if head_only {
        b.header(header::CONTENT_LENGTH, body.len()).body(empty())
    } else {
        b.body(full(body))
    };
    resp.expect("error responses are built from valid parts")
}

/// Largest refused body that is still read to the end before answering.
const DRAIN_LIMIT: u64 = 64 << 20;

async fn drain(body: Incoming) {
    let mut s = BodyStream::new(body);
    while let Some(Ok(_)) = s.next().await {}
}

/// Request body as a stream of bytes, counting into metrics.
fn body_stream(state: &Arc<State>, body: Incoming) -> ByteStream {
    let state = state.clone();
    Box::pin(
        BodyStream::new(body)
            .try_filter_map(|f| async move { Ok(f.into_data().ok()) })
            .map_err(std::io::Error::other)
            .inspect_ok(move |b: &Bytes| state.metrics.add_received(b.len() as u64)),
    )
}

fn body_is_empty(req_headers: &HeaderMap, body: &Incoming) -> bool {
    use hyper::body::Body as _;
    if header_str(req_headers, header::CONTENT_LENGTH).is_some_and(|v| v.trim() == "0") {
        return true;
    }
    body.is_end_stream()
}

fn stream_body(state: &Arc<State>, s: ByteStream) -> Body {
    let state = state.clone();
    BodyExt::boxed_unsync(StreamBody::new(s.map(move |r| {
        r.map(|b| {
            state.metrics.add_sent(b.len() as u64);
            Frame::data(b)
        })
    })))
}

/// Parse `Range: bytes=a-b` (single range; suffix and open forms allowed).
fn parse_range(h: &str, size: u64) -> Option<Range<u64>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        let n = n.min(size);
        return Some(size - n..size);
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<u64>().ok()?.saturating_add(1).min(size)
    };
    Some(start..end)
}

/// Parse an upload `Content-Range: a-b` (inclusive); `bytes` prefixes tolerated.
fn parse_content_range(h: &str) -> Option<(u64, u64)> {
    let s = h.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next()?;
    let (a, b) = s.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = b.trim().parse().ok()?;
    (b >= a).then_some((a, b))
}

fn base_url(state: &State, headers: &HeaderMap) -> String {
    let host = header_str(headers, header::HOST).unwrap_or("localhost");
    let scheme = if state.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// What a route needs from the authenticator.
fn needed_access(method: &Method, r: &Route) -> Option<Vec<(Access, &'static str)>> {
    let pull = |n: &str| (Access::repository(n, &["pull"]), "pull");
    let push = |n: &str| (Access::repository(n, &["pull", "push"]), "push");
    let delete = |n: &str| (Access::repository(n, &["delete"]), "delete");
    Some(match r {
        Route::Base => vec![],
        Route::Catalog => vec![(Access::catalog(), "*")],
        Route::Tags(n) | Route::Referrers(n, _) => vec![pull(n)],
        Route::Manifest(n, _) | Route::Blob(n, _) => match *method {
            Method::GET | Method::HEAD => vec![pull(n)],
            Method::DELETE => vec![delete(n)],
            _ => vec![push(n)],
        },
        Route::UploadStart(n) | Route::Upload(n, _) => vec![push(n)],
        Route::Token | Route::Metrics | Route::NotFound => return None,
    })
}

/// Handle one request. Never fails: errors become OCI error responses.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let r = route(&path);
    let label = r.label();
    let (resp, user) = dispatch(&state, req, r).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    state
        .metrics
        .observe(method.as_str(), label, status, elapsed);
    if state.access_log {
        tracing::info!(
            target: "vessel_registry::access",
            %remote, %method, path, status, user, ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
    resp
}

async fn dispatch(
    state: &Arc<State>,
    req: Request<Incoming>,
    r: Route,
) -> (Response<Body>, String) {
    let head_only = req.method() == Method::HEAD;
    let params = query_params(req.uri().query());
    let mut user = "-".to_string();
    match &r {
        Route::Token => return (token_endpoint(state, &req, &params), user),
        Route::Metrics => {
            if !state.metrics_enabled {
                return (error_response(&not_found(), head_only), user);
            }
            let resp = Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(full(state.metrics.render()))
                .expect("metrics response is valid");
            return (resp, user);
        }
        Route::NotFound => return (error_response(&not_found(), head_only), user),
        _ => {}
    }
    if let Some(needed) = needed_access(req.method(), &r) {
        let base = base_url(state, req.headers());
        match state.auth.authorize(
            header_str(req.headers(), header::AUTHORIZATION),
            &needed,
            &base,
        ) {
            Ok(id) => user = id.name().to_string(),
            Err(ch) => {
                let mut he = HttpError::new(
                    StatusCode::UNAUTHORIZED,
                    if ch.insufficient_scope {
                        "DENIED"
                    } else {
                        "UNAUTHORIZED"
                    },
                    ch.message,
                );
                he.detail = json!(needed.iter().map(|(a, _)| a).collect::<Vec<_>>());
                he.headers.push(("www-authenticate", ch.www_authenticate));
                return (error_response(&he, head_only), user);
            }
        }
        // Cross-repository mount needs pull on the source; without it the
        // request silently becomes a plain upload.
    }
    let resp = match handle_route(state, req, r, &params).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e, head_only),
    };
    (resp, user)
}

fn not_found() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
}

fn unsupported(method: &Method) -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        format!("method {method} is not supported on this route"),
    )
}

fn base_response(status: StatusCode) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header("docker-distribution-api-version", API_VERSION)
}

/// The page size: the client's `n`, capped by the server's maximum.
fn parse_n(params: &[(String, String)], max: usize) -> Result<Option<usize>, HttpError> {
    match param(params, "n") {
        None | Some("") => Ok(Some(max)),
        Some(v) => v.parse::<usize>().map(|n| Some(n.min(max))).map_err(|_| {
            HttpError::from(Error::PaginationInvalid(format!(
                "n={v:?} is not a non-negative integer"
            )))
        }),
    }
}

fn digest_param(s: &str) -> Result<Digest, HttpError> {
    Registry::parse_digest(s).map_err(HttpError::from)
}

#[allow(clippy::too_many_lines)]
async fn handle_route(
    state: &Arc<State>,
    req: Request<Incoming>,
    r: Route,
    params: &[(String, String)],
) -> Result<Response<Body>, HttpError> {
    let reg = &state.registry;
    let method = req.method().clone();
    let head_only = method == Method::HEAD;
    match r {
        Route::Base => match method {
            Method::GET | Method::HEAD => Ok(base_response(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, 2)
                .body(if head_only { empty() } else { full("{}") })
                .expect("valid response")),
            m => Err(unsupported(&m)),
        },
        Route::Catalog => {
            if method != Method::GET {
                return Err(unsupported(&method));
            }
            let n = parse_n(params, state.max_page_size)?;
            let last = param(params, "last");
            let (repos, more) = reg.catalog(n, last).await?;
            let mut b =
                base_response(StatusCode::OK).header(header::CONTENT_TYPE, "application/json");
            if more {
                if let (Some(n), Some(l)) = (n, repos.last()) {
                    b = b.header(
                        header::LINK,
                        format!(
                            "</v2/_catalog?n={n}&last={}>; rel=\"next\"",
                            percent_encode(l)
                        ),
                    );
                }
            }
            Ok(b.body(full(json!({ "repositories": repos }).to_string()))
                .expect("valid response"))
        }
        Route::Tags(name) => {
            if method != Method::GET && method != Method::HEAD {
                return Err(unsupported(&method));
            }
            let n = parse_n(params, state.max_page_size)?;
            let last = param(params, "last");
            let (tags, more) = reg.list_tags(&name, n, last).await?;
            let mut b =
                base_response(StatusCode::OK).header(header::CONTENT_TYPE, "application/json");
            if more {
                if let (Some(n), Some(l)) = (n, tags.last()) {
                    b = b.header(
                        header::LINK,
                        format!(
                            "</v2/{name}/tags/list?n={n}&last={}>; rel=\"next\"",
                            percent_encode(l)
                        ),
                    );
                }
            }
            let body = json!({ "name": name, "tags": tags }).to_string();
            Ok(if head_only {
                b.header(header::CONTENT_LENGTH, body.len()).body(empty())
            } else {
                b.body(full(body))
            }
            .expect("valid response"))
        }
        Route::Manifest(name, reference) => manifest_route(state, req, &name, &reference).await,
        Route::Blob(name, digest) => {
            let digest = digest_param(&digest)?;
            match method {
                Method::GET | Method::HEAD => {
                    blob_get(state, &req, &name, &digest, head_only).await
                }
                Method::DELETE => {
                    reg.delete_blob(&name, &digest).await?;
                    Ok(base_response(StatusCode::ACCEPTED)
                        .header("docker-content-digest", digest.to_string())
                        .header(header::CONTENT_LENGTH, 0)
                        .body(empty())
                        .expect("valid response"))
                }
                m => Err(unsupported(&m)),
            }
        }
        Route::UploadStart(name) => {
            if method != Method::POST {
                return Err(unsupported(&method));
            }
            upload_start(state, req, &name, params).await
        }
        Route::Upload(name, id) => upload_route(state, req, &name, &id, params).await,
        Route::Referrers(name, digest) => {
            if method != Method::GET {
                return Err(unsupported(&method));
            }
            let digest = digest_param(&digest)?;
            let filter = param(params, "artifactType").filter(|s| !s.is_empty());
            let idx = reg.referrers(&name, &digest, filter).await?;
            let mut b =
                base_response(StatusCode::OK).header(header::CONTENT_TYPE, crate::oci::OCI_INDEX);
            if filter.is_some() {
                b = b.header("oci-filters-applied", "artifactType");
            }
            Ok(b.body(full(
                serde_json::to_vec(&idx).expect("referrers index serializes"),
            ))
            .expect("valid response"))
        }
        Route::Token | Route::Metrics | Route::NotFound => Err(not_found()),
    }
}

async fn blob_get(
    state: &Arc<State>,
    req: &Request<Incoming>,
    name: &str,
    digest: &Digest,
    head_only: bool,
) -> Result<Response<Body>, HttpError> {
    let reg = &state.registry;
    let b = base_response(StatusCode::OK)
        .header("docker-content-digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let range_header = header_str(req.headers(), header::RANGE);
    if !head_only && range_header.is_none() {
        // The common case in one storage round trip less.
        let reader = reg.get_blob(name, digest, None).await?;
        return Ok(b
            .header(header::CONTENT_LENGTH, reader.size)
            .body(stream_body(state, reader.stream))
            .expect("valid response"));
    }
    let size = reg.stat_blob(name, digest).await?;
    let range = match range_header {
        Some(h) => match parse_range(h, size) {
            Some(r) if r.start < r.end && r.end <= size => Some(r),
            _ => {
                return Err(Error::RangeNotSatisfiable {
                    start: 0,
                    end: 0,
                    size,
                }
                .into());
            }
        },
        None => None,
    };
    if head_only {
        let len = range.as_ref().map_or(size, |r| r.end - r.start);
        return Ok(b
            .header(header::CONTENT_LENGTH, len)
            .body(empty())
            .expect("valid response"));
    }
    let reader = reg.get_blob(name, digest, range.clone()).await?;
    let resp = match range {
        Some(r) => b
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_LENGTH, r.end - r.start)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", r.start, r.end - 1, reader.size),
            ),
        None => b.header(header::CONTENT_LENGTH, reader.size),
    };
    Ok(resp
        .body(stream_body(state, reader.stream))
        .expect("valid response"))
}

async fn manifest_route(
    state: &Arc<State>,
    req: Request<Incoming>,
    name: &str,
    reference: &str,
) -> Result<Response<Body>, HttpError> {
    let reg = &state.registry;
    let method = req.method().clone();
    match method {
        Method::GET | Method::HEAD => {
            let accept: Vec<&str> = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|s| s.split(';').next().unwrap_or("").trim())
                .filter(|s| !s.is_empty())
                .collect();
            let m = reg.get_manifest(name, reference, &accept).await?;
            let b = base_response(StatusCode::OK)
                .header(header::CONTENT_TYPE, m.media_type.as_str())
                .header("docker-content-digest", m.digest.to_string())
                .header(header::ETAG, format!("\"{}\"", m.digest))
                .header(header::CONTENT_LENGTH, m.bytes.len());
            let body = if method == Method::HEAD {
                empty()
            } else {
                state.metrics.add_sent(m.bytes.len() as u64);
                full(m.bytes)
            };
            Ok(b.body(body).expect("valid response"))
        }
        Method::PUT => {
            let limit = reg.limits().max_manifest_bytes;
            if let Some(len) = header_str(req.headers(), header::CONTENT_LENGTH)
                .and_then(|v| v.parse::<u64>().ok())
            {
                if len > limit {
                    // Read the body away (bounded) so the client sees the
                    // 413 instead of a reset while it is still sending.
                    if len <= DRAIN_LIMIT {
                        drain(req.into_body()).await;
                    }
                    return Err(Error::ManifestTooLarge { limit }.into());
                }
            }
            let content_type = header_str(req.headers(), header::CONTENT_TYPE)
                .unwrap_or("")
                .to_string();
            let body = http_body_util::Limited::new(req.into_body(), limit as usize + 1)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        HttpError::from(Error::ManifestTooLarge { limit })
                    } else {
                        HttpError::new(
                            StatusCode::BAD_REQUEST,
                            "MANIFEST_INVALID",
                            format!("reading body: {e}"),
                        )
                    }
                })?
                .to_bytes();
            state.metrics.add_received(body.len() as u64);
            let put = reg
                .put_manifest(name, reference, &content_type, body)
                .await?;
            let mut b = base_response(StatusCode::CREATED)
                .header(
                    header::LOCATION,
                    format!("/v2/{name}/manifests/{}", put.digest),
                )
                .header("docker-content-digest", put.digest.to_string())
                .header(header::CONTENT_LENGTH, 0);
            if let Some(s) = put.subject {
                b = b.header("oci-subject", s.to_string());
            }
            Ok(b.body(empty()).expect("valid response"))
        }
        Method::DELETE => {
            reg.delete_manifest(name, reference).await?;
            Ok(base_response(StatusCode::ACCEPTED)
                .header(header::CONTENT_LENGTH, 0)
                .body(empty())
                .expect("valid response"))
        }
        m => Err(unsupported(&m)),
    }
}

fn upload_accepted(name: &str, id: &str, size: u64) -> Response<Body> {
    base_response(StatusCode::ACCEPTED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
        .header(header::RANGE, range_header(size))
        .header("docker-upload-uuid", id)
        .header("oci-chunk-min-length", 0)
        .header(header::CONTENT_LENGTH, 0)
        .body(empty())
        .expect("valid response")
}

fn blob_created(name: &str, digest: &Digest) -> Response<Body> {
    base_response(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header("docker-content-digest", digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(empty())
        .expect("valid response")
}

async fn upload_start(
    state: &Arc<State>,
    req: Request<Incoming>,
    name: &str,
    params: &[(String, String)],
) -> Result<Response<Body>, HttpError> {
    let reg = &state.registry;
    if let Some(mount) = param(params, "mount") {
        let digest = digest_param(mount)?;
        if let Some(from) = param(params, "from") {
            let base = base_url(state, req.headers());
            let may_pull = state
                .auth
                .authorize(
                    header_str(req.headers(), header::AUTHORIZATION),
                    &[(Access::repository(from, &["pull"]), "pull")],
                    &base,
                )
                .is_ok();
            if may_pull && reg.mount_blob(name, from, &digest).await? {
                return Ok(blob_created(name, &digest));
            }
        }
        let id = reg.start_upload(name).await?;
        return Ok(upload_accepted(name, &id, 0));
    }
    if let Some(d) = param(params, "digest") {
        // Monolithic upload in a single POST.
        let digest = digest_param(d)?;
        let id = reg.start_upload(name).await?;
        let body = body_stream(state, req.into_body());
        let res = reg
            .finish_upload(name, &id, &digest, Some((Some(0), body)))
            .await;
        if res.is_err() {
            let _ = reg.cancel_upload(name, &id).await;
        }
        res?;
        return Ok(blob_created(name, &digest));
    }
    let id = reg.start_upload(name).await?;
    Ok(upload_accepted(name, &id, 0))
}

async fn upload_route(
    state: &Arc<State>,
    req: Request<Incoming>,
    name: &str,
    id: &str,
    params: &[(String, String)],
) -> Result<Response<Body>, HttpError> {
    let reg = &state.registry;
    let method = req.method().clone();
    match method {
        Method::GET => {
            let st = reg.upload_status(name, id).await?;
            Ok(base_response(StatusCode::NO_CONTENT)
                .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
                .header(header::RANGE, range_header(st.size))
                .header("docker-upload-uuid", id)
                .body(empty())
                .expect("valid response"))
        }
        Method::PATCH => {
            let start = chunk_start(state, &req, name, id).await?;
            let body = body_stream(state, req.into_body());
            let st = reg.append_upload(name, id, start, body).await?;
            Ok(upload_accepted(name, id, st.size))
        }
        Method::PUT => {
            let d = param(params, "digest").ok_or_else(|| {
                HttpError::from(Error::DigestInvalid {
                    digest: String::new(),
                    reason: "the digest query parameter is required".into(),
                })
            })?;
            let digest = digest_param(d)?;
            let last = if body_is_empty(req.headers(), req.body()) {
                None
            } else {
                let start = chunk_start(state, &req, name, id).await?;
                Some((start, body_stream(state, req.into_body())))
            };
            reg.finish_upload(name, id, &digest, last).await?;
            Ok(blob_created(name, &digest))
        }
        Method::DELETE => {
            reg.cancel_upload(name, id).await?;
            Ok(base_response(StatusCode::NO_CONTENT)
                .body(empty())
                .expect("valid response"))
        }
        m => Err(unsupported(&m)),
    }
}

/// The start offset a chunk declares (Content-Range), checked against its
/// Content-Length; `None` for a streamed chunk without Content-Range.
async fn chunk_start(
    state: &Arc<State>,
    req: &Request<Incoming>,
    name: &str,
    id: &str,
) -> Result<Option<u64>, HttpError> {
    let Some(cr) = header_str(req.headers(), header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let Some((a, b)) = parse_content_range(cr) else {
        // Unparseable ranges are out-of-order chunks as far as the client
        // can tell; report where the upload stands.
        let size = state.registry.upload_status(name, id).await?.size;
        return Err(Error::RangeOutOfOrder {
            id: id.to_string(),
            offset: 0,
            size,
        }
        .into());
    };
    if let Some(len) =
        header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
    {
        if len != b - a + 1 {
            return Err(Error::UploadInvalid {
                id: id.to_string(),
                reason: format!("Content-Range {a}-{b} does not match Content-Length {len}"),
            }
            .into());
        }
    }
    Ok(Some(a))
}

fn token_endpoint(
    state: &Arc<State>,
    req: &Request<Incoming>,
    params: &[(String, String)],
) -> Response<Body> {
    let Some(ts) = state.auth.token_service() else {
        return error_response(&not_found(), false);
    };
    let basic = header_str(req.headers(), header::AUTHORIZATION).and_then(crate::auth::parse_basic);
    let scopes: Vec<Access> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| {
            v.split(' ')
                .filter_map(Access::parse_scope)
                .collect::<Vec<_>>()
        })
        .collect();
    let Some(t) = ts.issue(basic, param(params, "service"), &scopes) else {
        let mut he = HttpError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "invalid username or password",
        );
        he.headers
            .push(("www-authenticate", "Basic realm=\"token\"".to_string()));
        return error_response(&he, false);
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(
            serde_json::to_vec(&t).expect("token response serializes"),
        ))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_from_the_right() {
        assert_eq!(route("/v2/"), Route::Base);
        assert_eq!(route("/v2/a/b/tags/list"), Route::Tags("a/b".into()));
        assert_eq!(
            route("/v2/a/manifests/b/blobs/sha256:00"),
            Route::Blob("a/manifests/b".into(), "sha256:00".into())
        );
        assert_eq!(
            route("/v2/x/blobs/uploads/"),
            Route::UploadStart("x".into())
        );
        assert_eq!(
            route("/v2/x/blobs/uploads/abc"),
            Route::Upload("x".into(), "abc".into())
        );
        assert_eq!(
            route("/v2/x/y/manifests/latest"),
            Route::Manifest("x/y".into(), "latest".into())
        );
        assert_eq!(
            route("/v2/x/referrers/sha256:1"),
            Route::Referrers("x".into(), "sha256:1".into())
        );
        assert_eq!(route("/v1/x"), Route::NotFound);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Some(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Some(90..100));
        assert_eq!(parse_range("bytes=0-1000", 100), Some(0..100));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 5-9/100"), Some((5, 9)));
        assert_eq!(parse_content_range("9-5"), None);
    }

    #[test]
    fn query_decoding() {
        let p = query_params(Some("scope=repository%3Aa%2Fb%3Apull&n=2&x"));
        assert_eq!(param(&p, "scope"), Some("repository:a/b:pull"));
        assert_eq!(param(&p, "n"), Some("2"));
        assert_eq!(param(&p, "x"), Some(""));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
