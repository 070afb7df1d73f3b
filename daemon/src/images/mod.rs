//! Vessel's image store: content-addressed blobs, image metadata, unpacked
//! layer snapshots shared by chain ID, and the image operations the engine
//! exposes (load, save, import, export, commit, tag, remove, prune, inspect,
//! history, verify).
//!
//! On disk, under the store root:
//!
//! ```text
//! db.redb                     metadata (images, tags, snapshots, leases, holds)
//! content/blobs/sha256/<hex>  blobs, verified before they get their name
//! content/ingest/<ref>        partial blobs
//! snapshots/<chainid-hex>/    unpacked read-only layers
//! lock                        flock held by the one process using the store
//! ```
//!
//! The store owns these files and nothing else: it never mounts a
//! container's rootfs itself and knows nothing about containers beyond the
//! holds the engine places on images. It hands out plain values (mount
//! descriptions, paths, records). See docs/images.md for the content flow
//! and crash-safety argument.

pub mod archive;
pub mod content;
pub mod db;
pub mod diff;
pub mod digest;
pub mod distribution;
pub mod layer;
pub mod manifest;
pub mod reference;
pub mod snapshot;
pub(crate) mod sys;
mod targuard;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

pub use archive::SaveFormat;
pub use content::ContentStore;

pub use db::{ImageRecord, LayerRecord};
pub use digest::Digest;
pub use layer::{Compression, Limits};
pub use manifest::{Descriptor, ImageConfig, Platform, RunConfig};
pub use reference::Reference;
pub use snapshot::{Method as MountMethod, Mount};

use digest::Algorithm;
use snapshot::{Snapshots, TempSnapshot};

/// Largest manifest, index or config blob we read into memory.
pub const JSON_LIMIT: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image store {path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image store {0} is in use by another process")]
    Locked(PathBuf),
    #[error(transparent)]
    Content(#[from] content::Error),
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error(transparent)]
    Reference(#[from] reference::Error),
    #[error(transparent)]
    Archive(#[from] archive::Error),
    #[error(transparent)]
    Diff(#[from] diff::Error),
    #[error("layer {digest}")]
    Layer {
        digest: String,
        #[source]
        source: layer::Error,
    },
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("image reference {reference:?} is ambiguous: {count} images match")]
    Ambiguous { reference: String, count: usize },
    #[error("conflict: unable to remove {reference} ({id}): image is in use by {holder}")]
    InUse {
        reference: String,
        id: String,
        holder: String,
    },
    #[error(
        "conflict: unable to delete {id} (must be forced): image is referenced in multiple repositories"
    )]
    MultipleTags { id: String },
    #[error("image {id}: config lists {diff_ids} diff IDs but the manifest has {layers} layers")]
    LayerCount {
        id: String,
        diff_ids: usize,
        layers: usize,
    },
    #[error("image has no layers to mount")]
    NoLayers,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Options for opening a store.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub limits: Limits,
}

/// Progress of a load or import, for whoever reports it to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A blob was received and verified (`unpacked`: it was a layer and is
    /// already unpacked).
    Blob {
        digest: Digest,
        size: u64,
        unpacked: bool,
    },
    /// A layer already present as a snapshot was reused.
    LayerReused { diff_id: Digest },
    /// An image was recorded (with the tags now pointing at it).
    Loaded { id: Digest, tags: Vec<String> },
}

/// One row of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: Digest,
    /// Familiar forms, like Docker's RepoTags (`busybox:latest`).
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: Option<String>,
    pub size: u64,
    pub layers: usize,
    /// The chain ID of each layer, lowest first: an image whose top chain
    /// ID appears in another image's chain is that image's parent.
    pub chain_ids: Vec<Digest>,
    /// Holders (containers) using the image.
    pub holders: Vec<String>,
}

/// Everything `inspect` reports.
#[derive(Debug, Clone)]
pub struct ImageDetails {
    pub summary: ImageSummary,
    pub config: ImageConfig,
    pub record: ImageRecord,
    /// Snapshot directories, bottom layer first.
    pub snapshot_dirs: Vec<PathBuf>,
}

/// One row of `history`, newest first like Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    /// Uncompressed size of the layer this step produced (0 when empty).
    pub size: u64,
    pub empty_layer: bool,
}

/// What `remove` did, in Docker's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveEvent {
    Untagged(String),
    Deleted(Digest),
}

/// What `prune` and `gc` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub images: Vec<Digest>,
    pub blobs: Vec<Digest>,
    pub snapshots: Vec<Digest>,
    pub reclaimed_bytes: u64,
}

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    Blob(content::Damage),
    MissingBlob {
        image: Digest,
        blob: Digest,
    },
    BadManifest {
        image: Digest,
        reason: String,
    },
    MissingSnapshotRecord {
        image: Digest,
        chain: Digest,
    },
    MissingSnapshotDir {
        chain: Digest,
    },
    RefCount {
        chain: Digest,
        recorded: u64,
        actual: u64,
    },
    DanglingTag {
        reference: String,
        image: Digest,
    },
    DanglingHold {
        holder: String,
        image: Digest,
    },
}

/// The result of `verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub damage: Vec<Damage>,
    /// Garbage that `gc` would remove: not damage.
    pub unreferenced_blobs: Vec<Digest>,
    pub unreferenced_snapshots: Vec<Digest>,
    /// Operations that were in progress (only possible while one runs).
    pub leases: Vec<String>,
    pub images: usize,
    pub blobs: usize,
    pub snapshots: usize,
}

impl VerifyReport {
    pub fn is_consistent(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Changes to the run config applied by `import` and `commit` (the typed
/// form of Docker's `--change` instructions).
#[derive(Debug, Clone, Default)]
pub struct ConfigChanges {
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries; replace an existing KEY.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

impl ConfigChanges {
    fn apply(&self, rc: &mut RunConfig) {
        if let Some(c) = &self.cmd {
            rc.cmd = Some(c.clone());
        }
        if let Some(e) = &self.entrypoint {
            rc.entrypoint = Some(e.clone());
        }
        if !self.env.is_empty() {
            let env = rc.env.get_or_insert_with(Vec::new);
            for kv in &self.env {
                let key = kv.split('=').next().unwrap_or(kv);
                env.retain(|e| e.split('=').next() != Some(key));
                env.push(kv.clone());
            }
        }
        if let Some(w) = &self.working_dir {
            rc.working_dir = Some(w.clone());
        }
        if let Some(u) = &self.user {
            rc.user = Some(u.clone());
        }
        for p in &self.exposed_ports {
            let p = if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            };
            rc.exposed_ports
                .get_or_insert_with(BTreeMap::new)
                .insert(p, serde_json::json!({}));
        }
        for v in &self.volumes {
            rc.volumes
                .get_or_insert_with(BTreeMap::new)
                .insert(v.clone(), serde_json::json!({}));
        }
        for (k, v) in &self.labels {
            rc.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(k.clone(), v.clone());
        }
        if let Some(s) = &self.stop_signal {
            rc.stop_signal = Some(s.clone());
        }
    }
}

/// Options for `import`.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub reference: Option<String>,
    pub message: Option<String>,
    pub changes: ConfigChanges,
    /// Defaults to the host platform.
    pub platform: Option<Platform>,
}

/// Options for `commit`.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    pub reference: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
    /// Recorded as the history step's `created_by`.
    pub created_by: Option<String>,
    pub changes: ConfigChanges,
}

/// A layer of an image being added, with the blob already in the content
/// store and possibly already unpacked.
pub(crate) struct PendingLayer {
    pub blob: Descriptor,
    pub unpacked: Option<(TempSnapshot, layer::Applied)>,
}

impl PendingLayer {
    /// The layers `below` (already recorded) and a new gzip layer on top
    /// whose blob is `blob` (`size` bytes) and whose tree is already
    /// unpacked; `oci` picks the OCI or the Docker media type.
    pub(crate) fn stack(
        below: &[LayerRecord],
        oci: bool,
        blob: Digest,
        size: u64,
        unpacked: Option<(TempSnapshot, layer::Applied)>,
    ) -> Vec<PendingLayer> {
        let media_type = if oci {
            manifest::OCI_LAYER_GZIP
        } else {
            manifest::DOCKER_LAYER_GZIP
        };
        let mut layers: Vec<PendingLayer> = below
            .iter()
            .map(|l| PendingLayer {
                blob: l.blob.clone(),
                unpacked: None,
            })
            .collect();
        layers.push(PendingLayer {
            blob: Descriptor {
                media_type: media_type.into(),
                digest: blob,
                size,
                urls: None,
                annotations: None,
                platform: None,
            },
            unpacked,
        });
        layers
    }
}

/// An image ready to be recorded.
pub(crate) struct PendingImage {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<PendingLayer>,
    pub tags: Vec<Reference>,
    pub repo_digests: Vec<String>,
    /// The index the manifest was chosen from (a multi-platform pull).
    pub index: Option<Descriptor>,
}

/// A record of an operation in progress (a lease in the database). Dropping
/// it without `finish` leaves the lease for the next open to clean up after.
pub(crate) struct LeaseGuard<'a> {
    pub id: String,
    store: &'a ImageStore,
    _gc: std::sync::RwLockReadGuard<'a, ()>,
    /// Blobs this operation created (not present before).
    pub created_blobs: Mutex<Vec<Digest>>,
    /// Blobs this operation will reference, registered in the store's
    /// in-flight set so a failing operation never deletes them.
    registered: Mutex<Vec<Digest>>,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        let mine = std::mem::take(
            &mut *self
                .registered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut inflight = self
            .store
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in mine {
            if let Some(n) = inflight.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    inflight.remove(&d);
                }
            }
        }
    }
}

/// The image store.
pub struct ImageStore {
    root: PathBuf,
    _lock: File,
    content: ContentStore,
    snapshots: Snapshots,
    db: db::Db,
    limits: Limits,
    /// Loads hold it shared; garbage collection holds it exclusively.
    gc_lock: RwLock<()>,
    /// Serialises the step that moves snapshots into place and records
    /// images, so two loads of the same layer cannot race.
    commit_lock: Mutex<()>,
    lease_counter: std::sync::atomic::AtomicU64,
    /// Blobs referenced by operations in progress, with a count of them.
    /// Blob commits and failure cleanup both happen under this lock.
    inflight: Mutex<HashMap<Digest, usize>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl ImageStore {
    /// Open (creating if needed) the store at `root` with default limits.
    pub fn open(root: &Path) -> Result<ImageStore> {
        ImageStore::open_with(root, Options::default())
    }

    /// Open the store. Takes an exclusive lock on the root, removes
    /// temporary files of interrupted operations, and garbage-collects what
    /// an interrupted operation may have left behind.
    pub fn open_with(root: &Path, options: Options) -> Result<ImageStore> {
        fs::create_dir_all(root).map_err(io_err("create directory", root))?;
        let lock_path = root.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open lock file", &lock_path))?;
        // SAFETY: the descriptor belongs to `lock`, which outlives the call.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::Locked(root.to_path_buf()));
        }
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots = Snapshots::open(&root.join("snapshots"))?;
        let db = db::Db::open(&root.join("db.redb"))?;
        let store = ImageStore {
            root: root.to_path_buf(),
            _lock: lock,
            content,
            snapshots,
            db,
            limits: options.limits,
            gc_lock: RwLock::new(()),
            commit_lock: Mutex::new(()),
            lease_counter: std::sync::atomic::AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
        };
        let leases = store.db.read(db::Rx::leases)?;
        if !leases.is_empty() {
            for (id, lease) in &leases {
                tracing::info!(lease = %id, operation = %lease.operation, "cleaning up after interrupted operation");
            }
            store.gc_locked()?;
            store.db.write(|tx| {
                for (id, _) in &leases {
                    tx.delete_lease(id)?;
                }
                Ok::<_, Error>(())
            })?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    /// Start an operation that writes content: records a lease durably and
    /// keeps garbage collection out until it ends.
    pub(crate) fn lease(&self, operation: &str) -> Result<LeaseGuard<'_>> {
        let gc = self
            .gc_lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = self
            .lease_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{operation}-{}-{n}-{}", std::process::id(), now_secs());
        let rec = db::Lease {
            operation: operation.to_string(),
            pid: std::process::id(),
            started: now_secs(),
        };
        self.db
            .write(|tx| tx.put_lease(&id, &rec).map_err(Error::from))?;
        Ok(LeaseGuard {
            id,
            store: self,
            _gc: gc,
            created_blobs: Mutex::new(Vec::new()),
            registered: Mutex::new(Vec::new()),
        })
    }

    /// Commit a blob for an operation: the commit and the registration in
    /// the in-flight set happen atomically with respect to failure cleanup.
    pub(crate) fn commit_blob(
        &self,
        lease: &LeaseGuard<'_>,
        w: content::Writer,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        let mut inflight = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (d, n, created) = w.commit_report(expected, size)?;
        *inflight.entry(d.clone()).or_insert(0) += 1;
        drop(inflight);
        lease
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(d.clone());
        if created {
            lease
                .created_blobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(d.clone());
        }
        Ok((d, n))
    }

    /// Copy `reader` into the content store, returning its digest and size,
    /// and noting it in the lease when it is new.
    pub(crate) fn ingest(
        &self,
        lease: &LeaseGuard<'_>,
        mut reader: impl Read,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        let alg = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let mut w = self.content.temp_writer(alg)?;
        copy_into(&mut reader, &mut w).map_err(|e| Error::Archive(archive::Error::Read(e)))?;
        self.commit_blob(lease, w, expected, size)
    }

    /// Record images: unpack layers not yet unpacked, make everything
    /// durable, move snapshots into place, then commit the metadata in one
    /// transaction. Returns the image IDs.
    pub(crate) fn record_images(
        &self,
        lease: &LeaseGuard<'_>,
        images: Vec<PendingImage>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<Digest>> {
        // 1. Read configs and work out chains.
        struct Prepared {
            record: ImageRecord,
            tags: Vec<Reference>,
            temps: Vec<Option<(TempSnapshot, layer::Applied)>>,
        }
        let mut prepared = Vec::new();
        // Chains unpacked earlier in this batch, with their sizes.
        let mut batch: HashMap<Digest, u64> = HashMap::new();
        for img in images {
            let cfg_bytes = self.content.read_blob(&img.config.digest, JSON_LIMIT)?;
            let cfg = ImageConfig::parse(&cfg_bytes)?;
            if cfg.rootfs.diff_ids.len() != img.layers.len() {
                return Err(Error::LayerCount {
                    id: img.config.digest.to_string(),
                    diff_ids: cfg.rootfs.diff_ids.len(),
                    layers: img.layers.len(),
                });
            }
            let chains = snapshot::chain_ids(&cfg.rootfs.diff_ids);
            let mut layers = Vec::new();
            let mut temps = Vec::new();
            let mut size = 0;
            for (i, pl) in img.layers.into_iter().enumerate() {
                let diff_id = cfg.rootfs.diff_ids[i].clone();
                let chain = chains[i].clone();
                let known = match batch.get(&chain) {
                    Some(size) => Some(db::SnapshotRecord {
                        parent: None,
                        diff_id: diff_id.clone(),
                        size: *size,
                        refs: 0,
                    }),
                    None => self.db.read(|rx| rx.snapshot(&chain))?,
                };
                let temp = match (known, pl.unpacked) {
                    (Some(rec), _) => {
                        size += rec.size;
                        progress(&Progress::LayerReused {
                            diff_id: diff_id.clone(),
                        });
                        None
                    }
                    (None, Some((t, applied))) if applied.diff_id == diff_id => {
                        size += applied.tar_size;
                        Some((t, applied))
                    }
                    (None, _) => {
                        let (t, applied) = self.unpack_blob(&pl.blob.digest, &diff_id)?;
                        size += applied.tar_size;
                        Some((t, applied))
                    }
                };
                if let Some((_, a)) = &temp {
                    batch.insert(chain.clone(), a.tar_size);
                }
                temps.push(temp);
                layers.push(LayerRecord {
                    blob: pl.blob,
                    diff_id,
                    chain_id: chain,
                });
            }
            prepared.push(Prepared {
                record: ImageRecord {
                    id: img.config.digest.clone(),
                    manifest: img.manifest,
                    config: img.config,
                    layers,
                    added: now_secs(),
                    size,
                    repo_digests: img.repo_digests,
                    indexes: img.index.into_iter().collect(),
                },
                tags: img.tags,
                temps,
            });
        }

        // 2. Make unpacked data durable before anything refers to it.
        if prepared.iter().any(|p| p.temps.iter().any(Option::is_some)) {
            self.snapshots.sync()?;
        }

        // 3. Move snapshots into place and commit metadata, serialised.
        let _commit = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut new_snaps: HashMap<Digest, db::SnapshotRecord> = HashMap::new();
        for p in &mut prepared {
            for (i, temp) in p.temps.iter_mut().enumerate() {
                let chain = p.record.layers[i].chain_id.clone();
                if new_snaps.contains_key(&chain)
                    || self.db.read(|rx| rx.snapshot(&chain))?.is_some()
                {
                    continue;
                }
                if let Some((t, applied)) = temp.take() {
                    self.snapshots.commit(t, &chain)?;
                    new_snaps.insert(
                        chain.clone(),
                        db::SnapshotRecord {
                            parent: i
                                .checked_sub(1)
                                .map(|j| p.record.layers[j].chain_id.clone()),
                            diff_id: applied.diff_id,
                            size: applied.tar_size,
                            refs: 0,
                        },
                    );
                }
            }
        }
        let ids: Vec<Digest> = prepared.iter().map(|p| p.record.id.clone()).collect();
        let tag_report = self.db.write(|tx| {
            let mut report = Vec::new();
            for p in &prepared {
                let exists = tx.image(&p.record.id)?;
                if exists.is_none() {
                    for l in &p.record.layers {
                        let mut rec = match new_snaps.get(&l.chain_id) {
                            Some(r) => tx.snapshot(&l.chain_id)?.unwrap_or_else(|| r.clone()),
                            None => tx.snapshot(&l.chain_id)?.expect(
                                "snapshots were checked or created above under the commit lock",
                            ),
                        };
                        rec.refs += 1;
                        tx.put_snapshot(&l.chain_id, &rec)?;
                    }
                    tx.put_image(&p.record)?;
                } else if let Some(mut old) = exists {
                    // Same image again: keep it, merge repo digests and
                    // indexes (a repeated index moves to the end: latest).
                    for d in &p.record.repo_digests {
                        if !old.repo_digests.contains(d) {
                            old.repo_digests.push(d.clone());
                        }
                    }
                    for ix in &p.record.indexes {
                        old.indexes.retain(|o| o.digest != ix.digest);
                        old.indexes.push(ix.clone());
                    }
                    tx.put_image(&old)?;
                }
                let mut tags = Vec::new();
                for t in &p.tags {
                    tx.put_tag(&t.to_string(), &p.record.id)?;
                    tags.push(t.familiar());
                }
                report.push((p.record.id.clone(), tags));
            }
            tx.delete_lease(&lease.id)?;
            Ok::<_, Error>(report)
        })?;
        for (id, tags) in tag_report {
            tracing::info!(image = %id, ?tags, "image recorded");
            progress(&Progress::Loaded { id, tags });
        }
        Ok(ids)
    }

    /// Unpack a layer blob from the content store into a temporary snapshot.
    pub(crate) fn unpack_blob(
        &self,
        blob: &Digest,
        diff_id: &Digest,
    ) -> Result<(TempSnapshot, layer::Applied)> {
        let f = self.content.open_blob(blob)?;
        let tmp = self.snapshots.temp()?;
        let applied = layer::apply(
            io::BufReader::with_capacity(1 << 20, f),
            tmp.path(),
            Some(diff_id),
            &self.limits,
        )
        .map_err(|source| Error::Layer {
            digest: blob.to_string(),
            source,
        })?;
        Ok((tmp, applied))
    }

    /// Remove blobs an operation created that nothing references (after a
    /// failure), so a failed load leaves no garbage behind.
    pub(crate) fn discard(&self, lease: LeaseGuard<'_>) {
        let created = std::mem::take(
            &mut *lease
                .created_blobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let id = lease.id.clone();
        // Unregister this operation's blobs, then delete the ones it created
        // that neither an image nor another operation in flight uses.
        drop(lease);
        let inflight = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.referenced() {
            Ok((referenced, _)) => {
                for d in created {
                    if !referenced.contains(&d) && !inflight.contains_key(&d) {
                        if let Err(e) = self.content.delete(&d) {
                            tracing::warn!(blob = %d, error = %e, "cannot remove blob of failed operation");
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read references; leaving cleanup to the next gc");
            }
        }
        drop(inflight);
        if let Err(e) = self
            .db
            .write(|tx| tx.delete_lease(&id).map_err(Error::from))
        {
            tracing::warn!(lease = %id, error = %e, "cannot remove lease");
        }
    }

    /// Blobs and snapshots referenced by recorded images.
    fn referenced(&self) -> Result<(BTreeSet<Digest>, BTreeMap<Digest, u64>)> {
        self.db.read(|rx| {
            let mut blobs = BTreeSet::new();
            let mut chains = BTreeMap::new();
            for img in rx.images()? {
                blobs.insert(img.manifest.digest.clone());
                blobs.insert(img.config.digest.clone());
                blobs.extend(img.indexes.iter().map(|i| i.digest.clone()));
                for l in &img.layers {
                    blobs.insert(l.blob.digest.clone());
                    *chains.entry(l.chain_id.clone()).or_insert(0) += 1;
                }
            }
            Ok::<_, Error>((blobs, chains))
        })
    }

    // ----- queries -----

    /// Resolve a reference (name[:tag], name@digest, full or short image ID)
    /// to an image record.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        self.db.read(|rx| resolve_in(rx, reference))
    }

    fn summary(
        &self,
        rec: &ImageRecord,
        tags: &[(String, Digest)],
        holds: &[(String, Digest)],
    ) -> ImageSummary {
        let created = self
            .content
            .read_blob(&rec.config.digest, JSON_LIMIT)
            .ok()
            .and_then(|b| ImageConfig::parse(&b).ok())
            .and_then(|c| c.created);
        let mut repo_tags: Vec<String> = tags
            .iter()
            .filter(|(_, id)| *id == rec.id)
            .filter_map(|(r, _)| Reference::parse(r).ok().map(|r| r.familiar()))
            .collect();
        repo_tags.sort();
        ImageSummary {
            id: rec.id.clone(),
            repo_tags,
            repo_digests: rec.repo_digests.clone(),
            created,
            size: rec.size,
            layers: rec.layers.len(),
            chain_ids: rec.layers.iter().map(|l| l.chain_id.clone()).collect(),
            holders: holds
                .iter()
                .filter(|(_, id)| *id == rec.id)
                .map(|(h, _)| h.clone())
                .collect(),
        }
    }

    /// Every image, newest first.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let (images, tags, holds) = self
            .db
            .read(|rx| Ok::<_, Error>((rx.images()?, rx.tags()?, rx.holds()?)))?;
        let mut out: Vec<(i64, ImageSummary)> = images
            .iter()
            .map(|r| (r.added, self.summary(r, &tags, &holds)))
            .collect();
        out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    pub fn inspect(&self, reference: &str) -> Result<ImageDetails> {
        let (rec, tags, holds) = self
            .db
            .read(|rx| Ok::<_, Error>((resolve_in(rx, reference)?, rx.tags()?, rx.holds()?)))?;
        let config = ImageConfig::parse(&self.content.read_blob(&rec.config.digest, JSON_LIMIT)?)?;
        Ok(ImageDetails {
            summary: self.summary(&rec, &tags, &holds),
            config,
            snapshot_dirs: rec
                .layers
                .iter()
                .map(|l| self.snapshots.path(&l.chain_id))
                .collect(),
            record: rec,
        })
    }

    pub fn history(&self, reference: &str) -> Result<Vec<HistoryEntry>> {
        let rec = self.resolve(reference)?;
        let config = ImageConfig::parse(&self.content.read_blob(&rec.config.digest, JSON_LIMIT)?)?;
        let sizes: Vec<u64> = self.db.read(|rx| {
            rec.layers
                .iter()
                .map(|l| Ok(rx.snapshot(&l.chain_id)?.map_or(0, |s| s.size)))
                .collect::<Result<Vec<u64>>>()
        })?;
        let mut layer = 0;
        let mut out: Vec<HistoryEntry> = Vec::new();
        if config.history.is_empty() {
            for s in &sizes {
                out.push(HistoryEntry {
                    created: config.created.clone(),
                    created_by: None,
                    comment: None,
                    size: *s,
                    empty_layer: false,
                });
            }
        }
        for h in &config.history {
            let size = if h.empty_layer {
                0
            } else {
                let s = sizes.get(layer).copied().unwrap_or(0);
                layer += 1;
                s
            };
            out.push(HistoryEntry {
                created: h.created.clone(),
                created_by: h.created_by.clone(),
                comment: h.comment.clone(),
                size,
                empty_layer: h.empty_layer,
            });
        }
        out.reverse();
        Ok(out)
    }

    /// The snapshot directories of an image, topmost first (overlay order).
    pub fn lowerdirs(&self, reference: &str) -> Result<Vec<PathBuf>> {
        let rec = self.resolve(reference)?;
        Ok(rec
            .layers
            .iter()
            .rev()
            .map(|l| self.snapshots.path(&l.chain_id))
            .collect())
    }

    /// An image's layers, lowest first: each one's diff ID and its unpacked
    /// directory (a microVM images each once, keyed by the diff ID).
    pub fn layer_dirs(&self, reference: &str) -> Result<Vec<(Digest, PathBuf)>> {
        let rec = self.resolve(reference)?;
        Ok(rec
            .layers
            .iter()
            .map(|l| (l.diff_id.clone(), self.snapshots.path(&l.chain_id)))
            .collect())
    }

    /// The diff IDs of every layer of every image in the store.
    pub fn diff_ids_in_use(&self) -> Result<std::collections::BTreeSet<Digest>> {
        let images = self.db.read(db::Rx::images)?;
        Ok(images
            .into_iter()
            .flat_map(|r| r.layers.into_iter().map(|l| l.diff_id))
            .collect())
    }

    /// The mounts that make a container rootfs from an image: an overlay of
    /// its snapshots plus the container's own upper and work directories
    /// (or a read-only view when `upper_work` is `None`). Mount them with
    /// [`snapshot::mount`].
    pub fn mounts_for(
        &self,
        reference: &str,
        upper_work: Option<(PathBuf, PathBuf)>,
    ) -> Result<Vec<Mount>> {
        let lower = self.lowerdirs(reference)?;
        if lower.is_empty() {
            return Err(Error::NoLayers);
        }
        Ok(vec![Mount::for_layers(lower, upper_work)])
    }

    // ----- tags, holds, removal -----

    /// Point `target` at the image `source` resolves to.
    pub fn tag(&self, source: &str, target: &str) -> Result<()> {
        let target = Reference::parse(target)?;
        if target.tag().is_none() {
            return Err(Error::Reference(reference::Error::Tag(target.to_string())));
        }
        self.db.write(|tx| {
            let rec = resolve_in(tx, source)?;
            tx.put_tag(&target.to_string(), &rec.id)?;
            Ok::<_, Error>(())
        })
    }

    /// Record that `holder` (a container) uses the image, which blocks its
    /// removal until `release`.
    pub fn hold(&self, reference: &str, holder: &str) -> Result<Digest> {
        self.db.write(|tx| {
            let rec = resolve_in(tx, reference)?;
            tx.put_hold(holder, &rec.id)?;
            Ok::<_, Error>(rec.id)
        })
    }

    pub fn release(&self, holder: &str) -> Result<bool> {
        Ok(self.db.write(|tx| tx.delete_hold(holder))?)
    }

    /// Docker's `rmi`: a tag reference untags (and deletes the image when it
    /// was the last tag); an ID deletes the image (with `force` even when it
    /// has several tags). An image held by a container is never deleted:
    /// without `force` that is a conflict; with `force` only tags go.
    pub fn remove(&self, reference: &str, force: bool) -> Result<Vec<RemoveEvent>> {
        let _gc = self
            .gc_lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (events, freed_chains, freed_blobs) = self.db.write(|tx| {
            let rec = resolve_in(tx, reference)?;
            let tags: Vec<String> = tx
                .tags()?
                .into_iter()
                .filter(|(_, id)| *id == rec.id)
                .map(|(r, _)| r)
                .collect();
            let holders: Vec<String> = tx
                .holds()?
                .into_iter()
                .filter(|(_, id)| *id == rec.id)
                .map(|(h, _)| h)
                .collect();
            let by_tag = Reference::parse_name(reference)
                .ok()
                .filter(|r| r.digest().is_none() && !is_id_like(reference))
                .map(|r| Reference::parse(&r.to_string()).map(|r| r.to_string()))
                .transpose()?
                .filter(|t| tags.contains(t));
            let mut events = Vec::new();
            let untag = |t: &str, events: &mut Vec<RemoveEvent>| -> Result<()> {
                tx.delete_tag(t)?;
                events.push(RemoveEvent::Untagged(
                    Reference::parse(t).map_or_else(|_| t.to_string(), |r| r.familiar()),
                ));
                Ok(())
            };
            if let Some(t) = &by_tag {
                if tags.len() > 1 {
                    untag(t, &mut events)?;
                    return Ok((events, Vec::new(), Vec::new()));
                }
            } else if tags.len() > 1 && !force {
                return Err(Error::MultipleTags { id: rec.id.short() });
            }
            if let Some(h) = holders.first() {
                if !force {
                    return Err(Error::InUse {
                        reference: reference.to_string(),
                        id: rec.id.short(),
                        holder: h.clone(),
                    });
                }
                for t in &tags {
                    untag(t, &mut events)?;
                }
                return Ok((events, Vec::new(), Vec::new()));
            }
            for t in &tags {
                untag(t, &mut events)?;
            }
            let (chains, blobs) = delete_image_in(tx, &rec)?;
            events.push(RemoveEvent::Deleted(rec.id.clone()));
            Ok::<_, Error>((events, chains, blobs))
        })?;
        self.delete_unreferenced(&freed_chains, &freed_blobs)?;
        Ok(events)
    }

    /// Delete snapshot directories and blobs that a committed transaction
    /// stopped referencing. Errors are logged: the next gc retries.
    fn delete_unreferenced(&self, chains: &[Digest], blobs: &[Digest]) -> Result<u64> {
        let mut bytes = 0;
        for c in chains {
            self.snapshots.remove(c)?;
        }
        for b in blobs {
            bytes += self.content.size(b)?.unwrap_or(0);
            self.content.delete(b)?;
        }
        Ok(bytes)
    }

    /// Remove dangling images (no tag, not held, no child image), or with
    /// `all` every image not held and without a child, then collect
    /// garbage. As in Docker, an image keeps its parent chain: an untagged
    /// build intermediate stays while an image built on it exists, and goes
    /// in the same prune as its last child.
    pub fn prune(&self, all: bool) -> Result<PruneReport> {
        let _gc = self
            .gc_lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (images, chains, blobs) = self.db.write(|tx| {
            let tags = tx.tags()?;
            let holds = tx.holds()?;
            let mut images = Vec::new();
            let mut chains = Vec::new();
            let mut blobs = Vec::new();
            let mut remaining: Vec<(ImageRecord, Vec<manifest::History>)> = tx
                .images()?
                .into_iter()
                .map(|rec| {
                    let history = self
                        .content
                        .read_blob(&rec.config.digest, JSON_LIMIT)
                        .ok()
                        .and_then(|b| ImageConfig::parse(&b).ok())
                        .map(|c| c.history)
                        .unwrap_or_default();
                    (rec, history)
                })
                .collect();
            // Rounds: what is prunable now, then the parents that lost
            // their last child.
            let mut doomed = Vec::new();
            loop {
                let round: Vec<usize> = (0..remaining.len())
                    .filter(|&i| {
                        let (rec, history) = &remaining[i];
                        let tagged = tags.iter().any(|(_, id)| *id == rec.id);
                        let held = holds.iter().any(|(_, id)| *id == rec.id);
                        !held
                            && (all || !tagged)
                            && !remaining.iter().any(|(child, child_history)| {
                                is_parent(rec, history, child, child_history)
                            })
                    })
                    .collect();
                if round.is_empty() {
                    break;
                }
                for i in round.into_iter().rev() {
                    doomed.push(remaining.swap_remove(i).0);
                }
            }
            for rec in doomed {
                for (t, id) in &tags {
                    if *id == rec.id {
                        tx.delete_tag(t)?;
                    }
                }
                let (c, b) = delete_image_in(tx, &rec)?;
                chains.extend(c);
                blobs.extend(b);
                images.push(rec.id.clone());
            }
            Ok::<_, Error>((images, chains, blobs))
        })?;
        let mut reclaimed = self.delete_unreferenced(&chains, &blobs)?;
        let mut report = self.gc_locked()?;
        reclaimed += report.reclaimed_bytes;
        report.images = images;
        report.blobs.extend(blobs);
        report.snapshots.extend(chains);
        report.reclaimed_bytes = reclaimed;
        Ok(report)
    }

    /// Remove every blob and snapshot no image references.
    pub fn gc(&self) -> Result<PruneReport> {
        let _gc = self
            .gc_lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.gc_locked()
    }

    fn gc_locked(&self) -> Result<PruneReport> {
        let (blobs, chains) = self.referenced()?;
        let mut report = PruneReport::default();
        // Snapshot records nothing uses any more (refcount drift is repaired).
        self.db.write(|tx| {
            for (chain, mut rec) in tx.snapshots()? {
                let actual = chains.get(&chain).copied().unwrap_or(0);
                if actual == 0 {
                    tx.delete_snapshot(&chain)?;
                } else if rec.refs != actual {
                    rec.refs = actual;
                    tx.put_snapshot(&chain, &rec)?;
                }
            }
            Ok::<_, Error>(())
        })?;
        for chain in self.snapshots.list()? {
            if !chains.contains_key(&chain) {
                self.snapshots.remove(&chain)?;
                report.snapshots.push(chain);
            }
        }
        for d in self.content.list()? {
            if !blobs.contains(&d) {
                report.reclaimed_bytes += self.content.size(&d)?.unwrap_or(0);
                self.content.delete(&d)?;
                report.blobs.push(d);
            }
        }
        Ok(report)
    }

    // ----- verification -----

    /// Check the whole store: rehash every blob, check every image's
    /// manifest, config, blobs and snapshots, and every reference count.
    pub fn verify(&self) -> Result<VerifyReport> {
        let _gc = self
            .gc_lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut report = VerifyReport::default();
        report
            .damage
            .extend(self.content.verify()?.into_iter().map(Damage::Blob));
        let (images, tags, holds, snaps, leases) = self.db.read(|rx| {
            Ok::<_, Error>((
                rx.images()?,
                rx.tags()?,
                rx.holds()?,
                rx.snapshots()?,
                rx.leases()?,
            ))
        })?;
        report.leases = leases.into_iter().map(|(id, _)| id).collect();
        report.images = images.len();
        let on_disk: BTreeSet<Digest> = self.snapshots.list()?.into_iter().collect();
        let snap_map: BTreeMap<Digest, db::SnapshotRecord> = snaps.into_iter().collect();
        let (blobs, chains) = self.referenced()?;
        for img in &images {
            let mut want = vec![img.manifest.digest.clone(), img.config.digest.clone()];
            want.extend(img.layers.iter().map(|l| l.blob.digest.clone()));
            want.extend(img.indexes.iter().map(|i| i.digest.clone()));
            for b in want {
                if !self.content.contains(&b) {
                    report.damage.push(Damage::MissingBlob {
                        image: img.id.clone(),
                        blob: b,
                    });
                }
            }
            if let Err(reason) = self.check_image(img) {
                report.damage.push(Damage::BadManifest {
                    image: img.id.clone(),
                    reason,
                });
            }
            for l in &img.layers {
                if !snap_map.contains_key(&l.chain_id) {
                    report.damage.push(Damage::MissingSnapshotRecord {
                        image: img.id.clone(),
                        chain: l.chain_id.clone(),
                    });
                }
            }
        }
        for (chain, rec) in &snap_map {
            if !on_disk.contains(chain) {
                report.damage.push(Damage::MissingSnapshotDir {
                    chain: chain.clone(),
                });
            }
            let actual = chains.get(chain).copied().unwrap_or(0);
            if rec.refs != actual {
                report.damage.push(Damage::RefCount {
                    chain: chain.clone(),
                    recorded: rec.refs,
                    actual,
                });
            }
        }
        let ids: BTreeSet<&Digest> = images.iter().map(|i| &i.id).collect();
        for (r, id) in &tags {
            if !ids.contains(id) {
                report.damage.push(Damage::DanglingTag {
                    reference: r.clone(),
                    image: id.clone(),
                });
            }
        }
        for (h, id) in &holds {
            if !ids.contains(id) {
                report.damage.push(Damage::DanglingHold {
                    holder: h.clone(),
                    image: id.clone(),
                });
            }
        }
        let all_blobs = self.content.list()?;
        report.blobs = all_blobs.len();
        report.snapshots = on_disk.len();
        report.unreferenced_blobs = all_blobs
            .into_iter()
            .filter(|b| !blobs.contains(b))
            .collect();
        report.unreferenced_snapshots = on_disk
            .into_iter()
            .filter(|c| !chains.contains_key(c))
            .collect();
        Ok(report)
    }

    fn check_image(&self, img: &ImageRecord) -> std::result::Result<(), String> {
        let m = self
            .content
            .read_blob(&img.manifest.digest, JSON_LIMIT)
            .map_err(|e| e.to_string())?;
        let manifest::Parsed::Manifest(m) =
            manifest::parse(&m, Some(&img.manifest.media_type)).map_err(|e| e.to_string())?
        else {
            return Err("manifest blob is an index".into());
        };
        if m.config.digest != img.config.digest {
            return Err(format!(
                "manifest names config {}, record says {}",
                m.config.digest, img.config.digest
            ));
        }
        if m.layers
            .iter()
            .map(|l| &l.digest)
            .ne(img.layers.iter().map(|l| &l.blob.digest))
        {
            return Err("manifest layers differ from the record".into());
        }
        let c = self
            .content
            .read_blob(&img.config.digest, JSON_LIMIT)
            .map_err(|e| e.to_string())?;
        let c = ImageConfig::parse(&c).map_err(|e| e.to_string())?;
        if c.rootfs
            .diff_ids
            .iter()
            .ne(img.layers.iter().map(|l| &l.diff_id))
        {
            return Err("config diff IDs differ from the record".into());
        }
        if snapshot::chain_ids(&c.rootfs.diff_ids)
            .iter()
            .ne(img.layers.iter().map(|l| &l.chain_id))
        {
            return Err("chain IDs differ from the config".into());
        }
        Ok(())
    }
}

/// Remove an image record and drop its snapshot references. Returns the
/// chains whose last reference went and the blobs no remaining image uses.
fn delete_image_in(tx: &db::Tx<'_>, rec: &ImageRecord) -> Result<(Vec<Digest>, Vec<Digest>)> {
    tx.delete_image(&rec.id)?;
    let mut chains = Vec::new();
    for l in &rec.layers {
        if let Some(mut s) = tx.snapshot(&l.chain_id)? {
            s.refs = s.refs.saturating_sub(1);
            if s.refs == 0 {
                tx.delete_snapshot(&l.chain_id)?;
                chains.push(l.chain_id.clone());
            } else {
                tx.put_snapshot(&l.chain_id, &s)?;
            }
        }
    }
    let mut still = BTreeSet::new();
    for other in tx.images()? {
        still.insert(other.manifest.digest.clone());
        still.insert(other.config.digest.clone());
        still.extend(other.layers.iter().map(|l| l.blob.digest.clone()));
        still.extend(other.indexes.iter().map(|i| i.digest.clone()));
    }
    let mut blobs: Vec<Digest> = std::iter::once(rec.manifest.digest.clone())
        .chain(std::iter::once(rec.config.digest.clone()))
        .chain(rec.layers.iter().map(|l| l.blob.digest.clone()))
        .chain(rec.indexes.iter().map(|i| i.digest.clone()))
        .filter(|d| !still.contains(d))
        .collect();
    blobs.sort();
    blobs.dedup();
    Ok((chains, blobs))
}

fn is_id_like(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    hex.len() >= 4 && hex.len() <= 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

trait Lookup {
    fn image(&self, id: &Digest) -> db::Result<Option<ImageRecord>>;
    fn images(&self) -> db::Result<Vec<ImageRecord>>;
    fn tag(&self, r: &str) -> db::Result<Option<Digest>>;
}

impl Lookup for db::Rx {
    fn image(&self, id: &Digest) -> db::Result<Option<ImageRecord>> {
        db::Rx::image(self, id)
    }
    fn images(&self) -> db::Result<Vec<ImageRecord>> {
        db::Rx::images(self)
    }
    fn tag(&self, r: &str) -> db::Result<Option<Digest>> {
        db::Rx::tag(self, r)
    }
}

impl Lookup for db::Tx<'_> {
    fn image(&self, id: &Digest) -> db::Result<Option<ImageRecord>> {
        db::Tx::image(self, id)
    }
    fn images(&self) -> db::Result<Vec<ImageRecord>> {
        db::Tx::images(self)
    }
    fn tag(&self, r: &str) -> db::Result<Option<Digest>> {
        db::Tx::tag(self, r)
    }
}

fn resolve_in(rx: &impl Lookup, reference: &str) -> Result<ImageRecord> {
    let not_found = || Error::NotFound(reference.to_string());
    // Full ID.
    if let Ok(d) = reference.parse::<Digest>() {
        return rx.image(&d)?.ok_or_else(not_found);
    }
    // Name, tag or name@digest.
    if let Ok(r) = Reference::parse(reference) {
        if let Some(d) = r.digest() {
            let want = format!("{}@{d}", r.name());
            let found: Vec<ImageRecord> = rx
                .images()?
                .into_iter()
                .filter(|i| i.repo_digests.contains(&want) || i.manifest.digest == *d)
                .collect();
            if let Some(i) = found.into_iter().next() {
                return Ok(i);
            }
        } else if let Some(id) = rx.tag(&r.to_string())? {
            return rx.image(&id)?.ok_or_else(not_found);
        }
    }
    // Short ID prefix.
    if is_id_like(reference) {
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        let found: Vec<ImageRecord> = rx
            .images()?
            .into_iter()
            .filter(|i| i.id.hex().starts_with(hex))
            .collect();
        return match found.len() {
            0 => Err(not_found()),
            1 => Ok(found.into_iter().next().expect("length checked")),
            n => Err(Error::Ambiguous {
                reference: reference.to_string(),
                count: n,
            }),
        };
    }
    Err(not_found())
}

/// Copy with a large buffer.
pub(crate) fn copy_into(r: &mut impl Read, w: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

impl ImageStore {
    pub(crate) fn gc_read(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gc_lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn db_tags(&self) -> Result<Vec<(String, Digest)>> {
        Ok(self.db.read(db::Rx::tags)?)
    }

    pub(crate) fn db_snapshot_size(&self, chain: &Digest) -> Result<u64> {
        Ok(self.db.read(|rx| rx.snapshot(chain))?.map_or(0, |s| s.size))
    }

    /// Write a container's filesystem (a mounted rootfs) as a tar stream.
    pub fn export(rootfs: &Path, writer: impl Write) -> Result<()> {
        Ok(diff::write_tree(rootfs, writer, diff::Mode::Plain)?)
    }

    /// Make a new image from a container's overlay upper directory on top of
    /// `parent` (or from scratch): the upper dir becomes one gzip layer.
    pub fn commit(
        &self,
        upper: &Path,
        parent: Option<&str>,
        options: &CommitOptions,
    ) -> Result<Digest> {
        let lease = self.lease("commit")?;
        match self.commit_in(&lease, upper, parent, options) {
            Ok(id) => Ok(id),
            Err(e) => {
                self.discard(lease);
                Err(e)
            }
        }
    }

    fn commit_in(
        &self,
        lease: &LeaseGuard<'_>,
        upper: &Path,
        parent: Option<&str>,
        options: &CommitOptions,
    ) -> Result<Digest> {
        let (parent_rec, mut config) = if let Some(p) = parent {
            let rec = self.resolve(p)?;
            let cfg = ImageConfig::parse(&self.content.read_blob(&rec.config.digest, JSON_LIMIT)?)?;
            (Some(rec), cfg)
        } else {
            let p = Platform::host();
            (
                None,
                ImageConfig {
                    architecture: p.architecture,
                    os: p.os,
                    variant: p.variant,
                    rootfs: manifest::RootFs {
                        kind: "layers".into(),
                        diff_ids: Vec::new(),
                    },
                    ..ImageConfig::default()
                },
            )
        };
        let w = self.content.temp_writer(Algorithm::Sha256)?;
        let gz = flate2::write::GzEncoder::new(
            io::BufWriter::with_capacity(1 << 20, w),
            flate2::Compression::fast(),
        );
        let mut hw = digest::HashingWriter::new(gz, Algorithm::Sha256);
        diff::write_tree(upper, &mut hw, diff::Mode::OverlayUpper)?;
        let (diff_id, _, gz) = hw.finish();
        let w = gz
            .finish()
            .and_then(|b| b.into_inner().map_err(io::IntoInnerError::into_error))
            .map_err(|e| Error::Diff(diff::Error::Write(e)))?;
        let (blob, blob_size) = self.commit_blob(lease, w, None, None)?;
        let (tmp, applied) = self.unpack_blob(&blob, &diff_id)?;

        let now = manifest::now_rfc3339();
        config.created = Some(now.clone());
        if let Some(a) = &options.author {
            config.author = Some(a.clone());
        }
        config.rootfs.diff_ids.push(diff_id);
        config.history.push(manifest::History {
            created: Some(now),
            created_by: options.created_by.clone(),
            author: options.author.clone(),
            comment: options.comment.clone(),
            empty_layer: false,
        });
        let mut rc = config.config.take().unwrap_or_default();
        options.changes.apply(&mut rc);
        config.config = Some(rc);

        let oci = parent_rec
            .as_ref()
            .is_some_and(|r| r.manifest.media_type == manifest::OCI_MANIFEST);
        let below = parent_rec.as_ref().map_or(&[][..], |r| &r.layers[..]);
        let layers = PendingLayer::stack(below, oci, blob, blob_size, Some((tmp, applied)));
        let tags = options
            .reference
            .as_deref()
            .map(Reference::parse)
            .transpose()?
            .into_iter()
            .collect();
        let img = self.pending_from_config(lease, &config, layers, tags)?;
        let ids = self.record_images(lease, vec![img], &mut |_| {})?;
        Ok(ids.into_iter().next().expect("one image was recorded"))
    }
}

/// Whether `parent` is the parent of `child` in Docker's sense: the child
/// was built on it, so its layers extend the parent's (or equal them, for
/// steps that change only metadata) and its history extends the parent's.
fn is_parent(
    parent: &ImageRecord,
    parent_history: &[manifest::History],
    child: &ImageRecord,
    child_history: &[manifest::History],
) -> bool {
    parent.id != child.id
        && parent.layers.len() <= child.layers.len()
        && parent
            .layers
            .iter()
            .zip(&child.layers)
            .all(|(a, b)| a.chain_id == b.chain_id)
        && parent_history.len() < child_history.len()
        && child_history.starts_with(parent_history)
}

#[cfg(test)]
mod prune_tests {
    use super::*;

    fn desc(d: &Digest) -> Descriptor {
        Descriptor {
            media_type: String::new(),
            digest: d.clone(),
            size: 0,
            urls: None,
            annotations: None,
            platform: None,
        }
    }

    fn image(name: &str, chains: &[&str]) -> ImageRecord {
        let id = Digest::sha256_of(name.as_bytes());
        ImageRecord {
            id: id.clone(),
            manifest: desc(&id),
            config: desc(&id),
            layers: chains
                .iter()
                .map(|c| {
                    let d = Digest::sha256_of(c.as_bytes());
                    LayerRecord {
                        blob: desc(&d),
                        diff_id: d.clone(),
                        chain_id: d,
                    }
                })
                .collect(),
            added: 0,
            size: 0,
            repo_digests: Vec::new(),
            indexes: Vec::new(),
        }
    }

    fn history(steps: &[&str]) -> Vec<manifest::History> {
        steps
            .iter()
            .map(|s| manifest::History {
                created_by: Some((*s).to_string()),
                ..manifest::History::default()
            })
            .collect()
    }

    #[test]
    fn parents_are_images_a_child_builds_on() {
        let base = image("base", &["a"]);
        let run = image("run", &["a", "b"]);
        let cmd = image("cmd", &["a", "b"]);
        let other = image("other", &["x", "b"]);
        let (hb, hr, hc) = (
            history(&["base"]),
            history(&["base", "run"]),
            history(&["base", "run", "cmd"]),
        );
        // Layers extend and history extends.
        assert!(is_parent(&base, &hb, &run, &hr));
        assert!(is_parent(&base, &hb, &cmd, &hc));
        // Same layers, one more (metadata) history entry.
        assert!(is_parent(&run, &hr, &cmd, &hc));
        // Never the other way, never itself.
        assert!(!is_parent(&cmd, &hc, &run, &hr));
        assert!(!is_parent(&run, &hr, &run, &hr));
        // Same layers but a history that does not extend: not a child.
        assert!(!is_parent(
            &run,
            &hr,
            &cmd,
            &history(&["base", "other", "cmd"])
        ));
        // Another chain.
        assert!(!is_parent(&base, &hb, &other, &history(&["base", "x"])));
    }
}
