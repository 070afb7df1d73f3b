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
use crate::engine::distribution::{AuthConfig, PullRequest};
use crate::engine::error::{Error, Kind};
use crate::engine::fs::ChanReader;
use crate::engine::spec;
use crate::engine::types::HostConfig;

pub async fn route(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let p: Vec<&str> = req.parts.iter().map(String::as_str).collect();
    match (&req.method, p.as_slice()) {
        (&Method::POST, ["build"]) => match build(engine, req) {
            Ok(r) => Ok(r),
            Err(e) => {
                // Refused before the context was read: read it anyway (up
                // to a bound), or the client, still sending, sees a broken
                // pipe instead of the error.
                discard_body(req, 256 << 20).await;
                Err(e)
            }
        },
        (&Method::POST, ["build", "prune"]) => prune(engine).await,
        (&Method::POST, ["build", "cancel"]) => Ok(super::status(StatusCode::OK)),
        _ => Err(Error::not_found(format!(
            "page not found: {} /{}",
            req.method,
            p.join("/")
        ))),
    }
}

async fn discard_body(req: &mut Req, limit: usize) {
    let mut rx = req.body_stream();
    let mut seen = 0;
    while let Some(b) = rx.recv().await {
        seen += b.len();
        if seen > limit {
            return;
        }
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

/// `networkmode`: the RUN containers' network. `default` (what the docker
/// CLI sends without `--network`) and `none` give each RUN its own network
/// namespace with only loopback; `host` shares the daemon's. Returns
/// whether it is the host network.
fn network_mode(mode: Option<&str>) -> Result<bool, Error> {
    match mode.unwrap_or("") {
        "" | "default" | "none" => Ok(false),
        "host" => Ok(true),
        "bridge" => Err(Error::invalid(
            "network mode \"bridge\" is not supported for builds: RUN steps have only loopback (default, none) or the host network (host)",
        )),
        other => Err(Error::invalid(format!(
            "network mode {other:?} is not supported for builds: use default, none or host"
        ))),
    }
}

fn int_param(q: &super::Query, key: &str) -> Result<i64, Error> {
    match q.get(key).filter(|v| !v.is_empty()) {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| Error::invalid(format!("invalid {key}: {v:?} is not an integer"))),
    }
}

/// The RUN containers' limits from the query, checked and in OCI form.
fn limits(q: &super::Query) -> Result<build::Limits, Error> {
    let mut hc = HostConfig {
        memory: int_param(q, "memory")?,
        memory_swap: int_param(q, "memswap")?,
        cpu_shares: int_param(q, "cpushares")?,
        cpu_period: int_param(q, "cpuperiod")?,
        cpu_quota: int_param(q, "cpuquota")?,
        cpuset_cpus: q.str("cpusetcpus").to_string(),
        cpuset_mems: q.str("cpusetmems").to_string(),
        ..HostConfig::default()
    };
    if hc.memory < 0 || (hc.memory > 0 && hc.memory < 6 << 20) {
        return Err(Error::invalid(
            "invalid memory: the minimum allowed memory limit is 6MB",
        ));
    }
    if hc.memory_swap > 0 && hc.memory > 0 && hc.memory_swap < hc.memory {
        return Err(Error::invalid(
            "invalid memswap: the memory and swap limit must be larger than the memory limit",
        ));
    }
    if hc.memory_swap > 0 && hc.memory == 0 {
        return Err(Error::invalid(
            "invalid memswap: a memory and swap limit needs a memory limit",
        ));
    }
    let shm = int_param(q, "shmsize")?;
    if shm < 0 {
        return Err(Error::invalid("invalid shmsize: it must not be negative"));
    }
    if let Some(raw) = q.get("ulimits").filter(|r| !r.is_empty() && *r != "null") {
        hc.ulimits = serde_json::from_str(raw)
            .map_err(|e| Error::invalid(format!("invalid ulimits: {e}")))?;
    }
    let rlimits = spec::rlimits(&hc.ulimits)?;
    // Raising a hard limit needs CAP_SYS_RESOURCE: say so now, naming the
    // limit, rather than failing every RUN.
    for u in &hc.ulimits {
        if let Some(cur) = current_hard_limit(&u.name) {
            if u.hard < 0 || u.hard as u64 > cur {
                return Err(Error::invalid(format!(
                    "invalid ulimit {}: hard limit {} is above the daemon's own hard limit {cur}, which it cannot raise",
                    u.name, u.hard
                )));
            }
        }
    }
    let resources = spec::resources(&hc)?;
    let empty = resources.as_object().is_none_or(serde_json::Map::is_empty);
    Ok(build::Limits {
        resources: (!empty).then_some(resources),
        rlimits,
        shm_size: shm as u64,
    })
}

/// The daemon's hard limit for an rlimit name, if it is a known one and
/// limited.
fn current_hard_limit(name: &str) -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit};
    let res = match name {
        "nofile" => Resource::RLIMIT_NOFILE,
        "nproc" => Resource::RLIMIT_NPROC,
        "core" => Resource::RLIMIT_CORE,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        "stack" => Resource::RLIMIT_STACK,
        "fsize" => Resource::RLIMIT_FSIZE,
        "data" => Resource::RLIMIT_DATA,
        "cpu" => Resource::RLIMIT_CPU,
        "as" => Resource::RLIMIT_AS,
        "locks" => Resource::RLIMIT_LOCKS,
        "sigpending" => Resource::RLIMIT_SIGPENDING,
        "msgqueue" => Resource::RLIMIT_MSGQUEUE,
        "nice" => Resource::RLIMIT_NICE,
        "rtprio" => Resource::RLIMIT_RTPRIO,
        "rttime" => Resource::RLIMIT_RTTIME,
        _ => return None,
    };
    let (_, hard) = getrlimit(res).ok()?;
    (hard != nix::sys::resource::RLIM_INFINITY).then_some(hard)
}

/// `extrahosts`: `name:address` entries, one per parameter or
/// comma-separated.
fn extra_hosts(raw: &[String]) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for entry in raw.iter().flat_map(|r| r.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (name, addr) = entry.split_once(['=', ':']).ok_or_else(|| {
            Error::invalid(format!("invalid extra host {entry:?}: use name:address"))
        })?;
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        if name.is_empty() || addr.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::invalid(format!(
                "invalid extra host {entry:?}: use name:address with an IP address"
            )));
        }
        out.push((name.to_string(), addr.to_string()));
    }
    Ok(out)
}

/// Pulls for `--pull` through the engine, forwarding its status lines to
/// the build output. Runs on the builder's blocking threads.
/// Credentials come from the request's `X-Registry-Config`, by registry.
fn puller(
    engine: &Arc<Engine>,
    rt: tokio::runtime::Handle,
    registry_config: String,
) -> build::Puller {
    let engine = engine.clone();
    build::Puller(Arc::new(move |reference: &str, out: &build::Output| {
        let (tx, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
        let registry = vessel_registry::client::Reference::parse(reference)
            .map(|r| r.registry)
            .unwrap_or_default();
        let auth =
            AuthConfig::from_config_header(&registry_config, &registry).map_err(|e| e.message)?;
        let request = PullRequest {
            reference: reference.to_string(),
            platform: String::new(),
            auth,
        };
        let engine = engine.clone();
        let out = out.clone();
        rt.block_on(async move {
            let task = tokio::spawn(async move { engine.image_pull(request, tx).await });
            while let Some(m) = rx.recv().await {
                let status = m["status"].as_str().unwrap_or_default();
                // Per-layer progress is noise in a build log; keep the
                // summary lines.
                if !status.is_empty() && m["id"].is_null() {
                    out(format!("{status}\n"));
                }
            }
            match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.message),
                Err(e) => Err(format!("task failed: {e}")),
            }
        })
    }))
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
        host_network: network_mode(q.get("networkmode"))?,
        pull: q.bool("pull"),
        puller: Some(puller(
            &engine,
            tokio::runtime::Handle::current(),
            req.head
                .headers
                .get("x-registry-config")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        )),
        limits: limits(&q)?,
        extra_hosts: extra_hosts(&q.all("extrahosts"))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_modes() {
        assert!(!network_mode(None).unwrap());
        assert!(!network_mode(Some("default")).unwrap());
        assert!(!network_mode(Some("none")).unwrap());
        assert!(network_mode(Some("host")).unwrap());
        let e = network_mode(Some("bridge")).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidArgument, "{}", e.message);
        assert!(
            e.message.contains("\"bridge\" is not supported"),
            "{}",
            e.message
        );
        assert!(network_mode(Some("container:x")).is_err());
    }

    #[test]
    fn extra_host_entries() {
        let got =
            extra_hosts(&["a:10.0.0.1,b=::1".to_string(), "c:[fe80::1]".to_string()]).unwrap();
        assert_eq!(
            got,
            vec![
                ("a".to_string(), "10.0.0.1".to_string()),
                ("b".to_string(), "::1".to_string()),
                ("c".to_string(), "fe80::1".to_string()),
            ]
        );
        assert!(extra_hosts(&["nocolon".to_string()]).is_err());
        assert!(extra_hosts(&["h:host-gateway".to_string()]).is_err());
        assert!(extra_hosts(&[":1.2.3.4".to_string()]).is_err());
    }
}
