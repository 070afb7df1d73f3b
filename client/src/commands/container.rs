//! Container verbs: run, create, start, attach, exec, logs, ps, rm, stop,
//! restart, kill, wait, inspect, top, port, pause, unpause, rename, update,
//! diff, export, commit, cp, stats and prune.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt as _;
use http::{HeaderMap, Method};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt as _;

use super::{Ctx, Error, Result, cpath, filters_json, finish, msg, out, report};
use crate::api::{self, enc, query};
use crate::format::{self, ellipsis, go_quote, labels_string, render_rows, short_id};
use crate::opts::{self, ContainerOpts, ProcessEnv};
use crate::stream::{self, AttachEnd};
use crate::{archive, progress, term, units};

/// `run`.
#[derive(clap::Args, Debug, Clone)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Run container in background and print container ID
    #[arg(short = 'd', long = "detach")]
    pub detach: bool,
    #[command(flatten)]
    pub opts: ContainerOpts,
    /// IMAGE [COMMAND] [ARG...]
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = false,
        value_name = "IMAGE"
    )]
    pub image_and_args: Vec<String>,
}

/// `create`.
#[derive(clap::Args, Debug, Clone)]
#[command(disable_help_flag = true)]
pub struct CreateArgs {
    #[command(flatten)]
    pub opts: ContainerOpts,
    /// IMAGE [COMMAND] [ARG...]
    #[arg(required = true, trailing_var_arg = true, value_name = "IMAGE")]
    pub image_and_args: Vec<String>,
}

fn split_image(v: &[String]) -> (String, Vec<String>) {
    (v[0].clone(), v[1..].to_vec())
}

/// Create the container, pulling the image when it is missing (as
/// `--pull` says). Returns the ID and warnings.
async fn create_container(
    ctx: &Ctx,
    o: &ContainerOpts,
    req: &opts::CreateRequest,
    image: &str,
) -> Result<String> {
    let mut q = Vec::new();
    if let Some(n) = &req.name {
        q.push(("name", n.clone()));
    }
    if let Some(p) = &req.platform {
        q.push(("platform", p.clone()));
    }
    let path = format!("/containers/create{}", query(&q));
    let pull_mode = if o.quiet {
        progress::Mode::Quiet
    } else {
        progress_mode_stderr()
    };
    match o.pull.as_str() {
        "always" => {
            super::pull_image_on(ctx, image, req.platform.as_deref(), pull_mode, false, true)
                .await?;
        }
        "missing" | "never" => {}
        other => {
            return Err(msg(format!(
                "invalid pull option: '{other}': must be one of \"always\", \"missing\" or \"never\""
            )));
        }
    }
    let mut cidfile = match &o.cidfile {
        Some(p) => {
            if p.exists() {
                return Err(msg(format!(
                    "container ID file found, make sure the other container isn't running or delete {}",
                    p.display()
                )));
            }
            Some(std::fs::File::create(p).map_err(|source| Error::Io {
                op: "create",
                path: p.clone(),
                source,
            })?)
        }
        None => None,
    };
    let result = match ctx
        .client
        .post_json(&path, &req.body, HeaderMap::new())
        .await
    {
        Ok(r) => Ok(r),
        Err(e)
            if e.is_not_found()
                && o.pull == "missing"
                && e.to_string().contains("No such image") =>
        {
            eprintln!(
                "Unable to find image '{}' locally",
                super::with_default_tag(image)
            );
            super::pull_image_on(ctx, image, req.platform.as_deref(), pull_mode, false, true)
                .await?;
            ctx.client
                .post_json(&path, &req.body, HeaderMap::new())
                .await
        }
        Err(e) => Err(e),
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            if let (Some(_), Some(p)) = (cidfile.take(), &o.cidfile) {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
    };
    let v: Value = ctx.client.json_of("container create", resp).await?;
    for w in v
        .get("Warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(w) = w.as_str() {
            eprintln!("WARNING: {w}");
        }
    }
    let id = v
        .get("Id")
        .and_then(Value::as_str)
        .ok_or_else(|| msg("the daemon's create answer has no Id"))?
        .to_string();
    if let Some(mut f) = cidfile {
        let _ = f.write_all(id.as_bytes());
    }
    Ok(id)
}

fn progress_mode_stderr() -> progress::Mode {
    // docker writes run's pull progress to stderr; bars need a terminal.
    if term::stderr_is_tty() {
        progress::Mode::Bars
    } else {
        progress::Mode::Plain
    }
}

/// Map a start error to docker's exit codes: 127 for a missing
/// executable, 126 for one that cannot be run, 125 otherwise.
pub fn start_error_code(message: &str) -> i32 {
    if message.contains("executable file not found")
        || message.contains("no such file or directory")
        || message.contains("system cannot find the file specified")
    {
        127
    } else if message.contains("permission denied") || message.contains("is a directory") {
        126
    } else {
        125
    }
}

/// `create`.
pub async fn create(ctx: &Ctx, a: &CreateArgs) -> Result<i32> {
    let (image, args) = split_image(&a.image_and_args);
    let mut req = opts::build_create(&a.opts, &image, &args, false, &ProcessEnv)
        .map_err(|e| Error::from(e).run_failure())?;
    if a.opts.tty {
        if let Some((h, w)) = term::terminal_size() {
            req.body["HostConfig"]["ConsoleSize"] = json!([h, w]);
        }
    }
    let id = create_container(ctx, &a.opts, &req, &image)
        .await
        .map_err(Error::run_failure)?;
    println!("{id}");
    Ok(0)
}

/// `run`.
pub async fn run(ctx: &Ctx, a: &RunArgs) -> Result<i32> {
    let (image, args) = split_image(&a.image_and_args);
    let o = &a.opts;
    let mut req = opts::build_create(o, &image, &args, a.detach, &ProcessEnv)
        .map_err(|e| Error::from(e).run_failure())?;
    let attach_stdin = req.body["AttachStdin"].as_bool().unwrap_or(false);
    let attach_stdout = req.body["AttachStdout"].as_bool().unwrap_or(false);
    let attach_stderr = req.body["AttachStderr"].as_bool().unwrap_or(false);
    if !a.detach && attach_stdin && o.tty && !term::stdin_is_tty() {
        return Err(Error::Status {
            code: 1,
            message: "the input device is not a TTY".to_string(),
        });
    }
    if o.tty {
        if let Some((h, w)) = term::terminal_size() {
            req.body["HostConfig"]["ConsoleSize"] = json!([h, w]);
        }
    }
    let id = create_container(ctx, o, &req, &image)
        .await
        .map_err(Error::run_failure)?;
    let c = cpath(&id);
    if a.detach {
        if let Err(e) = ctx.client.post_empty(&format!("{c}/start")).await {
            let m = e.to_string();
            return Err(Error::Status {
                code: start_error_code(&m),
                message: m,
            });
        }
        println!("{id}");
        return Ok(0);
    }
    let detach_keys = o.detach_keys.clone().or_else(|| ctx.config.detach_keys());
    let mut q = vec![("stream", "1".to_string())];
    if attach_stdin {
        q.push(("stdin", "1".to_string()));
    }
    if attach_stdout {
        q.push(("stdout", "1".to_string()));
    }
    if attach_stderr {
        q.push(("stderr", "1".to_string()));
    }
    if let Some(k) = &detach_keys {
        q.push(("detachKeys", k.clone()));
    }
    let conn = ctx
        .client
        .upgrade(&format!("{c}/attach{}", query(&q)), None)
        .await
        .map_err(|e| Error::from(e).run_failure())?;
    // Register the wait before starting so a fast exit is not missed.
    let auto_remove = o.rm == Some(true);
    let condition = if auto_remove { "removed" } else { "next-exit" };
    let wait_resp = ctx
        .client
        .send(
            Method::POST,
            &format!("{c}/wait?condition={condition}"),
            HeaderMap::new(),
            api::empty(),
        )
        .await
        .map_err(|e| Error::from(e).run_failure())?;
    if let Err(e) = ctx.client.post_empty(&format!("{c}/start")).await {
        let m = e.to_string();
        if auto_remove {
            let _ = ctx.client.delete(&format!("{c}?force=1&v=1")).await;
        }
        return Err(Error::Status {
            code: start_error_code(&m),
            message: format!("vessel: {m}"),
        });
    }
    let keys = match (o.tty, &detach_keys) {
        (true, Some(k)) => Some(stream::parse_detach_keys(k)?),
        (true, None) => Some(stream::parse_detach_keys(stream::DEFAULT_DETACH_KEYS)?),
        _ => None,
    };
    let raw = if o.tty && attach_stdin && term::stdin_is_tty() {
        term::RawMode::enable(0).ok()
    } else {
        None
    };
    let resize = if o.tty && term::stdout_is_tty() {
        Some(spawn_resizer(ctx, format!("{c}/resize")))
    } else {
        None
    };
    let proxy = if !o.tty && o.sig_proxy.unwrap_or(true) {
        Some(spawn_sig_proxy(ctx, c.clone()))
    } else {
        None
    };
    let end = stream::pump(conn, o.tty, attach_stdin, keys).await;
    drop(raw);
    if let Some(h) = resize {
        h.abort();
    }
    if let Some(h) = proxy {
        h.abort();
    }
    if end? == AttachEnd::Detached {
        return Ok(0);
    }
    let body = ctx
        .client
        .bytes_of(wait_resp)
        .await
        .map_err(|e| Error::from(e).run_failure())?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(m) = v
        .get("Error")
        .and_then(|e| e.get("Message"))
        .and_then(Value::as_str)
    {
        if !m.is_empty() {
            return Err(Error::Status {
                code: 125,
                message: format!("vessel: {m}"),
            });
        }
    }
    Ok(v.get("StatusCode").and_then(Value::as_i64).unwrap_or(125) as i32)
}

/// Send the terminal size now and on every SIGWINCH.
fn spawn_resizer(ctx: &Ctx, path: String) -> tokio::task::JoinHandle<()> {
    let client = ctx.client.clone();
    tokio::spawn(async move {
        let send = |client: std::sync::Arc<api::Client>, path: String| async move {
            if let Some((h, w)) = term::terminal_size() {
                let _ = client.post_empty(&format!("{path}?h={h}&w={w}")).await;
            }
        };
        send(client.clone(), path.clone()).await;
        let Ok(mut sig) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while sig.recv().await.is_some() {
            send(client.clone(), path.clone()).await;
        }
    })
}

/// Forward the usual termination signals to the container (`--sig-proxy`).
fn spawn_sig_proxy(ctx: &Ctx, c: String) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let client = ctx.client.clone();
    tokio::spawn(async move {
        let kinds = [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
            (SignalKind::quit(), "SIGQUIT"),
            (SignalKind::user_defined1(), "SIGUSR1"),
            (SignalKind::user_defined2(), "SIGUSR2"),
        ];
        let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(8);
        for (k, name) in kinds {
            let Ok(mut s) = signal(k) else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(name).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        while let Some(name) = rx.recv().await {
            let _ = client.post_empty(&format!("{c}/kill?signal={name}")).await;
        }
    })
}

/// `start`.
#[derive(clap::Args, Debug, Clone)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals
    #[arg(short = 'a', long = "attach")]
    pub attach: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    pub detach_keys: Option<String>,
    /// Attach container's STDIN
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `start`.
pub async fn start(ctx: &Ctx, a: &StartArgs) -> Result<i32> {
    if a.attach || a.interactive {
        if a.containers.len() > 1 {
            return Err(msg(
                "you cannot start and attach multiple containers at once",
            ));
        }
        let name = &a.containers[0];
        let c = cpath(name);
        let info: Value = ctx.client.get_json(&format!("{c}/json")).await?;
        let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
        let stdin = a.interactive && info["Config"]["OpenStdin"].as_bool().unwrap_or(false);
        let mut q = vec![
            ("stream", "1".to_string()),
            ("stdout", "1".to_string()),
            ("stderr", "1".to_string()),
        ];
        if stdin {
            q.push(("stdin", "1".to_string()));
        }
        if let Some(k) = a.detach_keys.clone().or_else(|| ctx.config.detach_keys()) {
            q.push(("detachKeys", k));
        }
        let conn = ctx
            .client
            .upgrade(&format!("{c}/attach{}", query(&q)), None)
            .await?;
        let wait_resp = ctx
            .client
            .send(
                Method::POST,
                &format!("{c}/wait?condition=next-exit"),
                HeaderMap::new(),
                api::empty(),
            )
            .await?;
        if let Err(e) = ctx.client.post_empty(&format!("{c}/start")).await {
            let m = e.to_string();
            return Err(Error::Status {
                code: start_error_code(&m).max(1),
                message: m,
            });
        }
        let raw = if tty && stdin && term::stdin_is_tty() {
            term::RawMode::enable(0).ok()
        } else {
            None
        };
        let resize =
            (tty && term::stdout_is_tty()).then(|| spawn_resizer(ctx, format!("{c}/resize")));
        let keys = if tty {
            Some(stream::parse_detach_keys(
                a.detach_keys
                    .as_deref()
                    .unwrap_or(stream::DEFAULT_DETACH_KEYS),
            )?)
        } else {
            None
        };
        let end = stream::pump(conn, tty, stdin, keys).await;
        drop(raw);
        if let Some(h) = resize {
            h.abort();
        }
        if end? == AttachEnd::Detached {
            return Ok(0);
        }
        let v: Value = ctx
            .client
            .json_of("wait", wait_resp)
            .await
            .unwrap_or(Value::Null);
        return Ok(v["StatusCode"].as_i64().unwrap_or(0) as i32);
    }
    let mut failed = false;
    for n in &a.containers {
        match ctx.client.post_empty(&format!("{}/start", cpath(n))).await {
            Ok(_) => println!("{n}"),
            Err(e) => report(&mut failed, &e.into()),
        }
    }
    finish(failed)
}

/// `attach`.
#[derive(clap::Args, Debug, Clone)]
pub struct AttachArgs {
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    pub detach_keys: Option<String>,
    /// Do not attach STDIN
    #[arg(long = "no-stdin")]
    pub no_stdin: bool,
    /// Proxy all received signals to the process
    #[arg(long = "sig-proxy", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub sig_proxy: Option<bool>,
    pub container: String,
}

/// `attach`.
pub async fn attach(ctx: &Ctx, a: &AttachArgs) -> Result<i32> {
    let c = cpath(&a.container);
    let info: Value = ctx.client.get_json(&format!("{c}/json")).await?;
    if !info["State"]["Running"].as_bool().unwrap_or(false) {
        return Err(msg(
            "You cannot attach to a stopped container, start it first",
        ));
    }
    if info["State"]["Paused"].as_bool().unwrap_or(false) {
        return Err(msg(
            "You cannot attach to a paused container, unpause it first",
        ));
    }
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    let stdin = !a.no_stdin && info["Config"]["OpenStdin"].as_bool().unwrap_or(false);
    let detach_keys = a.detach_keys.clone().or_else(|| ctx.config.detach_keys());
    let mut q = vec![
        ("stream", "1".to_string()),
        ("stdout", "1".to_string()),
        ("stderr", "1".to_string()),
    ];
    if stdin {
        q.push(("stdin", "1".to_string()));
    }
    if let Some(k) = &detach_keys {
        q.push(("detachKeys", k.clone()));
    }
    let wait_resp = ctx
        .client
        .send(
            Method::POST,
            &format!("{c}/wait?condition=not-running"),
            HeaderMap::new(),
            api::empty(),
        )
        .await?;
    let conn = ctx
        .client
        .upgrade(&format!("{c}/attach{}", query(&q)), None)
        .await?;
    let raw = if tty && stdin && term::stdin_is_tty() {
        term::RawMode::enable(0).ok()
    } else {
        None
    };
    let resize = (tty && term::stdout_is_tty()).then(|| spawn_resizer(ctx, format!("{c}/resize")));
    let proxy = (!tty && a.sig_proxy.unwrap_or(true)).then(|| spawn_sig_proxy(ctx, c.clone()));
    let keys = if tty {
        Some(stream::parse_detach_keys(
            detach_keys
                .as_deref()
                .unwrap_or(stream::DEFAULT_DETACH_KEYS),
        )?)
    } else {
        None
    };
    let end = stream::pump(conn, tty, stdin, keys).await;
    drop(raw);
    for h in [resize, proxy].into_iter().flatten() {
        h.abort();
    }
    if end? == AttachEnd::Detached {
        eprintln!("read escape sequence");
        return Ok(0);
    }
    let v: Value = ctx
        .client
        .json_of("wait", wait_resp)
        .await
        .unwrap_or(Value::Null);
    Ok(v["StatusCode"].as_i64().unwrap_or(0) as i32)
}

/// `exec`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    /// Detached mode: run command in the background
    #[arg(short = 'd', long = "detach")]
    pub detach: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    pub detach_keys: Option<String>,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Give extended privileges to the command
    #[arg(long = "privileged")]
    pub privileged: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Username or UID (format: "<name|uid>[:<group|gid>]")
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// CONTAINER COMMAND [ARG...]
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, value_name = "CONTAINER")]
    pub container_and_cmd: Vec<String>,
}

/// `exec`.
pub async fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32> {
    let container = &a.container_and_cmd[0];
    let cmd = &a.container_and_cmd[1..];
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(opts::parse_env_file(f, &ProcessEnv)?);
    }
    env.extend(a.env.iter().map(|e| opts::env_value(e, &ProcessEnv)));
    if a.tty && a.interactive && !a.detach && !term::stdin_is_tty() {
        return Err(msg("the input device is not a TTY"));
    }
    let detach_keys = a.detach_keys.clone().or_else(|| ctx.config.detach_keys());
    let mut body = json!({
        "User": a.user.clone().unwrap_or_default(),
        "Privileged": a.privileged,
        "Tty": a.tty,
        "AttachStdin": a.interactive && !a.detach,
        "AttachStdout": !a.detach,
        "AttachStderr": !a.detach,
        "Detach": a.detach,
        "Cmd": cmd,
        "Env": env,
        "WorkingDir": a.workdir.clone().unwrap_or_default(),
    });
    if let Some(k) = &detach_keys {
        body["DetachKeys"] = json!(k);
    }
    let size = if a.tty { term::terminal_size() } else { None };
    if let Some((h, w)) = size {
        body["ConsoleSize"] = json!([h, w]);
    }
    let resp = ctx
        .client
        .post_json(
            &format!("{}/exec", cpath(container)),
            &body,
            HeaderMap::new(),
        )
        .await?;
    let v: Value = ctx.client.json_of("exec create", resp).await?;
    let id = v["Id"]
        .as_str()
        .ok_or_else(|| msg("the daemon's exec answer has no Id"))?
        .to_string();
    let epath = format!("/exec/{}", enc(&id));
    let mut start = json!({"Detach": a.detach, "Tty": a.tty});
    if let Some((h, w)) = size {
        start["ConsoleSize"] = json!([h, w]);
    }
    if a.detach {
        ctx.client
            .post_json(&format!("{epath}/start"), &start, HeaderMap::new())
            .await?;
        return Ok(0);
    }
    let conn = ctx
        .client
        .upgrade(&format!("{epath}/start"), Some(&start))
        .await?;
    let raw = if a.tty && a.interactive && term::stdin_is_tty() {
        term::RawMode::enable(0).ok()
    } else {
        None
    };
    let resize =
        (a.tty && term::stdout_is_tty()).then(|| spawn_resizer(ctx, format!("{epath}/resize")));
    let keys = if a.tty {
        Some(stream::parse_detach_keys(
            detach_keys
                .as_deref()
                .unwrap_or(stream::DEFAULT_DETACH_KEYS),
        )?)
    } else {
        None
    };
    let end = stream::pump(conn, a.tty, a.interactive, keys).await;
    drop(raw);
    if let Some(h) = resize {
        h.abort();
    }
    if end? == AttachEnd::Detached {
        return Ok(0);
    }
    let info: Value = ctx.client.get_json(&format!("{epath}/json")).await?;
    Ok(info["ExitCode"].as_i64().unwrap_or(0) as i32)
}

/// `logs`.
#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// Show extra details provided to logs
    #[arg(long)]
    pub details: bool,
    /// Follow log output
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Show logs since timestamp or relative (e.g. 42m)
    #[arg(long)]
    pub since: Option<String>,
    /// Number of lines to show from the end of the logs
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Show logs before a timestamp or relative (e.g. 42m)
    #[arg(long)]
    pub until: Option<String>,
    pub container: String,
}

/// `logs`.
pub async fn logs(ctx: &Ctx, a: &LogsArgs) -> Result<i32> {
    let c = cpath(&a.container);
    let info: Value = ctx.client.get_json(&format!("{c}/json")).await?;
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    let mut q = vec![("stdout", "1".to_string()), ("stderr", "1".to_string())];
    if a.follow {
        q.push(("follow", "1".to_string()));
    }
    if let Some(s) = &a.since {
        q.push(("since", units::timestamp_arg(s)?));
    }
    if let Some(s) = &a.until {
        q.push(("until", units::timestamp_arg(s)?));
    }
    if a.timestamps {
        q.push(("timestamps", "1".to_string()));
    }
    if a.details {
        q.push(("details", "1".to_string()));
    }
    q.push(("tail", a.tail.clone()));
    let resp = ctx
        .client
        .send(
            Method::GET,
            &format!("{c}/logs{}", query(&q)),
            HeaderMap::new(),
            api::empty(),
        )
        .await?;
    let reader = body_reader(resp);
    let mut o = stream::StdWriter::stdout();
    let mut e = stream::StdWriter::stderr();
    if tty {
        let mut r = reader;
        tokio::io::copy(&mut r, &mut o)
            .await
            .map_err(stream::Error::from)?;
        o.flush().await.map_err(stream::Error::from)?;
    } else {
        stream::demux(reader, &mut o, &mut e).await?;
    }
    Ok(0)
}

/// An `AsyncRead` over a response body.
pub fn body_reader(
    resp: http::Response<hyper::body::Incoming>,
) -> impl tokio::io::AsyncRead + Unpin + Send {
    let s = resp
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    tokio_util::io::StreamReader::new(s)
}

/// `ps`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Filter output based on conditions provided
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// Format output using a custom template
    #[arg(long)]
    pub format: Option<String>,
    /// Show n last created containers (includes all states)
    #[arg(short = 'n', long = "last", default_value_t = -1, allow_hyphen_values = true)]
    pub last: i64,
    /// Show the latest created container (includes all states)
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Only display container IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Display total file sizes
    #[arg(short = 's', long)]
    pub size: bool,
}

const PS_TABLE: &str =
    "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}";

fn ps_header() -> Value {
    json!({
        "ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
        "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE", "Status": "STATUS",
        "Size": "SIZE", "Names": "NAMES", "Labels": "LABELS", "Mounts": "MOUNTS",
        "Networks": "NETWORKS", "LocalVolumes": "LOCAL VOLUMES", "Label": "LABEL", "Platform": "PLATFORM",
    })
}

/// Docker's port column: `0.0.0.0:8080->80/tcp, 53/udp`.
pub fn display_ports(ports: Option<&Value>) -> String {
    let mut items: Vec<(String, u64, String)> = Vec::new();
    for p in ports.and_then(Value::as_array).into_iter().flatten() {
        let private = p["PrivatePort"].as_u64().unwrap_or(0);
        let ty = p["Type"].as_str().unwrap_or("tcp");
        let s = match p["PublicPort"].as_u64() {
            Some(public) if public != 0 => {
                let ip = p["IP"].as_str().unwrap_or("");
                let ip = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_string()
                };
                format!("{ip}:{public}->{private}/{ty}")
            }
            _ => format!("{private}/{ty}"),
        };
        let key = p["IP"].as_str().unwrap_or("").to_string();
        items.push((key, private, s));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut seen = Vec::new();
    for (_, _, s) in items {
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen.join(", ")
}

/// A `ps` row as docker's formatter context sees it.
pub fn ps_row(c: &Value, trunc: bool) -> Value {
    let id = c["Id"].as_str().unwrap_or("");
    let mut names: Vec<String> = c["Names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|n| n.trim_start_matches('/').to_string())
        .collect();
    if trunc {
        names.retain(|n| !n.contains('/'));
    }
    let mut image = c["Image"].as_str().unwrap_or("").to_string();
    if trunc {
        if image.starts_with("sha256:") {
            image = short_id(&image);
        } else if let Some((name, _)) = image.split_once('@') {
            // Drop a digest when a name is there.
            image = name.to_string();
        }
    }
    let command = c["Command"].as_str().unwrap_or("");
    let command = if trunc {
        ellipsis(command, 20)
    } else {
        command.to_string()
    };
    let created = c["Created"].as_i64().unwrap_or(0);
    let rw = units::human_size_prec(c.get("SizeRw").and_then(Value::as_f64).unwrap_or(0.0), 3);
    let size = match c.get("SizeRootFs").and_then(Value::as_f64) {
        Some(root) if root > 0.0 => format!("{rw} (virtual {})", units::human_size_prec(root, 3)),
        _ => rw,
    };
    let mounts: Vec<String> = c["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let n = m["Name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .or_else(|| m["Source"].as_str())
                .unwrap_or("");
            if trunc {
                ellipsis(n, 15)
            } else {
                n.to_string()
            }
        })
        .collect();
    let local_volumes = c["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["Driver"].as_str() == Some("local"))
        .count();
    let mut networks: Vec<String> = c["NetworkSettings"]["Networks"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    networks.sort();
    json!({
        "ID": if trunc { short_id(id) } else { id.to_string() },
        "Image": image,
        "Command": go_quote(&command),
        "CreatedAt": units::created_at(created),
        "RunningFor": units::ago(created),
        "Ports": display_ports(c.get("Ports")),
        "State": c["State"].as_str().unwrap_or(""),
        "Status": c["Status"].as_str().unwrap_or(""),
        "Size": size,
        "Names": names.join(","),
        "Labels": labels_string(c.get("Labels")),
        "Label": c.get("Labels").cloned().unwrap_or(json!({})),
        "Mounts": mounts.join(","),
        "Networks": networks.join(","),
        "LocalVolumes": local_volumes.to_string(),
        "Platform": Value::Null,
    })
}

fn strip_method_fields(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("Label");
    }
    v
}

/// `ps`.
pub async fn ps(ctx: &Ctx, a: &PsArgs) -> Result<i32> {
    let mut q = Vec::new();
    if a.all {
        q.push(("all", "1".to_string()));
    }
    let limit = if a.latest { 1 } else { a.last };
    if limit > 0 {
        q.push(("limit", limit.to_string()));
    }
    let format = ctx.default_format("psFormat", a.format.as_ref());
    let want_size = a.size || (format.contains(".Size") && !a.quiet);
    if want_size {
        q.push(("size", "1".to_string()));
    }
    if let Some(f) = filters_json(&a.filter)? {
        q.push(("filters", f));
    }
    let list: Vec<Value> = ctx
        .client
        .get_json(&format!("/containers/json{}", query(&q)))
        .await?;
    if a.quiet && a.format.is_none() {
        for c in &list {
            let id = c["Id"].as_str().unwrap_or("");
            println!(
                "{}",
                if a.no_trunc {
                    id.to_string()
                } else {
                    short_id(id)
                }
            );
        }
        return Ok(0);
    }
    let rows: Vec<Value> = list.iter().map(|c| ps_row(c, !a.no_trunc)).collect();
    let table = if a.size {
        format!("{PS_TABLE}\t{{{{.Size}}}}")
    } else {
        PS_TABLE.to_string()
    };
    let rows: Vec<Value> = if format == "json" || format.contains("{{json .}}") {
        rows.into_iter().map(strip_method_fields).collect()
    } else {
        rows
    };
    out(&render_rows(&format, &table, &ps_header(), &rows)?);
    Ok(0)
}

/// `rm`.
#[derive(clap::Args, Debug, Clone)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove the specified link
    #[arg(short = 'l', long)]
    pub link: bool,
    /// Remove anonymous volumes associated with the container
    #[arg(short = 'v', long)]
    pub volumes: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `rm`.
pub async fn rm(ctx: &Ctx, a: &RmArgs) -> Result<i32> {
    let mut failed = false;
    for n in &a.containers {
        let mut q = Vec::new();
        if a.force {
            q.push(("force", "1".to_string()));
        }
        if a.volumes {
            q.push(("v", "1".to_string()));
        }
        if a.link {
            q.push(("link", "1".to_string()));
        }
        match ctx
            .client
            .delete(&format!("{}{}", cpath(n), query(&q)))
            .await
        {
            Ok(_) => println!("{n}"),
            Err(e) if a.force && e.is_not_found() => {}
            Err(e) => report(&mut failed, &e.into()),
        }
    }
    finish(failed)
}

/// `stop` and `restart`.
#[derive(clap::Args, Debug, Clone)]
pub struct StopArgs {
    /// Signal to send to the container
    #[arg(short = 's', long)]
    pub signal: Option<String>,
    /// Seconds to wait before killing the container
    #[arg(
        short = 't',
        long = "timeout",
        alias = "time",
        allow_hyphen_values = true
    )]
    pub timeout: Option<i64>,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `stop` (verb "stop") or `restart` (verb "restart").
pub async fn stop_or_restart(ctx: &Ctx, a: &StopArgs, verb: &str) -> Result<i32> {
    let mut q = Vec::new();
    if let Some(t) = a.timeout {
        q.push(("t", t.to_string()));
    }
    if let Some(s) = &a.signal {
        q.push(("signal", s.clone()));
    }
    let mut failed = false;
    for n in &a.containers {
        match ctx
            .client
            .post_empty(&format!("{}/{verb}{}", cpath(n), query(&q)))
            .await
        {
            Ok(_) => println!("{n}"),
            Err(e) => report(&mut failed, &e.into()),
        }
    }
    finish(failed)
}

/// `kill`.
#[derive(clap::Args, Debug, Clone)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short = 's', long, default_value = "")]
    pub signal: String,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `kill`.
pub async fn kill(ctx: &Ctx, a: &KillArgs) -> Result<i32> {
    let mut failed = false;
    for n in &a.containers {
        let q = if a.signal.is_empty() {
            String::new()
        } else {
            format!("?signal={}", enc(&a.signal))
        };
        match ctx
            .client
            .post_empty(&format!("{}/kill{q}", cpath(n)))
            .await
        {
            Ok(_) => println!("{n}"),
            Err(e) => report(&mut failed, &e.into()),
        }
    }
    finish(failed)
}

/// Containers given by name, for the simple per-container verbs.
#[derive(clap::Args, Debug, Clone)]
pub struct ContainersArgs {
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `pause`, `unpause`: POST to `/containers/{id}/{verb}` and print names.
pub async fn simple_verb(ctx: &Ctx, a: &ContainersArgs, verb: &str) -> Result<i32> {
    let mut failed = false;
    for n in &a.containers {
        match ctx.client.post_empty(&format!("{}/{verb}", cpath(n))).await {
            Ok(_) => println!("{n}"),
            Err(e) => report(&mut failed, &e.into()),
        }
    }
    finish(failed)
}

/// `wait`.
pub async fn wait(ctx: &Ctx, a: &ContainersArgs) -> Result<i32> {
    let mut failed = false;
    for n in &a.containers {
        let r = async {
            let resp = ctx
                .client
                .post_json(
                    &format!("{}/wait", cpath(n)),
                    &json!(null),
                    HeaderMap::new(),
                )
                .await?;
            ctx.client.json_of::<Value>("wait", resp).await
        }
        .await;
        match r {
            Ok(v) => println!("{}", v["StatusCode"].as_i64().unwrap_or(0)),
            Err(e) => report(&mut failed, &e.into()),
        }
    }
    finish(failed)
}

/// `inspect` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// Format output using a custom template
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    /// Display total file sizes if the type is container
    #[arg(short = 's', long)]
    pub size: bool,
    /// Return JSON for specified type
    #[arg(long = "type")]
    pub kind: Option<String>,
    #[arg(required = true, value_name = "NAME|ID")]
    pub names: Vec<String>,
}

/// Fetch one object's inspect JSON by kind; `Ok(None)` when not found.
pub async fn inspect_raw(
    ctx: &Ctx,
    kind: &str,
    name: &str,
    size: bool,
) -> Result<Option<bytes::Bytes>> {
    let path = match kind {
        "container" => format!("{}/json{}", cpath(name), if size { "?size=1" } else { "" }),
        "image" => format!("/images/{}/json", enc(name)),
        "volume" => format!("/volumes/{}", enc(name)),
        "network" => format!("/networks/{}", enc(name)),
        other => return Err(msg(format!("\"{other}\" is not a valid value for --type"))),
    };
    match ctx.client.get_bytes(&path).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Print inspect results: a JSON array (4-space indent, daemon's key order)
/// or one formatted line per object.
pub fn print_inspect(objects: &[bytes::Bytes], format: Option<&str>) -> Result<()> {
    match format.filter(|f| !f.is_empty()) {
        None => {
            let mut joined = Vec::new();
            joined.push(b'[');
            for (i, o) in objects.iter().enumerate() {
                if i > 0 {
                    joined.push(b',');
                }
                joined.extend_from_slice(o);
            }
            joined.push(b']');
            out(&format!("{}\n", format::indent_json(&joined, "    ")));
        }
        Some(f) => {
            let mut s = String::new();
            for o in objects {
                let v: Value = serde_json::from_slice(o).unwrap_or(Value::Null);
                s.push_str(&format::render_one(f, &v)?);
            }
            out(&s);
        }
    }
    Ok(())
}

/// `inspect` for one kind (`container inspect`, `image inspect`, ...) or,
/// with `kind` `None`, any kind (docker's `inspect`).
pub async fn inspect(ctx: &Ctx, a: &InspectArgs, kind: Option<&str>) -> Result<i32> {
    let kind = kind.map(str::to_string).or_else(|| a.kind.clone());
    let mut objects = Vec::new();
    let mut failed = false;
    for n in &a.names {
        let kinds: Vec<&str> = match &kind {
            Some(k) => vec![k.as_str()],
            None => vec!["container", "image", "volume", "network"],
        };
        let mut found = None;
        for k in &kinds {
            if let Some(b) = inspect_raw(ctx, k, n, a.size).await? {
                found = Some(b);
                break;
            }
        }
        match found {
            Some(b) => objects.push(b),
            None => {
                failed = true;
                let what = match kind.as_deref() {
                    Some("container") => "container",
                    Some("image") => "image",
                    Some("volume") => "volume",
                    Some("network") => "network",
                    _ => "object",
                };
                eprintln!("Error: No such {what}: {n}");
            }
        }
    }
    if !objects.is_empty() || a.format.is_none() {
        print_inspect(&objects, a.format.as_deref())?;
    }
    finish(failed)
}

/// `top`.
#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    pub container: String,
    /// ps options
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

/// `top`.
pub async fn top(ctx: &Ctx, a: &TopArgs) -> Result<i32> {
    let q = if a.ps_args.is_empty() {
        String::new()
    } else {
        format!("?ps_args={}", enc(&a.ps_args.join(" ")))
    };
    let v: Value = ctx
        .client
        .get_json(&format!("{}/top{q}", cpath(&a.container)))
        .await?;
    let mut text = String::new();
    let titles: Vec<&str> = v["Titles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    text.push_str(&titles.join("\t"));
    text.push('\n');
    for p in v["Processes"].as_array().into_iter().flatten() {
        let cells: Vec<&str> = p
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        text.push_str(&cells.join("\t"));
        text.push('\n');
    }
    out(&format::tabwrite_min(&text, 20));
    Ok(0)
}

/// `port`.
#[derive(clap::Args, Debug, Clone)]
pub struct PortArgs {
    pub container: String,
    /// PRIVATE_PORT[/PROTO]
    pub port: Option<String>,
}

/// `port`.
pub async fn port(ctx: &Ctx, a: &PortArgs) -> Result<i32> {
    let v: Value = ctx
        .client
        .get_json(&format!("{}/json", cpath(&a.container)))
        .await?;
    let ports = v["NetworkSettings"]["Ports"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let fmt_binding = |b: &Value| {
        let ip = b["HostIp"].as_str().unwrap_or("");
        let ip = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        format!("{ip}:{}", b["HostPort"].as_str().unwrap_or(""))
    };
    if let Some(p) = &a.port {
        let key = if p.contains('/') {
            p.clone()
        } else {
            format!("{p}/tcp")
        };
        match ports.get(&key).and_then(Value::as_array) {
            Some(list) if !list.is_empty() => {
                for b in list {
                    println!("{}", fmt_binding(b));
                }
                Ok(0)
            }
            _ => Err(msg(format!(
                "Error: No public port '{key}' published for {}",
                a.container
            ))),
        }
    } else {
        let mut keys: Vec<&String> = ports.keys().collect();
        keys.sort_by_key(|k| {
            (
                k.split('/')
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0),
                (*k).clone(),
            )
        });
        for k in keys {
            for b in ports[k].as_array().into_iter().flatten() {
                println!("{k} -> {}", fmt_binding(b));
            }
        }
        Ok(0)
    }
}

/// `rename`.
#[derive(clap::Args, Debug, Clone)]
pub struct RenameArgs {
    pub container: String,
    pub new_name: String,
}

/// `rename`.
pub async fn rename(ctx: &Ctx, a: &RenameArgs) -> Result<i32> {
    ctx.client
        .post_empty(&format!(
            "{}/rename?name={}",
            cpath(&a.container),
            enc(&a.new_name)
        ))
        .await?;
    Ok(0)
}

/// `update`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpdateArgs {
    /// Block IO (relative weight)
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    /// Limit CPU CFS period
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<i64>,
    /// Limit CPU CFS quota
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long = "cpu-shares")]
    pub cpu_shares: Option<i64>,
    /// Number of CPUs
    #[arg(long)]
    pub cpus: Option<String>,
    /// CPUs in which to allow execution
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// MEMs in which to allow execution
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Memory limit
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Memory soft limit
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    /// Swap limit equal to memory plus swap: -1 to enable unlimited swap
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Tune container pids limit (set -1 for unlimited)
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Restart policy to apply when a container exits
    #[arg(long)]
    pub restart: Option<String>,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `update`.
pub async fn update(ctx: &Ctx, a: &UpdateArgs) -> Result<i32> {
    let mut b = Map::new();
    let mem = |s: &Option<String>| -> Result<Option<i64>> {
        Ok(match s {
            None => None,
            Some(v) if v == "-1" => Some(-1),
            Some(v) => Some(units::ram_in_bytes(v)?),
        })
    };
    for (k, v) in [
        ("Memory", mem(&a.memory)?),
        ("MemoryReservation", mem(&a.memory_reservation)?),
        ("MemorySwap", mem(&a.memory_swap)?),
        ("CpuShares", a.cpu_shares),
        ("CpuPeriod", a.cpu_period),
        ("CpuQuota", a.cpu_quota),
        ("PidsLimit", a.pids_limit),
        ("BlkioWeight", a.blkio_weight.map(i64::from)),
    ] {
        if let Some(v) = v {
            b.insert(k.into(), json!(v));
        }
    }
    if let Some(c) = &a.cpus {
        b.insert("NanoCpus".into(), json!(opts::parse_cpus(c)?));
    }
    if let Some(v) = &a.cpuset_cpus {
        b.insert("CpusetCpus".into(), json!(v));
    }
    if let Some(v) = &a.cpuset_mems {
        b.insert("CpusetMems".into(), json!(v));
    }
    if let Some(r) = &a.restart {
        b.insert("RestartPolicy".into(), opts::parse_restart(r)?);
    }
    if b.is_empty() {
        return Err(msg(
            "you must provide one or more flags when using this command",
        ));
    }
    let body = Value::Object(b);
    let mut failed = false;
    for n in &a.containers {
        match ctx
            .client
            .post_json(&format!("{}/update", cpath(n)), &body, HeaderMap::new())
            .await
        {
            Ok(resp) => {
                let v: Value = ctx
                    .client
                    .json_of("update", resp)
                    .await
                    .unwrap_or(Value::Null);
                for w in v["Warnings"].as_array().into_iter().flatten() {
                    eprintln!("WARNING: {}", w.as_str().unwrap_or(""));
                }
                println!("{n}");
            }
            Err(e) => report(&mut failed, &e.into()),
        }
    }
    finish(failed)
}

/// `diff`.
pub async fn diff(ctx: &Ctx, container: &str) -> Result<i32> {
    let v: Value = ctx
        .client
        .get_json(&format!("{}/changes", cpath(container)))
        .await?;
    for c in v.as_array().into_iter().flatten() {
        let kind = match c["Kind"].as_i64() {
            Some(0) => "C",
            Some(1) => "A",
            Some(2) => "D",
            _ => "?",
        };
        println!("{kind} {}", c["Path"].as_str().unwrap_or(""));
    }
    Ok(0)
}

/// Write a response body to `-o FILE` or stdout (never to a terminal).
pub async fn save_body(
    resp: http::Response<hyper::body::Incoming>,
    output: Option<&Path>,
) -> Result<()> {
    let mut r = body_reader(resp);
    match output {
        Some(p) => {
            let tmp = p.with_extension(format!("part{}", std::process::id()));
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|source| Error::Io {
                    op: "create",
                    path: tmp.clone(),
                    source,
                })?;
            tokio::io::copy(&mut r, &mut f)
                .await
                .map_err(|source| Error::Io {
                    op: "write",
                    path: tmp.clone(),
                    source,
                })?;
            f.sync_all().await.map_err(|source| Error::Io {
                op: "sync",
                path: tmp.clone(),
                source,
            })?;
            tokio::fs::rename(&tmp, p)
                .await
                .map_err(|source| Error::Io {
                    op: "rename into place",
                    path: p.to_path_buf(),
                    source,
                })?;
        }
        None => {
            if term::stdout_is_tty() {
                return Err(msg(
                    "cowardly refusing to save to a terminal. Use the -o flag or redirect",
                ));
            }
            let mut o = stream::StdWriter::stdout();
            tokio::io::copy(&mut r, &mut o)
                .await
                .map_err(stream::Error::from)?;
            o.flush().await.map_err(stream::Error::from)?;
        }
    }
    Ok(())
}

/// `export`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    pub container: String,
}

/// `export`.
pub async fn export(ctx: &Ctx, a: &ExportArgs) -> Result<i32> {
    if a.output.is_none() && term::stdout_is_tty() {
        return Err(msg(
            "cowardly refusing to save to a terminal. Use the -o flag or redirect",
        ));
    }
    let resp = ctx
        .client
        .send(
            Method::GET,
            &format!("{}/export", cpath(&a.container)),
            HeaderMap::new(),
            api::empty(),
        )
        .await?;
    save_body(resp, a.output.as_deref()).await?;
    Ok(0)
}

/// `commit`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommitArgs {
    /// Author (e.g., "John Hannibal Smith <hannibal@a-team.com>")
    #[arg(short = 'a', long)]
    pub author: Option<String>,
    /// Apply Dockerfile instruction to the created image
    #[arg(short = 'c', long = "change")]
    pub change: Vec<String>,
    /// Commit message
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Pause container during commit
    #[arg(short = 'p', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub pause: bool,
    pub container: String,
    /// REPOSITORY[:TAG]
    pub reference: Option<String>,
}

/// `commit`.
pub async fn commit(ctx: &Ctx, a: &CommitArgs) -> Result<i32> {
    let mut q = vec![("container", a.container.clone())];
    if let Some(r) = &a.reference {
        let (repo, tag) = super::split_ref(r);
        q.push(("repo", repo));
        q.push(("tag", tag));
    }
    if let Some(m) = &a.message {
        q.push(("comment", m.clone()));
    }
    if let Some(au) = &a.author {
        q.push(("author", au.clone()));
    }
    q.push(("pause", if a.pause { "1" } else { "0" }.to_string()));
    for c in &a.change {
        q.push(("changes", c.clone()));
    }
    let resp = ctx
        .client
        .post_json(
            &format!("/commit{}", query(&q)),
            &json!({}),
            HeaderMap::new(),
        )
        .await?;
    let v: Value = ctx.client.json_of("commit", resp).await?;
    println!("{}", v["Id"].as_str().unwrap_or(""));
    Ok(0)
}

/// `cp`.
#[derive(clap::Args, Debug, Clone)]
pub struct CpArgs {
    /// Archive mode (copy all uid/gid information)
    #[arg(short = 'a', long)]
    pub archive: bool,
    /// Always follow symbol link in SRC_PATH
    #[arg(short = 'L', long = "follow-link")]
    pub follow_link: bool,
    /// Suppress progress output during copy
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// SRC_PATH or CONTAINER:SRC_PATH
    pub src: String,
    /// DEST_PATH or CONTAINER:DEST_PATH
    pub dest: String,
}

fn split_cp(arg: &str) -> (Option<&str>, &str) {
    if arg.starts_with('/') || arg.starts_with('.') {
        return (None, arg);
    }
    match arg.split_once(':') {
        Some((c, p)) if !c.is_empty() && !c.contains('/') => (Some(c), p),
        _ => (None, arg),
    }
}

fn base_name(p: &str) -> String {
    let t = p.trim_end_matches('/');
    let t = t.strip_suffix("/.").unwrap_or(t);
    match t.rsplit_once('/') {
        Some((_, b)) => b.to_string(),
        None => t.to_string(),
    }
}

async fn stat_container_path(ctx: &Ctx, container: &str, path: &str) -> Result<Option<Value>> {
    let uri = format!("{}/archive?path={}", cpath(container), enc(path));
    match ctx
        .client
        .send(Method::HEAD, &uri, HeaderMap::new(), api::empty())
        .await
    {
        Ok(resp) => {
            let h = resp
                .headers()
                .get("x-docker-container-path-stat")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(h.and_then(|h| {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD.decode(h).ok()?;
                serde_json::from_slice(&raw).ok()
            })
            .or(Some(json!({}))))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `cp`.
pub async fn cp(ctx: &Ctx, a: &CpArgs) -> Result<i32> {
    match (split_cp(&a.src), split_cp(&a.dest)) {
        ((Some(c), src), (None, dest)) => {
            let uri = format!("{}/archive?path={}", cpath(c), enc(src));
            let resp = ctx
                .client
                .send(Method::GET, &uri, HeaderMap::new(), api::empty())
                .await?;
            if dest == "-" {
                save_body(resp, None).await?;
                return Ok(0);
            }
            let data = ctx.client.bytes_of(resp).await?;
            let src_base = base_name(src);
            let dest_path = Path::new(dest);
            let (dir, name) = if dest_path.is_dir() {
                // Copy into the directory, keeping the source name (or its
                // contents for "SRC/.").
                (dest_path.to_path_buf(), src_base.clone())
            } else {
                if dest.ends_with('/') {
                    return Err(msg(format!("destination directory \"{dest}\" must exist")));
                }
                let parent = dest_path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !parent.is_dir() {
                    return Err(msg(format!(
                        "destination directory \"{}\" must exist",
                        parent.display()
                    )));
                }
                (parent.to_path_buf(), base_name(dest))
            };
            let (from, to) = if src.ends_with("/.") && dest_path.is_dir() {
                (src_base.clone(), String::new())
            } else {
                (src_base, name)
            };
            let to_dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                archive::extract_renamed(&data[..], &to_dir, &from, &to)
            })
            .await
            .map_err(|e| msg(e.to_string()))??;
            if !a.quiet && term::stderr_is_tty() {
                eprintln!("Successfully copied to {dest}");
            }
            Ok(0)
        }
        ((None, src), (Some(c), dest)) => {
            let src_path = PathBuf::from(src);
            let meta = std::fs::symlink_metadata(&src_path).map_err(|source| Error::Io {
                op: "stat",
                path: src_path.clone(),
                source,
            })?;
            let stat = stat_container_path(ctx, c, dest).await?;
            let dest_is_dir = stat
                .as_ref()
                .and_then(|s| s.get("mode"))
                .and_then(Value::as_u64)
                .is_some_and(|m| m & (1 << 31) != 0);
            let (target_dir, name) = match &stat {
                Some(_) if dest_is_dir => (dest.to_string(), base_name(src)),
                Some(_) => {
                    if meta.is_dir() {
                        return Err(msg("cannot copy a directory to a file"));
                    }
                    let (p, n) = dest.rsplit_once('/').unwrap_or((".", dest));
                    (
                        if p.is_empty() {
                            "/".to_string()
                        } else {
                            p.to_string()
                        },
                        n.to_string(),
                    )
                }
                None => {
                    if dest.ends_with('/') {
                        return Err(msg(format!("destination directory \"{dest}\" must exist")));
                    }
                    let (p, n) = dest.rsplit_once('/').unwrap_or((".", dest));
                    (
                        if p.is_empty() {
                            "/".to_string()
                        } else {
                            p.to_string()
                        },
                        n.to_string(),
                    )
                }
            };
            let follow = a.follow_link;
            let tar = tokio::task::spawn_blocking(move || {
                archive::tar_path(&src_path, &name, Vec::new(), follow)
            })
            .await
            .map_err(|e| msg(e.to_string()))??;
            let uri = format!(
                "{}/archive?path={}&noOverwriteDirNonDir=true{}",
                cpath(c),
                enc(&target_dir),
                if a.archive { "&copyUIDGID=true" } else { "" }
            );
            let mut h = HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-tar"),
            );
            ctx.client
                .send(Method::PUT, &uri, h, api::bytes_body(tar))
                .await?;
            if !a.quiet && term::stderr_is_tty() {
                eprintln!("Successfully copied to {c}:{dest}");
            }
            Ok(0)
        }
        ((Some(_), _), (Some(_), _)) => Err(msg("copying between containers is not supported")),
        ((None, _), (None, _)) => Err(msg("must specify at least one container source")),
    }
}

/// `stats`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Format output using a custom template
    #[arg(long)]
    pub format: Option<String>,
    /// Disable streaming stats and only pull the first result
    #[arg(long = "no-stream")]
    pub no_stream: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    pub containers: Vec<String>,
}

const STATS_TABLE: &str = "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}";

fn stats_header() -> Value {
    json!({"ID": "CONTAINER ID", "Container": "CONTAINER", "Name": "NAME", "CPUPerc": "CPU %",
           "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
           "BlockIO": "BLOCK I/O", "PIDs": "PIDS"})
}

/// One stats row from a stats sample, computed as docker does.
pub fn stats_row(s: &Value, container: &str, trunc: bool) -> Value {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let cpu_delta = f(&s["cpu_stats"]["cpu_usage"]["total_usage"])
        - f(&s["precpu_stats"]["cpu_usage"]["total_usage"]);
    let sys_delta =
        f(&s["cpu_stats"]["system_cpu_usage"]) - f(&s["precpu_stats"]["system_cpu_usage"]);
    let mut cpus = f(&s["cpu_stats"]["online_cpus"]);
    if cpus == 0.0 {
        cpus = s["cpu_stats"]["cpu_usage"]["percpu_usage"]
            .as_array()
            .map_or(0.0, |a| a.len() as f64);
    }
    let cpu = if sys_delta > 0.0 && cpu_delta > 0.0 {
        cpu_delta / sys_delta * cpus * 100.0
    } else {
        0.0
    };
    let usage = f(&s["memory_stats"]["usage"]);
    let st = &s["memory_stats"]["stats"];
    let cache = if let Some(v) = st.get("total_inactive_file").and_then(Value::as_f64) {
        if v < usage { v } else { 0.0 }
    } else if let Some(v) = st.get("inactive_file").and_then(Value::as_f64) {
        if v < usage { v } else { 0.0 }
    } else {
        0.0
    };
    let mem = usage - cache;
    let limit = f(&s["memory_stats"]["limit"]);
    let mem_perc = if limit > 0.0 {
        mem / limit * 100.0
    } else {
        0.0
    };
    let (mut rx, mut tx) = (0.0, 0.0);
    for n in s["networks"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        rx += f(&n["rx_bytes"]);
        tx += f(&n["tx_bytes"]);
    }
    let (mut rd, mut wr) = (0.0, 0.0);
    for e in s["blkio_stats"]["io_service_bytes_recursive"]
        .as_array()
        .into_iter()
        .flatten()
    {
        match e["op"].as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => rd += f(&e["value"]),
            Some("write") => wr += f(&e["value"]),
            _ => {}
        }
    }
    let id = s["id"].as_str().unwrap_or(container);
    let name = s["name"].as_str().unwrap_or("").trim_start_matches('/');
    let h3 = |v: f64| units::human_size_prec(v, 3);
    json!({
        "ID": if trunc { short_id(id) } else { id.to_string() },
        "Container": container,
        "Name": if name.is_empty() { "--".to_string() } else { name.to_string() },
        "CPUPerc": format!("{cpu:.2}%"),
        "MemUsage": format!("{} / {}", units::bytes_size(mem), units::bytes_size(limit)),
        "MemPerc": format!("{mem_perc:.2}%"),
        "NetIO": format!("{} / {}", h3(rx), h3(tx)),
        "BlockIO": format!("{} / {}", h3(rd), h3(wr)),
        "PIDs": s["pids_stats"]["current"].as_u64().unwrap_or(0).to_string(),
    })
}

/// `stats`.
pub async fn stats(ctx: &Ctx, a: &StatsArgs) -> Result<i32> {
    let names: Vec<String> = if a.containers.is_empty() {
        let list: Vec<Value> = ctx
            .client
            .get_json(&format!(
                "/containers/json{}",
                if a.all { "?all=1" } else { "" }
            ))
            .await?;
        list.iter()
            .filter_map(|c| c["Id"].as_str().map(str::to_string))
            .collect()
    } else {
        a.containers.clone()
    };
    let format = ctx.default_format("statsFormat", a.format.as_ref());
    loop {
        let mut rows = Vec::new();
        let mut failed = false;
        for n in &names {
            match ctx
                .client
                .get_json::<Value>(&format!("{}/stats?stream=0", cpath(n)))
                .await
            {
                Ok(s) => rows.push(stats_row(&s, n, !a.no_trunc)),
                Err(e) => {
                    if !a.containers.is_empty() {
                        report(&mut failed, &e.into());
                    }
                }
            }
        }
        let text = render_rows(&format, STATS_TABLE, &stats_header(), &rows)?;
        if a.no_stream {
            out(&text);
            return finish(failed);
        }
        if term::stdout_is_tty() {
            out("\x1b[2J\x1b[H");
        }
        out(&text);
        if failed && !a.containers.is_empty() {
            return finish(true);
        }
    }
}

/// `container prune`.
#[derive(clap::Args, Debug, Clone)]
pub struct PruneArgs {
    /// Provide filter values (e.g. "until=<timestamp>")
    #[arg(long = "filter")]
    pub filter: Vec<String>,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `container prune`.
pub async fn prune(ctx: &Ctx, a: &PruneArgs) -> Result<i32> {
    if !a.force
        && !super::confirm(
            "WARNING! This will remove all stopped containers.\nAre you sure you want to continue?",
        )
    {
        return Ok(0);
    }
    let q = filters_json(&a.filter)?
        .map(|f| format!("?filters={}", enc(&f)))
        .unwrap_or_default();
    let resp = ctx
        .client
        .post_json(
            &format!("/containers/prune{q}"),
            &json!(null),
            HeaderMap::new(),
        )
        .await?;
    let v: Value = ctx.client.json_of("prune", resp).await?;
    let mut s = String::new();
    let deleted: Vec<&str> = v["ContainersDeleted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !deleted.is_empty() {
        s.push_str("Deleted Containers:\n");
        for d in deleted {
            s.push_str(d);
            s.push('\n');
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "Total reclaimed space: {}\n",
        super::reclaimed(&v["SpaceReclaimed"])
    ));
    out(&s);
    Ok(0)
}
