//! The engine: containers, their lifecycle and everything around them,
//! behind typed methods. The Docker API layer (`crate::api`) only turns
//! HTTP into calls here and results back into HTTP.
//!
//! Each container has a record (persisted), a shim that owns its process
//! while it runs, and an overlay root filesystem made from its image's
//! snapshots. The engine starts shims, follows their exits (restart
//! policies, `--rm`), and on start-up reconnects to the shims that outlived
//! a previous daemon (live restore).

pub mod container;
pub mod distribution;
pub mod error;
pub mod events;
pub mod exec;
pub mod fs;
pub mod images;
pub mod json;
pub mod logs;
pub mod net;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod timing;
pub mod types;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};
use vessel_runtime::shim::protocol::{self as shimproto, ExitStatus, Request, ShimConfig};

use crate::images::ImageStore;
use container::{Container, Paths, State, Status};
use error::{Error, Result};
use types::{CreateRequest, MountPoint, UpdateRequest};

/// Daemon-wide settings the engine needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub exec_root: PathBuf,
    /// The `vessel-shim` binary.
    pub shim_binary: PathBuf,
    /// Registry settings for pull and push.
    pub registry: distribution::RegistryOptions,
    /// Networking (names and places).
    pub network: crate::network::Config,
    /// Guest kernel for `--runtime vm`.
    pub vm_kernel: PathBuf,
    /// Agent initramfs for `--runtime vm`.
    pub vm_initrd: PathBuf,
}

/// The runtime names `HostConfig.Runtime` accepts; `vm` runs the container
/// in a microVM (one monitor inside the container's shim).
pub const RUNTIMES: &[&str] = &["runc", "vessel", RUNTIME_VM];
/// The microVM runtime's name.
pub const RUNTIME_VM: &str = "vm";

/// A container in memory: its record and a channel that announces changes
/// (for `wait`, attach-before-start and `logs --follow`).
pub struct Entry {
    pub rec: Mutex<Container>,
    /// The record as last persisted, readable without waiting for `rec`
    /// (listing must not block behind a slow start or stop).
    view: std::sync::RwLock<Container>,
    changed: watch::Sender<Snapshot>,
    /// Attach requests waiting for the next start; `start` lets them
    /// connect before the process runs so no output is lost.
    pending_attach: std::sync::atomic::AtomicUsize,
    attached: tokio::sync::Notify,
}

/// What waiters look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub status: Status,
    pub exit_code: i32,
    /// Bumped on every start, so `next-exit` waits for a new exit.
    pub starts: u64,
    /// Bumped on every exit.
    pub exits: u64,
    pub removed: bool,
    /// The shim is up and the process created but not yet started.
    pub created_process: bool,
    /// Bumped when a start fails (attach tickets waiting for it give up).
    pub failed_starts: u64,
}

impl Entry {
    fn new(c: Container) -> Arc<Entry> {
        let snap = Snapshot {
            status: c.state.status,
            exit_code: c.state.exit_code,
            starts: 0,
            exits: 0,
            removed: false,
            created_process: false,
            failed_starts: 0,
        };
        let (tx, _) = watch::channel(snap);
        Arc::new(Entry {
            view: std::sync::RwLock::new(c.clone()),
            rec: Mutex::new(c),
            changed: tx,
            pending_attach: std::sync::atomic::AtomicUsize::new(0),
            attached: tokio::sync::Notify::new(),
        })
    }

    /// The record as last persisted.
    pub fn view(&self) -> Container {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Save the record and publish it to readers of `view`.
    pub fn persist(&self, paths: &Paths, c: &Container) -> Result<()> {
        self.publish(c);
        c.save(paths)
    }

    /// Publish the record to readers of `view` without saving it.
    fn publish(&self, c: &Container) {
        *self
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = c.clone();
    }

    /// Subscribe to changes.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.changed.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.changed.send_modify(f);
    }
}

/// The engine.
pub struct Engine {
    pub paths: Paths,
    pub images: Arc<ImageStore>,
    pub events: events::Bus,
    pub volumes: volumes::Volumes,
    pub registry: distribution::RegistryOptions,
    shim_binary: PathBuf,
    vm_kernel: PathBuf,
    vm_initrd: PathBuf,
    containers: RwLock<BTreeMap<String, Arc<Entry>>>,
    /// Container names (without the slash) to IDs.
    names: RwLock<HashMap<String, String>>,
    execs: std::sync::Mutex<HashMap<String, Arc<exec::Exec>>>,
    /// Serialises name reservation and renames.
    naming: Mutex<()>,
    /// Networking; set once at start-up (absent if it could not start).
    network: std::sync::OnceLock<Arc<crate::network::Manager>>,
    network_config: crate::network::Config,
}

/// Run blocking image-store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))?
}

fn attrs(c: &Container) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = c.config.labels.clone();
    a.insert("name".into(), c.name.clone());
    a.insert("image".into(), c.image.clone());
    a
}

fn now() -> String {
    vessel_runtime::state::now_rfc3339()
}

impl Engine {
    /// Open the engine on its directories and reconnect to live containers.
    pub async fn open(cfg: Config) -> Result<Arc<Engine>> {
        let paths = Paths {
            root: cfg.root.clone(),
            exec_root: cfg.exec_root.clone(),
        };
        for d in [
            paths.root.join("containers"),
            paths.exec_root.join("shims"),
            paths.runtime_root(),
        ] {
            std::fs::create_dir_all(&d)?;
        }
        empty_trash(&paths);
        let img_dir = paths.images();
        let images = blocking(move || ImageStore::open(&img_dir).map_err(Error::from)).await?;
        let engine = Arc::new(Engine {
            volumes: volumes::Volumes::open(&paths.volumes())?,
            paths,
            images: Arc::new(images),
            events: events::Bus::default(),
            shim_binary: cfg.shim_binary,
            registry: cfg.registry,
            vm_kernel: cfg.vm_kernel,
            vm_initrd: cfg.vm_initrd,
            containers: RwLock::new(BTreeMap::new()),
            names: RwLock::new(HashMap::new()),
            execs: std::sync::Mutex::new(HashMap::new()),
            naming: Mutex::new(()),
            network: std::sync::OnceLock::new(),
            network_config: cfg.network,
        });
        engine.restore().await;
        Ok(engine)
    }

    /// Load records; reconnect to shims of live containers, settle the
    /// ones that exited while the daemon was away, restart per policy.
    async fn restore(self: &Arc<Self>) {
        let records = container::load_all(&self.paths);
        let mut to_restart = Vec::new();
        let mut to_remove = Vec::new();
        for mut c in records {
            let id = c.id.clone();
            self.names
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(c.name.clone(), id.clone());
            let was_live = c.state.status.is_live() || c.state.status == Status::Restarting;
            let shim_dir = self.paths.shim(&id);
            if was_live && shim::alive(&shim_dir).await {
                let entry = Entry::new(c);
                self.containers
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id.clone(), entry);
                self.monitor(id);
                continue;
            }
            if was_live {
                // Exited (or the machine rebooted) while we were away.
                let status = shim::read_exit(&shim_dir);
                c.state.status = Status::Exited;
                c.state.exit_code = status.as_ref().map_or(255, |s| s.code);
                c.state.oom_killed = status.as_ref().is_some_and(|s| s.oom_killed);
                if let Some(e) = status.and_then(|s| s.error) {
                    c.state.error = e;
                }
                c.state.finished_at = now();
                c.state.pid = 0;
                let _ = self.cleanup_runtime(&id).await;
                let _ = c.save(&self.paths);
                if restart_wanted(&c, true) {
                    to_restart.push(id.clone());
                }
            }
            // A `--rm` container that ran and is not running any more (it
            // ended while the daemon was away, or the daemon died while
            // removing it) is removed now, as Docker does.
            if c.host_config.auto_remove && c.has_been_started && !c.state.status.is_live() {
                to_remove.push(id.clone());
            }
            let entry = Entry::new(c);
            self.containers
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id, entry);
        }
        let live: std::collections::HashSet<String> = self
            .all()
            .into_iter()
            .filter(|c| c.state.status.is_live())
            .map(|c| c.id)
            .collect();
        match crate::network::Manager::open(self.network_config.clone(), &live).await {
            Ok(m) => {
                let _ = self.network.set(m);
            }
            Err(e) => {
                tracing::error!(error = %error::chain(&e), "networking could not start: bridge networks are unavailable");
            }
        }
        for id in to_remove {
            if let Err(e) = self.remove(&id, true, true).await {
                tracing::warn!(%id, error = %e, "auto-remove after daemon start");
            }
        }
        for id in to_restart {
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.start(&id).await {
                    tracing::warn!(%id, error = %e, "restart after daemon start failed");
                }
            });
        }
    }

    // ----- lookup -----

    /// Find a container by ID, name or unique ID prefix.
    pub fn get(&self, reference: &str) -> Result<Arc<Entry>> {
        let r = reference.trim_start_matches('/');
        let map = self
            .containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = map.get(r) {
            return Ok(e.clone());
        }
        let by_name = self
            .names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(r)
            .cloned();
        if let Some(e) = by_name.and_then(|id| map.get(&id)) {
            return Ok(e.clone());
        }
        let matches: Vec<&Arc<Entry>> = if !r.is_empty() && r.chars().all(|c| c.is_ascii_hexdigit())
        {
            map.range(r.to_string()..)
                .take_while(|(id, _)| id.starts_with(r))
                .map(|(_, e)| e)
                .collect()
        } else {
            Vec::new()
        };
        match matches.len() {
            1 => Ok(matches[0].clone()),
            0 => Err(Error::not_found(format!("No such container: {reference}"))),
            _ => Err(Error::invalid(format!(
                "multiple containers found with provided prefix: {reference}"
            ))),
        }
    }

    /// IDs of all containers.
    pub fn ids(&self) -> Vec<String> {
        self.containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// All container records (a snapshot).
    pub fn all(&self) -> Vec<Container> {
        let entries: Vec<Arc<Entry>> = self
            .containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out: Vec<Container> = entries.iter().map(|e| e.view()).collect();
        out.sort_by(|a, b| b.created.cmp(&a.created));
        out
    }

    // ----- create -----

    /// `POST /containers/create`.
    pub async fn create(
        &self,
        name: Option<&str>,
        mut req: CreateRequest,
    ) -> Result<(String, Vec<String>)> {
        if req.config.image.is_empty() {
            return Err(Error::invalid(
                "config cannot be empty in order to create a container",
            ));
        }
        let _total = timing::step("create", "total", "");
        let image_ref = req.config.image.clone();
        let images = self.images.clone();
        let r = image_ref.clone();
        let t = timing::step("create", "inspect image", "");
        let details = blocking(move || images.inspect(&r).map_err(Error::from)).await?;
        drop(t);
        let img = details.config.config.clone().unwrap_or_default();
        let image_id = details.record.id.to_string();
        let hc = &mut req.host_config;
        if hc.network_mode.is_empty() || hc.network_mode == "default" {
            hc.network_mode = "bridge".into();
        }
        let mut warnings = Vec::new();
        self.check_network_mode(&hc.network_mode).await?;
        if hc.runtime == RUNTIME_VM {
            warnings.extend(vm_warnings(hc));
        }
        // The docker CLI names the mode's endpoint "default".
        if let Some(ep) = req.networking_config.endpoints_config.remove("default") {
            req.networking_config
                .endpoints_config
                .insert(req.host_config.network_mode.clone(), ep);
        }
        let hc = &mut req.host_config;
        if hc.runtime.is_empty() {
            hc.runtime = "runc".into();
        }
        match hc.runtime.as_str() {
            r if RUNTIMES.contains(&r) => {}
            other => {
                return Err(Error::invalid(format!(
                    "unknown or invalid runtime name: {other}"
                )));
            }
        }
        match hc.restart_policy.name.as_str() {
            "" | "no" | "always" | "unless-stopped" | "on-failure" => {}
            other => return Err(Error::invalid(format!("invalid restart policy '{other}'"))),
        }
        if hc.auto_remove && !matches!(hc.restart_policy.name.as_str(), "" | "no") {
            return Err(Error::invalid(
                "can't create 'AutoRemove' container with restart policy",
            ));
        }
        spec::capabilities(hc)?;
        // The command: the request's entrypoint/cmd over the image's.
        let cfg = &mut req.config;
        let entrypoint = if cfg.entrypoint.is_empty() {
            img.entrypoint.clone().unwrap_or_default()
        } else {
            cfg.entrypoint.clone()
        };
        let cmd = if !cfg.cmd.is_empty() {
            cfg.cmd.clone()
        } else if cfg.entrypoint.is_empty() {
            img.cmd.clone().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut argv = entrypoint.clone();
        argv.extend(cmd.clone());
        if argv.is_empty() {
            return Err(Error::invalid("no command specified"));
        }
        // Inspect shows the merged configuration.
        cfg.env = spec::environment(&img.env.clone().unwrap_or_default(), &cfg.env, "", false)
            .into_iter()
            .filter(|e| !e.starts_with("HOSTNAME="))
            .collect();
        cfg.cmd = cmd;
        cfg.entrypoint = entrypoint;
        if cfg.working_dir.is_empty() {
            cfg.working_dir = img.working_dir.clone().unwrap_or_default();
        }
        if cfg.user.is_empty() {
            cfg.user = img.user.clone().unwrap_or_default();
        }
        let mut labels = img.labels.clone().unwrap_or_default();
        labels.extend(std::mem::take(&mut cfg.labels));
        cfg.labels = labels;
        if cfg.stop_signal.is_none() {
            cfg.stop_signal = img.stop_signal.clone();
        }
        if let Some(ports) = &img.exposed_ports {
            let mut merged = ports.clone();
            merged.extend(cfg.exposed_ports.take().unwrap_or_default());
            cfg.exposed_ports = Some(merged);
        }
        if let Some(vols) = &img.volumes {
            let mut merged = vols.clone();
            merged.extend(cfg.volumes.take().unwrap_or_default());
            cfg.volumes = Some(merged);
        }
        if cfg.healthcheck.is_none() {
            if let Some(h) = img.extra.get("Healthcheck") {
                cfg.healthcheck = serde_json::from_value(h.clone()).ok();
            }
        }

        let _guard = self.naming.lock().await;
        let id = container::new_id();
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                let n = n.trim_start_matches('/');
                if !container::valid_name(n) {
                    return Err(Error::invalid(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                if let Some(other) = self.id_of_name(n) {
                    return Err(Error::conflict(format!(
                        "Conflict. The container name \"/{n}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
                    )));
                }
                n.to_string()
            }
            None => loop {
                let n = container::random_name();
                if self.id_of_name(&n).is_none() {
                    break n;
                }
            },
        };
        let dir = self.paths.container(&id);
        for sub in ["upper", "work", "rootfs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut c = Container {
            id: id.clone(),
            name,
            created: now(),
            image: image_ref,
            image_id,
            path: argv[0].clone(),
            args: argv[1..].to_vec(),
            config: req.config,
            host_config: req.host_config,
            networking: req.networking_config,
            state: State::default(),
            restart_count: 0,
            has_been_started: false,
            manually_stopped: false,
            mounts: Vec::new(),
            warnings: warnings.clone(),
        };
        c.mounts = self.plan_mounts(&c)?;
        let images = self.images.clone();
        let (img_id, cid) = (c.image_id.clone(), id.clone());
        let t = timing::step("create", "hold image", &id);
        blocking(move || images.hold(&img_id, &cid).map(drop).map_err(Error::from)).await?;
        drop(t);
        write_etc_files(&c, &dir, None)?;
        let t = timing::step("create", "save record", &id);
        if let Err(e) = c.save(&self.paths) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        drop(t);
        self.events.emit("container", "create", &id, attrs(&c));
        self.names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(c.name.clone(), id.clone());
        self.containers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), Entry::new(c));
        Ok((id, warnings))
    }

    fn id_of_name(&self, name: &str) -> Option<String> {
        self.names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Work out the container's mounts (binds, volumes, tmpfs) from the
    /// request, creating named and anonymous volumes.
    fn plan_mounts(&self, c: &Container) -> Result<Vec<MountPoint>> {
        let mut out: Vec<MountPoint> = Vec::new();
        let add = |m: MountPoint, out: &mut Vec<MountPoint>| -> Result<()> {
            if !m.destination.starts_with('/') {
                return Err(Error::invalid(format!(
                    "invalid mount config: mount path must be absolute: {}",
                    m.destination
                )));
            }
            if out.iter().any(|o| o.destination == m.destination) {
                return Err(Error::invalid(format!(
                    "Duplicate mount point: {}",
                    m.destination
                )));
            }
            out.push(m);
            Ok(())
        };
        for b in &c.host_config.binds {
            let parts: Vec<&str> = b.split(':').collect();
            let (src, dst, mode) = match parts.as_slice() {
                [d] => ("", *d, ""),
                [s, d] => (*s, *d, ""),
                [s, d, m] => (*s, *d, *m),
                _ => {
                    return Err(Error::invalid(format!(
                        "invalid volume specification: '{b}'"
                    )));
                }
            };
            let rw = !mode.split(',').any(|o| o == "ro");
            let propagation = mode
                .split(',')
                .find(|o| {
                    matches!(
                        *o,
                        "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate"
                    )
                })
                .unwrap_or("rprivate");
            if src.is_empty() {
                let (v, _) = self
                    .volumes
                    .create(None, BTreeMap::new(), BTreeMap::new(), true)?;
                add(
                    MountPoint {
                        kind: "volume".into(),
                        name: v.name,
                        source: v.mountpoint,
                        destination: dst.into(),
                        driver: "local".into(),
                        mode: mode.into(),
                        rw,
                        propagation: String::new(),
                    },
                    &mut out,
                )?;
            } else if src.starts_with('/') {
                add(
                    MountPoint {
                        kind: "bind".into(),
                        name: String::new(),
                        source: src.into(),
                        destination: dst.into(),
                        driver: String::new(),
                        mode: mode.into(),
                        rw,
                        propagation: propagation.into(),
                    },
                    &mut out,
                )?;
            } else {
                let (v, created) =
                    self.volumes
                        .create(Some(src), BTreeMap::new(), BTreeMap::new(), false)?;
                if created {
                    self.events.emit(
                        "volume",
                        "create",
                        &v.name,
                        BTreeMap::from([("driver".to_string(), "local".to_string())]),
                    );
                }
                add(
                    MountPoint {
                        kind: "volume".into(),
                        name: v.name,
                        source: v.mountpoint,
                        destination: dst.into(),
                        driver: "local".into(),
                        mode: mode.into(),
                        rw,
                        propagation: String::new(),
                    },
                    &mut out,
                )?;
            }
        }
        for m in &c.host_config.mounts {
            match m.kind.as_str() {
                "bind" => {
                    if !Path::new(&m.source).exists() {
                        return Err(Error::invalid(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            m.source
                        )));
                    }
                    let propagation = m
                        .bind_options
                        .as_ref()
                        .map(|o| o.propagation.clone())
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "rprivate".into());
                    add(
                        MountPoint {
                            kind: "bind".into(),
                            name: String::new(),
                            source: m.source.clone(),
                            destination: m.target.clone(),
                            driver: String::new(),
                            mode: String::new(),
                            rw: !m.read_only,
                            propagation,
                        },
                        &mut out,
                    )?;
                }
                "volume" => {
                    let name = (!m.source.is_empty()).then_some(m.source.as_str());
                    let labels = m
                        .volume_options
                        .as_ref()
                        .map(|o| o.labels.clone())
                        .unwrap_or_default();
                    let (v, _) =
                        self.volumes
                            .create(name, labels, BTreeMap::new(), name.is_none())?;
                    add(
                        MountPoint {
                            kind: "volume".into(),
                            name: v.name,
                            source: v.mountpoint,
                            destination: m.target.clone(),
                            driver: "local".into(),
                            mode: "z".into(),
                            rw: !m.read_only,
                            propagation: String::new(),
                        },
                        &mut out,
                    )?;
                }
                "tmpfs" => {
                    let mut opts = Vec::new();
                    if let Some(t) = &m.tmpfs_options {
                        if t.size_bytes > 0 {
                            opts.push(format!("size={}", t.size_bytes));
                        }
                        if t.mode > 0 {
                            opts.push(format!("mode={:o}", t.mode));
                        }
                    }
                    add(
                        MountPoint {
                            kind: "tmpfs".into(),
                            name: String::new(),
                            source: String::new(),
                            destination: m.target.clone(),
                            driver: String::new(),
                            mode: opts.join(","),
                            rw: !m.read_only,
                            propagation: String::new(),
                        },
                        &mut out,
                    )?;
                }
                other => {
                    return Err(Error::invalid(format!(
                        "invalid mount config: mount type unknown: {other:?}"
                    )));
                }
            }
        }
        for (dst, opts) in &c.host_config.tmpfs {
            add(
                MountPoint {
                    kind: "tmpfs".into(),
                    name: String::new(),
                    source: String::new(),
                    destination: dst.clone(),
                    driver: String::new(),
                    mode: opts.clone(),
                    rw: true,
                    propagation: String::new(),
                },
                &mut out,
            )?;
        }
        // Image VOLUMEs not covered by a mount get anonymous volumes.
        for dst in c.config.volumes.iter().flat_map(|v| v.keys()) {
            if out.iter().any(|m| &m.destination == dst) {
                continue;
            }
            let (v, _) = self
                .volumes
                .create(None, BTreeMap::new(), BTreeMap::new(), true)?;
            out.push(MountPoint {
                kind: "volume".into(),
                name: v.name,
                source: v.mountpoint,
                destination: dst.clone(),
                driver: "local".into(),
                mode: String::new(),
                rw: true,
                propagation: String::new(),
            });
        }
        Ok(out)
    }

    // ----- start -----

    /// `POST /containers/{id}/start`.
    pub async fn start(self: &Arc<Self>, reference: &str) -> Result<()> {
        let entry = self.get(reference)?;
        let mut c = entry.rec.lock().await;
        match c.state.status {
            Status::Running | Status::Paused => return Err(Error::not_modified()),
            Status::Removing | Status::Dead => {
                return Err(Error::conflict(format!(
                    "container {} is marked for removal and cannot be started",
                    c.id
                )));
            }
            _ => {}
        }
        let id = c.id.clone();
        let result = self.start_locked(&entry, &mut c).await;
        if let Err(e) = &result {
            c.state.error.clone_from(&e.message);
            c.state.exit_code = if e.message.contains("executable file not found")
                || e.message.contains("no such file or directory")
            {
                127
            } else {
                128
            };
            if c.state.status != Status::Exited {
                c.state.status = if c.has_been_started {
                    Status::Exited
                } else {
                    Status::Created
                };
            }
            let _ = entry.persist(&self.paths, &c);
            let _ = self.cleanup_runtime(&id).await;
            self.release_network(&id).await;
            entry.update(|s| {
                s.created_process = false;
                s.failed_starts += 1;
            });
            // A `--rm` container that cannot start is removed too: the
            // docker CLI waits for the removal before it reports the error.
            if c.host_config.auto_remove {
                drop(c);
                if let Err(e) = self.remove(&id, true, true).await {
                    tracing::warn!(%id, error = %e, "auto-remove after a failed start");
                }
            }
        }
        result
    }

    async fn start_locked(self: &Arc<Self>, entry: &Arc<Entry>, c: &mut Container) -> Result<()> {
        let id = c.id.clone();
        let _total = timing::step("start", "total", &id);
        let dir = self.paths.container(&id);
        let rootfs = dir.join("rootfs");
        let t = timing::step("start", "mount rootfs", &id);
        self.mount_rootfs(c).await?;
        drop(t);
        self.prepare_volumes(c).await?;
        let images = self.images.clone();
        let img = c.image_id.clone();
        let t = timing::step("start", "inspect image", &id);
        let image_env = blocking(move || {
            let d = images.inspect(&img)?;
            Ok(d.config.config.and_then(|r| r.env).unwrap_or_default())
        })
        .await?;
        drop(t);
        let mut join = BTreeMap::new();
        if let net::Mode::Bridge(reqs) = self.mode(c).await? {
            let t = timing::step("start", "set up network", &id);
            let (ns, attached) = self.setup_network(c, &reqs).await?;
            drop(t);
            join.insert("network", ns);
            write_etc_files(c, &dir, Some(&attached))?;
        }
        for (kind, mode, nsname) in [
            ("network", &c.host_config.network_mode, "net"),
            ("pid", &c.host_config.pid_mode, "pid"),
            ("ipc", &c.host_config.ipc_mode, "ipc"),
        ] {
            if let Some(other) = mode.strip_prefix("container:") {
                let pid = self.live_pid(other).await?;
                join.insert(kind, PathBuf::from(format!("/proc/{pid}/ns/{nsname}")));
            }
        }
        let inputs = spec::SpecInputs {
            paths: &self.paths,
            rootfs: &rootfs,
            image_env: &image_env,
            mounts: oci_mounts(&c.mounts)?,
            join,
        };
        let t = timing::step("start", "build spec", &id);
        let mut spec = spec::build(c, &inputs)?;
        drop(t);
        if c.host_config.runtime == RUNTIME_VM {
            // The shim boots a VM from the mounted root filesystem (imaged
            // per container) with the spec's process and resources.
            use vessel_runtime::vm;
            if let Some(a) = spec
                .as_object_mut()
                .map(|o| {
                    o.entry("annotations")
                        .or_insert_with(|| serde_json::json!({}))
                })
                .and_then(serde_json::Value::as_object_mut)
            {
                a.insert(
                    vessel_runtime::spec::ANNOTATION_SANDBOX.into(),
                    vm::SANDBOX_VM.into(),
                );
                a.insert(
                    vm::ANNOTATION_KERNEL.into(),
                    self.vm_kernel.display().to_string().into(),
                );
                a.insert(
                    vm::ANNOTATION_INITRD.into(),
                    self.vm_initrd.display().to_string().into(),
                );
                // Each layer becomes a read-only disk imaged once and
                // shared by every VM that uses it; the container's own
                // changes go on top. An image with too many layers is
                // imaged whole, per container, instead.
                let layers = self.images.layer_dirs(&c.image_id)?;
                if !layers.is_empty() && layers.len() < vm::MAX_LAYERS {
                    let layers: Vec<vm::LayerDir> = layers
                        .into_iter()
                        .map(|(diff_id, dir)| vm::LayerDir {
                            key: diff_id.to_string(),
                            dir,
                        })
                        .collect();
                    a.insert(
                        vm::ANNOTATION_LAYERS.into(),
                        serde_json::to_string(&layers)
                            .map_err(|e| Error::internal(e.to_string()))?
                            .into(),
                    );
                    a.insert(
                        vm::ANNOTATION_LAYER_CACHE.into(),
                        self.paths.vm_layers().display().to_string().into(),
                    );
                    a.insert(
                        vm::ANNOTATION_UPPER.into(),
                        dir.join("upper").display().to_string().into(),
                    );
                }
            }
        }
        let bundle = dir.join("bundle");
        let t = timing::step("start", "write bundle", &id);
        std::fs::create_dir_all(&bundle)?;
        // Written anew before every start: no need to outlive a machine crash.
        container::write_replace(
            &bundle.join("config.json"),
            &serde_json::to_vec_pretty(&spec).map_err(|e| Error::internal(e.to_string()))?,
        )?;
        let log = (c.host_config.log_config.kind != "none").then(|| shimproto::LogConfig {
            path: c.log_path(&self.paths),
            max_size: c
                .host_config
                .log_config
                .config
                .get("max-size")
                .and_then(|s| spec::parse_size(s))
                .unwrap_or(0),
            max_files: c
                .host_config
                .log_config
                .config
                .get("max-file")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1),
        });
        drop(t);
        let state_dir = self.paths.shim(&id);
        // A runtime container left from a crash would block the create.
        let t = timing::step("start", "clean runtime state", &id);
        let _ = self.cleanup_runtime(&id).await;
        drop(t);
        let cfg = ShimConfig {
            id: id.clone(),
            bundle,
            runtime_root: self.paths.runtime_root(),
            state_dir: state_dir.clone(),
            tty: c.config.tty,
            open_stdin: c.config.open_stdin,
            stdin_once: c.config.stdin_once,
            log,
        };
        let t = timing::step("start", "launch shim", &id);
        let pid = shim::launch(&self.shim_binary, &cfg).await?;
        drop(t);
        let t = timing::step("start", "wait for attach", &id);
        // Let attach requests that came before start connect first.
        entry.update(|s| s.created_process = true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while entry
            .pending_attach
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
        {
            if tokio::time::timeout_at(deadline, entry.attached.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        drop(t);
        let t = timing::step("start", "shim start", &id);
        shim::call(&state_dir, &Request::Start).await?;
        drop(t);
        c.state = State {
            status: Status::Running,
            pid,
            started_at: now(),
            health: c
                .config
                .healthcheck
                .as_ref()
                .filter(|h| h.test.first().is_some_and(|t| t != "NONE"))
                .map(|_| types::HealthView {
                    status: "starting".into(),
                    failing_streak: 0,
                    log: Vec::new(),
                }),
            ..State::default()
        };
        c.has_been_started = true;
        c.manually_stopped = false;
        let t = timing::step("start", "persist", &id);
        entry.persist(&self.paths, c)?;
        drop(t);
        entry.update(|s| {
            s.status = Status::Running;
            s.starts += 1;
            s.created_process = false;
        });
        self.events.emit("container", "start", &id, attrs(c));
        self.monitor(id.clone());
        if c.state.health.is_some() {
            exec::spawn_health_checks(self.clone(), id);
        }
        Ok(())
    }

    async fn live_pid(&self, reference: &str) -> Result<i32> {
        let e = self.get(reference)?;
        let c = e.rec.lock().await;
        if !c.state.status.is_live() {
            return Err(Error::conflict(format!(
                "cannot join the namespaces of container {}: it is not running",
                c.name
            )));
        }
        Ok(c.state.pid)
    }

    async fn mount_rootfs(&self, c: &Container) -> Result<()> {
        let dir = self.paths.container(&c.id);
        let rootfs = dir.join("rootfs");
        if is_mountpoint(&rootfs) {
            return Ok(());
        }
        let images = self.images.clone();
        let (img, d) = (c.image_id.clone(), dir.clone());
        blocking(move || {
            let mounts = images.mounts_for(&img, Some((d.join("upper"), d.join("work"))))?;
            for m in &mounts {
                crate::images::snapshot::mount(m, &d.join("rootfs"))
                    .map_err(|e| Error::from_err("mount the container's root filesystem", &e))?;
            }
            Ok(())
        })
        .await
    }

    /// Fill new, empty volumes with what the image has at their mount
    /// point (Docker's copy-up), once.
    async fn prepare_volumes(&self, c: &Container) -> Result<()> {
        let rootfs = self.paths.container(&c.id).join("rootfs");
        for m in &c.mounts {
            if m.kind != "volume" {
                continue;
            }
            let marker = Path::new(&m.source)
                .parent()
                .map(|p| p.join(".initialised"));
            let Some(marker) = marker else { continue };
            if marker.exists() {
                continue;
            }
            let empty = std::fs::read_dir(&m.source).is_ok_and(|mut d| d.next().is_none());
            if empty {
                let src = rootfs.join(m.destination.trim_start_matches('/'));
                if src.is_dir() && !src.is_symlink() {
                    let dst = PathBuf::from(&m.source);
                    let st = tokio::process::Command::new("cp")
                        .arg("-a")
                        .arg("--")
                        .arg(format!("{}/.", src.display()))
                        .arg(&dst)
                        .status()
                        .await?;
                    if !st.success() {
                        tracing::warn!(volume = %m.name, "copying image content into the volume failed");
                    }
                }
            }
            let _ = std::fs::write(&marker, b"");
        }
        Ok(())
    }

    /// Follow a running container's shim until the container exits.
    fn monitor(self: &Arc<Self>, id: String) {
        let engine = self.clone();
        tokio::spawn(async move {
            let dir = engine.paths.shim(&id);
            let t = timing::step("exit", "running", &id);
            let status = match shim::call(&dir, &Request::Wait).await {
                Ok(resp) => resp.exit,
                Err(e) => {
                    tracing::debug!(%id, error = %e, "wait on shim");
                    None
                }
            };
            drop(t);
            let status = status.or_else(|| shim::read_exit(&dir));
            engine.exited(&id, status).await;
        });
    }

    /// A container's process ended: record it, clean up, apply policies.
    async fn exited(self: &Arc<Self>, id: &str, status: Option<ExitStatus>) {
        let Ok(entry) = self.get(id) else { return };
        let total = timing::step("exit", "total", id);
        let mut c = entry.rec.lock().await;
        if !c.state.status.is_live() && c.state.status != Status::Restarting {
            return;
        }
        let code = status.as_ref().map_or(255, |s| s.code);
        c.state.status = Status::Exited;
        c.state.exit_code = code;
        c.state.oom_killed = status.as_ref().is_some_and(|s| s.oom_killed);
        if let Some(e) = status.and_then(|s| s.error) {
            c.state.error = e;
        }
        c.state.finished_at = now();
        c.state.pid = 0;
        if let Some(h) = &mut c.state.health {
            h.status = "unhealthy".into();
        }
        let t = timing::step("exit", "persist", id);
        if c.host_config.auto_remove {
            // Removed in a moment; should the daemon die first, the next
            // one finds the shim gone and removes the container then.
            entry.publish(&c);
        } else {
            let _ = entry.persist(&self.paths, &c);
        }
        drop(t);
        let t = timing::step("exit", "clean runtime state", id);
        let _ = self.cleanup_runtime(id).await;
        drop(t);
        let t = timing::step("exit", "release network", id);
        self.release_network(id).await;
        drop(t);
        if c.state.oom_killed {
            self.events.emit("container", "oom", id, attrs(&c));
        }
        let mut a = attrs(&c);
        a.insert("exitCode".into(), code.to_string());
        self.events.emit("container", "die", id, a);
        entry.update(|s| {
            s.status = Status::Exited;
            s.exit_code = code;
            s.exits += 1;
        });
        let auto_remove = c.host_config.auto_remove;
        let restart = restart_wanted(&c, false);
        if restart {
            c.state.status = Status::Restarting;
            c.restart_count += 1;
            let _ = entry.persist(&self.paths, &c);
            entry.update(|s| s.status = Status::Restarting);
        }
        let count = c.restart_count;
        drop(c);
        drop(total);
        if auto_remove {
            if let Err(e) = self.remove(id, true, true).await {
                tracing::warn!(%id, error = %e, "auto-remove");
            }
        } else if restart {
            // Back off: 100 ms, doubling, at most a minute.
            let delay = Duration::from_millis(
                100u64.saturating_mul(1u64 << count.min(10).saturating_sub(1)),
            )
            .min(Duration::from_secs(60));
            let engine = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let still = match engine.get(&id) {
                    Ok(e) => e.rec.lock().await.state.status == Status::Restarting,
                    Err(_) => false,
                };
                if still {
                    if let Err(e) = engine.start(&id).await {
                        tracing::warn!(%id, error = %e, "restart");
                    }
                }
            });
        }
    }

    /// Remove what the runtime and the shim left for a stopped container.
    async fn cleanup_runtime(&self, id: &str) -> Result<()> {
        let root = self.paths.runtime_root();
        let id = id.to_string();
        blocking(move || {
            let r = vessel_runtime::Root::open(&root)?;
            vessel_runtime::container::delete(&r, &id, true)?;
            Ok(())
        })
        .await
    }

    // ----- signals and stop -----

    /// `POST /containers/{id}/kill`.
    pub async fn kill(&self, reference: &str, signal: &str) -> Result<()> {
        let entry = self.get(reference)?;
        let c = entry.rec.lock().await;
        if !c.state.status.is_live() {
            return Err(Error::conflict(format!(
                "Cannot kill container: {}: Container {} is not running",
                reference, c.id
            )));
        }
        let sig = if signal.is_empty() {
            libc::SIGKILL
        } else {
            vessel_runtime::parse_signal(signal).map_err(|e| Error::invalid(e.to_string()))?
        };
        let mut rx = entry.watch();
        let exits = rx.borrow().exits;
        self.signal(&c.id, sig).await?;
        let mut a = attrs(&c);
        a.insert("signal".into(), sig.to_string());
        self.events.emit("container", "kill", &c.id, a);
        drop(c);
        if sig == libc::SIGKILL {
            // Like Docker, a SIGKILL returns once the container has exited,
            // so its exit code is there for whoever asks next.
            while rx.borrow().exits == exits {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn signal(&self, id: &str, sig: i32) -> Result<()> {
        let vm = self.get(id).ok().is_some_and(|e| {
            e.view
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .host_config
                .runtime
                == RUNTIME_VM
        });
        if vm {
            // The container lives in the shim's VM: the shim delivers it.
            shim::call(&self.paths.shim(id), &Request::Signal { signal: sig }).await?;
            return Ok(());
        }
        let root = self.paths.runtime_root();
        let id = id.to_string();
        blocking(move || {
            let r = vessel_runtime::Root::open(&root)?;
            vessel_runtime::container::kill(&r, &id, sig, false)?;
            Ok(())
        })
        .await
    }

    /// `POST /containers/{id}/stop`: the stop signal, then SIGKILL after
    /// the timeout.
    pub async fn stop(
        &self,
        reference: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<()> {
        let entry = self.get(reference)?;
        let (id, sig, t, mut rx) = {
            let mut c = entry.rec.lock().await;
            if c.state.status == Status::Restarting {
                c.state.status = Status::Exited;
                c.manually_stopped = true;
                let _ = entry.persist(&self.paths, &c);
                entry.update(|s| s.status = Status::Exited);
                return Ok(());
            }
            if !c.state.status.is_live() {
                return Err(Error::not_modified());
            }
            c.manually_stopped = true;
            let _ = entry.persist(&self.paths, &c);
            let sig_name = signal
                .map(str::to_string)
                .or_else(|| c.config.stop_signal.clone())
                .unwrap_or_else(|| "SIGTERM".into());
            let sig = vessel_runtime::parse_signal(&sig_name)
                .map_err(|e| Error::invalid(e.to_string()))?;
            let t = timeout.or(c.config.stop_timeout).unwrap_or(10);
            if c.state.status == Status::Paused {
                let _ = self.resume_runtime(&c.id).await;
            }
            (c.id.clone(), sig, t, entry.watch())
        };
        let exits = rx.borrow().exits;
        let _ = self.signal(&id, sig).await;
        let exited = async {
            while rx.borrow().exits == exits {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let graceful = if t < 0 {
            exited.await;
            true
        } else {
            tokio::time::timeout(Duration::from_secs(t as u64), exited)
                .await
                .is_ok()
        };
        if !graceful {
            let _ = self.signal(&id, libc::SIGKILL).await;
            let mut rx = entry.watch();
            while rx.borrow().exits == exits {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        let c = entry.rec.lock().await;
        self.events.emit("container", "stop", &id, attrs(&c));
        Ok(())
    }

    /// `POST /containers/{id}/restart`.
    pub async fn restart(self: &Arc<Self>, reference: &str, timeout: Option<i64>) -> Result<()> {
        match self.stop(reference, timeout, None).await {
            Ok(()) => {}
            Err(e) if e.kind == error::Kind::NotModified => {}
            Err(e) => return Err(e),
        }
        self.start(reference).await?;
        let entry = self.get(reference)?;
        let c = entry.rec.lock().await;
        self.events.emit("container", "restart", &c.id, attrs(&c));
        Ok(())
    }

    async fn resume_runtime(&self, id: &str) -> Result<()> {
        let root = self.paths.runtime_root();
        let id = id.to_string();
        blocking(move || {
            let r = vessel_runtime::Root::open(&root)?;
            vessel_runtime::container::resume(&r, &id)?;
            Ok(())
        })
        .await
    }

    /// `POST /containers/{id}/pause` and `/unpause`.
    pub async fn pause(&self, reference: &str, pause: bool) -> Result<()> {
        let entry = self.get(reference)?;
        let mut c = entry.rec.lock().await;
        match (pause, c.state.status) {
            (true, Status::Running) | (false, Status::Paused) => {}
            (true, Status::Paused) => {
                return Err(Error::conflict(format!(
                    "Container {} is already paused",
                    c.id
                )));
            }
            (false, Status::Running) => {
                return Err(Error::conflict(format!("Container {} is not paused", c.id)));
            }
            _ => {
                return Err(Error::conflict(format!(
                    "Container {} is not running",
                    c.id
                )));
            }
        }
        let root = self.paths.runtime_root();
        let id = c.id.clone();
        blocking(move || {
            let r = vessel_runtime::Root::open(&root)?;
            if pause {
                vessel_runtime::container::pause(&r, &id)?;
            } else {
                vessel_runtime::container::resume(&r, &id)?;
            }
            Ok(())
        })
        .await?;
        c.state.status = if pause {
            Status::Paused
        } else {
            Status::Running
        };
        entry.persist(&self.paths, &c)?;
        let status = c.state.status;
        entry.update(|s| s.status = status);
        self.events.emit(
            "container",
            if pause { "pause" } else { "unpause" },
            &c.id,
            attrs(&c),
        );
        Ok(())
    }

    // ----- wait -----

    /// `POST /containers/{id}/wait`: `not-running` (default), `next-exit`
    /// or `removed`. Returns the exit code.
    pub async fn wait(&self, reference: &str, condition: &str) -> Result<i32> {
        let entry = self.get(reference)?;
        let mut rx = entry.watch();
        let start = *rx.borrow();
        loop {
            let s = *rx.borrow();
            let done = match condition {
                "next-exit" => s.exits > start.exits,
                "removed" => s.removed,
                "" | "not-running" => {
                    !s.status.is_live() && s.status != Status::Restarting && !s.created_process
                }
                other => return Err(Error::invalid(format!("invalid condition: {other:?}"))),
            };
            if done {
                return Ok(s.exit_code);
            }
            if rx.changed().await.is_err() {
                // The entry is gone: the container was removed.
                return Ok(rx.borrow().exit_code);
            }
        }
    }

    // ----- remove -----

    /// `DELETE /containers/{id}`.
    pub async fn remove(
        self: &Arc<Self>,
        reference: &str,
        force: bool,
        volumes: bool,
    ) -> Result<()> {
        let entry = self.get(reference)?;
        let live = {
            let c = entry.rec.lock().await;
            if c.state.status == Status::Removing {
                return Err(Error::conflict(format!(
                    "removal of container {} is already in progress",
                    c.id
                )));
            }
            c.state.status.is_live()
        };
        if live {
            if !force {
                let c = entry.rec.lock().await;
                return Err(Error::conflict(format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    c.name
                )));
            }
            let id = entry.rec.lock().await.id.clone();
            let mut rx = entry.watch();
            let exits = rx.borrow().exits;
            let _ = self.signal(&id, libc::SIGKILL).await;
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                while rx.borrow().exits == exits {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
        }
        // Volumes other containers use (read before taking our own lock).
        let own_id = entry.view().id;
        let in_use = if volumes {
            self.volumes_in_use(&own_id)
        } else {
            Vec::new()
        };
        let mut c = entry.rec.lock().await;
        c.state.status = Status::Removing;
        *entry
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = c.clone();
        let id = c.id.clone();
        let _total = timing::step("remove", "total", &id);
        let dir = self.paths.container(&id);
        let t = timing::step("remove", "clean runtime state", &id);
        let _ = self.cleanup_runtime(&id).await;
        drop(t);
        let t = timing::step("remove", "release network", &id);
        self.release_network(&id).await;
        drop(t);
        let rootfs = dir.join("rootfs");
        let t = timing::step("remove", "unmount rootfs", &id);
        if is_mountpoint(&rootfs) {
            let r = rootfs.clone();
            blocking(move || {
                crate::images::snapshot::unmount(&r)
                    .map_err(|e| Error::from_err("unmount the root filesystem", &e))
            })
            .await?;
        }
        drop(t);
        let t = timing::step("remove", "delete directories", &id);
        let _ = discard(&self.paths, &self.paths.shim(&id));
        discard(&self.paths, &dir)?;
        drop(t);
        let images = self.images.clone();
        let cid = id.clone();
        let t = timing::step("remove", "release image", &id);
        let _ = blocking(move || images.release(&cid).map_err(Error::from)).await;
        drop(t);
        if volumes {
            for m in &c.mounts {
                if m.kind == "volume" && !in_use.contains(&m.name) {
                    if let Ok(v) = self.volumes.get(&m.name) {
                        if v.anonymous {
                            let _ = self.volumes.remove(&m.name);
                            self.events
                                .emit("volume", "destroy", &m.name, BTreeMap::new());
                        }
                    }
                }
            }
        }
        self.containers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        self.names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&c.name);
        self.events.emit("container", "destroy", &id, attrs(&c));
        entry.update(|s| s.removed = true);
        Ok(())
    }

    /// Volumes used by containers other than `except`.
    pub fn volumes_in_use(&self, except: &str) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.all() {
            if c.id == except {
                continue;
            }
            out.extend(
                c.mounts
                    .iter()
                    .filter(|m| m.kind == "volume")
                    .map(|m| m.name.clone()),
            );
        }
        out
    }

    /// `POST /containers/prune`: remove stopped containers.
    pub async fn prune(self: &Arc<Self>) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for c in self.all() {
            if matches!(
                c.state.status,
                Status::Exited | Status::Created | Status::Dead
            ) && self.remove(&c.id, false, false).await.is_ok()
            {
                removed.push(c.id);
            }
        }
        Ok(removed)
    }

    // ----- rename, update -----

    /// `POST /containers/{id}/rename`.
    pub async fn rename(&self, reference: &str, new_name: &str) -> Result<()> {
        let _guard = self.naming.lock().await;
        let new_name = new_name.trim_start_matches('/');
        if !container::valid_name(new_name) {
            return Err(Error::invalid(format!(
                "Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        if let Some(other) = self.id_of_name(new_name) {
            return Err(Error::conflict(format!(
                "Conflict. The container name \"/{new_name}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
            )));
        }
        let entry = self.get(reference)?;
        let mut c = entry.rec.lock().await;
        let old = std::mem::replace(&mut c.name, new_name.to_string());
        entry.persist(&self.paths, &c)?;
        {
            let mut names = self
                .names
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            names.remove(&old);
            names.insert(new_name.to_string(), c.id.clone());
        }
        let mut a = attrs(&c);
        a.insert("oldName".into(), format!("/{old}"));
        self.events.emit("container", "rename", &c.id, a);
        Ok(())
    }

    /// `POST /containers/{id}/update`.
    pub async fn update(&self, reference: &str, u: UpdateRequest) -> Result<Vec<String>> {
        let entry = self.get(reference)?;
        let mut c = entry.rec.lock().await;
        let hc = &mut c.host_config;
        if u.memory != 0 {
            hc.memory = u.memory;
        }
        if u.memory_swap != 0 {
            hc.memory_swap = u.memory_swap;
        }
        if u.memory_reservation != 0 {
            hc.memory_reservation = u.memory_reservation;
        }
        if u.cpu_shares != 0 {
            hc.cpu_shares = u.cpu_shares;
        }
        if u.nano_cpus != 0 {
            hc.nano_cpus = u.nano_cpus;
        }
        if u.cpu_period != 0 {
            hc.cpu_period = u.cpu_period;
        }
        if u.cpu_quota != 0 {
            hc.cpu_quota = u.cpu_quota;
        }
        if !u.cpuset_cpus.is_empty() {
            hc.cpuset_cpus.clone_from(&u.cpuset_cpus);
        }
        if !u.cpuset_mems.is_empty() {
            hc.cpuset_mems.clone_from(&u.cpuset_mems);
        }
        if u.blkio_weight != 0 {
            hc.blkio_weight = u.blkio_weight;
        }
        if u.pids_limit.is_some() {
            hc.pids_limit = u.pids_limit;
        }
        if let Some(rp) = &u.restart_policy {
            hc.restart_policy = rp.clone();
        }
        if c.state.status.is_live() {
            let mut res = serde_json::Map::new();
            let mut mem = serde_json::Map::new();
            if u.memory != 0 {
                mem.insert("limit".into(), json!(u.memory));
                let swap = if u.memory_swap != 0 {
                    u.memory_swap
                } else {
                    u.memory * 2
                };
                mem.insert("swap".into(), json!(swap));
            }
            if u.memory_reservation != 0 {
                mem.insert("reservation".into(), json!(u.memory_reservation));
            }
            if !mem.is_empty() {
                res.insert("memory".into(), Value::Object(mem));
            }
            let mut cpu = serde_json::Map::new();
            if u.cpu_shares != 0 {
                cpu.insert("shares".into(), json!(u.cpu_shares));
            }
            if u.nano_cpus != 0 {
                cpu.insert("period".into(), json!(100_000));
                cpu.insert("quota".into(), json!(u.nano_cpus * 100_000 / 1_000_000_000));
            }
            if u.cpu_quota != 0 {
                cpu.insert("quota".into(), json!(u.cpu_quota));
            }
            if u.cpu_period != 0 {
                cpu.insert("period".into(), json!(u.cpu_period));
            }
            if !u.cpuset_cpus.is_empty() {
                cpu.insert("cpus".into(), json!(u.cpuset_cpus));
            }
            if !u.cpuset_mems.is_empty() {
                cpu.insert("mems".into(), json!(u.cpuset_mems));
            }
            if !cpu.is_empty() {
                res.insert("cpu".into(), Value::Object(cpu));
            }
            if let Some(p) = u.pids_limit {
                res.insert("pids".into(), json!({"limit": p}));
            }
            if u.blkio_weight != 0 {
                res.insert("blockIO".into(), json!({"weight": u.blkio_weight}));
            }
            let resources: oci_spec::runtime::LinuxResources =
                serde_json::from_value(Value::Object(res))
                    .map_err(|e| Error::invalid(e.to_string()))?;
            let root = self.paths.runtime_root();
            let id = c.id.clone();
            blocking(move || {
                let r = vessel_runtime::Root::open(&root)?;
                vessel_runtime::container::update(&r, &id, &resources)?;
                Ok(())
            })
            .await?;
        }
        entry.persist(&self.paths, &c)?;
        self.events.emit("container", "update", &c.id, attrs(&c));
        Ok(Vec::new())
    }

    // ----- streams -----

    /// Prepare to attach to a container's streams. A container that is not
    /// running yet (`docker run` attaches before it starts) gets a ticket
    /// registered now, so `start` waits for it to connect before the
    /// process runs and no output is lost.
    pub async fn attach(
        &self,
        reference: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<AttachTicket> {
        let entry = self.get(reference)?;
        let c = entry.rec.lock().await;
        let registered = !c.state.status.is_live();
        if registered {
            entry
                .pending_attach
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(AttachTicket {
            shim_dir: self.paths.shim(&c.id),
            tty: c.config.tty,
            stdin_once: c.config.stdin_once,
            request: Request::Attach {
                stdin,
                stdout,
                stderr,
            },
            registered,
            entry: entry.clone(),
        })
    }

    /// Resize the container's terminal.
    pub async fn resize(&self, reference: &str, rows: u16, cols: u16) -> Result<()> {
        let entry = self.get(reference)?;
        let c = entry.rec.lock().await;
        if !c.state.status.is_live() {
            return Err(Error::conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        shim::call(&self.paths.shim(&c.id), &Request::Resize { rows, cols })
            .await
            .map(drop)
    }

    /// The log of a container.
    pub async fn logs(
        &self,
        reference: &str,
        opts: logs::Options,
    ) -> Result<(tokio::sync::mpsc::Receiver<logs::Line>, bool)> {
        let entry = self.get(reference)?;
        let c = entry.rec.lock().await;
        if c.host_config.log_config.kind == "none" {
            return Err(Error::new(
                error::Kind::NotImplemented,
                "configured logging driver does not support reading",
            ));
        }
        let max_files = c
            .host_config
            .log_config
            .config
            .get("max-file")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let (tx, running) =
            watch::channel(c.state.status.is_live() || c.state.status == Status::Restarting);
        let mut rx = entry.watch();
        tokio::spawn(async move {
            loop {
                let s = *rx.borrow();
                if (!s.status.is_live() && s.status != Status::Restarting) || s.removed {
                    let _ = tx.send(false);
                    break;
                }
                if rx.changed().await.is_err() {
                    let _ = tx.send(false);
                    break;
                }
            }
        });
        Ok((
            logs::stream(c.log_path(&self.paths), max_files, opts, running),
            c.config.tty,
        ))
    }

    /// Exec instances.
    pub fn execs(&self) -> &std::sync::Mutex<HashMap<String, Arc<exec::Exec>>> {
        &self.execs
    }

    /// The directory of the container's shim.
    pub fn shim_dir(&self, id: &str) -> PathBuf {
        self.paths.shim(id)
    }
}

/// A pending attachment (see [`Engine::attach`]).
pub struct AttachTicket {
    entry: Arc<Entry>,
    shim_dir: PathBuf,
    request: Request,
    registered: bool,
    /// Whether the container has a terminal (raw stream).
    pub tty: bool,
    /// `StdinOnce`: the end of an attached client's input closes the
    /// container's stdin.
    pub stdin_once: bool,
}

impl AttachTicket {
    /// Wait until the process exists, then connect to its streams.
    pub async fn connect(mut self) -> Result<shim::Conn> {
        if self.registered {
            let mut rx = self.entry.watch();
            let failed = rx.borrow().failed_starts;
            loop {
                let s = *rx.borrow();
                if s.created_process || s.status.is_live() {
                    break;
                }
                if s.failed_starts != failed {
                    return Err(Error::conflict("the container failed to start"));
                }
                if s.removed || rx.changed().await.is_err() {
                    return Err(Error::not_found("No such container"));
                }
            }
        }
        let r = shim::request(&self.shim_dir, &self.request).await;
        self.release();
        r.map(|(c, _)| c)
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.registered) {
            self.entry
                .pending_attach
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            self.entry.attached.notify_waiters();
        }
    }
}

impl Drop for AttachTicket {
    fn drop(&mut self) {
        self.release();
    }
}

/// Take a removed container's directory out of the way at once (a rename
/// into the trash) and delete it in the background: deleting a container's
/// files is metadata work that a busy file system makes slow, and nothing
/// needs it done before the removal is reported. What a crash leaves in
/// the trash is deleted at the next start ([`empty_trash`]).
fn discard(paths: &Paths, dir: &Path) -> Result<()> {
    let trash = paths.trash_for(dir);
    let Some(name) = dir.file_name() else {
        return Ok(std::fs::remove_dir_all(dir)?);
    };
    let target = trash.join(name);
    let moved = std::fs::create_dir_all(&trash).and_then(|()| std::fs::rename(dir, &target));
    match moved {
        Ok(()) => {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&target) {
                    tracing::warn!(dir = %target.display(), error = %e, "deleting a removed container's files");
                }
            });
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => Ok(()),
        // Another file system, or a name clash: delete in place.
        Err(_) => Ok(std::fs::remove_dir_all(dir)?),
    }
}

/// Delete, in the background, what removals left in the trash directories
/// when the daemon stopped (see [`discard`]).
fn empty_trash(paths: &Paths) {
    let mut dirs = vec![
        paths.trash_for(&paths.root),
        paths.trash_for(&paths.exec_root),
    ];
    dirs.dedup();
    for trash in dirs {
        let Ok(entries) = std::fs::read_dir(&trash) else {
            continue;
        };
        let left: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        if left.is_empty() {
            continue;
        }
        tokio::task::spawn_blocking(move || {
            for p in left {
                if let Err(e) = std::fs::remove_dir_all(&p) {
                    tracing::warn!(dir = %p.display(), error = %e, "emptying the trash");
                }
            }
        });
    }
}

/// Whether the restart policy asks for a restart after an exit.
fn restart_wanted(c: &Container, daemon_start: bool) -> bool {
    let p = &c.host_config.restart_policy;
    match p.name.as_str() {
        "always" | "unless-stopped" => !c.manually_stopped,
        "on-failure" => {
            !daemon_start
                && c.state.exit_code != 0
                && !c.manually_stopped
                && (p.maximum_retry_count <= 0
                    || i64::from(c.restart_count) < p.maximum_retry_count)
        }
        _ => false,
    }
}

/// Whether `path` is a mount point (its device differs from its parent's,
/// or it is a bind of the same device: checked in mountinfo).
fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&p))
}

/// The OCI mounts for the container's binds, volumes and tmpfs mounts.
fn oci_mounts(mounts: &[MountPoint]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for m in mounts {
        match m.kind.as_str() {
            "bind" | "volume" => {
                if m.kind == "bind" && !Path::new(&m.source).exists() {
                    // Docker creates a missing -v host directory.
                    std::fs::create_dir_all(&m.source)?;
                }
                let mut opts = vec!["rbind".to_string()];
                opts.push(if m.rw { "rw" } else { "ro" }.into());
                if !m.propagation.is_empty() {
                    opts.push(m.propagation.clone());
                }
                out.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": opts}));
            }
            "tmpfs" => {
                let mut opts = vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "noexec".to_string(),
                ];
                opts.extend(
                    m.mode
                        .split(',')
                        .filter(|o| !o.is_empty())
                        .map(str::to_string),
                );
                if !m.rw {
                    opts.push("ro".into());
                }
                out.push(json!({"destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": opts}));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// /etc/hostname, /etc/hosts and /etc/resolv.conf for the container.
fn write_etc_files(
    c: &Container,
    dir: &Path,
    net: Option<&crate::network::Attached>,
) -> Result<()> {
    let hostname = if c.config.hostname.is_empty() {
        c.id[..12].to_string()
    } else {
        c.config.hostname.clone()
    };
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for h in &c.host_config.extra_hosts {
        if let Some((name, ip)) = h.split_once(':') {
            let _ = writeln!(hosts, "{ip}\t{name}");
        }
    }
    if let Some(ip6) = net.and_then(|n| n.ip6) {
        let _ = writeln!(hosts, "{ip6}\t{hostname}");
    }
    match net.and_then(|n| n.ip) {
        Some(ip) => {
            let _ = writeln!(hosts, "{ip}\t{hostname}");
        }
        None if c.host_config.network_mode != "host" => {
            let _ = writeln!(hosts, "127.0.1.1\t{hostname}");
        }
        None => {}
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut resolv = String::new();
    if let (true, Some(ns)) = (c.host_config.dns.is_empty(), net.and_then(|n| n.nameserver)) {
        // The network's own responder: container names, then the host's
        // resolvers.
        let _ = writeln!(resolv, "nameserver {ns}");
        for l in host_resolv.lines() {
            if (l.starts_with("search") && c.host_config.dns_search.is_empty())
                || (l.starts_with("options") && c.host_config.dns_options.is_empty())
            {
                resolv.push_str(l);
                resolv.push('\n');
            }
        }
    } else if c.host_config.dns.is_empty() {
        for l in host_resolv.lines() {
            // A loopback resolver of the host is unreachable from a private
            // network namespace.
            let loopback = l.starts_with("nameserver")
                && l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| a.starts_with("127.") || a == "::1");
            if !loopback || c.host_config.network_mode == "host" {
                resolv.push_str(l);
                resolv.push('\n');
            }
        }
    } else {
        for d in &c.host_config.dns {
            let _ = writeln!(resolv, "nameserver {d}");
        }
    }
    if !c.host_config.dns_search.is_empty() {
        let _ = writeln!(resolv, "search {}", c.host_config.dns_search.join(" "));
    }
    if !c.host_config.dns_options.is_empty() {
        let _ = writeln!(resolv, "options {}", c.host_config.dns_options.join(" "));
    }
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    Ok(())
}

/// What a `--runtime vm` container is asked for that its VM does not give
/// it yet, as create warnings (the docker CLI prints them).
fn vm_warnings(hc: &types::HostConfig) -> Vec<String> {
    let mut out = Vec::new();
    if hc.network_mode != "none" {
        out.push(format!(
            "the vm runtime gives the container no network interface yet: network mode {:?} is ignored (use --network none)",
            hc.network_mode
        ));
    }
    if !hc.binds.is_empty() || !hc.mounts.is_empty() {
        out.push(
            "the vm runtime does not mount volumes or bind mounts into the VM yet: they are ignored"
                .to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_containers_are_warned_of_what_their_vm_lacks() {
        let mut hc = types::HostConfig {
            runtime: RUNTIME_VM.into(),
            network_mode: "none".into(),
            ..Default::default()
        };
        assert!(vm_warnings(&hc).is_empty());
        hc.network_mode = "bridge".into();
        hc.binds = vec!["/srv:/data".into()];
        let w = vm_warnings(&hc);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("\"bridge\" is ignored"), "{w:?}");
        assert!(w[1].contains("bind mounts"), "{w:?}");
    }
}
