//! The executor: runs a parsed Dockerfile against the image store.
//!
//! Stages form a graph; the ones the target needs are started as tokio
//! tasks that wait for the stages they depend on, so independent stages
//! run at the same time, and stages the target does not need are never
//! started. Inside a stage, steps run in order:
//!
//! - metadata instructions change the image config and add a history
//!   entry marked `empty_layer`;
//! - RUN mounts an overlay of the parent's snapshots plus a fresh upper
//!   directory, runs the command as a container ([`super::run`]) and the
//!   upper directory becomes the layer (it already is in the snapshot
//!   format, whiteouts included, so it is moved into place, not unpacked);
//! - COPY and ADD write straight into such an overlay without a container.
//!
//! Every step has a cache key: the parent's key, the step after expansion,
//! the environment a RUN sees and checksums of the files a COPY or ADD
//! reads (for a URL, of the downloaded content, see [`super::fetch`]).
//! Layer-producing steps record an untagged intermediate image so their
//! layers stay in the store; the cache maps keys to the resulting config
//! and layers ([`super::cache`]).
//!
//! `COPY --link` and `ADD --link` build their layer in an empty tree
//! instead of on the parent's, so the layer does not depend on the layers
//! below; it is also cached under a key without the parent and put on top
//! of a new parent unchanged when only earlier steps changed.
//!
//! It does not own parsing ([`super::dockerfile`]), HTTP, or the context
//! upload: it gets a context directory and reports progress as text lines.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use sha2::Digest as _;

use super::cache::{self, Cache};
use super::dockerfile::{
    self, Base, BuildArgs, Chmod, Command, CopyStep, Dockerfile, GlobalScope, Healthcheck,
    Instruction, MountSpec, Network, RunProgram, RunStep, SourceSpec, StageScope, Step, UserGroup,
    ignore::IgnoreMatcher,
};
use super::fetch::{self, Fetcher};
use super::fsops::{self, Root};
use super::run;
use crate::images::digest::{Algorithm, HashingWriter};
use crate::images::manifest::{self, History, RootFs};
use crate::images::snapshot::{self, TempSnapshot};
use crate::images::{
    Compression, Digest, ImageConfig, ImageStore, LayerRecord, Mount, PendingLayer, Platform,
    Reference, RunConfig, diff, layer,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dockerfile(#[from] dockerfile::Error),
    #[error("dockerfile line {line} ({text:?})")]
    At {
        line: usize,
        text: String,
        #[source]
        source: Box<Error>,
    },
    #[error(transparent)]
    Shared(Arc<Error>),
    #[error(transparent)]
    Images(#[from] crate::images::Error),
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    #[error(transparent)]
    Fs(#[from] fsops::Error),
    #[error(transparent)]
    Run(#[from] run::Error),
    #[error(transparent)]
    Cache(#[from] cache::Error),
    #[error("{path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot locate specified Dockerfile: {0}")]
    NoDockerfile(String),
    #[error("The command '{command}' returned a non-zero code: {code}{hint}")]
    RunFailed {
        command: String,
        code: i32,
        /// What the code most likely means, with a leading separator, or
        /// empty.
        hint: String,
    },
    #[error("forbidden path outside the build context: {0}")]
    OutsideContext(String),
    #[error(
        "file not found in build context or excluded by .dockerignore: stat {0}: file does not exist"
    )]
    NotFound(String),
    #[error(
        "When using {0} with more than one source file, the destination must be a directory and end with a /"
    )]
    NotADirectory(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    #[error("image {reference}: not in the local store (load or pull it first)")]
    NoImage {
        reference: String,
        #[source]
        source: crate::images::Error,
    },
    #[error("build task failed: {0}")]
    Task(String),
    #[error("pulling {reference}: {reason}")]
    Pull { reference: String, reason: String },
}

impl Error {
    /// The exit code of the RUN step that failed the build, if that is what
    /// failed it: Docker sends it as `errorDetail.code` and the docker CLI
    /// exits with it.
    pub fn run_exit_code(&self) -> Option<i32> {
        match self {
            Error::RunFailed { code, .. } => Some(*code),
            Error::At { source, .. } => source.run_exit_code(),
            Error::Shared(inner) => inner.run_exit_code(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

/// Where progress lines go (each ends in a newline).
pub type Output = Arc<dyn Fn(String) + Send + Sync>;

/// What a build is asked to do.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    pub tags: Vec<String>,
    /// `--build-arg`s; `None` values are unset.
    pub build_args: Vec<(String, Option<String>)>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub labels: BTreeMap<String, String>,
    pub platform: Option<String>,
    /// Run every RUN in the host network (`--network host`).
    pub host_network: bool,
    /// Re-resolve every FROM image against its registry (`--pull`).
    pub pull: bool,
    /// How to pull a FROM image: with `pull` every one, else those not in
    /// the local store. Without a puller, base images must be local.
    pub puller: Option<Puller>,
    /// Limits for every RUN container.
    pub limits: run::Limits,
    /// `--add-host` entries as (name, address), added to /etc/hosts of
    /// every RUN container.
    pub extra_hosts: Vec<(String, String)>,
}

/// Pulls an image reference into the store (blocking), reporting progress
/// lines through the output. The API layer supplies it: pulling needs the
/// daemon's registry clients, which this module does not own.
#[derive(Clone)]
pub struct Puller(pub Arc<PullFn>);

/// Pull one reference; the error is the message to show.
pub type PullFn = dyn Fn(&str, &Output) -> std::result::Result<(), String> + Send + Sync;

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Puller")
    }
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: Digest,
    /// The tags applied, in familiar form.
    pub tags: Vec<String>,
    /// Stages built, in the order they finished, with the instants (ns
    /// since the epoch) their first and last step ran: for tests and logs.
    pub stages: Vec<StageTiming>,
}

#[derive(Debug, Clone)]
pub struct StageTiming {
    pub index: usize,
    pub started_ns: u128,
    pub finished_ns: u128,
}

/// The longest an `ADD <url>` download waits for any one thing (the
/// connection, the TLS handshake, the answer, the next piece of the body).
const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The builder of one daemon.
pub struct Builder {
    store: Arc<ImageStore>,
    root: PathBuf,
    runtime_root: PathBuf,
    runtime: PathBuf,
    cache: Cache,
    counter: AtomicU64,
    /// Serialises creation of cache mount directories.
    mounts_lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The state after a step: the image so far.
#[derive(Debug, Clone)]
struct State {
    config: ImageConfig,
    layers: Vec<LayerRecord>,
    key: String,
}

/// A finished stage.
#[derive(Debug)]
struct StageDone {
    state: State,
    scope: StageScope,
    timing: StageTiming,
}

type StageFuture = Shared<BoxFuture<'static, Result<Arc<StageDone>, Arc<Error>>>>;

/// What every stage of one build shares.
struct Ctx {
    df: Dockerfile,
    global: GlobalScope,
    context: PathBuf,
    ignore: IgnoreMatcher,
    opts: BuildOptions,
    out: Output,
    first_step: HashMap<usize, usize>,
    total: usize,
    tmp: PathBuf,
    /// Stage names and indexes to their position, for `--from`.
    names: HashMap<String, usize>,
    /// Base images already pulled by this build (`--pull`), with the
    /// outcome, so stages sharing a base pull it once.
    pulled: std::sync::Mutex<HashMap<String, std::result::Result<(), String>>>,
    /// The downloader for `ADD <url>`, made at the first one: each build
    /// reads the trusted CA certificates afresh, as each pull does.
    fetcher: std::sync::OnceLock<Fetcher>,
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn hash_hex(parts: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn config_id(config: &ImageConfig) -> Digest {
    Digest::sha256_of(&manifest::to_bytes(config))
}

/// A mounted directory, unmounted on drop.
struct Mounted {
    path: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = snapshot::unmount(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "unmount build rootfs");
            let _ = crate::images::sys::umount(&self.path, libc::MNT_DETACH);
        }
        let _ = fs::remove_dir(&self.path);
    }
}

/// A writable rootfs for one step: overlay of the parent layers plus an
/// upper directory that becomes the step's layer.
struct StepRoot {
    upper: TempSnapshot,
    _work: TempSnapshot,
    mounted: Option<Mounted>,
}

impl StepRoot {
    fn path(&self) -> &Path {
        &self.mounted.as_ref().expect("mounted until finished").path
    }

    /// Unmount; the upper directory remains.
    fn finish(mut self) -> TempSnapshot {
        self.mounted = None;
        self.upper
    }
}

impl Builder {
    /// Open the builder whose state lives in `root` (cache database, cache
    /// mounts, temporary directories), with container state in `exec_root`.
    pub fn open(store: Arc<ImageStore>, root: &Path, exec_root: &Path) -> Result<Builder> {
        fs::create_dir_all(root.join("tmp")).map_err(io_err("create directory", root))?;
        fs::create_dir_all(root.join("cache-mounts")).map_err(io_err("create directory", root))?;
        // Leftovers of builds interrupted by a crash: mounts first.
        if let Ok(rd) = fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                if let Ok(m) = fs::read_dir(e.path().join("m")) {
                    for mp in m.flatten() {
                        let _ = crate::images::sys::umount(&mp.path(), libc::MNT_DETACH);
                    }
                }
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let runtime_root = exec_root.join("build-runtime");
        fs::create_dir_all(&runtime_root).map_err(io_err("create directory", &runtime_root))?;
        Ok(Builder {
            cache: Cache::open(&root.join("cache.redb"))?,
            store,
            root: root.to_path_buf(),
            runtime_root,
            runtime: run::find_runtime(),
            counter: AtomicU64::new(0),
            mounts_lock: std::sync::Mutex::new(()),
        })
    }

    /// Use this runtime binary for RUN.
    pub fn set_runtime(&mut self, runtime: PathBuf) {
        self.runtime = runtime;
    }

    /// A fresh private temporary directory below the builder's root.
    pub fn temp_dir(&self, what: &str) -> Result<PathBuf> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let p =
            self.root
                .join("tmp")
                .join(format!("{what}-{}-{n}-{}", std::process::id(), now_ns()));
        fs::create_dir_all(&p).map_err(io_err("create directory", &p))?;
        Ok(p)
    }

    /// The untagged images builds made for their cached steps (Docker
    /// lists such images only with `all`).
    pub fn intermediate_images(&self) -> Result<std::collections::HashSet<Digest>> {
        Ok(self.cache.images()?)
    }

    /// Drop every cache entry, the cache mounts, and the intermediate
    /// images only the cache used. Returns (entries removed, bytes freed
    /// from cache mounts).
    pub fn prune(&self) -> Result<(u64, u64)> {
        let (entries, mut images) = self.cache.clear()?;
        images.sort();
        images.dedup();
        for id in &images {
            // Tagged images and images containers use stay.
            let _ = self.store.remove(&id.to_string(), false);
        }
        let mounts = self.root.join("cache-mounts");
        let freed = dir_size(&mounts);
        if let Ok(rd) = fs::read_dir(&mounts) {
            for e in rd.flatten() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok((entries as u64, freed))
    }

    /// Build the Dockerfile in `context` (an unpacked context directory).
    pub async fn build(
        self: &Arc<Self>,
        context: PathBuf,
        opts: BuildOptions,
        out: Output,
    ) -> Result<Outcome> {
        let started = std::time::Instant::now();
        let this = self.clone();
        let prep_out = out.clone();
        let ctx = tokio::task::spawn_blocking(move || this.prepare(context, opts, prep_out))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        let t_prepare = started.elapsed();
        let ctx = Arc::new(ctx);
        let graph = ctx.df.graph(&ctx.global)?;
        let target = graph.target(ctx.opts.target.as_deref())?;
        let required = graph.required(target);

        let mut futures: HashMap<usize, StageFuture> = HashMap::new();
        for &i in &required {
            let deps: Vec<(usize, StageFuture)> = graph
                .stage_deps(i)
                .into_iter()
                .filter_map(|d| futures.get(&d).map(|f| (d, f.clone())))
                .collect();
            let node_base = graph.stage(i).base.clone();
            let this = self.clone();
            let ctx = ctx.clone();
            let fut = async move {
                let mut done: HashMap<usize, Arc<StageDone>> = HashMap::new();
                let results = futures_util::future::join_all(
                    deps.into_iter().map(|(d, f)| async move { (d, f.await) }),
                )
                .await;
                for (d, r) in results {
                    done.insert(d, r?);
                }
                let task =
                    tokio::task::spawn_blocking(move || this.run_stage(&ctx, i, &node_base, &done));
                match task.await {
                    Ok(Ok(s)) => Ok(Arc::new(s)),
                    Ok(Err(e)) => Err(Arc::new(e)),
                    Err(e) => Err(Arc::new(Error::Task(e.to_string()))),
                }
            }
            .boxed()
            .shared();
            // Drive every stage now, so independent ones run concurrently.
            tokio::spawn(fut.clone().map(|_| ()));
            futures.insert(i, fut);
        }
        let mut final_state = None;
        let mut timings = Vec::new();
        for &i in &required {
            let r = futures[&i].clone().await.map_err(Error::Shared)?;
            timings.push(r.timing.clone());
            if i == target {
                final_state = Some(r.state.clone());
            }
        }
        let state = final_state.expect("the target is among the required stages");
        let t_stages = started.elapsed();
        let this = self.clone();
        let ctx2 = ctx.clone();
        let (id, tags) = tokio::task::spawn_blocking(move || this.finish(&ctx2, state))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        let t_finish = started.elapsed();
        let _ = fs::remove_dir_all(&ctx.tmp);
        tracing::debug!(
            prepare_ms = t_prepare.as_millis() as u64,
            stages_ms = t_stages.saturating_sub(t_prepare).as_millis() as u64,
            finish_ms = t_finish.saturating_sub(t_stages).as_millis() as u64,
            cleanup_ms = started.elapsed().saturating_sub(t_finish).as_millis() as u64,
            "build timing"
        );
        Ok(Outcome {
            id,
            tags,
            stages: timings,
        })
    }

    fn prepare(&self, context: PathBuf, opts: BuildOptions, out: Output) -> Result<Ctx> {
        if let Some(p) = &opts.platform {
            let host = Platform::host();
            let want = format!("{}/{}", host.os, host.architecture);
            if !p.is_empty() && !p.starts_with(&want) {
                return Err(Error::Unsupported(format!(
                    "platform {p:?} is not supported: this builder builds for {want} only"
                )));
            }
        }
        for t in &opts.tags {
            Reference::parse(t).map_err(|e| Error::Invalid(format!("invalid tag {t:?}: {e}")))?;
        }
        let root = Root::open(&context)?;
        let name = if opts.dockerfile.is_empty() {
            "Dockerfile".to_string()
        } else {
            opts.dockerfile.clone()
        };
        let rel = fsops::clean_in_root(&name);
        let path = root
            .resolve(&rel)?
            .filter(|p| p.is_file())
            .ok_or_else(|| Error::NoDockerfile(name.clone()))?;
        let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
        let df = Dockerfile::parse(&text)?;
        let mut args = BuildArgs::new();
        for (k, v) in &opts.build_args {
            if let Some(v) = v {
                args.set(k.clone(), v.clone());
            }
        }
        let host = Platform::host();
        let plat = format!("{}/{}", host.os, host.architecture);
        args.set_platforms(&plat, &plat);
        let global = df.global_scope(&args)?;
        let graph = df.graph(&global)?;
        let target = graph.target(opts.target.as_deref())?;
        let required = graph.required(target);
        let mut sorted = required.clone();
        sorted.sort_unstable();
        let mut first_step = HashMap::new();
        let mut n = 0;
        for &i in &sorted {
            first_step.insert(i, n + 1);
            n += 1 + df.stages[i].instructions.len();
        }
        let ignore = load_ignore(&root, &rel)?;
        let mut names = HashMap::new();
        for s in graph.stages() {
            if let Some(n) = &s.name {
                names.insert(n.clone(), s.index);
            }
            names.insert(s.index.to_string(), s.index);
        }
        for (k, _) in &opts.build_args {
            let used = df.stages.iter().enumerate().any(|(i, _)| {
                required.contains(&i)
                    && df.stages[i].instructions.iter().any(
                        |ins| matches!(&ins.kind, dockerfile::Kind::Arg(a) if a.iter().any(|d| &d.name == k)),
                    )
            }) || global.declared().iter().any(|(n, _)| n == k)
                || dockerfile::is_predefined_arg(k);
            if !used {
                out(format!(
                    "[Warning] One or more build-args [{k}] were not consumed\n"
                ));
            }
        }
        Ok(Ctx {
            df,
            global,
            context,
            ignore,
            tmp: self.temp_dir("build")?,
            opts,
            out,
            first_step,
            total: n,
            names,
            pulled: std::sync::Mutex::new(HashMap::new()),
            fetcher: std::sync::OnceLock::new(),
        })
    }

    fn run_stage(
        &self,
        ctx: &Ctx,
        i: usize,
        base: &Base,
        deps: &HashMap<usize, Arc<StageDone>>,
    ) -> Result<StageDone> {
        let started_ns = now_ns();
        let stage = &ctx.df.stages[i];
        let mut n = ctx.first_step[&i];
        let from_text = stage.original.clone();
        (ctx.out)(format!("Step {n}/{} : {from_text}\n", ctx.total));
        let at = |e: Error| Error::At {
            line: stage.line,
            text: from_text.clone(),
            source: Box::new(e),
        };
        let (mut state, mut scope) = match base {
            Base::Scratch => {
                let p = Platform::host();
                let config = ImageConfig {
                    architecture: p.architecture,
                    os: p.os,
                    variant: p.variant,
                    config: Some(RunConfig {
                        env: Some(vec![format!("PATH={}", vessel_runtime::DEFAULT_PATH)]),
                        ..RunConfig::default()
                    }),
                    rootfs: RootFs {
                        kind: "layers".into(),
                        diff_ids: Vec::new(),
                    },
                    ..ImageConfig::default()
                };
                let state = State {
                    config,
                    layers: Vec::new(),
                    key: hash_hex(&[b"scratch"]),
                };
                (
                    state,
                    ctx.global.stage_scope(Vec::<(String, String)>::new()),
                )
            }
            Base::Image(reference) => {
                let wanted = ctx.opts.pull || self.store.resolve(reference).is_err();
                if let Some(p) = ctx.opts.puller.as_ref().filter(|_| wanted) {
                    let mut pulled = ctx
                        .pulled
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let r = pulled
                        .entry(reference.clone())
                        .or_insert_with(|| (p.0)(reference, &ctx.out))
                        .clone();
                    r.map_err(|reason| {
                        at(Error::Pull {
                            reference: reference.clone(),
                            reason,
                        })
                    })?;
                }
                let (config, layers) = self.image_state(reference).map_err(at)?;
                let env = env_pairs(&config);
                let key = hash_hex(&[b"image", config_id(&config).to_string().as_bytes()]);
                (
                    State {
                        config,
                        layers,
                        key,
                    },
                    ctx.global.stage_scope(env),
                )
            }
            Base::Stage(p) => {
                let d = &deps[p];
                (d.state.clone(), d.scope.child())
            }
        };
        (ctx.out)(format!(" ---> {}\n", short(&config_id(&state.config))));
        let mut pending: Vec<(String, cache::Entry)> = Vec::new();
        let mut cmd_set = false;

        // ONBUILD triggers of the base image run first.
        let triggers: Vec<String> = state
            .config
            .config
            .as_ref()
            .and_then(|c| c.extra.get("OnBuild"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        if let Some(rc) = state.config.config.as_mut() {
            rc.extra.remove("OnBuild");
        }
        if !triggers.is_empty() {
            (ctx.out)(format!(
                "# Executing {} build trigger{}\n",
                triggers.len(),
                if triggers.len() == 1 { "" } else { "s" }
            ));
        }
        for t in &triggers {
            let mut ins = dockerfile::parse_trigger(t).map_err(|e| at(e.into()))?;
            ins.line = stage.line;
            let r = self.step(
                ctx,
                &mut state,
                &mut scope,
                &ins,
                deps,
                &mut cmd_set,
                &mut pending,
            );
            if let Err(e) = r {
                let _ = self.cache.put_all(&pending);
                return Err(e);
            }
        }

        for ins in &stage.instructions {
            n += 1;
            (ctx.out)(format!("Step {n}/{} : {}\n", ctx.total, ins.original));
            let r = self.step(
                ctx,
                &mut state,
                &mut scope,
                ins,
                deps,
                &mut cmd_set,
                &mut pending,
            );
            if let Err(e) = r {
                let _ = self.cache.put_all(&pending);
                return Err(Error::At {
                    line: ins.line,
                    text: ins.original.clone(),
                    source: Box::new(e),
                });
            }
        }
        self.cache.put_all(&pending)?;
        Ok(StageDone {
            state,
            scope,
            timing: StageTiming {
                index: i,
                started_ns,
                finished_ns: now_ns(),
            },
        })
    }

    fn image_state(&self, reference: &str) -> Result<(ImageConfig, Vec<LayerRecord>)> {
        let rec = self
            .store
            .resolve(reference)
            .map_err(|source| Error::NoImage {
                reference: reference.to_string(),
                source,
            })?;
        let bytes = self
            .store
            .content()
            .read_blob(&rec.config.digest, crate::images::JSON_LIMIT)
            .map_err(crate::images::Error::from)?;
        let config = ImageConfig::parse(&bytes).map_err(crate::images::Error::from)?;
        Ok((config, rec.layers))
    }

    /// One instruction: resolve, look up the cache, execute on a miss.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        ctx: &Ctx,
        state: &mut State,
        scope: &mut StageScope,
        ins: &Instruction,
        deps: &HashMap<usize, Arc<StageDone>>,
        cmd_set: &mut bool,
        pending: &mut Vec<(String, cache::Entry)>,
    ) -> Result<()> {
        let step = scope.step(ins)?;
        let now = manifest::now_rfc3339();
        // The step's inputs beyond the parent and the step itself. An ARG
        // is keyed by its text: its value only matters to the RUNs that
        // see it, and they include their environment.
        let mut inputs: Vec<u8> = match &step {
            Step::Arg(_) => ins.original.clone().into_bytes(),
            _ => format!("{step:?}").into_bytes(),
        };
        let mut copy_plan = None;
        match &step {
            Step::Run(r) => {
                for (k, v) in scope.run_env() {
                    inputs.extend_from_slice(format!("\0{k}={v}").as_bytes());
                }
                inputs.extend_from_slice(self.mount_inputs(ctx, r, deps)?.as_bytes());
                if ctx.opts.host_network {
                    inputs.extend_from_slice(b"\0host-network");
                }
            }
            Step::Copy(c) => {
                if let Some(f) = c.from.as_deref() {
                    // Another stage's or image's layers are named by their
                    // chain ID, which fixes every byte and attribute of every
                    // file in them: the step (sources, excludes, options) and
                    // that ID make the key, with nothing mounted or read. The
                    // sources are resolved only if the step runs.
                    let (layers, _) = self.source_layers(ctx, f, deps)?;
                    inputs.extend_from_slice(b"\0from-chain\0");
                    if let Some(top) = layers.last() {
                        inputs.extend_from_slice(top.chain_id.to_string().as_bytes());
                    }
                } else {
                    let plan =
                        self.plan_copy(ctx, &CopyKind::Copy, &c.sources, None, &c.excludes, deps)?;
                    inputs.extend_from_slice(plan.checksum.as_bytes());
                    copy_plan = Some(plan);
                }
            }
            Step::Add(a) => {
                let plan = self.plan_copy(
                    ctx,
                    &CopyKind::Add(a.checksum.clone()),
                    &a.sources,
                    None,
                    &a.excludes,
                    deps,
                )?;
                inputs.extend_from_slice(plan.checksum.as_bytes());
                copy_plan = Some(plan);
            }
            _ => {}
        }
        let key = hash_hex(&[state.key.as_bytes(), &inputs]);
        // A `--link` layer's own key: the step, what it reads and the
        // working directory its destination is relative to, not the
        // parent.
        let link_key = linked(&step).then(|| {
            let cwd = state
                .config
                .config
                .as_ref()
                .and_then(|c| c.working_dir.clone())
                .unwrap_or_default();
            hash_hex(&[b"link", &inputs, cwd.as_bytes()])
        });

        if !ctx.opts.no_cache {
            if let Some(e) = self.cache.get(&key)? {
                if self.entry_usable(&e) {
                    state.config = e.config;
                    state.layers = e.layers;
                    state.key = key;
                    if matches!(step, Step::Cmd(_)) {
                        *cmd_set = true;
                    }
                    (ctx.out)(" ---> Using cache\n".to_string());
                    (ctx.out)(format!(" ---> {}\n", short(&config_id(&state.config))));
                    return Ok(());
                }
            }
            if let Some(lk) = &link_key {
                if let Some(l) = self.cache.get_linked(lk)? {
                    if self.store.content().contains(&l.blob.digest) {
                        let image = self.stack_linked(state, &l, &now)?;
                        state.key = key.clone();
                        pending.push((
                            key,
                            cache::Entry {
                                config: state.config.clone(),
                                layers: state.layers.clone(),
                                image: Some(image),
                            },
                        ));
                        (ctx.out)(" ---> Using cache\n".to_string());
                        (ctx.out)(format!(" ---> {}\n", short(&config_id(&state.config))));
                        return Ok(());
                    }
                }
            }
        }

        let makes_layer = matches!(step, Step::Run(_) | Step::Copy(_) | Step::Add(_));
        if !makes_layer {
            apply_metadata(&mut state.config, scope, &step, ins, cmd_set, &now);
            state.key = key.clone();
            pending.push((
                key,
                cache::Entry {
                    config: state.config.clone(),
                    layers: state.layers.clone(),
                    image: None,
                },
            ));
            (ctx.out)(format!(" ---> {}\n", short(&config_id(&state.config))));
            return Ok(());
        }

        let t0 = std::time::Instant::now();
        let step_root =
            self.step_root(ctx, state, matches!(step, Step::Run(_)), link_key.is_some())?;
        let t_mount = t0.elapsed();
        let created_by = match &step {
            Step::Run(r) => {
                let cmd = self.exec_run(ctx, state, scope, r, &step_root, deps)?;
                let args = scope.history_args();
                if args.is_empty() {
                    cmd
                } else {
                    let kv: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("|{} {} {cmd}", args.len(), kv.join(" "))
                }
            }
            Step::Copy(c) => {
                let plan = match copy_plan.take() {
                    Some(p) => p,
                    None => self.plan_copy(
                        ctx,
                        &CopyKind::Copy,
                        &c.sources,
                        c.from.as_deref(),
                        &c.excludes,
                        deps,
                    )?,
                };
                Self::exec_copy(ctx, state, &CopyArgs::from_copy(c), &plan, &step_root)?;
                format!("/bin/sh -c #(nop) {}", ins.original)
            }
            Step::Add(a) => {
                let plan = copy_plan.as_ref().expect("planned above");
                let args = CopyArgs {
                    dest: a.dest.clone(),
                    chown: a.chown.clone(),
                    chmod: a.chmod.clone(),
                    parents: false,
                    add: true,
                    unpack: a.unpack.unwrap_or(true),
                };
                Self::exec_copy(ctx, state, &args, plan, &step_root)?;
                format!("/bin/sh -c #(nop) {}", ins.original)
            }
            _ => unreachable!("only layer steps get here"),
        };
        let t_exec = t0.elapsed();
        let upper = step_root.finish();
        let t_unmount = t0.elapsed();
        let image = self.commit_layer(state, upper, &created_by, &now)?;
        tracing::debug!(
            step = %ins.original,
            mount_ms = t_mount.as_millis() as u64,
            exec_ms = t_exec.saturating_sub(t_mount).as_millis() as u64,
            unmount_ms = t_unmount.saturating_sub(t_exec).as_millis() as u64,
            commit_ms = t0.elapsed().saturating_sub(t_unmount).as_millis() as u64,
            "build step timing"
        );
        if let (Some(lk), Some(top)) = (&link_key, state.layers.last()) {
            self.cache.put_linked(
                lk,
                &cache::Linked {
                    blob: top.blob.clone(),
                    diff_id: top.diff_id.clone(),
                    created_by: created_by.clone(),
                    image: Some(image.clone()),
                },
            )?;
        }
        state.key = key.clone();
        pending.push((
            key,
            cache::Entry {
                config: state.config.clone(),
                layers: state.layers.clone(),
                image: Some(image),
            },
        ));
        (ctx.out)(format!(" ---> {}\n", short(&config_id(&state.config))));
        Ok(())
    }

    /// Put a cached `--link` layer on top of `state` as it is: the blob is
    /// reused, and the store unpacks it once for the new chain. Records an
    /// intermediate image and returns its ID.
    fn stack_linked(&self, state: &mut State, l: &cache::Linked, now: &str) -> Result<Digest> {
        let store = &*self.store;
        let lease = store.lease("build")?;
        let r = (|| -> Result<Digest> {
            let config = with_layer(&state.config, l.diff_id.clone(), &l.created_by, now);
            // The blob keeps its bytes; its media type follows the image's
            // family, as a freshly made layer's would.
            let layers = PendingLayer::stack(
                &state.layers,
                is_oci(&state.layers),
                l.blob.digest.clone(),
                l.blob.size,
                None,
            );
            let img = store.pending_from_config(&lease, &config, layers, Vec::new())?;
            let ids = store.record_images(&lease, vec![img], &mut |_| {})?;
            let id = ids.into_iter().next().expect("one image was recorded");
            state.layers = store.resolve(&id.to_string())?.layers;
            state.config = config;
            Ok(id)
        })();
        if r.is_err() {
            store.discard(lease);
        }
        r
    }

    fn entry_usable(&self, e: &cache::Entry) -> bool {
        e.layers.iter().all(|l| {
            self.store.content().contains(&l.blob.digest)
                && self.store.snapshots().path(&l.chain_id).is_dir()
        })
    }

    /// A fresh overlay upper directory and its work directory.
    fn upper_and_work(&self) -> Result<(TempSnapshot, TempSnapshot)> {
        let snapshots = self.store.snapshots();
        let temp = || snapshots.temp().map_err(crate::images::Error::from);
        Ok((temp()?, temp()?))
    }

    /// Mount the parent's layers with a fresh upper directory (for a
    /// `--link` step, no layers: an empty tree).
    fn step_root(&self, ctx: &Ctx, state: &State, run: bool, link: bool) -> Result<StepRoot> {
        let (upper, work) = self.upper_and_work()?;
        let mut lowers: Vec<PathBuf> = if link {
            Vec::new()
        } else {
            state
                .layers
                .iter()
                .rev()
                .map(|l| self.store.snapshots().path(&l.chain_id))
                .collect()
        };
        if run && !ctx.opts.extra_hosts.is_empty() {
            if let Some(init) = self.init_layer(ctx, &lowers)? {
                lowers.insert(0, init);
            }
        }
        if lowers.is_empty() {
            let empty = ctx.tmp.join("empty");
            fs::create_dir_all(&empty).map_err(io_err("create directory", &empty))?;
            lowers.push(empty);
        }
        let target = self.mountpoint(ctx)?;
        let m = Mount::for_layers(
            lowers,
            Some((upper.path().to_path_buf(), work.path().to_path_buf())),
        );
        snapshot::mount(&m, &target)?;
        Ok(StepRoot {
            upper,
            _work: work,
            mounted: Some(Mounted { path: target }),
        })
    }

    fn mountpoint(&self, ctx: &Ctx) -> Result<PathBuf> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let p = ctx.tmp.join("m").join(n.to_string());
        fs::create_dir_all(&p).map_err(io_err("create directory", &p))?;
        Ok(p)
    }

    /// A read-only view of a finished stage or an image.
    fn mount_readonly(&self, ctx: &Ctx, layers: &[LayerRecord]) -> Result<Mounted> {
        let target = self.mountpoint(ctx)?;
        let lowers: Vec<PathBuf> = layers
            .iter()
            .rev()
            .map(|l| self.store.snapshots().path(&l.chain_id))
            .collect();
        if lowers.is_empty() {
            // An empty file system: an empty read-only tmpfs.
            crate::images::sys::mount("tmpfs", &target, "tmpfs", libc::MS_RDONLY, None)
                .map_err(io_err("mount empty tmpfs", &target))?;
            return Ok(Mounted { path: target });
        }
        snapshot::mount(&Mount::for_layers(lowers, None), &target)?;
        Ok(Mounted { path: target })
    }

    /// Where a `--from` or `from=` points: a stage's state or an image's.
    fn source_layers(
        &self,
        ctx: &Ctx,
        from: &str,
        deps: &HashMap<usize, Arc<StageDone>>,
    ) -> Result<(Vec<LayerRecord>, String)> {
        if let Some(i) = ctx.names.get(&from.to_ascii_lowercase()) {
            if let Some(d) = deps.get(i) {
                return Ok((d.state.layers.clone(), d.state.key.clone()));
            }
        }
        let (config, layers) = self.image_state(from)?;
        Ok((layers, config_id(&config).to_string()))
    }

    /// Cache inputs of a RUN's mounts: checksums of context binds, the
    /// keys of stages bound.
    fn mount_inputs(
        &self,
        ctx: &Ctx,
        r: &RunStep,
        deps: &HashMap<usize, Arc<StageDone>>,
    ) -> Result<String> {
        let mut out = String::new();
        for m in &r.mounts {
            if let MountSpec::Bind { source, from, .. } = m {
                if let Some(f) = from {
                    let (_, k) = self.source_layers(ctx, f, deps)?;
                    out.push_str(&k);
                } else {
                    let src = source.as_deref().unwrap_or("/");
                    if fsops::escapes(src.trim_start_matches('/')) {
                        return Err(Error::OutsideContext(src.to_string()));
                    }
                    let root = Root::open(&ctx.context)?;
                    let rel = fsops::clean_in_root(src);
                    let p = root
                        .resolve(&rel)?
                        .ok_or_else(|| Error::NotFound(src.to_string()))?;
                    let mut h = sha2::Sha256::new();
                    let ig = &ctx.ignore;
                    fsops::checksum_tree(&p, &mut h, &|x| {
                        ig.is_excluded(&rel.join(x).to_string_lossy())
                    })?;
                    out.push_str(&hex::encode(h.finalize()));
                }
            }
        }
        Ok(out)
    }

    fn exec_run(
        &self,
        ctx: &Ctx,
        state: &State,
        scope: &StageScope,
        r: &RunStep,
        root: &StepRoot,
        deps: &HashMap<usize, Arc<StageDone>>,
    ) -> Result<String> {
        let rootfs = root.path().to_path_buf();
        let rc = state.config.config.clone().unwrap_or_default();
        let cwd = rc
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string());
        Root::open(&rootfs)?.mkdir_all(&fsops::clean_in_root(&cwd), None)?;
        let user = rc.user.clone().unwrap_or_default();
        let ident = crate::engine::spec::resolve_user(&rootfs, &user, &[])
            .map_err(|e| Error::Invalid(e.message))?;
        let mut env: Vec<String> = scope
            .run_env()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, format!("PATH={}", vessel_runtime::DEFAULT_PATH));
        }
        ident.default_home(&mut env);
        let shell = shell_of(&state.config);
        let bundle = ctx.tmp.join(format!(
            "run-{}",
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&bundle).map_err(io_err("create directory", &bundle))?;
        let mut mounts = Vec::new();
        let mut held: Vec<Mounted> = Vec::new();
        let mut keep_dirs: Vec<TempSnapshot> = Vec::new();
        let args = match &r.program {
            RunProgram::Exec(v) => v.clone(),
            RunProgram::Shell(s) => {
                let mut a = shell.clone();
                a.push(s.clone());
                a
            }
            RunProgram::File { name, content } => {
                let dir = bundle.join("heredoc");
                fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
                let safe: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let f = dir.join(&safe);
                fs::write(&f, content).map_err(io_err("write", &f))?;
                fs::set_permissions(&f, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("chmod", &f))?;
                let dest = format!("/dev/.heredoc/{safe}");
                mounts.push(run::ExtraMount {
                    destination: dest.clone(),
                    kind: "bind",
                    source: f,
                    options: vec!["rbind".into(), "ro".into()],
                });
                vec![dest]
            }
        };
        for m in &r.mounts {
            match m {
                MountSpec::Bind {
                    target,
                    source,
                    from,
                    readwrite,
                } => {
                    let (src_root, src_mount) = match from {
                        Some(f) => {
                            let (layers, _) = self.source_layers(ctx, f, deps)?;
                            let m = self.mount_readonly(ctx, &layers)?;
                            (m.path.clone(), Some(m))
                        }
                        None => (ctx.context.clone(), None),
                    };
                    let src = source.as_deref().unwrap_or("/");
                    if from.is_none() && fsops::escapes(src.trim_start_matches('/')) {
                        return Err(Error::OutsideContext(src.to_string()));
                    }
                    let host = Root::open(&src_root)?
                        .resolve(&fsops::clean_in_root(src))?
                        .ok_or_else(|| Error::NotFound(src.to_string()))?;
                    held.extend(src_mount);
                    let host = if *readwrite {
                        // Writes go to a scratch upper and are discarded.
                        let (up, wk) = self.upper_and_work()?;
                        let mp = self.mountpoint(ctx)?;
                        if host.is_dir() {
                            snapshot::mount(
                                &Mount::for_layers(
                                    vec![host.clone()],
                                    Some((up.path().to_path_buf(), wk.path().to_path_buf())),
                                ),
                                &mp,
                            )?;
                            keep_dirs.push(up);
                            keep_dirs.push(wk);
                            held.push(Mounted { path: mp.clone() });
                            mp
                        } else {
                            host
                        }
                    } else {
                        host
                    };
                    let mut options = vec!["rbind".to_string()];
                    if !*readwrite {
                        options.push("ro".into());
                    }
                    mounts.push(run::ExtraMount {
                        destination: abs_in(&cwd, target),
                        kind: "bind",
                        source: host,
                        options,
                    });
                }
                MountSpec::Cache {
                    target,
                    id,
                    readonly,
                    mode,
                    uid,
                    gid,
                    ..
                } => {
                    let dest = abs_in(&cwd, target);
                    let id = id.clone().unwrap_or_else(|| dest.clone());
                    let dir = self
                        .root
                        .join("cache-mounts")
                        .join(hash_hex(&[id.as_bytes()]));
                    {
                        let _g = self
                            .mounts_lock
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if !dir.exists() {
                            let tmp = dir.with_extension("new");
                            let _ = fs::remove_dir_all(&tmp);
                            fs::create_dir(&tmp).map_err(io_err("create directory", &tmp))?;
                            fs::set_permissions(&tmp, fs::Permissions::from_mode(*mode))
                                .map_err(io_err("chmod", &tmp))?;
                            std::os::unix::fs::chown(&tmp, Some(*uid), Some(*gid))
                                .map_err(io_err("chown", &tmp))?;
                            fs::rename(&tmp, &dir).map_err(io_err("rename", &dir))?;
                        }
                    }
                    let mut options = vec!["rbind".to_string()];
                    if *readonly {
                        options.push("ro".into());
                    }
                    mounts.push(run::ExtraMount {
                        destination: dest,
                        kind: "bind",
                        source: dir,
                        options,
                    });
                }
                MountSpec::Tmpfs { target, size } => {
                    let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                    if let Some(s) = size {
                        options.push(format!("size={s}"));
                    }
                    mounts.push(run::ExtraMount {
                        destination: abs_in(&cwd, target),
                        kind: "tmpfs",
                        source: PathBuf::from("tmpfs"),
                        options,
                    });
                }
                MountSpec::Secret { .. } | MountSpec::Ssh { .. } => {
                    return Err(Error::Unsupported(
                        "RUN --mount=type=secret and type=ssh are not supported by this builder"
                            .into(),
                    ));
                }
            }
        }
        let host_network = match r.network {
            Network::Host => true,
            Network::None => false,
            Network::Default => ctx.opts.host_network,
        };
        if host_network {
            for f in ["/etc/resolv.conf", "/etc/hosts"] {
                if Path::new(f).is_file()
                    && Root::open(&rootfs)?.resolve(Path::new(&f[1..]))?.is_some()
                {
                    mounts.push(run::ExtraMount {
                        destination: f.to_string(),
                        kind: "bind",
                        source: PathBuf::from(f),
                        options: vec!["rbind".into(), "ro".into()],
                    });
                }
            }
        }
        if !ctx.opts.extra_hosts.is_empty() {
            mounts.retain(|m| m.destination != "/etc/hosts");
            Self::extra_hosts(ctx, &bundle, host_network, &mut mounts)?;
        }
        let id = format!(
            "build-{}",
            &hash_hex(&[bundle.to_string_lossy().as_bytes()])[..24]
        );
        (ctx.out)(format!(" ---> Running in {}\n", &id[6..18]));
        let spec = run::Spec {
            id,
            args: args.clone(),
            env,
            cwd,
            uid: ident.uid,
            gid: ident.gid,
            additional_gids: ident.additional_gids,
            host_network,
            mounts,
            limits: ctx.opts.limits.clone(),
        };
        let out = ctx.out.clone();
        let code = run::run(
            &self.runtime,
            &self.runtime_root,
            &bundle,
            &rootfs,
            &spec,
            &move |line| out(line),
        )?;
        drop(held);
        let _ = fs::remove_dir_all(&bundle);
        let command = args.join(" ");
        if code != 0 {
            let memory = ctx
                .opts
                .limits
                .resources
                .as_ref()
                .and_then(|r| r["memory"]["limit"].as_i64());
            let hint = match memory {
                Some(m) if code == 137 => format!(
                    ": the step was killed, most likely by the out-of-memory killer at the build's memory limit of {m} bytes (--memory)"
                ),
                _ => String::new(),
            };
            return Err(Error::RunFailed {
                command,
                code,
                hint,
            });
        }
        Ok(command)
    }

    /// For a RUN whose image has no /etc/hosts to mount the build's hosts
    /// file on: a read-only layer with an empty /etc/hosts (and /etc with
    /// the image's mode and owner) to put over the image's layers, so the
    /// mount point never lands in the step's own layer. This is Docker's
    /// init layer.
    fn init_layer(&self, ctx: &Ctx, lowers: &[PathBuf]) -> Result<Option<PathBuf>> {
        use std::os::unix::fs::MetadataExt;
        let mut etc_meta = None;
        for l in lowers {
            let root = Root::open(l)?;
            if root.resolve_nofollow(Path::new("etc/hosts"))?.is_some() {
                return Ok(None);
            }
            if etc_meta.is_none() {
                etc_meta = root
                    .resolve(Path::new("etc"))?
                    .and_then(|p| fs::metadata(p).ok());
            }
        }
        let init = ctx.tmp.join(format!(
            "init-{}",
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let etc = init.join("etc");
        fs::create_dir_all(&etc).map_err(io_err("create directory", &etc))?;
        if let Some(m) = etc_meta {
            fs::set_permissions(&etc, fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(io_err("chmod", &etc))?;
            std::os::unix::fs::chown(&etc, Some(m.uid()), Some(m.gid()))
                .map_err(io_err("chown", &etc))?;
        }
        let hosts = etc.join("hosts");
        fs::write(&hosts, "").map_err(io_err("create", &hosts))?;
        Ok(Some(init))
    }

    /// /etc/hosts with the build's `--add-host` entries, bind-mounted over
    /// the image's (or the init layer's, see `init_layer`).
    fn extra_hosts(
        ctx: &Ctx,
        bundle: &Path,
        host_network: bool,
        mounts: &mut Vec<run::ExtraMount>,
    ) -> Result<()> {
        use std::fmt::Write as _;
        let mut hosts = if host_network {
            fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        };
        if !hosts.is_empty() && !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        for (name, addr) in &ctx.opts.extra_hosts {
            let _ = writeln!(hosts, "{addr}\t{name}");
        }
        let file = bundle.join("hosts");
        fs::write(&file, hosts).map_err(io_err("write", &file))?;
        mounts.push(run::ExtraMount {
            destination: "/etc/hosts".into(),
            kind: "bind",
            source: file,
            options: vec!["rbind".into()],
        });
        Ok(())
    }

    /// Resolve COPY/ADD sources and checksum what they read from the
    /// context. Sources in another stage or image are not read for the
    /// checksum: that step's cache key names their layers instead.
    fn plan_copy(
        &self,
        ctx: &Ctx,
        kind: &CopyKind,
        sources: &[SourceSpec],
        from: Option<&str>,
        excludes: &[String],
        deps: &HashMap<usize, Arc<StageDone>>,
    ) -> Result<CopyPlan> {
        let exclude = if excludes.is_empty() {
            None
        } else {
            Some(
                IgnoreMatcher::from_patterns(excludes.iter())
                    .map_err(|e| Error::Invalid(format!("--exclude: {e}")))?,
            )
        };
        let mut h = sha2::Sha256::new();
        let (root_dir, mount) = match from {
            Some(f) => {
                let (layers, _) = self.source_layers(ctx, f, deps)?;
                let m = self.mount_readonly(ctx, &layers)?;
                (m.path.clone(), Some(m))
            }
            None => (ctx.context.clone(), None),
        };
        let root = Root::open(&root_dir)?;
        let mut items = Vec::new();
        let mut multiple = sources.len() > 1;
        for s in sources {
            match s {
                SourceSpec::Inline { name, content } => {
                    h.update(format!("inline\0{name}\0").as_bytes());
                    h.update(content.as_bytes());
                    items.push(CopyItem::Inline {
                        name: name.clone(),
                        content: content.clone(),
                    });
                }
                SourceSpec::Path(p)
                    if matches!(kind, CopyKind::Add(_))
                        && dockerfile::add_source_kind(p) == dockerfile::AddSourceKind::Url =>
                {
                    let CopyKind::Add(checksum) = kind else {
                        unreachable!()
                    };
                    let checksum = checksum
                        .as_deref()
                        .map(fetch::Checksum::parse)
                        .transpose()?;
                    // Into the build's private directory; only the copy
                    // below puts it in the layer.
                    let dir = ctx.tmp.join(format!(
                        "url-{}",
                        self.counter.fetch_add(1, Ordering::Relaxed)
                    ));
                    fs::create_dir(&dir).map_err(io_err("create directory", &dir))?;
                    let file = dir.join("download");
                    let got = Self::download(ctx, p, &file, checksum.as_ref())?;
                    // The key names the content, not its mtime: an
                    // unchanged file hits the cache after a new download.
                    h.update(format!("url\0{p}\0{}\0{}", got.name, got.digest).as_bytes());
                    items.push(CopyItem::Url {
                        file,
                        name: got.name,
                    });
                }
                SourceSpec::Path(p)
                    if matches!(kind, CopyKind::Add(_))
                        && dockerfile::add_source_kind(p) == dockerfile::AddSourceKind::Git =>
                {
                    return Err(Error::Unsupported(format!(
                        "ADD of a Git repository ({p}) is not supported"
                    )));
                }
                SourceSpec::Path(p) => {
                    if from.is_none() && fsops::escapes(p.trim_start_matches('/')) {
                        return Err(Error::OutsideContext(p.clone()));
                    }
                    let rels = if has_glob(p) {
                        multiple = true;
                        glob(&root, p)?
                    } else {
                        vec![fsops::clean_in_root(p)]
                    };
                    let mut found = false;
                    for rel in rels {
                        let rel_s = rel.to_string_lossy().into_owned();
                        if from.is_none() && !rel_s.is_empty() && ctx.ignore.is_excluded(&rel_s) {
                            continue;
                        }
                        let Some(host) = root.resolve(&rel)? else {
                            continue;
                        };
                        found = true;
                        if from.is_none() {
                            h.update(format!("path\0{rel_s}\0").as_bytes());
                            let ig = &ctx.ignore;
                            let ex = exclude.as_ref();
                            let base = rel.clone();
                            fsops::checksum_tree(&host, &mut h, &|x| {
                                let full = base.join(x).to_string_lossy().into_owned();
                                ig.is_excluded(&full)
                                    || ex.is_some_and(|m| m.is_excluded(&x.to_string_lossy()))
                            })?;
                        }
                        items.push(CopyItem::Path { host, rel });
                    }
                    if !found {
                        return Err(Error::NotFound(p.clone()));
                    }
                }
            }
        }
        Ok(CopyPlan {
            items,
            multiple,
            checksum: hex::encode(h.finalize()),
            exclude,
            from_context: from.is_none(),
            _mount: mount,
        })
    }

    /// Download `url` into `dest`, blocking this (blocking-pool) thread.
    fn download(
        ctx: &Ctx,
        url: &str,
        dest: &Path,
        checksum: Option<&fetch::Checksum>,
    ) -> Result<fetch::Fetched> {
        let fetcher = if let Some(f) = ctx.fetcher.get() {
            f
        } else {
            let f = Fetcher::new(&[], DOWNLOAD_TIMEOUT)?;
            ctx.fetcher.get_or_init(|| f)
        };
        let fut = fetcher.fetch(url, dest, checksum);
        let got = match tokio::runtime::Handle::try_current() {
            Ok(h) => h.block_on(fut)?,
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io_err("start a runtime for", dest))?
                .block_on(fut)?,
        };
        tracing::debug!(url, size = got.size, digest = %got.digest, "ADD download");
        Ok(got)
    }

    fn exec_copy(
        ctx: &Ctx,
        state: &State,
        args: &CopyArgs,
        plan: &CopyPlan,
        root: &StepRoot,
    ) -> Result<()> {
        let rootfs = root.path();
        let rc = state.config.config.clone().unwrap_or_default();
        let cwd = rc
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string());
        let dest_raw = if args.dest.starts_with('/') {
            args.dest.clone()
        } else {
            format!("{}/{}", cwd.trim_end_matches('/'), args.dest)
        };
        let dest_dir_syntax =
            args.dest.ends_with('/') || args.dest.ends_with("/.") || args.dest == ".";
        let dest_rel = fsops::clean_in_root(&dest_raw);
        let froot = Root::open(rootfs)?;
        let owner = match &args.chown {
            Some(ug) => {
                let spec = match &ug.group {
                    Some(g) => format!("{}:{g}", ug.user),
                    None => ug.user.clone(),
                };
                let id = crate::engine::spec::resolve_user(rootfs, &spec, &[])
                    .map_err(|e| Error::Invalid(e.message))?;
                (id.uid, id.gid)
            }
            None => (0, 0),
        };
        let dest_exists_dir = froot.resolve(&dest_rel)?.is_some_and(|p| p.is_dir());
        let dest_is_dir = dest_dir_syntax || dest_exists_dir || dest_rel.as_os_str().is_empty();
        if plan.multiple && !dest_is_dir {
            return Err(Error::NotADirectory(if args.add { "ADD" } else { "COPY" }));
        }
        let chmod = args.chmod.clone();
        let map = move |m: &fs::Metadata| -> (u32, u32, u32) {
            use std::os::unix::fs::MetadataExt;
            let perm = m.mode() & 0o7777;
            let mode = chmod.as_ref().map_or(perm, |c| c.apply(perm, m.is_dir()));
            (owner.0, owner.1, mode)
        };
        let ig = &ctx.ignore;
        for item in &plan.items {
            match item {
                CopyItem::Inline { name, content } => {
                    let target = if dest_is_dir {
                        dest_rel.join(name)
                    } else {
                        dest_rel.clone()
                    };
                    let parent =
                        froot.mkdir_all(target.parent().unwrap_or(Path::new("")), Some(owner))?;
                    let dst = parent.join(target.file_name().unwrap_or_default());
                    fsops::remove_entry(&dst)?;
                    fs::write(&dst, content).map_err(io_err("write", &dst))?;
                    let mode = args.chmod.as_ref().map_or(0o644, |c| c.apply(0o644, false));
                    fs::set_permissions(&dst, fs::Permissions::from_mode(mode))
                        .map_err(io_err("chmod", &dst))?;
                    std::os::unix::fs::lchown(&dst, Some(owner.0), Some(owner.1))
                        .map_err(io_err("chown", &dst))?;
                }
                CopyItem::Url { file, name } => {
                    let target = if dest_is_dir {
                        dest_rel.join(name)
                    } else {
                        dest_rel.clone()
                    };
                    let parent =
                        froot.mkdir_all(target.parent().unwrap_or(Path::new("")), Some(owner))?;
                    let dst = parent.join(target.file_name().unwrap_or_default());
                    let chmod = args.chmod.clone();
                    fsops::copy_tree(
                        file,
                        &dst,
                        &move |_| {
                            (
                                owner.0,
                                owner.1,
                                chmod.as_ref().map_or(0o600, |c| c.apply(0o600, false)),
                            )
                        },
                        &|_| false,
                    )?;
                }
                CopyItem::Path { host, rel } => {
                    let is_dir = host.is_dir();
                    if args.add && args.unpack && !is_dir {
                        if let Some(kind) = fsops::sniff_archive(host) {
                            let dir = froot.mkdir_all(&dest_rel, Some(owner))?;
                            let f = fs::File::open(host).map_err(io_err("open", host))?;
                            let r: Box<dyn Read> = if kind == "gzip" {
                                Box::new(flate2::read::GzDecoder::new(io::BufReader::new(f)))
                            } else {
                                Box::new(io::BufReader::new(f))
                            };
                            fsops::extract(
                                r,
                                &dir,
                                fsops::ExtractOptions {
                                    keep_owner: args.chown.is_none(),
                                    owner: args.chown.as_ref().map(|_| owner),
                                },
                            )?;
                            continue;
                        }
                    }
                    let target = if args.parents {
                        dest_rel.join(rel)
                    } else if is_dir {
                        dest_rel.clone()
                    } else if dest_is_dir {
                        dest_rel.join(host.file_name().unwrap_or_default())
                    } else {
                        dest_rel.clone()
                    };
                    let skip = |x: &Path| {
                        let full = rel.join(x).to_string_lossy().into_owned();
                        (plan.from_context && ig.is_excluded(&full))
                            || plan
                                .exclude
                                .as_ref()
                                .is_some_and(|m| m.is_excluded(&x.to_string_lossy()))
                    };
                    if target.as_os_str().is_empty() {
                        // Copying a directory's contents into `/`.
                        let dst = froot.mkdir_all(Path::new(""), None)?;
                        for e in fs::read_dir(host).map_err(io_err("read directory", host))? {
                            let e = e.map_err(io_err("read directory", host))?;
                            let r = PathBuf::from(e.file_name());
                            if skip(&r) {
                                continue;
                            }
                            fsops::copy_tree(&e.path(), &dst.join(e.file_name()), &map, &|x| {
                                skip(&r.join(x))
                            })?;
                        }
                        continue;
                    }
                    let parent =
                        froot.mkdir_all(target.parent().unwrap_or(Path::new("")), Some(owner))?;
                    let dst = parent.join(target.file_name().unwrap_or_default());
                    if is_dir {
                        // The directory itself keeps the destination's
                        // metadata when it exists; its contents are copied.
                        if !dst.is_dir() {
                            fsops::remove_entry(&dst)?;
                            fs::create_dir(&dst).map_err(io_err("create directory", &dst))?;
                            let (u, g, m) = map(&host.metadata().map_err(io_err("stat", host))?);
                            std::os::unix::fs::lchown(&dst, Some(u), Some(g))
                                .map_err(io_err("chown", &dst))?;
                            fs::set_permissions(&dst, fs::Permissions::from_mode(m))
                                .map_err(io_err("chmod", &dst))?;
                        }
                        for e in fs::read_dir(host).map_err(io_err("read directory", host))? {
                            let e = e.map_err(io_err("read directory", host))?;
                            let r = PathBuf::from(e.file_name());
                            if skip(&r) {
                                continue;
                            }
                            fsops::copy_tree(&e.path(), &dst.join(e.file_name()), &map, &|x| {
                                skip(&r.join(x))
                            })?;
                        }
                    } else {
                        fsops::copy_tree(host, &dst, &map, &|_| false)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Turn an upper directory into a layer on top of `state`: tar it,
    /// compress it into the content store, move the directory into place
    /// as the snapshot and record an intermediate image. Returns its ID.
    fn commit_layer(
        &self,
        state: &mut State,
        upper: TempSnapshot,
        created_by: &str,
        now: &str,
    ) -> Result<Digest> {
        let store = &*self.store;
        let lease = store.lease("build")?;
        let r = (|| -> Result<Digest> {
            let t0 = std::time::Instant::now();
            let (diff_id, tar_size, w) = compress_tree(store, upper.path())?;
            let t_tar = t0.elapsed();
            let (blob, blob_size) = store.commit_blob(&lease, w, None, None)?;
            let t_blob = t0.elapsed();
            let applied = layer::Applied {
                diff_id: diff_id.clone(),
                tar_size,
                compression: Compression::Gzip,
                entries: 0,
            };
            let config = with_layer(&state.config, diff_id, created_by, now);
            let layers = PendingLayer::stack(
                &state.layers,
                is_oci(&state.layers),
                blob,
                blob_size,
                Some((upper, applied)),
            );
            let img = store.pending_from_config(&lease, &config, layers, Vec::new())?;
            let t_pending = t0.elapsed();
            let ids = store.record_images(&lease, vec![img], &mut |_| {})?;
            let t_record = t0.elapsed();
            let id = ids.into_iter().next().expect("one image was recorded");
            state.layers = store.resolve(&id.to_string())?.layers;
            state.config = config;
            tracing::debug!(
                tar_size,
                blob_size,
                tar_gzip_ms = t_tar.as_millis() as u64,
                blob_commit_ms = t_blob.saturating_sub(t_tar).as_millis() as u64,
                config_manifest_ms = t_pending.saturating_sub(t_blob).as_millis() as u64,
                record_ms = t_record.saturating_sub(t_pending).as_millis() as u64,
                "layer commit timing"
            );
            Ok(id)
        })();
        match r {
            Ok(id) => Ok(id),
            Err(e) => {
                store.discard(lease);
                Err(e)
            }
        }
    }

    /// Record the final image with its tags.
    fn finish(&self, ctx: &Ctx, mut state: State) -> Result<(Digest, Vec<String>)> {
        if !ctx.opts.labels.is_empty() {
            let rc = state.config.config.get_or_insert_with(RunConfig::default);
            let labels = rc.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &ctx.opts.labels {
                labels.insert(k.clone(), v.clone());
            }
        }
        let tags: Vec<Reference> = ctx
            .opts
            .tags
            .iter()
            .map(|t| Reference::parse(t))
            .collect::<std::result::Result<_, _>>()
            .map_err(crate::images::Error::from)?;
        let store = &*self.store;
        let lease = store.lease("build")?;
        let r = (|| -> Result<Digest> {
            let layers = state
                .layers
                .iter()
                .map(|l| PendingLayer {
                    blob: l.blob.clone(),
                    unpacked: None,
                })
                .collect();
            let img = store.pending_from_config(&lease, &state.config, layers, tags.clone())?;
            let ids = store.record_images(&lease, vec![img], &mut |_| {})?;
            Ok(ids.into_iter().next().expect("one image was recorded"))
        })();
        match r {
            Ok(id) => Ok((id, tags.iter().map(Reference::familiar).collect())),
            Err(e) => {
                store.discard(lease);
                Err(e)
            }
        }
    }
}

/// Collects a stream into 1 MiB chunks for the compressor.
struct Chunker {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}
impl Write for Chunker {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 20));
            self.tx
                .send(chunk)
                .map_err(|_| io::Error::other("compressor stopped"))?;
        }
        Ok(())
    }
}

/// Tar an upper directory (whiteouts as `.wh.` entries) and gzip it into
/// a content-store writer. The tar is produced and hashed on this thread
/// and compressed on another, so the two overlap.
fn compress_tree(
    store: &ImageStore,
    upper: &Path,
) -> Result<(Digest, u64, crate::images::content::Writer)> {
    let w = store
        .content()
        .temp_writer(Algorithm::Sha256)
        .map_err(crate::images::Error::from)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
    let compressor = std::thread::spawn(move || -> io::Result<crate::images::content::Writer> {
        let mut w = io::BufWriter::with_capacity(1 << 20, w);
        parallel_gzip(rx, &mut w)?;
        w.into_inner().map_err(io::IntoInnerError::into_error)
    });
    let mut hw = HashingWriter::new(
        Chunker {
            tx,
            buf: Vec::with_capacity(1 << 20),
        },
        Algorithm::Sha256,
    );
    let written = diff::write_tree(upper, &mut hw, diff::Mode::OverlayUpper);
    let (diff_id, size, mut chunker) = hw.finish();
    let flushed = chunker.flush();
    drop(chunker);
    let w = compressor
        .join()
        .map_err(|_| Error::Task("layer compressor panicked".into()))?
        .map_err(|e| crate::images::Error::Diff(diff::Error::Write(e)))?;
    written.map_err(crate::images::Error::from)?;
    flushed.map_err(|e| crate::images::Error::Diff(diff::Error::Write(e)))?;
    Ok((diff_id, size, w))
}

/// Gzip the chunks arriving on `rx` into `w` as one gzip member, the way
/// pigz does: each chunk is deflated independently on its own thread and
/// ended with a sync flush (byte-aligned, not final), so the pieces
/// concatenate into one valid deflate stream that an empty final block
/// closes. Chunks that would not shrink (compressed or random data, see
/// [`incompressible`]) are written as stored blocks, which costs a copy
/// instead of a deflate pass. Workers also take their chunk's CRC, and
/// the CRCs are combined in input order.
fn parallel_gzip(rx: std::sync::mpsc::Receiver<Vec<u8>>, w: &mut impl Write) -> io::Result<()> {
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    w.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    let mut crc = flate2::Crc::new();
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(workers);
    let deflate = |chunk: &[u8], flush: flate2::FlushCompress| -> io::Result<Vec<u8>> {
        // Already-compressed or random data would cost a full deflate
        // pass for nothing: such chunks go out as stored blocks.
        let level = if incompressible(chunk) {
            flate2::Compression::none()
        } else {
            flate2::Compression::fast()
        };
        let mut c = flate2::Compress::new(level, false);
        let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 8 + 64);
        loop {
            let consumed = c.total_in() as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity());
            }
            let st = c
                .compress_vec(&chunk[consumed..], &mut out, flush)
                .map_err(io::Error::other)?;
            let done_input = c.total_in() as usize == chunk.len();
            match st {
                flate2::Status::StreamEnd => break,
                _ if done_input && out.len() < out.capacity() => break,
                _ => {}
            }
        }
        Ok(out)
    };
    // Each worker also takes its chunk's CRC; they are combined in order.
    let flush_batch =
        |batch: &mut Vec<Vec<u8>>, crc: &mut flate2::Crc, w: &mut dyn Write| -> io::Result<()> {
            let outs: Vec<io::Result<(Vec<u8>, flate2::Crc)>> = std::thread::scope(|s| {
                let hs: Vec<_> = batch
                    .iter()
                    .map(|c| {
                        s.spawn(|| {
                            let mut part = flate2::Crc::new();
                            part.update(c);
                            deflate(c, flate2::FlushCompress::Sync).map(|o| (o, part))
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(io::Error::other("gzip worker panicked")))
                    })
                    .collect()
            });
            for o in outs {
                let (bytes, part) = o?;
                w.write_all(&bytes)?;
                crc.combine(&part);
            }
            batch.clear();
            Ok(())
        };
    for chunk in rx {
        batch.push(chunk);
        if batch.len() == workers {
            flush_batch(&mut batch, &mut crc, w)?;
        }
    }
    flush_batch(&mut batch, &mut crc, w)?;
    w.write_all(&deflate(&[], flate2::FlushCompress::Finish)?)?;
    w.write_all(&crc.sum().to_le_bytes())?;
    w.write_all(&crc.amount().to_le_bytes())?;
    Ok(())
}

/// Whether a fast deflate would gain next to nothing on `chunk`: three
/// 16 KiB samples (start, middle, end) each shrink by less than 3%. A
/// wrong guess only costs size, never validity.
fn incompressible(chunk: &[u8]) -> bool {
    const SAMPLE: usize = 16 << 10;
    if chunk.len() < 4 * SAMPLE {
        return false;
    }
    let mid = (chunk.len() - SAMPLE) / 2;
    let mut out = Vec::with_capacity(SAMPLE + SAMPLE / 8 + 64);
    let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
    [0, mid, chunk.len() - SAMPLE].into_iter().all(|at| {
        c.reset();
        out.clear();
        let st = c.compress_vec(
            &chunk[at..at + SAMPLE],
            &mut out,
            flate2::FlushCompress::Finish,
        );
        matches!(st, Ok(flate2::Status::StreamEnd)) && out.len() * 100 >= SAMPLE * 97
    })
}

#[derive(Debug, Clone)]
enum CopyKind {
    Copy,
    /// ADD, with its `--checksum`.
    Add(Option<String>),
}

struct CopyArgs {
    dest: String,
    chown: Option<dockerfile::UserGroup>,
    chmod: Option<Chmod>,
    parents: bool,
    add: bool,
    unpack: bool,
}

impl CopyArgs {
    fn from_copy(c: &CopyStep) -> CopyArgs {
        CopyArgs {
            dest: c.dest.clone(),
            chown: c.chown.clone(),
            chmod: c.chmod.clone(),
            parents: c.parents,
            add: false,
            unpack: false,
        }
    }
}

enum CopyItem {
    Inline { name: String, content: String },
    Url { file: PathBuf, name: String },
    Path { host: PathBuf, rel: PathBuf },
}

struct CopyPlan {
    items: Vec<CopyItem>,
    multiple: bool,
    /// What the sources read from the build context hash to (empty of
    /// file contents for sources in another stage or image).
    checksum: String,
    exclude: Option<IgnoreMatcher>,
    from_context: bool,
    _mount: Option<Mounted>,
}

/// The context's ignore file (`<Dockerfile>.dockerignore`, else
/// `.dockerignore`), read with resolution inside the context.
fn load_ignore(root: &Root, dockerfile: &Path) -> Result<IgnoreMatcher> {
    let mut name = dockerfile.as_os_str().to_owned();
    name.push(".dockerignore");
    for rel in [PathBuf::from(name), PathBuf::from(".dockerignore")] {
        if let Some(p) = root.resolve(&rel)?.filter(|p| p.is_file()) {
            let text = fs::read(&p).map_err(io_err("read", &p))?;
            return IgnoreMatcher::parse(&String::from_utf8_lossy(&text))
                .map_err(|e| Error::Invalid(format!("{}: {e}", rel.display())));
        }
    }
    Ok(IgnoreMatcher::default())
}

fn has_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// Paths below `root` matching a glob, component by component (Go's
/// filepath.Match per component), sorted.
fn glob(root: &Root, pattern: &str) -> Result<Vec<PathBuf>> {
    let comps: Vec<String> = fsops::clean_in_root(pattern)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let mut current = vec![PathBuf::new()];
    for c in &comps {
        let mut next = Vec::new();
        for base in &current {
            if !has_glob(c) {
                next.push(base.join(c));
                continue;
            }
            let Some(dir) = root.resolve(base)? else {
                continue;
            };
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                if dockerfile::ignore::path_match(c, &n)
                    .map_err(|e| Error::Invalid(format!("pattern {pattern:?}: {e}")))?
                {
                    next.push(base.join(&n));
                }
            }
        }
        current = next;
    }
    Ok(current)
}

/// Whether a step builds its layer apart from its parent: `COPY --link`
/// or `ADD --link` without `--chown` or with a numeric `uid:gid`. A user
/// or group name, or a uid alone (whose group is the user's primary
/// group), is looked up in the parent's /etc/passwd and /etc/group, which
/// ties the layer to the parent, so such a step is built as without
/// `--link`.
fn linked(step: &Step) -> bool {
    let numeric = |c: &Option<UserGroup>| {
        c.as_ref().is_none_or(|ug| {
            ug.user.parse::<u32>().is_ok()
                && ug.group.as_ref().is_some_and(|g| g.parse::<u32>().is_ok())
        })
    };
    match step {
        Step::Copy(c) => c.link && numeric(&c.chown),
        Step::Add(a) => a.link && numeric(&a.chown),
        _ => false,
    }
}

fn abs_in(cwd: &str, p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{}", cwd.trim_end_matches('/'), p)
    }
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

fn env_pairs(config: &ImageConfig) -> Vec<(String, String)> {
    config
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv, String::new()),
        })
        .collect()
}

fn shell_of(config: &ImageConfig) -> Vec<String> {
    config
        .config
        .as_ref()
        .and_then(|c| c.extra.get("Shell"))
        .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
}

fn command_of(config: &ImageConfig, c: &Command) -> Vec<String> {
    match c {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => {
            let mut v = shell_of(config);
            v.push(s.clone());
            v
        }
    }
}

/// Apply a metadata instruction to the config, with its history entry.
fn apply_metadata(
    config: &mut ImageConfig,
    scope: &StageScope,
    step: &Step,
    ins: &Instruction,
    cmd_set: &mut bool,
    now: &str,
) {
    let shell_cmd = |c: &Command, config: &ImageConfig| command_of(config, c);
    let snapshot = config.clone();
    let rc = config.config.get_or_insert_with(RunConfig::default);
    let mut record = true;
    match step {
        Step::Cmd(c) => {
            rc.cmd = Some(shell_cmd(c, &snapshot));
            *cmd_set = true;
        }
        Step::Entrypoint(c) => {
            rc.entrypoint = Some(shell_cmd(c, &snapshot));
            if !*cmd_set {
                rc.cmd = None;
            }
        }
        Step::Label(kv) => {
            let l = rc.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in kv {
                l.insert(k.clone(), v.clone());
            }
        }
        Step::Maintainer(m) => config.author = Some(m.clone()),
        Step::Expose(ports) => {
            let e = rc.exposed_ports.get_or_insert_with(BTreeMap::new);
            for p in ports {
                for port in p.start..=p.end {
                    e.insert(format!("{port}/{}", p.protocol), serde_json::json!({}));
                }
            }
        }
        Step::Env(_) => {
            rc.env = Some(
                scope
                    .env()
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            );
        }
        Step::Volume(v) => {
            let vols = rc.volumes.get_or_insert_with(BTreeMap::new);
            for p in v {
                vols.insert(p.clone(), serde_json::json!({}));
            }
        }
        Step::User(ug) => {
            rc.user = Some(match &ug.group {
                Some(g) => format!("{}:{g}", ug.user),
                None => ug.user.clone(),
            });
        }
        Step::Workdir(w) => {
            let prev = rc
                .working_dir
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            let joined = abs_in(&prev, w);
            rc.working_dir = Some(format!("/{}", fsops::clean_in_root(&joined).display()));
        }
        Step::Onbuild(t) => {
            let mut list: Vec<String> = rc
                .extra
                .get("OnBuild")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            list.push(t.clone());
            rc.extra.insert("OnBuild".into(), serde_json::json!(list));
        }
        Step::StopSignal(s) => rc.stop_signal = Some(s.clone()),
        Step::Healthcheck(h) => {
            let v = match h {
                Healthcheck::None => serde_json::json!({"Test": ["NONE"]}),
                Healthcheck::Check(c) => {
                    let mut m = serde_json::Map::new();
                    m.insert("Test".into(), serde_json::json!(c.test()));
                    let ns = |d: &std::time::Duration| serde_json::json!(d.as_nanos() as u64);
                    if let Some(d) = &c.interval {
                        m.insert("Interval".into(), ns(d));
                    }
                    if let Some(d) = &c.timeout {
                        m.insert("Timeout".into(), ns(d));
                    }
                    if let Some(d) = &c.start_period {
                        m.insert("StartPeriod".into(), ns(d));
                    }
                    if let Some(d) = &c.start_interval {
                        m.insert("StartInterval".into(), ns(d));
                    }
                    if let Some(r) = c.retries {
                        m.insert("Retries".into(), serde_json::json!(r));
                    }
                    serde_json::Value::Object(m)
                }
            };
            rc.extra.insert("Healthcheck".into(), v);
        }
        Step::Shell(v) => {
            rc.extra.insert("Shell".into(), serde_json::json!(v));
        }
        Step::Arg(_) | Step::Run(_) | Step::Copy(_) | Step::Add(_) => record = false,
    }
    if record {
        config.created = Some(now.to_string());
        config.history.push(History {
            created: Some(now.to_string()),
            created_by: Some(format!("/bin/sh -c #(nop)  {}", ins.original)),
            author: None,
            comment: None,
            empty_layer: true,
        });
    }
}

/// `config` with one more layer, `diff_id`, made by `created_by` at `now`.
fn with_layer(config: &ImageConfig, diff_id: Digest, created_by: &str, now: &str) -> ImageConfig {
    let mut config = config.clone();
    config.created = Some(now.to_string());
    config.rootfs.diff_ids.push(diff_id);
    config.history.push(History {
        created: Some(now.to_string()),
        created_by: Some(created_by.to_string()),
        author: None,
        comment: None,
        empty_layer: false,
    });
    config
}

/// Whether an image of these layers is of the OCI family (its new layers
/// get OCI media types), judged by its first layer.
fn is_oci(layers: &[LayerRecord]) -> bool {
    layers
        .first()
        .is_some_and(|l| l.blob.media_type.starts_with("application/vnd.oci."))
}

fn dir_size(p: &Path) -> u64 {
    let Ok(m) = p.symlink_metadata() else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p).map_or(0, |rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_gzip_is_one_valid_stream() {
        let mut data = Vec::new();
        for i in 0..(3 << 20) {
            data.push((i * 7 % 251) as u8);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let chunks: Vec<Vec<u8>> = data.chunks(1 << 20).map(<[u8]>::to_vec).collect();
        let t = std::thread::spawn(move || {
            for c in chunks {
                tx.send(c).unwrap();
            }
        });
        let mut gz = Vec::new();
        parallel_gzip(rx, &mut gz).unwrap();
        t.join().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Empty input is a valid empty stream too.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        drop(tx);
        let mut gz = Vec::new();
        parallel_gzip(rx, &mut gz).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn incompressible_chunks_are_stored_and_the_stream_stays_valid() {
        // 2 MiB of noise between two compressible MiB.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut noise = Vec::with_capacity(2 << 20);
        while noise.len() < 2 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.extend_from_slice(&x.to_le_bytes());
        }
        let text: Vec<u8> = b"layer text compresses well\n"
            .iter()
            .copied()
            .cycle()
            .take(1 << 20)
            .collect();
        assert!(incompressible(&noise[..1 << 20]));
        assert!(!incompressible(&text));
        let chunks = vec![
            text.clone(),
            noise[..1 << 20].to_vec(),
            noise[1 << 20..].to_vec(),
            text.clone(),
        ];
        let data: Vec<u8> = chunks.concat();
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        for c in chunks {
            tx.send(c).unwrap();
        }
        drop(tx);
        let mut gz = Vec::new();
        parallel_gzip(rx, &mut gz).unwrap();
        // The noise costs stored-block framing only, the text shrinks.
        assert!(gz.len() > 2 << 20);
        assert!(gz.len() < (2 << 20) + (1 << 20) / 4);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn relative_paths_join_the_workdir() {
        assert_eq!(abs_in("/app", "x"), "/app/x");
        assert_eq!(abs_in("/", "x"), "/x");
        assert_eq!(abs_in("/app", "/y"), "/y");
    }
}
