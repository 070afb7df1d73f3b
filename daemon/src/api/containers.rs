//! `/containers/...` and `/exec/...` routes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::streams::{
    DEFAULT_DETACH_KEYS, Hijack, body_stream, content_type, docker_frame, error_on_stream,
    parse_detach_keys, spawn_hijacked, upgrade_response,
};
use super::{Body, Req, json as json_resp, status, streaming};
use crate::engine::container::{Container, Status, parse_rfc3339};
use crate::engine::error::{Error, Kind};
use crate::engine::types::{CreateRequest, ExecConfig, UpdateRequest};
use crate::engine::{Engine, logs};

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Error> {
    let v = if v.is_null() { json!({}) } else { v };
    serde_json::from_value(v).map_err(|e| Error::invalid(format!("invalid request body: {e}")))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Docker's `Command` column: the program and arguments, space-joined.
fn command(c: &Container) -> String {
    std::iter::once(c.path.as_str())
        .chain(c.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Ports` of the listing: published ports with their host side, exposed
/// ones without.
fn ports_list(net: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for (k, v) in net["Ports"].as_object().into_iter().flatten() {
        let (port, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        match v.as_array() {
            Some(binds) if !binds.is_empty() => {
                for b in binds {
                    let public = b["HostPort"].as_str().and_then(|p| p.parse::<u16>().ok());
                    out.push(json!({"IP": b["HostIp"], "PrivatePort": port, "PublicPort": public, "Type": proto}));
                }
            }
            _ => out.push(json!({"PrivatePort": port, "Type": proto})),
        }
    }
    out
}

/// The `GET /containers/json` row.
pub fn summary(c: &Container, net: &Value) -> Value {
    json!({
        "Id": c.id,
        "Names": [format!("/{}", c.name)],
        "Image": c.image,
        "ImageID": c.image_id,
        "Command": command(c),
        "Created": parse_rfc3339(&c.created).unwrap_or(0),
        "Ports": ports_list(net),
        "Labels": c.config.labels,
        "State": c.state.status.as_str(),
        "Status": c.human_status(now_secs()),
        "HostConfig": {"NetworkMode": c.host_config.network_mode},
        "NetworkSettings": {"Networks": net["Networks"].clone()},
        "Mounts": c.mounts,
    })
}

/// The `GET /containers/{id}/json` document.
pub fn inspect(engine: &Engine, c: &Container, net: &Value) -> Value {
    let dir = engine.paths.container(&c.id);
    let mut host_config = serde_json::to_value(&c.host_config).unwrap_or_else(|_| json!({}));
    if let Some(o) = host_config.as_object_mut() {
        // Docker shows null for these when unset.
        for k in [
            "Binds",
            "Links",
            "Dns",
            "DnsOptions",
            "DnsSearch",
            "ExtraHosts",
            "GroupAdd",
            "CapAdd",
            "CapDrop",
            "SecurityOpt",
            "Devices",
            "Ulimits",
            "VolumesFrom",
            "DeviceCgroupRules",
            "BlkioWeightDevice",
            "BlkioDeviceReadBps",
            "BlkioDeviceWriteBps",
            "BlkioDeviceReadIOps",
            "BlkioDeviceWriteIOps",
        ] {
            if o.get(k)
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
            {
                o.insert(k.to_string(), Value::Null);
            }
        }
        if o.get("Mounts")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            o.remove("Mounts");
        }
    }
    let mut config = serde_json::to_value(&c.config).unwrap_or_else(|_| json!({}));
    if let Some(o) = config.as_object_mut() {
        if c.config.cmd.is_empty() {
            o.insert("Cmd".into(), Value::Null);
        }
        if c.config.entrypoint.is_empty() {
            o.insert("Entrypoint".into(), Value::Null);
        }
        if c.config.hostname.is_empty() {
            o.insert("Hostname".into(), json!(c.id[..12]));
        }
    }
    json!({
        "Id": c.id,
        "Created": c.created,
        "Path": c.path,
        "Args": c.args,
        "State": c.state.view(),
        "Image": c.image_id,
        "ResolvConfPath": dir.join("resolv.conf"),
        "HostnamePath": dir.join("hostname"),
        "HostsPath": dir.join("hosts"),
        "LogPath": c.log_path(&engine.paths),
        "Name": format!("/{}", c.name),
        "RestartCount": c.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": Value::Null,
        "HostConfig": host_config,
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {
                "MergedDir": dir.join("rootfs"),
                "UpperDir": dir.join("upper"),
                "WorkDir": dir.join("work"),
            }
        },
        "Mounts": c.mounts,
        "Config": config,
        "NetworkSettings": net.clone(),
    })
}

fn filter_ok(c: &Container, filters: &BTreeMap<String, Vec<String>>) -> bool {
    filters.iter().all(|(k, vals)| {
        vals.is_empty()
            || vals.iter().any(|v| match k.as_str() {
                "id" => c.id.starts_with(v.as_str()),
                "name" => c.name.contains(v.trim_start_matches('/')),
                "status" => c.state.status.as_str() == v,
                "exited" => c.state.status == Status::Exited && c.state.exit_code.to_string() == *v,
                "ancestor" => {
                    c.image == *v
                        || c.image_id == *v
                        || c.image_id
                            .trim_start_matches("sha256:")
                            .starts_with(v.as_str())
                }
                "label" => match v.split_once('=') {
                    Some((lk, lv)) => c.config.labels.get(lk).map(String::as_str) == Some(lv),
                    None => c.config.labels.contains_key(v),
                },
                "volume" => c.mounts.iter().any(|m| m.name == *v || m.destination == *v),
                _ => false,
            })
    })
}

pub async fn route(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let p: Vec<String> = req.parts.clone();
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    let m = req.method.clone();
    match (&m, p.as_slice()) {
        (&Method::POST, ["containers", "create"]) => {
            let body = req.json().await?;
            let create: CreateRequest = from_value(body)?;
            let name = req.query.get("name").map(str::to_string);
            let (id, warnings) = engine.create(name.as_deref(), create).await?;
            Ok(json_resp(
                StatusCode::CREATED,
                &json!({"Id": id, "Warnings": warnings}),
            ))
        }
        (&Method::GET, ["containers", "json"]) => {
            let all = req.query.bool("all");
            let filters = req.query.filters()?;
            let limit = req.query.int("limit").filter(|l| *l > 0);
            let mut out = Vec::new();
            for c in engine.all() {
                if !all && !filters.contains_key("status") && !c.state.status.is_live() {
                    continue;
                }
                if filter_ok(&c, &filters) {
                    let net = engine.network_settings(&c).await;
                    out.push(summary(&c, &net));
                }
            }
            if let Some(l) = limit {
                out.truncate(l as usize);
            }
            Ok(json_resp(StatusCode::OK, &Value::Array(out)))
        }
        (&Method::POST, ["containers", "prune"]) => {
            let removed = engine.prune().await?;
            Ok(json_resp(
                StatusCode::OK,
                &json!({"ContainersDeleted": removed, "SpaceReclaimed": 0}),
            ))
        }
        (_, ["containers", id, rest @ ..]) => {
            let id = (*id).to_string();
            container_route(engine, req, &m, &id, rest).await
        }
        _ => Err(Error::not_found(format!(
            "page not found: {m} /{}",
            p.join("/")
        ))),
    }
}

async fn container_route(
    engine: Arc<Engine>,
    req: &mut Req,
    m: &Method,
    id: &str,
    rest: &[&str],
) -> Result<Response<Body>, Error> {
    match (m, rest) {
        (&Method::GET, ["json"]) => {
            let c = engine.get(id)?.view();
            let net = engine.network_settings(&c).await;
            Ok(super::json_ordered(
                StatusCode::OK,
                &inspect(&engine, &c, &net),
                &INSPECT_ORDER,
            ))
        }
        (&Method::POST, ["start"]) => {
            engine.start(id).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["stop"]) => {
            let t = req.query.int("t").or_else(|| req.query.int("timeout"));
            let sig = req
                .query
                .get("signal")
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            engine.stop(id, t, sig.as_deref()).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["restart"]) => {
            engine.restart(id, req.query.int("t")).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["kill"]) => {
            engine.kill(id, req.query.str("signal")).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["pause"]) => {
            engine.pause(id, true).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["unpause"]) => {
            engine.pause(id, false).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["rename"]) => {
            engine.rename(id, req.query.str("name")).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["update"]) => {
            let u: UpdateRequest = from_value(req.json().await?)?;
            let warnings = engine.update(id, u).await?;
            Ok(json_resp(StatusCode::OK, &json!({"Warnings": warnings})))
        }
        (&Method::POST, ["resize"]) => {
            let h = req.query.int("h").unwrap_or(0);
            let w = req.query.int("w").unwrap_or(0);
            engine.resize(id, h as u16, w as u16).await?;
            Ok(status(StatusCode::OK))
        }
        (&Method::DELETE, []) => {
            engine
                .remove(id, req.query.bool("force"), req.query.bool("v"))
                .await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["wait"]) => {
            let entry = engine.get(id)?;
            let condition = req.query.str("condition").to_string();
            if !matches!(
                condition.as_str(),
                "" | "not-running" | "next-exit" | "removed"
            ) {
                return Err(Error::invalid(format!("invalid condition: {condition:?}")));
            }
            drop(entry);
            // Headers now, the result when the condition is met.
            let (tx, rx) = mpsc::channel(1);
            let id = id.to_string();
            tokio::spawn(async move {
                let body = match engine.wait(&id, &condition).await {
                    Ok(code) => json!({"StatusCode": code, "Error": null}),
                    Err(e) => json!({"StatusCode": -1, "Error": {"Message": e.message}}),
                };
                let mut b = serde_json::to_vec(&body).unwrap_or_default();
                b.push(b'\n');
                let _ = tx.send(Bytes::from(b)).await;
            });
            Ok(streaming(StatusCode::OK, "application/json", rx))
        }
        (&Method::POST, ["attach"]) => {
            let stream = req.query.bool("stream") || req.query.get("stream").is_none();
            if !stream && !req.query.bool("logs") {
                return Err(Error::invalid("at least one of stream or logs must be set"));
            }
            let (stdin, stdout, stderr) = (
                req.query.bool("stdin"),
                req.query.bool("stdout"),
                req.query.bool("stderr"),
            );
            let detach_keys = detach_keys(req)?;
            let ticket = engine.attach(id, stdin, stdout, stderr).await?;
            let tty = ticket.tty;
            if req.wants_upgrade() {
                let up = req
                    .on_upgrade()
                    .ok_or_else(|| Error::internal("connection cannot be upgraded"))?;
                let opts = Hijack {
                    tty,
                    stdin,
                    close_stdin: ticket.stdin_once && !tty,
                    detach_keys,
                    follow_after_detach: false,
                    resize: None,
                };
                spawn_hijacked(up, ticket.connect(), opts, |_| {});
                Ok(upgrade_response(tty))
            } else {
                Ok(body_stream(ticket.connect(), tty, |_| {}))
            }
        }
        (&Method::GET, ["logs"]) => logs_route(engine, req, id).await,
        (&Method::GET, ["top"]) => {
            let (titles, procs) = engine.top(id, req.query.str("ps_args")).await?;
            Ok(json_resp(
                StatusCode::OK,
                &json!({"Titles": titles, "Processes": procs}),
            ))
        }
        (&Method::GET, ["stats"]) => {
            let stream = req
                .query
                .get("stream")
                .is_none_or(|s| s == "1" || s.eq_ignore_ascii_case("true"));
            let one_shot = req.query.bool("one-shot");
            let first = engine.stats_sample(id).await?;
            if !stream {
                if one_shot {
                    return Ok(json_resp(StatusCode::OK, &first));
                }
                // Docker waits one interval to fill precpu_stats.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut second = engine.stats_sample(id).await?;
                second["precpu_stats"] = first["cpu_stats"].clone();
                second["preread"] = first["read"].clone();
                return Ok(json_resp(StatusCode::OK, &second));
            }
            let (tx, rx) = mpsc::channel(4);
            let id = id.to_string();
            tokio::spawn(async move {
                let mut prev = first;
                loop {
                    let mut line = serde_json::to_vec(&prev).unwrap_or_default();
                    line.push(b'\n');
                    if tx.send(Bytes::from(line)).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if !engine.is_running(&id) {
                        break;
                    }
                    let Ok(mut next) = engine.stats_sample(&id).await else {
                        break;
                    };
                    next["precpu_stats"] = prev["cpu_stats"].clone();
                    next["preread"] = prev["read"].clone();
                    prev = next;
                }
            });
            Ok(streaming(StatusCode::OK, "application/json", rx))
        }
        (&Method::GET, ["export"]) => {
            let rx = engine.export(id).await?;
            Ok(streaming(StatusCode::OK, "application/x-tar", rx))
        }
        (&Method::GET, ["changes"]) => {
            let changes = engine.changes(id).await?;
            Ok(json_resp(StatusCode::OK, &Value::Array(changes)))
        }
        (&Method::HEAD, ["archive"]) => {
            let st = engine.archive_stat(id, req.query.str("path")).await?;
            let mut r = status(StatusCode::OK);
            r.headers_mut()
                .insert("X-Docker-Container-Path-Stat", stat_header(&st)?);
            Ok(r)
        }
        (&Method::GET, ["archive"]) => {
            let (st, rx) = engine.archive_get(id, req.query.str("path")).await?;
            let mut r = streaming(StatusCode::OK, "application/x-tar", rx);
            r.headers_mut()
                .insert("X-Docker-Container-Path-Stat", stat_header(&st)?);
            Ok(r)
        }
        (&Method::PUT, ["archive"]) => {
            let path = req.query.str("path").to_string();
            let body = req.body_stream();
            engine.archive_put(id, &path, body).await?;
            Ok(status(StatusCode::OK))
        }
        (&Method::POST, ["exec"]) => {
            let cfg: ExecConfig = from_value(req.json().await?)?;
            let exec_id = engine.exec_create(id, cfg).await?;
            Ok(json_resp(StatusCode::CREATED, &json!({"Id": exec_id})))
        }
        _ => Err(Error::not_found(format!(
            "page not found: {m} /containers/{id}/{}",
            rest.join("/")
        ))),
    }
}

fn stat_header(st: &Value) -> Result<HeaderValue, Error> {
    use base64::Engine as _;
    let enc = base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(st).unwrap_or_default());
    HeaderValue::from_str(&enc).map_err(|e| Error::internal(e.to_string()))
}

/// Docker's `since`/`until`: Unix seconds with an optional fraction, or an
/// RFC 3339 time.
fn parse_time(s: &str) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    s.parse::<f64>()
        .unwrap_or_else(|_| parse_rfc3339(s).map_or(0.0, |t| t as f64))
}

async fn logs_route(engine: Arc<Engine>, req: &mut Req, id: &str) -> Result<Response<Body>, Error> {
    let q = &req.query;
    let (stdout, stderr) = (q.bool("stdout"), q.bool("stderr"));
    if !stdout && !stderr {
        return Err(Error::invalid("You must choose at least one stream"));
    }
    let tail = match q.str("tail") {
        "" | "all" => None,
        n => Some(
            n.parse::<usize>()
                .map_err(|_| Error::invalid(format!("invalid tail value {n:?}")))?,
        ),
    };
    let opts = logs::Options {
        stdout,
        stderr,
        since: parse_time(q.str("since")),
        until: parse_time(q.str("until")),
        tail,
        follow: q.bool("follow"),
    };
    let timestamps = q.bool("timestamps");
    let (mut lines, tty) = engine.logs(id, opts).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(l) = lines.recv().await {
            let mut data = Vec::with_capacity(l.data.len() + 32);
            if timestamps {
                data.extend_from_slice(l.time.as_bytes());
                data.push(b' ');
            }
            data.extend_from_slice(&l.data);
            let out = if tty {
                data
            } else {
                docker_frame(l.stream, &data)
            };
            if tx.send(Bytes::from(out)).await.is_err() {
                break;
            }
        }
    });
    let ct = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    Ok(streaming(StatusCode::OK, ct, rx))
}

pub async fn exec_route(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let p: Vec<String> = req.parts.clone();
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    let m = req.method.clone();
    match (&m, p.as_slice()) {
        (&Method::GET, ["exec", id, "json"]) => {
            let exec = engine.exec_get(id)?;
            Ok(json_resp(StatusCode::OK, &exec.inspect()))
        }
        (&Method::POST, ["exec", id, "resize"]) => {
            let h = req.query.int("h").unwrap_or(0);
            let w = req.query.int("w").unwrap_or(0);
            engine.exec_resize(id, h as u16, w as u16).await?;
            Ok(status(StatusCode::OK))
        }
        (&Method::POST, ["exec", id, "start"]) => {
            let body = req.json().await?;
            let detach = body["Detach"].as_bool().unwrap_or(false);
            // Checks first, so their failures are plain API errors.
            let prepared = engine.exec_prepare(id).await?;
            let exec = prepared.exec().clone();
            let tty = exec.config.tty;
            let stdin = exec.config.attach_stdin;
            let done = {
                let engine = engine.clone();
                let exec = exec.clone();
                move |st: Option<vessel_runtime::shim::protocol::ExitStatus>| {
                    engine.exec_finished(&exec, st.map_or(-1, |s| s.code));
                }
            };
            if !detach && req.wants_upgrade() {
                // As Docker does: switch protocols first, then start the
                // process, so its first output never arrives in the same read
                // as the 101 response (docker-py loses such bytes). A start
                // failure is written on the stream; the exec records 126.
                let up = req
                    .on_upgrade()
                    .ok_or_else(|| Error::internal("connection cannot be upgraded"))?;
                let (resize_rx, guard) = crate::engine::exec::register_resizer(&exec.id);
                let detach_keys = if exec.config.detach_keys.is_empty() {
                    DEFAULT_DETACH_KEYS.to_vec()
                } else {
                    parse_detach_keys(&exec.config.detach_keys)?
                };
                let opts = Hijack {
                    tty,
                    stdin,
                    close_stdin: !tty,
                    detach_keys,
                    follow_after_detach: true,
                    resize: Some(resize_rx),
                };
                let launcher = engine.clone();
                spawn_hijacked(
                    up,
                    async move { launcher.exec_launch(prepared).await },
                    opts,
                    move |st| {
                        drop(guard);
                        done(st);
                    },
                );
                return Ok(upgrade_response(tty));
            }
            let conn = match engine.exec_launch(prepared).await {
                Ok(conn) => conn,
                Err(e) if !detach => {
                    let (tx, rx) = mpsc::channel(1);
                    let _ = tx.try_send(Bytes::from(error_on_stream(tty, &e.message)));
                    return Ok(streaming(StatusCode::OK, content_type(tty), rx));
                }
                Err(e) => return Err(e),
            };
            if detach {
                // Nobody reads the output; follow the process to record its
                // exit code.
                tokio::spawn(async move {
                    let crate::engine::shim::Conn { mut reader, writer } = conn;
                    let _keep = writer;
                    let mut exit = None;
                    while let Ok(Some((kind, payload))) =
                        crate::engine::shim::read_frame(&mut reader).await
                    {
                        if kind == vessel_runtime::shim::protocol::Kind::Exit {
                            exit = serde_json::from_slice(&payload).ok();
                            break;
                        }
                    }
                    done(exit);
                });
                return Ok(status(StatusCode::OK));
            }
            Ok(body_stream(async move { Ok(conn) }, tty, done))
        }
        _ => Err(Error::new(
            Kind::NotFound,
            format!("page not found: {m} /{}", p.join("/")),
        )),
    }
}

/// The `detachKeys` of an attach request, or Docker's default.
fn detach_keys(req: &Req) -> Result<Vec<u8>, Error> {
    match req.query.get("detachKeys").filter(|k| !k.is_empty()) {
        Some(spec) => parse_detach_keys(spec),
        None => Ok(DEFAULT_DETACH_KEYS.to_vec()),
    }
}

/// The top-level order of Docker's container inspect document.
const INSPECT_ORDER: [&str; 24] = [
    "Id",
    "Created",
    "Path",
    "Args",
    "State",
    "Image",
    "ResolvConfPath",
    "HostnamePath",
    "HostsPath",
    "LogPath",
    "Name",
    "RestartCount",
    "Driver",
    "Platform",
    "MountLabel",
    "ProcessLabel",
    "AppArmorProfile",
    "ExecIDs",
    "HostConfig",
    "GraphDriver",
    "SizeRw",
    "Mounts",
    "Config",
    "NetworkSettings",
];
