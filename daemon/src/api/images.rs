//! `/images/...` and `/commit` routes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Body, Req, json as json_resp, streaming};
use crate::engine::Engine;
use crate::engine::distribution::{AuthConfig, PullRequest};
use crate::engine::error::{Error, Kind};
use crate::engine::images::ImageRow;
use crate::images::Digest;
use crate::images::{ConfigChanges, ImportOptions};

/// Routes whose last segment names an operation on `/images/{name...}`.
const IMAGE_OPS: &[&str] = &["json", "history", "tag", "push", "get"];

pub async fn route(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let p: Vec<String> = req.parts.clone();
    let m = req.method.clone();
    let n = p.len();
    match (
        &m,
        p.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
    ) {
        (&Method::GET, ["images", "json"]) => list(&engine, req).await,
        (&Method::POST, ["images", "load"]) => load(engine, req).await,
        (&Method::GET, ["images", "get"]) => save(&engine, req.query.all("names")).await,
        (&Method::POST, ["images", "create"]) => create(engine, req).await,
        (&Method::POST, ["images", "prune"]) => {
            let filters = req.query.filters()?;
            let all = filters
                .get("dangling")
                .is_some_and(|v| v.iter().any(|x| x == "false" || x == "0"));
            let report = engine.image_prune(all).await?;
            let deleted: Vec<Value> = report
                .images
                .iter()
                .map(|d| json!({"Deleted": d.to_string()}))
                .collect();
            Ok(json_resp(
                StatusCode::OK,
                &json!({"ImagesDeleted": deleted, "SpaceReclaimed": report.reclaimed_bytes}),
            ))
        }
        (&Method::GET, ["images", "search"]) => Err(Error::new(
            Kind::NotImplemented,
            "image search is not supported: this daemon has no index to search",
        )),
        (_, ["images", ..]) if n >= 3 && IMAGE_OPS.contains(&p[n - 1].as_str()) => {
            let name = p[1..n - 1].join("/");
            match (m.clone(), p[n - 1].as_str()) {
                (Method::GET, "json") => inspect(&engine, &name).await,
                (Method::GET, "history") => history(&engine, &name).await,
                (Method::POST, "tag") => {
                    let repo = req.query.str("repo");
                    if repo.is_empty() {
                        return Err(Error::invalid(
                            "repository name must have at least one component",
                        ));
                    }
                    engine.image_tag(&name, repo, req.query.str("tag")).await?;
                    Ok(super::status(StatusCode::CREATED))
                }
                (Method::GET, "get") => save(&engine, vec![name]).await,
                (Method::POST, "push") => push(engine, req, &name).await,
                _ => Err(Error::not_found(format!(
                    "page not found: {m} /{}",
                    p.join("/")
                ))),
            }
        }
        (&Method::DELETE, ["images", ..]) if n >= 2 => {
            let name = p[1..].join("/");
            let out = engine.image_remove(&name, req.query.bool("force")).await?;
            Ok(json_resp(StatusCode::OK, &Value::Array(out)))
        }
        _ => Err(Error::not_found(format!(
            "page not found: {m} /{}",
            p.join("/")
        ))),
    }
}

/// Untagged images that builds made for their steps and that another image
/// builds on (their top layer is in its chain): Docker lists such
/// intermediate images only with `all`. A build's untagged result has no
/// child and stays listed, as `<none>`.
fn hidden_intermediates(engine: &Engine, rows: &[ImageRow]) -> HashSet<Digest> {
    let made = match super::build::builder(engine).map(|b| b.intermediate_images()) {
        Ok(Ok(made)) => made,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "listing build intermediates");
            return HashSet::new();
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "listing build intermediates");
            return HashSet::new();
        }
    };
    // How many images have each chain ID in their chain: an image's top
    // chain ID counted more than once is in another image's chain too.
    let mut holders: HashMap<&Digest, usize> = HashMap::new();
    for r in rows {
        for c in &r.summary.chain_ids {
            *holders.entry(c).or_default() += 1;
        }
    }
    rows.iter()
        .map(|r| &r.summary)
        .filter(|s| s.repo_tags.is_empty() && made.contains(&s.id))
        .filter(|s| s.chain_ids.last().is_some_and(|top| holders[top] > 1))
        .map(|s| s.id.clone())
        .collect()
}

async fn list(engine: &Engine, req: &Req) -> Result<Response<Body>, Error> {
    let filters = req.query.filters()?;
    let mut out = Vec::new();
    let rows = engine.image_list().await?;
    let intermediates = hidden_intermediates(engine, &rows);
    // An intermediate is not dangling either: it has a child.
    let dangling_only = filters
        .get("dangling")
        .is_some_and(|v| v.iter().any(|x| x == "true" || x == "1"));
    let all = req.query.bool("all") && !dangling_only;
    for row in rows {
        let s = &row.summary;
        if !all && intermediates.contains(&s.id) {
            continue;
        }
        let keep = filters.iter().all(|(k, vals)| {
            vals.is_empty()
                || vals.iter().any(|v| match k.as_str() {
                    "dangling" => (v == "true" || v == "1") == s.repo_tags.is_empty(),
                    "label" => match v.split_once('=') {
                        Some((lk, lv)) => row.labels.get(lk).map(String::as_str) == Some(lv),
                        None => row.labels.contains_key(v),
                    },
                    "reference" => s
                        .repo_tags
                        .iter()
                        .any(|t| t == v || t.starts_with(&format!("{v}:")) || glob(v, t)),
                    _ => false,
                })
        });
        if !keep {
            continue;
        }
        // As Docker does, a reference filter also narrows the tags shown for
        // an image to the ones that match.
        let tags: Vec<&String> = match filters.get("reference").filter(|v| !v.is_empty()) {
            Some(refs) => s
                .repo_tags
                .iter()
                .filter(|t| {
                    refs.iter()
                        .any(|v| *t == v || t.starts_with(&format!("{v}:")) || glob(v, t))
                })
                .collect(),
            None => s.repo_tags.iter().collect(),
        };
        out.push(json!({
            "Id": s.id.to_string(),
            "ParentId": "",
            "RepoTags": tags,
            "RepoDigests": s.repo_digests,
            "Created": row.created_unix,
            "Size": s.size,
            "SharedSize": -1,
            "VirtualSize": s.size,
            "Labels": row.labels,
            "Containers": row.containers,
        }));
    }
    Ok(json_resp(StatusCode::OK, &Value::Array(out)))
}

/// Minimal shell-glob match for `reference` filters (`*` only).
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

async fn inspect(engine: &Engine, name: &str) -> Result<Response<Body>, Error> {
    let d = engine.image_inspect(name).await?;
    let cfg = d.config.config.clone().unwrap_or_default();
    let mut config = serde_json::to_value(&cfg).unwrap_or_else(|_| json!({}));
    if let Some(o) = config.as_object_mut() {
        for (k, empty) in [
            ("Hostname", json!("")),
            ("Domainname", json!("")),
            ("User", json!("")),
            ("AttachStdin", json!(false)),
            ("AttachStdout", json!(false)),
            ("AttachStderr", json!(false)),
            ("Tty", json!(false)),
            ("OpenStdin", json!(false)),
            ("StdinOnce", json!(false)),
            ("Image", json!("")),
            ("WorkingDir", json!("")),
            ("Labels", Value::Null),
            ("Cmd", Value::Null),
            ("Entrypoint", Value::Null),
            ("Env", Value::Null),
            ("Volumes", Value::Null),
            ("OnBuild", Value::Null),
        ] {
            o.entry(k).or_insert(empty);
        }
    }
    let layers: Vec<String> = d
        .config
        .rootfs
        .diff_ids
        .iter()
        .map(ToString::to_string)
        .collect();
    let upper = d
        .snapshot_dirs
        .last()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let lower: Vec<String> = d
        .snapshot_dirs
        .iter()
        .rev()
        .skip(1)
        .map(|p| p.display().to_string())
        .collect();
    let v = json!({
        "Id": d.summary.id.to_string(),
        "RepoTags": d.summary.repo_tags,
        "RepoDigests": d.summary.repo_digests,
        "Parent": "",
        "Comment": d.config.history.last().and_then(|h| h.comment.clone()).unwrap_or_default(),
        "Created": d.config.created.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        "DockerVersion": "",
        "Author": d.config.author.clone().unwrap_or_default(),
        "Config": config,
        "Architecture": d.config.architecture,
        "Variant": d.config.variant,
        "Os": d.config.os,
        "Size": d.summary.size,
        "VirtualSize": d.summary.size,
        "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": upper, "LowerDir": lower.join(":")}},
        "RootFS": {"Type": "layers", "Layers": layers},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    });
    Ok(json_resp(StatusCode::OK, &v))
}

async fn history(engine: &Engine, name: &str) -> Result<Response<Body>, Error> {
    let (id, entries) = engine.image_history(name).await?;
    let n = entries.len();
    let out: Vec<Value> = entries
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            json!({
                "Id": if i == 0 { id.clone() } else { "<missing>".to_string() },
                "Created": h.created.as_deref().and_then(crate::engine::container::parse_rfc3339).unwrap_or(0),
                "CreatedBy": h.created_by.unwrap_or_default(),
                "Tags": if i == 0 { Value::Array(Vec::new()) } else { Value::Null },
                "Size": h.size,
                "Comment": h.comment.unwrap_or_default(),
            })
        })
        .collect();
    let _ = n;
    Ok(json_resp(StatusCode::OK, &Value::Array(out)))
}

async fn save(engine: &Engine, names: Vec<String>) -> Result<Response<Body>, Error> {
    let rx = engine.image_save(names).await?;
    Ok(streaming(StatusCode::OK, "application/x-tar", rx))
}

/// A JSON message stream (`{"stream": ...}`, `{"status": ...}`, errors as
/// `{"errorDetail": ..., "error": ...}`), as the docker CLI reads it.
fn message_stream() -> (mpsc::Sender<Bytes>, Response<Body>) {
    let (tx, rx) = mpsc::channel(32);
    (tx, streaming(StatusCode::OK, "application/json", rx))
}

fn msg(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

#[allow(clippy::unused_async, reason = "route handlers are async")]
async fn load(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let body = req.body_stream();
    let (tx, resp) = message_stream();
    tokio::spawn(async move {
        let (ptx, mut prx) = mpsc::channel::<String>(16);
        let forward = {
            let tx = tx.clone();
            tokio::spawn(async move {
                // "Loaded image" lines are results, not progress: sent even
                // when quiet, as Docker does.
                while let Some(line) = prx.recv().await {
                    let _ = tx.send(msg(&json!({"stream": line}))).await;
                }
            })
        };
        let result = engine.image_load(body, ptx).await;
        let _ = forward.await;
        if let Err(e) = result {
            let _ = tx
                .send(msg(
                    &json!({"errorDetail": {"message": e.message}, "error": e.message}),
                ))
                .await;
        }
    });
    Ok(resp)
}

/// Parse `--change` instructions for import and commit.
pub fn parse_changes(changes: &[String]) -> Result<ConfigChanges, Error> {
    let mut out = ConfigChanges::default();
    for change in changes {
        let change = change.trim();
        if change.is_empty() {
            continue;
        }
        let (instr, rest) = change
            .split_once(char::is_whitespace)
            .unwrap_or((change, ""));
        let rest = rest.trim();
        let list = |s: &str| -> Vec<String> {
            match serde_json::from_str::<Vec<String>>(s) {
                Ok(v) => v,
                Err(_) => vec!["/bin/sh".into(), "-c".into(), s.to_string()],
            }
        };
        match instr.to_ascii_uppercase().as_str() {
            "CMD" => out.cmd = Some(list(rest)),
            "ENTRYPOINT" => out.entrypoint = Some(list(rest)),
            "ENV" => {
                if let Some((k, v)) = rest.split_once('=') {
                    out.env
                        .push(format!("{}={}", k.trim(), v.trim().trim_matches('"')));
                } else if let Some((k, v)) = rest.split_once(char::is_whitespace) {
                    out.env.push(format!("{}={}", k.trim(), v.trim()));
                }
            }
            "WORKDIR" => out.working_dir = Some(rest.to_string()),
            "USER" => out.user = Some(rest.to_string()),
            "EXPOSE" => out.exposed_ports.extend(rest.split_whitespace().map(|p| {
                if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                }
            })),
            "VOLUME" => out.volumes.extend(
                serde_json::from_str::<Vec<String>>(rest)
                    .unwrap_or_else(|_| rest.split_whitespace().map(String::from).collect()),
            ),
            "LABEL" => {
                for kv in rest.split_whitespace() {
                    if let Some((k, v)) = kv.split_once('=') {
                        out.labels
                            .insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                }
            }
            "STOPSIGNAL" => out.stop_signal = Some(rest.to_string()),
            other => {
                return Err(Error::invalid(format!(
                    "{other} is not a valid change command"
                )));
            }
        }
    }
    Ok(out)
}

/// The registry credentials a request carries.
fn registry_auth(req: &Req) -> Result<Option<AuthConfig>, Error> {
    match req.head.headers.get("x-registry-auth") {
        Some(v) => AuthConfig::from_header(
            v.to_str()
                .map_err(|_| Error::invalid("X-Registry-Auth is not ASCII"))?,
        ),
        None => Ok(None),
    }
}

/// Run a pull or push that reports through `rx`: an error before its
/// first message is an HTTP error; later ones end the stream as
/// `{"errorDetail": ...}`.
async fn progress_response(
    task: tokio::task::JoinHandle<Result<(), Error>>,
    mut rx: mpsc::UnboundedReceiver<Value>,
) -> Result<Response<Body>, Error> {
    let Some(first) = rx.recv().await else {
        task.await
            .map_err(|e| Error::internal(format!("task failed: {e}")))??;
        let (_tx, resp) = message_stream();
        return Ok(resp);
    };
    let (tx, resp) = message_stream();
    tokio::spawn(async move {
        let mut next = Some(first);
        while let Some(m) = next {
            if tx.send(msg(&m)).await.is_err() {
                return;
            }
            next = rx.recv().await;
        }
        let err = match task.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.message,
            Err(e) => format!("task failed: {e}"),
        };
        let _ = tx
            .send(msg(&json!({"errorDetail": {"message": err}, "error": err})))
            .await;
    });
    Ok(resp)
}

async fn pull(engine: Arc<Engine>, req: &Req) -> Result<Response<Body>, Error> {
    let image = req.query.str("fromImage");
    let tag = req.query.str("tag");
    if image.is_empty() {
        return Err(Error::invalid("fromImage or fromSrc is required"));
    }
    let reference = if tag.is_empty() || image.contains('@') {
        image.to_string()
    } else if tag.contains(':') {
        format!("{image}@{tag}")
    } else {
        format!("{image}:{tag}")
    };
    let request = PullRequest {
        reference,
        platform: req.query.str("platform").to_string(),
        auth: registry_auth(req)?,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move { engine.image_pull(request, tx).await });
    progress_response(task, rx).await
}

async fn push(engine: Arc<Engine>, req: &Req, name: &str) -> Result<Response<Body>, Error> {
    let auth = registry_auth(req)?;
    let tag = req.query.str("tag").to_string();
    let name = name.to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move { engine.image_push(&name, &tag, auth, tx).await });
    progress_response(task, rx).await
}

/// `POST /auth`: check credentials against the registry.
pub async fn auth(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let body = req.body(1 << 20).await?;
    let auth: AuthConfig = serde_json::from_slice(&body)
        .map_err(|e| Error::invalid(format!("invalid auth configuration: {e}")))?;
    engine.registry_login(auth).await?;
    Ok(json_resp(
        StatusCode::OK,
        &json!({"Status": "Login Succeeded", "IdentityToken": ""}),
    ))
}

#[allow(clippy::unused_async, reason = "route handlers are async")]
async fn create(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let from_src = req.query.str("fromSrc").to_string();
    if from_src.is_empty() {
        return pull(engine, req).await;
    }
    if from_src != "-" {
        return Err(Error::new(
            Kind::NotImplemented,
            "importing from a URL is not available yet; send the archive in the request body",
        ));
    }
    let repo = req.query.str("repo");
    let tag = req.query.str("tag");
    let reference = match (repo, tag) {
        ("", _) => None,
        (r, "") => Some(r.to_string()),
        (r, t) => Some(format!("{r}:{t}")),
    };
    let options = ImportOptions {
        reference,
        message: req.query.get("message").map(str::to_string),
        changes: parse_changes(&req.query.all("changes"))?,
        platform: None,
    };
    let body = req.body_stream();
    let (tx, resp) = message_stream();
    tokio::spawn(async move {
        match engine.image_import(body, options).await {
            Ok(id) => {
                let _ = tx.send(msg(&json!({"status": id}))).await;
            }
            Err(e) => {
                let _ = tx
                    .send(msg(
                        &json!({"errorDetail": {"message": e.message}, "error": e.message}),
                    ))
                    .await;
            }
        }
    });
    Ok(resp)
}

pub async fn commit(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let container = req.query.str("container").to_string();
    let repo = req.query.str("repo");
    let tag = req.query.str("tag");
    let reference = match (repo, tag) {
        ("", _) => None,
        (r, "") => Some(r.to_string()),
        (r, t) => Some(format!("{r}:{t}")),
    };
    let mut changes = parse_changes(&req.query.all("changes"))?;
    // A Config in the body overrides like --change does.
    let body = req.json().await?;
    if let Some(cmd) = body
        .get("Cmd")
        .and_then(|c| serde_json::from_value::<Vec<String>>(c.clone()).ok())
    {
        changes.cmd = Some(cmd);
    }
    if let Some(env) = body
        .get("Env")
        .and_then(|c| serde_json::from_value::<Vec<String>>(c.clone()).ok())
    {
        changes.env.extend(env);
    }
    if let Some(labels) = body
        .get("Labels")
        .and_then(|c| serde_json::from_value::<BTreeMap<String, String>>(c.clone()).ok())
    {
        changes.labels.extend(labels);
    }
    let pause = req
        .query
        .get("pause")
        .is_none_or(|p| p != "0" && p != "false");
    let options = crate::images::CommitOptions {
        reference,
        author: req
            .query
            .get("author")
            .map(str::to_string)
            .filter(|a| !a.is_empty()),
        comment: req
            .query
            .get("comment")
            .map(str::to_string)
            .filter(|c| !c.is_empty()),
        created_by: None,
        changes,
    };
    let id = engine.commit(&container, options, pause).await?;
    Ok(json_resp(StatusCode::CREATED, &json!({"Id": id})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse() {
        let c = parse_changes(&[
            "CMD [\"sh\",\"-c\",\"x\"]".into(),
            "ENV A=1".into(),
            "EXPOSE 80".into(),
            "WORKDIR /srv".into(),
        ])
        .unwrap();
        assert_eq!(c.cmd.unwrap(), ["sh", "-c", "x"]);
        assert_eq!(c.env, ["A=1"]);
        assert_eq!(c.exposed_ports, ["80/tcp"]);
        assert!(parse_changes(&["RUN x".into()]).is_err());
    }

    #[test]
    fn reference_globs() {
        assert!(glob("busy*", "busybox:latest"));
        assert!(!glob("alp*", "busybox:latest"));
    }
}
