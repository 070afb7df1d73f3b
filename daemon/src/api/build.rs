//! `POST /build` (Docker's classic build endpoint, which the docker CLI
//! uses without buildx) and `POST /build/prune`. Translation only: the
//! query into build options, the uploaded context tar (plain or gzip) into
//! a directory, and progress into Docker's JSON message stream.

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use tokio::sync::mpsc;

use super::{Body, Req, json, streaming};
use crate::build::{self, BuildOptions, Builder};
use crate::engine::Engine;
use crate::engine::error::{Error, Kind};
use crate::engine::fs::ChanReader;

pub async fn route(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let p: Vec<&str> = req.parts.iter().map(String::as_str).collect();
    match (&req.method, p.as_slice()) {
        (&Method::POST, ["build"]) => build(engine, req),
        (&Method::POST, ["build", "prune"]) => prune(engine).await,
        (&Method::POST, ["build", "cancel"]) => Ok(super::status(StatusCode::OK)),
        _ => Err(Error::not_found(format!(
            "page not found: {} /{}",
            req.method,
            p.join("/")
        ))),
    }
}

pub(super) fn builder(engine: &Engine) -> Result<Arc<Builder>, Error> {
    build::builder_for(
        &engine.images,
        &engine.paths.root.join("build"),
        &engine.paths.exec_root,
    )
    .map_err(|e| Error::internal(chain(&e)))
}

/// An error and its causes, joined as Docker prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !m.is_empty() && !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn json_map(raw: Option<&str>, what: &str) -> Result<Vec<(String, Option<String>)>, Error> {
    let Some(raw) = raw.filter(|r| !r.is_empty() && *r != "null") else {
        return Ok(Vec::new());
    };
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| Error::invalid(format!("invalid {what}: {e}")))?;
    let Some(m) = v.as_object() else {
        return Err(Error::invalid(format!("invalid {what}: not a JSON object")));
    };
    Ok(m.iter()
        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string)))
        .collect())
}

fn line(key: &str, v: &serde_json::Value) -> Bytes {
    let mut b = serde_json::to_vec(&serde_json::json!({ key: v })).unwrap_or_default();
    b.extend_from_slice(b"\r\n");
    Bytes::from(b)
}

fn build(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let q = req.query.clone();
    let builder = builder(&engine)?;
    let mut labels = std::collections::BTreeMap::new();
    for (k, v) in json_map(q.get("labels"), "labels")? {
        labels.insert(k, v.unwrap_or_default());
    }
    let opts = BuildOptions {
        dockerfile: q.get("dockerfile").unwrap_or("Dockerfile").to_string(),
        tags: q.all("t").into_iter().filter(|t| !t.is_empty()).collect(),
        build_args: json_map(q.get("buildargs"), "buildargs")?,
        target: q
            .get("target")
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        no_cache: q.bool("nocache"),
        labels,
        platform: q
            .get("platform")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        host_network: q.get("networkmode") == Some("host"),
    };
    if let Some(remote) = q.get("remote").filter(|r| !r.is_empty()) {
        return Err(Error::new(
            Kind::NotImplemented,
            format!("building from a remote context ({remote}) is not supported"),
        ));
    }
    let quiet = q.bool("q");
    let dir = builder
        .temp_dir("context")
        .map_err(|e| Error::internal(chain(&e)))?;
    let ctx_dir = dir.join("context");
    std::fs::create_dir_all(&ctx_dir)?;
    let body = req.body_stream();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let send_err = |tx: mpsc::Sender<Bytes>, msg: String, code: Option<i32>| async move {
            let mut detail = serde_json::json!({"message": msg});
            if let Some(code) = code {
                detail["code"] = code.into();
            }
            let _ = tx
                .send(Bytes::from(
                    serde_json::to_vec(&serde_json::json!({"errorDetail": detail, "error": msg}))
                        .unwrap_or_default(),
                ))
                .await;
            let _ = tx.send(Bytes::from_static(b"\r\n")).await;
        };
        // 1. Unpack the context as it arrives.
        let target = ctx_dir.clone();
        let unpacked = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let mut r = io::BufReader::with_capacity(1 << 20, ChanReader::new(body));
            let head = r.fill_buf().map_err(|e| e.to_string())?;
            let gz = head.starts_with(&[0x1f, 0x8b]);
            if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
                return Err(
                    "context: only plain and gzip-compressed tar archives are supported".into(),
                );
            }
            let reader: Box<dyn Read> = if gz {
                Box::new(flate2::read::GzDecoder::new(r))
            } else {
                Box::new(r)
            };
            build::fsops::extract(
                reader,
                &target,
                build::fsops::ExtractOptions {
                    keep_owner: false,
                    owner: None,
                },
            )
            .map_err(|e| format!("context: {}", chain(&e)))
        })
        .await;
        match unpacked {
            Ok(Ok(_)) => {}
            Ok(Err(msg)) => {
                let _ = std::fs::remove_dir_all(&dir);
                send_err(tx, msg, None).await;
                return;
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                send_err(tx, e.to_string(), None).await;
                return;
            }
        }
        // 2. Build, forwarding progress.
        let (otx, mut orx) = mpsc::unbounded_channel::<String>();
        let out: build::Output = Arc::new(move |s: String| {
            let _ = otx.send(s);
        });
        let fwd_tx = tx.clone();
        let forward = tokio::spawn(async move {
            while let Some(s) = orx.recv().await {
                if quiet {
                    continue;
                }
                if fwd_tx
                    .send(line("stream", &serde_json::json!(s)))
                    .await
                    .is_err()
                {
                    // The client went away; keep draining so the build
                    // is not blocked.
                }
            }
        });
        let result = builder.build(ctx_dir, opts, out).await;
        let _ = forward.await;
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(o) => {
                let _ = tx
                    .send(line("aux", &serde_json::json!({"ID": o.id.to_string()})))
                    .await;
                if quiet {
                    let _ = tx
                        .send(line("stream", &serde_json::json!(format!("{}\n", o.id))))
                        .await;
                } else {
                    let _ = tx
                        .send(line(
                            "stream",
                            &serde_json::json!(format!(
                                "Successfully built {}\n",
                                &o.id.hex()[..12]
                            )),
                        ))
                        .await;
                    for t in &o.tags {
                        let _ = tx
                            .send(line(
                                "stream",
                                &serde_json::json!(format!("Successfully tagged {t}\n")),
                            ))
                            .await;
                    }
                }
                for t in &o.tags {
                    let mut attrs = std::collections::BTreeMap::new();
                    attrs.insert("name".to_string(), t.clone());
                    engine.events.emit("image", "tag", &o.id.to_string(), attrs);
                }
            }
            Err(e) => {
                tracing::info!(error = %chain(&e), "build failed");
                send_err(tx, chain(&e), e.run_exit_code()).await;
            }
        }
    });
    Ok(streaming(StatusCode::OK, "application/json", rx))
}

async fn prune(engine: Arc<Engine>) -> Result<Response<Body>, Error> {
    let b = builder(&engine)?;
    let (n, freed) = tokio::task::spawn_blocking(move || b.prune())
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| Error::internal(chain(&e)))?;
    let ids: Vec<String> = (0..n).map(|i| format!("step-{i}")).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"CachesDeleted": ids, "SpaceReclaimed": freed}),
    ))
}
