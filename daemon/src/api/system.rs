//! `/_ping`, `/version`, `/info`, `/events`, `/system/df`, `/volumes` and
//! `/networks`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{API_VERSION, Body, MIN_API_VERSION, Req, json as json_resp, streaming};
use crate::engine::Engine;
use crate::engine::container::Status;
use crate::engine::error::Error;
use crate::engine::events;

#[allow(
    clippy::unnecessary_wraps,
    reason = "every route handler has this shape"
)]
pub fn ping(req: &Req) -> Result<Response<Body>, Error> {
    let mut r = if req.method == Method::HEAD {
        Response::new(super::empty())
    } else {
        Response::new(super::text("OK"))
    };
    let h = r.headers_mut();
    h.insert("Builder-Version", HeaderValue::from_static("1"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(r)
}

fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn version() -> Response<Body> {
    let v = env!("CARGO_PKG_VERSION");
    json_resp(
        StatusCode::OK,
        &json!({
            "Platform": {"Name": "Vessel Engine"},
            "Components": [
                {"Name": "Engine", "Version": v, "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux", "Arch": arch(), "KernelVersion": kernel(), "GitCommit": "", "GoVersion": "", "BuildTime": "", "Experimental": "false"}},
                {"Name": "vessel-runtime", "Version": vessel_runtime::VERSION, "Details": {"GitCommit": ""}},
            ],
            "Version": v,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": "",
            "Os": "linux",
            "Arch": arch(),
            "KernelVersion": kernel(),
            "BuildTime": "",
        }),
    )
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub async fn info(engine: &Arc<Engine>) -> Result<Response<Body>, Error> {
    let all = engine.all();
    let running = all
        .iter()
        .filter(|c| c.state.status == Status::Running)
        .count();
    let paused = all
        .iter()
        .filter(|c| c.state.status == Status::Paused)
        .count();
    let images = engine.image_list().await?.len();
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let os = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("Linux")
        .trim_matches('"')
        .to_string();
    let layout = vessel_runtime::cgroups::layout();
    // As Docker lists them: the Hub, then each --insecure-registry.
    let mut index_configs = serde_json::Map::new();
    index_configs.insert(
        "docker.io".into(),
        json!({"Name": "docker.io", "Mirrors": [], "Secure": true, "Official": true}),
    );
    for h in &engine.registry.insecure {
        index_configs.insert(
            h.clone(),
            json!({"Name": h, "Mirrors": [], "Secure": false, "Official": false}),
        );
    }
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ncpu = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Ok(json_resp(
        StatusCode::OK,
        &json!({
            "ID": machine_id(),
            "Containers": all.len(),
            "ContainersRunning": running,
            "ContainersPaused": paused,
            "ContainersStopped": all.len() - running - paused,
            "Images": images,
            "Driver": "overlay2",
            "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"], ["Using metacopy", "false"], ["Native Overlay Diff", "true"], ["userxattr", "false"]],
            "Plugins": {"Volume": ["local"], "Network": ["host", "null"], "Authorization": null, "Log": ["json-file", "none"]},
            "MemoryLimit": true,
            "SwapLimit": std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() || layout == vessel_runtime::cgroups::Layout::V2,
            "KernelMemory": false,
            "KernelMemoryTCP": false,
            "CpuCfsPeriod": true,
            "CpuCfsQuota": true,
            "CPUShares": true,
            "CPUSet": true,
            "PidsLimit": true,
            "IPv4Forwarding": std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|s| s.trim() == "1"),
            "BridgeNfIptables": false,
            "BridgeNfIp6tables": false,
            "Debug": false,
            "NFd": std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count),
            "OomKillDisable": true,
            "NGoroutines": 0,
            "SystemTime": vessel_runtime::state::now_rfc3339(),
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": if layout == vessel_runtime::cgroups::Layout::V2 { "2" } else { "1" },
            "NEventsListener": 0,
            "KernelVersion": kernel(),
            "OperatingSystem": os,
            "OSVersion": "",
            "OSType": "linux",
            "Architecture": std::env::consts::ARCH,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"AllowNondistributableArtifactsCIDRs": null, "AllowNondistributableArtifactsHostnames": null, "InsecureRegistryCIDRs": ["127.0.0.0/8", "::1/128"], "IndexConfigs": index_configs, "Mirrors": null},
            // Vessel's own: where `--registry` serves (null without it).
            "EmbeddedRegistry": engine.registry.embedded.map(|a| a.to_string()),
            "NCPU": ncpu,
            "MemTotal": crate::engine::stats::host_memory(),
            "GenericResources": null,
            "DockerRootDir": engine.paths.root,
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
            "Name": hostname,
            "Labels": [],
            "ExperimentalBuild": false,
            "ServerVersion": env!("CARGO_PKG_VERSION"),
            "Runtimes": {"runc": {"path": "vessel-runtime"}, "vessel": {"path": "vessel-runtime"}, "vm": {"path": "vessel-shim", "runtimeArgs": ["microvm"]}},
            "DefaultRuntime": "runc",
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
            "LiveRestoreEnabled": true,
            "Isolation": "",
            "InitBinary": "",
            "ContainerdCommit": {"ID": ""},
            "RuncCommit": {"ID": ""},
            "InitCommit": {"ID": ""},
            "SecurityOptions": ["name=seccomp,profile=builtin", "name=cgroupns"],
            "Warnings": [],
        }),
    ))
}

fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn events(engine: &Arc<Engine>, req: &Req) -> Result<Response<Body>, Error> {
    let filters = req.query.filters()?;
    let parse = |k: &str| -> Option<f64> {
        let v = req.query.get(k).filter(|v| !v.is_empty())?;
        v.parse::<f64>()
            .ok()
            .or_else(|| crate::engine::container::parse_rfc3339(v).map(|t| t as f64))
    };
    let since = parse("since");
    let until = parse("until");
    // Clients send whole seconds ("--until 0s" is now, truncated): an
    // integer `until` covers the whole of that second, so events from the
    // last moments before the request are not lost to the truncation.
    let whole_seconds = req
        .query
        .get("until")
        .is_some_and(|raw| !raw.contains('.') && !raw.contains('T'));
    let after_until =
        move |t: f64| until.is_some_and(|u| if whole_seconds { t >= u + 1.0 } else { t > u });
    let (past, mut rx) = engine.events.subscribe();
    let (tx, out) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let send = |ev: &events::Event| -> Option<Bytes> {
            let t = ev.time_nano as f64 / 1e9;
            if since.is_some_and(|s| t < s) || after_until(t) || !events::matches(ev, &filters) {
                return None;
            }
            let mut b = serde_json::to_vec(ev).unwrap_or_default();
            b.push(b'\n');
            Some(Bytes::from(b))
        };
        if since.is_some() {
            for ev in &past {
                if let Some(b) = send(ev) {
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
            }
        }
        loop {
            let deadline = until.map(|u| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                std::time::Duration::from_secs_f64((u - now).max(0.0))
            });
            let ev = if let Some(d) = deadline {
                match tokio::time::timeout(d, rx.recv()).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    r = rx.recv() => r,
                    () = tx.closed() => return,
                }
            };
            match ev {
                Ok(ev) => {
                    if let Some(b) = send(&ev) {
                        if tx.send(b).await.is_err() {
                            return;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    Ok(streaming(StatusCode::OK, "application/json", out))
}

pub async fn df(engine: &Arc<Engine>) -> Result<Response<Body>, Error> {
    let mut layers = 0u64;
    let mut images = Vec::new();
    for row in engine.image_list().await? {
        layers += row.summary.size;
        images.push(json!({
            "Id": row.summary.id.to_string(), "ParentId": "", "RepoTags": row.summary.repo_tags,
            "RepoDigests": row.summary.repo_digests, "Created": row.created_unix, "Size": row.summary.size,
            "SharedSize": 0, "VirtualSize": row.summary.size, "Labels": row.labels, "Containers": row.containers,
        }));
    }
    let mut containers = Vec::new();
    for c in engine.all() {
        let net = engine.network_settings(&c).await;
        let mut s = super::containers::summary(&c, &net);
        let rw = crate::engine::volumes::dir_size(&engine.paths.container(&c.id).join("upper"));
        s["SizeRw"] = json!(rw);
        s["SizeRootFs"] = json!(rw);
        containers.push(s);
    }
    let in_use = engine.volumes_in_use("");
    let volumes: Vec<Value> = engine
        .volumes
        .list()
        .into_iter()
        .map(|v| {
            let refs = in_use.iter().filter(|n| **n == v.name).count();
            let mut j = serde_json::to_value(&v).unwrap_or_default();
            j["UsageData"] = json!({"Size": engine.volumes.size(&v.name), "RefCount": refs});
            j
        })
        .collect();
    Ok(json_resp(
        StatusCode::OK,
        &json!({"LayersSize": layers, "Images": images, "Containers": containers, "Volumes": volumes, "BuildCache": []}),
    ))
}

pub async fn volumes(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let p: Vec<String> = req.parts.clone();
    let m = req.method.clone();
    match (
        &m,
        p.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
    ) {
        (&Method::GET, ["volumes"]) => {
            let filters = req.query.filters()?;
            let in_use = engine.volumes_in_use("");
            let list: Vec<Value> = engine
                .volumes
                .list()
                .into_iter()
                .filter(|v| {
                    filters.iter().all(|(k, vals)| {
                        vals.is_empty()
                            || vals.iter().any(|x| match k.as_str() {
                                "name" => v.name.contains(x.as_str()),
                                "dangling" => (x == "true" || x == "1") != in_use.contains(&v.name),
                                "driver" => v.driver == *x,
                                "label" => match x.split_once('=') {
                                    Some((lk, lv)) => {
                                        v.labels.get(lk).map(String::as_str) == Some(lv)
                                    }
                                    None => v.labels.contains_key(x),
                                },
                                _ => false,
                            })
                    })
                })
                .map(|v| serde_json::to_value(v).unwrap_or_default())
                .collect();
            Ok(json_resp(
                StatusCode::OK,
                &json!({"Volumes": list, "Warnings": []}),
            ))
        }
        (&Method::POST, ["volumes", "create"]) => {
            let body = req.json().await?;
            let name = body["Name"].as_str();
            let driver = body["Driver"].as_str().unwrap_or("local");
            if !driver.is_empty() && driver != "local" {
                return Err(Error::not_found(format!(
                    "error looking up volume plugin {driver}: plugin \"{driver}\" not found"
                )));
            }
            let labels: BTreeMap<String, String> =
                serde_json::from_value(body["Labels"].clone()).unwrap_or_default();
            let opts: BTreeMap<String, String> =
                serde_json::from_value(body["DriverOpts"].clone()).unwrap_or_default();
            let (v, created) = engine.volumes.create(name, labels, opts, false)?;
            if created {
                engine.events.emit(
                    "volume",
                    "create",
                    &v.name,
                    BTreeMap::from([("driver".to_string(), "local".to_string())]),
                );
            }
            Ok(json_resp(
                StatusCode::CREATED,
                &serde_json::to_value(&v).unwrap_or_default(),
            ))
        }
        (&Method::POST, ["volumes", "prune"]) => {
            let filters = req.query.filters()?;
            let all = filters
                .get("all")
                .is_some_and(|v| v.iter().any(|x| x == "true" || x == "1"));
            let in_use = engine.volumes_in_use("");
            let mut deleted = Vec::new();
            let mut space = 0u64;
            for v in engine.volumes.list() {
                if in_use.contains(&v.name) || (!all && !v.anonymous) {
                    continue;
                }
                space += engine.volumes.size(&v.name);
                if engine.volumes.remove(&v.name).is_ok() {
                    engine
                        .events
                        .emit("volume", "destroy", &v.name, BTreeMap::new());
                    deleted.push(v.name);
                }
            }
            Ok(json_resp(
                StatusCode::OK,
                &json!({"VolumesDeleted": deleted, "SpaceReclaimed": space}),
            ))
        }
        (&Method::GET, ["volumes", name]) => Ok(json_resp(
            StatusCode::OK,
            &serde_json::to_value(engine.volumes.get(name)?).unwrap_or_default(),
        )),
        (&Method::DELETE, ["volumes", name]) => {
            let name = (*name).to_string();
            engine.volumes.get(&name)?;
            let users: Vec<String> = engine
                .all()
                .into_iter()
                .filter(|c| c.mounts.iter().any(|m| m.name == name))
                .map(|c| c.id)
                .collect();
            if !users.is_empty() && !req.query.bool("force") {
                return Err(Error::conflict(format!(
                    "remove {name}: volume is in use - [{}]",
                    users.join(", ")
                )));
            }
            engine.volumes.remove(&name)?;
            engine
                .events
                .emit("volume", "destroy", &name, BTreeMap::new());
            Ok(super::status(StatusCode::NO_CONTENT))
        }
        _ => Err(Error::not_found(format!(
            "page not found: {m} /{}",
            p.join("/")
        ))),
    }
}
