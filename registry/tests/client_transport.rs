//! The client's transport against misbehaving networks: a front proxy on
//! loopback (basic auth, 503/429 answers, redirects of blob downloads to a
//! second "CDN" host that cuts the first download short) in front of a
//! real vessel-registry. Checks retries with back-off, resumption with
//! Range, and that Authorization never leaves the registry's host.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Http, TestImage, TestRegistry};
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client as HClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use vessel_registry::client::{
    Client, ClientConfig, CredentialStore, Credentials, FsStore, NoProgress, PlatformSpec,
    Reference,
};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

#[derive(Default)]
struct Seen {
    front_auth: Mutex<Vec<(String, Option<String>)>>,
    cdn_auth: Mutex<Vec<(String, Option<String>)>>,
    blob_503s: AtomicUsize,
    manifest_429s: AtomicUsize,
    cdn_cuts: AtomicUsize,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

async fn forward(upstream: SocketAddr, req: http::Request<Incoming>) -> http::Response<Incoming> {
    let client: HClient<HttpConnector, Incoming> =
        HClient::builder(TokioExecutor::new()).build_http();
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = format!("http://{upstream}{pq}").parse().unwrap();
    parts.headers.remove(http::header::AUTHORIZATION);
    client
        .request(http::Request::from_parts(parts, body))
        .await
        .unwrap()
}

fn boxed(resp: http::Response<Incoming>) -> http::Response<Body> {
    resp.map(|b| b.map_err(std::io::Error::other).boxed_unsync())
}

async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Body>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_redirects_and_resumes_without_leaking_credentials() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let img = TestImage::new(&[2_500_000, 40_000], 500);
    img.push(&http, "tr/app", "v1").await;
    let upstream = reg.addr;
    let seen = Arc::new(Seen::default());

    // The "CDN": serves blobs from the registry, records Authorization, and
    // cuts the first download of the big layer after 1 MB.
    let big = vessel_registry::Digest::sha256_of(&img.layers[0]).to_string();
    let cdn = {
        let seen = seen.clone();
        let big = big.clone();
        serve(move |req: http::Request<Incoming>| {
            let seen = seen.clone();
            let big = big.clone();
            async move {
                let auth = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_string());
                let path = req.uri().path().to_string();
                seen.cdn_auth.lock().unwrap().push((path.clone(), auth));
                let ranged = req.headers().contains_key(http::header::RANGE);
                let resp = forward(upstream, req).await;
                if path.ends_with(&big)
                    && !ranged
                    && seen.cdn_cuts.fetch_add(1, Ordering::SeqCst) == 0
                {
                    // Send the headers and 1 MB of the body, then fail.
                    let (parts, body) = resp.into_parts();
                    let mut stream = body.into_data_stream();
                    let mut first = Vec::new();
                    while first.len() < 1_000_000 {
                        match stream.next().await {
                            Some(Ok(c)) => first.extend_from_slice(&c),
                            _ => break,
                        }
                    }
                    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                        Ok(Frame::data(Bytes::from(first))),
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "cut",
                        )),
                    ];
                    return http::Response::from_parts(
                        parts,
                        StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync(),
                    );
                }
                boxed(resp)
            }
        })
        .await
    };

    // The front: basic auth, 429 once for the manifest, 503 twice per
    // blob, then a redirect of blob GETs to the CDN.
    let expected_auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "carol:secret")
    );
    let front = {
        let seen = seen.clone();
        serve(move |req: http::Request<Incoming>| {
            let seen = seen.clone();
            let expected_auth = expected_auth.clone();
            async move {
                let auth = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_string());
                let path = req.uri().path().to_string();
                seen.front_auth
                    .lock()
                    .unwrap()
                    .push((path.clone(), auth.clone()));
                if auth.as_deref() != Some(expected_auth.as_str()) {
                    return http::Response::builder()
                        .status(401)
                        .header("www-authenticate", "Basic realm=\"front\"")
                        .body(full("{}"))
                        .unwrap();
                }
                if path.contains("/manifests/")
                    && seen.manifest_429s.fetch_add(1, Ordering::SeqCst) == 0
                {
                    return http::Response::builder()
                        .status(429)
                        .header("retry-after", "0")
                        .body(full("{}"))
                        .unwrap();
                }
                if path.contains("/blobs/") && req.method() == http::Method::GET {
                    if seen.blob_503s.fetch_add(1, Ordering::SeqCst) < 2 {
                        return http::Response::builder()
                            .status(503)
                            .body(full("busy"))
                            .unwrap();
                    }
                    return http::Response::builder()
                        .status(307)
                        .header("location", format!("http://{cdn}{path}"))
                        .body(full(""))
                        .unwrap();
                }
                boxed(forward(upstream, req).await)
            }
        })
        .await
    };

    let host = front.to_string();
    let mut creds = CredentialStore::new();
    creds.insert(
        &host,
        Credentials::Basic {
            username: "carol".into(),
            password: "secret".into(),
        },
    );
    let client = Client::new(
        ClientConfig {
            retry_base_delay: std::time::Duration::from_millis(1),
            ..ClientConfig::default()
        },
        creds,
    )
    .unwrap();
    let tmp = vessel_testkit::TempRoot::new("client-transport");
    let dst = FsStore::open(tmp.join("dst")).unwrap();
    let r = Reference::parse(&format!("{host}/tr/app:v1")).unwrap();
    let pulled = client
        .pull(&r, &PlatformSpec::host(), &dst, &NoProgress)
        .await
        .unwrap();
    assert_eq!(pulled.digest, img.digest());
    for l in &img.layers {
        let d = vessel_registry::Digest::sha256_of(l);
        assert_eq!(&std::fs::read(dst.blob_path(&d)).unwrap(), l);
    }

    assert!(
        seen.manifest_429s.load(Ordering::SeqCst) >= 2,
        "the 429 was retried"
    );
    assert!(
        seen.blob_503s.load(Ordering::SeqCst) >= 3,
        "503s were retried"
    );
    assert!(seen.cdn_cuts.load(Ordering::SeqCst) >= 1);
    let cdn_seen = seen.cdn_auth.lock().unwrap().clone();
    assert!(
        !cdn_seen.is_empty(),
        "blob downloads went through the redirect"
    );
    assert!(
        cdn_seen.iter().all(|(_, a)| a.is_none()),
        "Authorization leaked to the redirect target: {cdn_seen:?}"
    );
    // The cut download was resumed with a range request, not restarted.
    let big_requests: Vec<_> = cdn_seen.iter().filter(|(p, _)| p.ends_with(&big)).collect();
    assert_eq!(big_requests.len(), 2, "{big_requests:?}");
    let metrics = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
    assert!(
        metrics.contains("route=\"blob\",code=\"206\"} 1"),
        "{metrics}"
    );
    reg.stop().await;
}

/// A registry that refuses chunked uploads (400 on PATCH with
/// Content-Range): the client falls back to one monolithic PUT per blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_falls_back_to_monolithic() {
    let reg = TestRegistry::start().await;
    let upstream = reg.addr;
    let refused = Arc::new(AtomicUsize::new(0));
    let front = {
        let refused = refused.clone();
        serve(move |req: http::Request<Incoming>| {
            let refused = refused.clone();
            async move {
                if req.method() == http::Method::PATCH && req.headers().contains_key(http::header::CONTENT_RANGE) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return http::Response::builder()
                        .status(400)
                        .header("content-type", "application/json")
                        .body(full(r#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"no chunks here"}]}"#))
                        .unwrap();
                }
                boxed(forward(upstream, req).await)
            }
        })
        .await
    };
    let tmp = vessel_testkit::TempRoot::new("client-fallback");
    let img = TestImage::new(&[1_000_000, 300_000], 501);
    let src = FsStore::open(tmp.join("src")).unwrap();
    src.put(&img.config).unwrap();
    for l in &img.layers {
        src.put(l).unwrap();
    }
    let (m, _) = vessel_registry::oci::Manifest::parse(&img.manifest, img.media_type).unwrap();
    let push = vessel_registry::client::PushImage::Image {
        manifest: Bytes::from(img.manifest.clone()),
        media_type: img.media_type.to_string(),
        blobs: m.blob_refs().cloned().collect(),
    };
    let client = Client::new(
        ClientConfig {
            chunk_size: Some(100_000),
            ..ClientConfig::default()
        },
        CredentialStore::new(),
    )
    .unwrap();
    let r = Reference::parse(&format!("{front}/fb/app:v1")).unwrap();
    client.push(&r, &push, &src, &NoProgress).await.unwrap();
    assert_eq!(
        refused.load(Ordering::SeqCst),
        2,
        "one refused chunk per large blob"
    );
    let http = Http::new(&reg.url());
    for l in &img.layers {
        let d = vessel_registry::Digest::sha256_of(l);
        assert_eq!(
            http.get(&format!("/v2/fb/app/blobs/{d}"))
                .await
                .body
                .as_ref(),
            l.as_slice()
        );
    }
    reg.stop().await;
}
