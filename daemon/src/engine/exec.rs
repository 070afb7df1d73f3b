//! Extra processes in running containers (`docker exec`) and health
//! checks, which are execs the daemon runs on a schedule.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use vessel_runtime::shim::protocol::{Kind, Request};

use super::container::Status;
use super::error::{Error, Result};
use super::types::{ExecConfig, HealthLog};
use super::{Engine, attrs, shim, spec};

/// One exec instance.
pub struct Exec {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    pub state: std::sync::Mutex<ExecState>,
}

/// Its state as `exec inspect` shows it.
#[derive(Debug, Clone, Default)]
pub struct ExecState {
    pub running: bool,
    pub started: bool,
    pub exit_code: Option<i32>,
    pub pid: i32,
}

impl Exec {
    /// The inspect document.
    pub fn inspect(&self) -> Value {
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (entrypoint, arguments) = self
            .config
            .cmd
            .split_first()
            .map_or((String::new(), Vec::new()), |(a, b)| {
                (a.clone(), b.to_vec())
            });
        json!({
            "ID": self.id,
            "Running": st.running,
            "ExitCode": st.exit_code,
            "ProcessConfig": {
                "tty": self.config.tty,
                "entrypoint": entrypoint,
                "arguments": arguments,
                "privileged": self.config.privileged,
                "user": self.config.user,
            },
            "OpenStdin": self.config.attach_stdin,
            "OpenStderr": self.config.attach_stderr,
            "OpenStdout": self.config.attach_stdout,
            "CanRemove": false,
            "ContainerID": self.container_id,
            "DetachKeys": self.config.detach_keys,
            "Pid": st.pid,
        })
    }

    fn set(&self, f: impl FnOnce(&mut ExecState)) {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

impl Engine {
    /// `POST /containers/{id}/exec`.
    pub async fn exec_create(&self, reference: &str, cfg: ExecConfig) -> Result<String> {
        let entry = self.get(reference)?;
        let c = entry.rec.lock().await;
        match c.state.status {
            Status::Running => {}
            Status::Paused => {
                return Err(Error::conflict(format!(
                    "Container {} is paused, unpause the container before exec",
                    c.id
                )));
            }
            _ => {
                return Err(Error::conflict(format!(
                    "Container {} is not running",
                    c.id
                )));
            }
        }
        if cfg.cmd.is_empty() {
            return Err(Error::invalid("No exec command specified"));
        }
        let id = super::container::new_id();
        let exec = Arc::new(Exec {
            id: id.clone(),
            container_id: c.id.clone(),
            config: cfg,
            state: std::sync::Mutex::new(ExecState::default()),
        });
        self.execs()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), exec);
        let mut a = attrs(&c);
        a.insert("execID".into(), id.clone());
        let cmd = exec_cmd_text(&self.exec_get(&id)?.config);
        self.events
            .emit("container", &format!("exec_create: {cmd}"), &c.id, a);
        Ok(id)
    }

    /// Look up an exec instance.
    pub fn exec_get(&self, id: &str) -> Result<Arc<Exec>> {
        self.execs()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("No such exec instance: {id}")))
    }

    /// The OCI process for an exec: the container's own process settings
    /// with the exec's command, environment, user and directory.
    async fn exec_process(
        &self,
        container_id: &str,
        cfg: &ExecConfig,
    ) -> Result<oci_spec::runtime::Process> {
        let bundle = self
            .paths
            .container(container_id)
            .join("bundle/config.json");
        let spec: Value = serde_json::from_slice(&tokio::fs::read(&bundle).await?)
            .map_err(|e| Error::internal(e.to_string()))?;
        let mut p = spec["process"].clone();
        p["args"] = json!(cfg.cmd);
        p["terminal"] = json!(cfg.tty);
        p.as_object_mut().map(|o| o.remove("consoleSize"));
        if let Some(size) = cfg.console_size.as_ref().filter(|s| s.len() == 2) {
            p["consoleSize"] = json!({"height": size[0], "width": size[1]});
        }
        let mut env: Vec<String> = serde_json::from_value(p["env"].clone()).unwrap_or_default();
        for kv in &cfg.env {
            let key = kv.split('=').next().unwrap_or(kv);
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        if cfg.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        p["env"] = json!(env);
        if !cfg.working_dir.is_empty() {
            p["cwd"] = json!(cfg.working_dir);
        }
        if !cfg.user.is_empty() {
            let rootfs = self.paths.container(container_id).join("rootfs");
            let id = spec::resolve_user(&rootfs, &cfg.user, &[])?;
            p["user"] = json!({"uid": id.uid, "gid": id.gid, "additionalGids": id.additional_gids});
        }
        if cfg.privileged {
            let all: Vec<String> = caps::all().iter().map(ToString::to_string).collect();
            p["capabilities"] = json!({"bounding": all, "effective": all, "permitted": all});
        }
        serde_json::from_value(p).map_err(|e| Error::internal(format!("exec process: {e}")))
    }

    /// `POST /exec/{id}/start`, first half: the checks and set-up that can
    /// still fail as an API error (unknown exec, already started, container
    /// not running); the process itself starts in [`Engine::exec_launch`].
    pub async fn exec_prepare(&self, exec_id: &str) -> Result<PreparedExec> {
        let exec = self.exec_get(exec_id)?;
        {
            let mut st = exec
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if st.started {
                return Err(Error::conflict(format!(
                    "Error: Exec command {exec_id} has already run"
                )));
            }
            st.started = true;
        }
        let entry = self.get(&exec.container_id)?;
        if entry.rec.lock().await.state.status != Status::Running {
            return Err(Error::conflict(format!(
                "Container {} is not running",
                exec.container_id
            )));
        }
        let process = self.exec_process(&exec.container_id, &exec.config).await?;
        let req = Request::Exec {
            process,
            stdin: exec.config.attach_stdin,
        };
        Ok(PreparedExec { exec, req })
    }

    /// Start a prepared exec's process. A failure is recorded as Docker
    /// does (exit code 126) and returned.
    pub async fn exec_launch(&self, prepared: PreparedExec) -> Result<shim::Conn> {
        let PreparedExec { exec, req } = prepared;
        let entry = self.get(&exec.container_id)?;
        let (conn, resp) = match shim::request(&self.paths.shim(&exec.container_id), &req).await {
            Ok(r) => r,
            Err(e) => {
                // The process could not be started: Docker records 126 for
                // the exec and reports the error on the exec's stream.
                exec.set(|s| {
                    s.running = false;
                    s.exit_code = Some(EXEC_START_FAILED);
                });
                return Err(e);
            }
        };
        exec.set(|s| {
            s.running = true;
            s.pid = resp.pid.unwrap_or(0);
        });
        {
            let c = entry.rec.lock().await;
            let mut a = attrs(&c);
            a.insert("execID".into(), exec.id.clone());
            self.events.emit(
                "container",
                &format!("exec_start: {}", exec_cmd_text(&exec.config)),
                &c.id,
                a,
            );
        }
        Ok(conn)
    }

    /// Record how an exec ended.
    pub fn exec_finished(&self, exec: &Exec, code: i32) {
        let mut failed_start = false;
        exec.set(|s| {
            s.running = false;
            failed_start = s.exit_code == Some(EXEC_START_FAILED) && s.pid == 0;
            if !failed_start {
                s.exit_code = Some(code);
            }
        });
        if failed_start {
            return;
        }
        let mut a = std::collections::BTreeMap::new();
        a.insert("execID".into(), exec.id.clone());
        a.insert("exitCode".into(), code.to_string());
        self.events
            .emit("container", "exec_die", &exec.container_id, a);
    }

    /// Resize an exec's terminal.
    pub async fn exec_resize(&self, exec_id: &str, rows: u16, cols: u16) -> Result<()> {
        let exec = self.exec_get(exec_id)?;
        if !exec
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .running
        {
            return Err(Error::conflict(format!("Exec {exec_id} is not running")));
        }
        let sender = exec_resize_sender(&exec);
        match sender {
            Some(tx) => tx
                .send((rows, cols))
                .await
                .map_err(|_| Error::conflict("exec finished")),
            None => Ok(()),
        }
    }
}

fn exec_cmd_text(cfg: &ExecConfig) -> String {
    cfg.cmd.join(" ")
}

/// An exec that passed its checks, ready to start.
pub struct PreparedExec {
    exec: Arc<Exec>,
    req: Request,
}

impl PreparedExec {
    /// The exec being started.
    pub fn exec(&self) -> &Arc<Exec> {
        &self.exec
    }
}

/// The exit code Docker records for an exec whose process never started.
pub const EXEC_START_FAILED: i32 = 126;

/// Resize requests reach the exec's stream handler through a channel the
/// handler registers.
type ResizerMap = std::collections::HashMap<String, tokio::sync::mpsc::Sender<(u16, u16)>>;
static RESIZERS: std::sync::LazyLock<std::sync::Mutex<ResizerMap>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(std::collections::HashMap::new()));

fn exec_resize_sender(exec: &Exec) -> Option<tokio::sync::mpsc::Sender<(u16, u16)>> {
    RESIZERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&exec.id)
        .cloned()
}

/// Register the resize channel of a running exec (done by the stream
/// handler); dropped when the returned guard drops.
pub fn register_resizer(exec_id: &str) -> (tokio::sync::mpsc::Receiver<(u16, u16)>, ResizeGuard) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    RESIZERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(exec_id.to_string(), tx);
    (rx, ResizeGuard(exec_id.to_string()))
}

/// Unregisters a resize channel.
pub struct ResizeGuard(String);

impl Drop for ResizeGuard {
    fn drop(&mut self) {
        RESIZERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// Run one process to completion through the shim, collecting its output
/// (for health checks). `None` when it did not finish within `timeout`.
async fn run_collect(
    engine: &Engine,
    container_id: &str,
    cmd: Vec<String>,
    timeout: Duration,
) -> Result<Option<(i32, String)>> {
    let cfg = ExecConfig {
        cmd,
        attach_stdout: true,
        attach_stderr: true,
        ..ExecConfig::default()
    };
    let process = engine.exec_process(container_id, &cfg).await?;
    let (mut conn, resp) = shim::request(
        &engine.paths.shim(container_id),
        &Request::Exec {
            process,
            stdin: false,
        },
    )
    .await?;
    let pid = resp.pid.unwrap_or(0);
    let collect = async {
        let mut out = Vec::new();
        while let Some((kind, payload)) = shim::read_frame(&mut conn.reader).await? {
            match kind {
                Kind::Stdout | Kind::Stderr if out.len() < 4096 => {
                    out.extend_from_slice(&payload);
                }
                Kind::Exit => {
                    let st: vessel_runtime::shim::protocol::ExitStatus =
                        serde_json::from_slice(&payload)
                            .map_err(|e| Error::internal(e.to_string()))?;
                    return Ok::<_, Error>(Some((
                        st.code,
                        String::from_utf8_lossy(&out).into_owned(),
                    )));
                }
                _ => {}
            }
        }
        Ok(None)
    };
    if let Ok(r) = tokio::time::timeout(timeout, collect).await {
        r
    } else {
        if pid > 0 {
            let _ = vessel_runtime::parse_signal("KILL").map(|s| {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::try_from(s).ok(),
                )
            });
        }
        Ok(None)
    }
}

fn nanos(v: i64, default_secs: u64) -> Duration {
    if v > 0 {
        Duration::from_nanos(v as u64)
    } else {
        Duration::from_secs(default_secs)
    }
}

/// Run a container's health check on its schedule while it runs.
pub fn spawn_health_checks(engine: Arc<Engine>, id: String) {
    tokio::spawn(async move {
        let Ok(entry) = engine.get(&id) else { return };
        let (hc, starts) = {
            let c = entry.rec.lock().await;
            (
                c.config.healthcheck.clone().unwrap_or_default(),
                entry.watch().borrow().starts,
            )
        };
        let cmd: Vec<String> = match hc.test.first().map(String::as_str) {
            Some("CMD") => hc.test[1..].to_vec(),
            Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), hc.test[1..].join(" ")],
            _ => return,
        };
        let interval = nanos(hc.interval, 30);
        let timeout = nanos(hc.timeout, 30);
        let start_period = if hc.start_period > 0 {
            Duration::from_nanos(hc.start_period as u64)
        } else {
            Duration::ZERO
        };
        let retries = if hc.retries > 0 { hc.retries as u32 } else { 3 };
        let started = tokio::time::Instant::now();
        let mut rx = entry.watch();
        loop {
            // Wait for the next check, or stop when the container does.
            let first = started.elapsed() < start_period && hc.start_interval > 0;
            let wait = if first {
                Duration::from_nanos(hc.start_interval as u64)
            } else {
                interval
            };
            let stopped = tokio::select! {
                () = tokio::time::sleep(wait) => false,
                r = rx.changed() => r.is_err() || rx.borrow().starts != starts || !rx.borrow().status.is_live(),
            };
            if stopped || rx.borrow().starts != starts || !rx.borrow().status.is_live() {
                return;
            }
            let begin = vessel_runtime::state::now_rfc3339();
            let result = run_collect(&engine, &id, cmd.clone(), timeout).await;
            let end = vessel_runtime::state::now_rfc3339();
            let (code, output) = match result {
                Ok(Some((code, out))) => (code, out),
                Ok(None) => (
                    -1,
                    format!("Health check exceeded timeout ({}s)", timeout.as_secs()),
                ),
                Err(e) => (-1, e.message),
            };
            let mut c = entry.rec.lock().await;
            if !c.state.status.is_live() {
                return;
            }
            let in_start_period = started.elapsed() < start_period;
            let Some(h) = c.state.health.as_mut() else {
                return;
            };
            h.log.push(HealthLog {
                start: begin,
                end,
                exit_code: code,
                output,
            });
            if h.log.len() > 5 {
                h.log.remove(0);
            }
            let before = h.status.clone();
            if code == 0 {
                h.failing_streak = 0;
                h.status = "healthy".into();
            } else if !in_start_period {
                h.failing_streak += 1;
                if h.failing_streak >= retries {
                    h.status = "unhealthy".into();
                }
            }
            let after = h.status.clone();
            let _ = entry.persist(&engine.paths, &c);
            if before != after {
                engine.events.emit(
                    "container",
                    &format!("health_status: {after}"),
                    &id,
                    attrs(&c),
                );
            }
        }
    });
}
