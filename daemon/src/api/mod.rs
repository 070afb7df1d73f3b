//! The Docker Engine API over HTTP (hyper). This layer only translates:
//! requests into engine calls, results and errors into responses. Error
//! kinds map to HTTP statuses in [`status_of`] and nowhere else.
//!
//! Paths may carry a version prefix (`/v1.24/` .. `/v{API_VERSION}/`) or
//! none. Attach and exec use Docker's connection upgrade ("hijack").

mod build;
mod containers;
mod images;
mod networks;
mod streams;
mod system;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::engine::error::{Error, Kind};

/// The API version this daemon speaks.
pub const API_VERSION: &str = "1.47";
/// The oldest version it accepts.
pub const MIN_API_VERSION: &str = "1.24";

/// Response body: full or streamed.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// The HTTP status of an engine error kind: the one place this mapping is
/// made.
pub fn status_of(kind: Kind) -> StatusCode {
    match kind {
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::InvalidArgument => StatusCode::BAD_REQUEST,
        Kind::NotModified => StatusCode::NOT_MODIFIED,
        Kind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Unauthorized => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A body with fixed text.
pub fn text(s: &'static str) -> Body {
    full(Bytes::from_static(s.as_bytes()))
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response with exactly `Content-Type: application/json`.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// JSON with the top-level keys of an object in `order` first (the order
/// Docker's own structs give), then the rest in their usual order. Clients
/// that print the raw document (`docker inspect`) show it as Docker would.
pub fn json_ordered(status: StatusCode, v: &serde_json::Value, order: &[&str]) -> Response<Body> {
    let Some(obj) = v.as_object() else {
        return json(status, v);
    };
    let mut out = Vec::with_capacity(4096);
    out.push(b'{');
    let mut first = true;
    let mut put = |k: &str, val: &serde_json::Value, out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, val);
    };
    for k in order {
        if let Some(val) = obj.get(*k) {
            put(k, val, &mut out);
        }
    }
    for (k, val) in obj {
        if !order.contains(&k.as_str()) {
            put(k, val, &mut out);
        }
    }
    out.push(b'}');
    let mut r = Response::new(full(out));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A status with no body.
pub fn status(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r
}

/// The response for an engine error: `{"message": ...}`.
pub fn error(e: &Error) -> Response<Body> {
    let code = status_of(e.kind);
    if code == StatusCode::NOT_MODIFIED {
        return status(code);
    }
    json(code, &serde_json::json!({ "message": e.message }))
}

/// A streamed body from a channel of chunks.
pub fn stream(rx: mpsc::Receiver<Bytes>) -> Body {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    BodyExt::boxed(StreamBody::new(s))
}

/// A streamed response.
pub fn streaming(
    status_code: StatusCode,
    content_type: &'static str,
    rx: mpsc::Receiver<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(stream(rx));
    *r.status_mut() = status_code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The parts of a request the handlers use.
pub struct Req {
    pub method: Method,
    /// Path without the version prefix, split on '/'.
    pub parts: Vec<String>,
    pub query: Query,
    pub head: http::request::Parts,
    body: Option<Incoming>,
    /// The API version the client asked for.
    pub version: String,
}

/// Query parameters.
#[derive(Debug, Default, Clone)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Vec::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.push((decode(k), decode(v)));
        }
        Query(out)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn str(&self, key: &str) -> &str {
        self.get(key).unwrap_or("")
    }

    /// Docker's booleans: 1/true/True/yes, absent or 0/false is false.
    pub fn bool(&self, key: &str) -> bool {
        matches!(
            self.get(key).map(str::to_ascii_lowercase).as_deref(),
            Some("1" | "true" | "yes")
        )
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// `filters` as a map of key to values; accepts both JSON shapes
    /// clients send (`{"k":{"v":true}}` and `{"k":["v"]}`).
    pub fn filters(&self) -> Result<BTreeMap<String, Vec<String>>, Error> {
        let Some(raw) = self.get("filters").filter(|f| !f.is_empty()) else {
            return Ok(BTreeMap::new());
        };
        let v: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| Error::invalid(format!("invalid filter: {e}")))?;
        let mut out = BTreeMap::new();
        for (k, vals) in v.as_object().into_iter().flatten() {
            let list: Vec<String> = match vals {
                serde_json::Value::Object(m) => m
                    .iter()
                    .filter(|(_, on)| on.as_bool() != Some(false))
                    .map(|(k, _)| k.clone())
                    .collect(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                serde_json::Value::String(s) => vec![s.clone()],
                _ => Vec::new(),
            };
            out.insert(k.clone(), list);
        }
        Ok(out)
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compare dotted versions ("1.44" < "1.47").
fn version_lt(a: &str, b: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').filter_map(|x| x.parse().ok()).collect() };
    p(a) < p(b)
}

impl Req {
    fn take_body(&mut self) -> Result<Incoming, Error> {
        self.body
            .take()
            .ok_or_else(|| Error::internal("request body already read"))
    }

    /// The body as bytes (bounded).
    pub async fn body(&mut self, limit: usize) -> Result<Bytes, Error> {
        let body = self.take_body()?;
        let limited = http_body_util::Limited::new(body, limit);
        limited
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .map_err(|e| Error::invalid(format!("reading the request body: {e}")))
    }

    /// The body parsed as JSON (empty body: `null`), nulls removed.
    pub async fn json(&mut self) -> Result<serde_json::Value, Error> {
        let b = self.body(16 << 20).await?;
        if b.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        let v: serde_json::Value =
            serde_json::from_slice(&b).map_err(|e| Error::invalid(format!("invalid JSON: {e}")))?;
        Ok(crate::engine::json::strip_nulls(v))
    }

    /// The body as a channel of chunks (for uploads).
    pub fn body_stream(&mut self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(16);
        let Ok(mut body) = self.take_body() else {
            return rx;
        };
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(data) = f.into_data() {
                            if tx.send(data).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        rx
    }

    /// Whether the client asked for a connection upgrade (hijack).
    pub fn wants_upgrade(&self) -> bool {
        self.head.headers.get(header::UPGRADE).is_some()
    }

    /// The pending connection upgrade, once the response is sent.
    pub fn on_upgrade(&mut self) -> Option<hyper::upgrade::OnUpgrade> {
        self.head.extensions.remove::<hyper::upgrade::OnUpgrade>()
    }
}

/// Handle one request.
pub async fn handle(
    engine: Arc<Engine>,
    inner: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = inner.method().clone();
    let path = inner.uri().path().to_string();
    let query = Query::parse(inner.uri().query());
    let (version, rest) = match path.strip_prefix("/v").and_then(|p| p.split_once('/')) {
        Some((v, rest)) if v.chars().all(|c| c.is_ascii_digit() || c == '.') => {
            (v.to_string(), format!("/{rest}"))
        }
        _ => (API_VERSION.to_string(), path.clone()),
    };
    if version_lt(API_VERSION, &version) {
        return Ok(json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"message": format!("client version {version} is too new. Maximum supported API version is {API_VERSION}")}),
        ));
    }
    if version_lt(&version, MIN_API_VERSION) {
        return Ok(json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"message": format!("client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version")}),
        ));
    }
    let parts: Vec<String> = rest
        .split('/')
        .filter(|p| !p.is_empty())
        .map(decode)
        .collect();
    tracing::debug!(%method, %path, "request");
    let (head, body) = inner.into_parts();
    let req = Req {
        method,
        parts,
        query,
        head,
        body: Some(body),
        version,
    };
    let resp = match route(engine, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.kind == Kind::Internal {
                tracing::warn!(error = %e.message, %path, "request failed");
            }
            error(&e)
        }
    };
    Ok(with_common_headers(resp))
}

fn with_common_headers(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert(
        header::SERVER,
        HeaderValue::from_static(concat!("Vessel/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    r
}

async fn route(engine: Arc<Engine>, mut req: Req) -> Result<Response<Body>, Error> {
    let p: Vec<&str> = req.parts.iter().map(String::as_str).collect();
    match p.first().copied() {
        Some("_ping") => system::ping(&req),
        Some("version") => Ok(system::version()),
        Some("info") => system::info(&engine).await,
        Some("events") => system::events(&engine, &req),
        Some("system") if p.get(1) == Some(&"df") => system::df(&engine).await,
        Some("containers") => containers::route(engine, &mut req).await,
        Some("exec") => containers::exec_route(engine, &mut req).await,
        Some("images") => images::route(engine, &mut req).await,
        Some("commit") => images::commit(engine, &mut req).await,
        Some("volumes") => system::volumes(engine, &mut req).await,
        Some("networks") => networks::route(engine, &mut req).await,
        Some("auth") if req.method == Method::POST => images::auth(engine, &mut req).await,
        Some("build") => build::route(engine, &mut req).await,
        Some("swarm") if p.get(1) == Some(&"leave") => Err(Error::new(
            Kind::Unavailable,
            "This node is not part of a swarm",
        )),
        Some("swarm" | "nodes" | "services" | "tasks" | "secrets" | "configs") => Err(Error::new(
            Kind::Unavailable,
            "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.",
        )),
        Some("plugins") if req.method == Method::GET && p.len() == 1 => {
            Ok(json(StatusCode::OK, &serde_json::json!([])))
        }
        Some("plugins" | "session" | "distribution" | "grpc") => Err(Error::new(
            Kind::NotImplemented,
            format!("{} is not supported by this daemon", p[0]),
        )),
        _ => Err(Error::not_found(format!(
            "page not found: {} /{}",
            req.method,
            p.join("/")
        ))),
    }
}

/// Serve connections from a listener until `shutdown` resolves.
pub async fn serve_unix(
    engine: Arc<Engine>,
    listener: tokio::net::UnixListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        spawn_connection(engine.clone(), hyper_util::rt::TokioIo::new(stream));
    }
}

/// Serve TCP connections (plain, when explicitly allowed, or TLS).
pub async fn serve_tcp(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let engine = engine.clone();
        match &tls {
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(s) => spawn_connection(engine, hyper_util::rt::TokioIo::new(s)),
                        Err(e) => tracing::debug!(error = %e, "TLS handshake"),
                    }
                });
            }
            None => spawn_connection(engine, hyper_util::rt::TokioIo::new(stream)),
        }
    }
}

fn spawn_connection<I>(engine: Arc<Engine>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| handle(engine.clone(), req));
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection");
        }
    });
}
