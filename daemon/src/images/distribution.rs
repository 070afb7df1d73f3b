//! Pull and push between the image store and a registry, through the
//! registry crate's client.
//!
//! Owns the seams the client needs: a [`BlobSink`] that writes downloads
//! into `content/ingest/pull-<alg>-<hex>` (kept across failures so a retry
//! resumes, published under the blob's digest only after the client has
//! verified it) and a [`BlobSource`] that streams stored blobs for upload.
//! Layers are unpacked into temporary snapshots while later ones still
//! download, then recorded with the rest of the image in one transaction.
//! Before a push, layers kept uncompressed (images loaded from `docker
//! save` archives) are gzip-compressed once and the image record switched
//! to the compressed blobs, which is how the diff ID -> compressed digest
//! mapping is remembered.
//!
//! It does not speak HTTP to clients, parse credentials or format Docker's
//! progress messages: the engine does that from the [`Event`]s it gets.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use vessel_registry::client::{
    self, BlobSink, BlobSource, Client, PlatformSpec, ProgressEvent, ProgressSink, PushImage,
    PushResult,
};
use vessel_registry::storage::ByteStream;

use super::db::ImageRecord;
use super::digest::Digest;
use super::layer::Applied;
use super::manifest::{self, Descriptor, Manifest};
use super::snapshot::{self, TempSnapshot};
use super::{ImageStore, JSON_LIMIT, LeaseGuard, PendingImage, PendingLayer, Reference};

/// Errors of pull and push.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry or the transfer failed.
    #[error(transparent)]
    Registry(#[from] client::Error),
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] Box<super::Error>),
    /// A digest or descriptor from one side does not convert to the other.
    #[error("{what} {value:?} from the registry is not usable here")]
    Convert { what: &'static str, value: String },
}

impl From<super::Error> for Error {
    fn from(e: super::Error) -> Error {
        Error::Store(Box::new(e))
    }
}

impl From<super::db::Error> for Error {
    fn from(e: super::db::Error) -> Error {
        Error::Store(Box::new(e.into()))
    }
}

impl From<super::content::Error> for Error {
    fn from(e: super::content::Error) -> Error {
        Error::Store(Box::new(e.into()))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Progress of a pull or push, for the engine to turn into messages.
#[derive(Debug, Clone)]
pub enum Event {
    /// What the registry client reported.
    Client(ProgressEvent),
    /// A layer is being unpacked.
    Extracting { digest: String, size: u64 },
    /// A layer is unpacked.
    Extracted { digest: String },
    /// The layers a push will send, in order.
    Layers(Vec<String>),
    /// Something the user should read in the progress stream.
    Notice(String),
}

/// The blob an event is about, if any.
fn event_digest(e: &ProgressEvent) -> Option<&vessel_registry::Digest> {
    match e {
        ProgressEvent::Waiting { digest }
        | ProgressEvent::AlreadyExists { digest }
        | ProgressEvent::Progress { digest, .. }
        | ProgressEvent::Retrying { digest, .. }
        | ProgressEvent::DownloadComplete { digest }
        | ProgressEvent::Mounted { digest, .. }
        | ProgressEvent::Pushed { digest } => Some(digest),
        _ => None,
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub id: Digest,
    /// Digest of what the reference names (an index for multi-platform).
    pub digest: String,
    /// The tag already named this image before the pull.
    pub up_to_date: bool,
}

fn to_reg_digest(d: &Digest) -> Result<vessel_registry::Digest> {
    d.to_string().parse().map_err(|_| Error::Convert {
        what: "digest",
        value: d.to_string(),
    })
}

fn from_reg_digest(d: &vessel_registry::Digest) -> Result<Digest> {
    d.to_string().parse().map_err(|_| Error::Convert {
        what: "digest",
        value: d.to_string(),
    })
}

/// Descriptors are the same JSON on both sides.
fn convert<A: serde::Serialize, B: serde::de::DeserializeOwned>(a: &A) -> Result<B> {
    let v = serde_json::to_value(a).map_err(|e| Error::Convert {
        what: "descriptor",
        value: e.to_string(),
    })?;
    serde_json::from_value(v).map_err(|e| Error::Convert {
        what: "descriptor",
        value: e.to_string(),
    })
}

/// Stream a file from `offset` in 1 MiB pieces read on a blocking thread.
fn file_stream(mut f: File, offset: u64) -> ByteStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = f.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        loop {
            let mut buf = BytesMut::zeroed(1 << 20);
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf.freeze())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Downloads into the content store's ingest area.
struct Sink<'a> {
    store: &'a ImageStore,
    lease: &'a LeaseGuard<'a>,
    open: Mutex<HashMap<vessel_registry::Digest, File>>,
    /// Committed blobs go here to be unpacked while others download.
    unpack: Mutex<Option<std::sync::mpsc::Sender<Digest>>>,
}

impl Sink<'_> {
    fn ingest_name(d: &vessel_registry::Digest) -> String {
        format!("pull-{}-{}", d.algorithm().as_str(), d.hex())
    }

    fn ingest_path(&self, d: &vessel_registry::Digest) -> PathBuf {
        self.store.content().ingest_path(&Self::ingest_name(d))
    }
}

#[async_trait::async_trait]
impl BlobSink for Sink<'_> {
    async fn has(&self, digest: &vessel_registry::Digest) -> io::Result<bool> {
        let d = from_reg_digest(digest).map_err(io::Error::other)?;
        Ok(self.store.hold_blob(self.lease, &d))
    }

    async fn partial(
        &self,
        digest: &vessel_registry::Digest,
    ) -> io::Result<Option<(u64, ByteStream)>> {
        match File::open(self.ingest_path(digest)) {
            Ok(f) => {
                let n = f.metadata()?.len();
                Ok(Some((n, file_stream(f, 0))))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write(
        &self,
        digest: &vessel_registry::Digest,
        offset: u64,
        data: Bytes,
    ) -> io::Result<()> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let f = match open.entry(digest.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(self.ingest_path(digest))?,
            ),
        };
        if offset == 0 {
            f.set_len(0)?;
        }
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(&data)
    }

    async fn commit(&self, digest: &vessel_registry::Digest, _size: u64) -> io::Result<()> {
        let file = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(digest);
        drop(file);
        let d = from_reg_digest(digest).map_err(io::Error::other)?;
        self.store
            .publish_download(self.lease, &Self::ingest_name(digest), &d)
            .map_err(io::Error::other)?;
        if let Some(tx) = self
            .unpack
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            let _ = tx.send(d);
        }
        Ok(())
    }

    async fn discard(&self, digest: &vessel_registry::Digest) -> io::Result<()> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(digest);
        match fs::remove_file(self.ingest_path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Blobs for upload.
struct Source<'a> {
    store: &'a ImageStore,
    mounts: Vec<client::Reference>,
}

#[async_trait::async_trait]
impl BlobSource for Source<'_> {
    async fn open(&self, digest: &vessel_registry::Digest) -> io::Result<ByteStream> {
        self.open_at(digest, 0).await
    }

    async fn open_at(
        &self,
        digest: &vessel_registry::Digest,
        offset: u64,
    ) -> io::Result<ByteStream> {
        let d = from_reg_digest(digest).map_err(io::Error::other)?;
        let f = File::open(self.store.content().blob_path(&d))?;
        Ok(file_stream(f, offset))
    }

    fn mount_candidates(&self, _digest: &vessel_registry::Digest) -> Vec<client::Reference> {
        self.mounts.clone()
    }
}

/// Forwards the client's events.
struct Forward<'a>(&'a (dyn Fn(Event) + Sync));

impl ProgressSink for Forward<'_> {
    fn event(&self, e: ProgressEvent) {
        (self.0)(Event::Client(e));
    }
}

/// The store's name for a registry reference (`127.0.0.1:5000/x/y:1`).
pub fn local_reference(r: &client::Reference) -> Result<Reference> {
    Reference::parse(&r.familiar()).map_err(|e| Error::Store(Box::new(e.into())))
}

impl ImageStore {
    /// Count a blob the store has as used by `lease` (so a failing
    /// operation elsewhere never deletes it); false when it is absent.
    fn hold_blob(&self, lease: &LeaseGuard<'_>, d: &Digest) -> bool {
        let mut inflight = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.content().contains(d) {
            return false;
        }
        *inflight.entry(d.clone()).or_insert(0) += 1;
        drop(inflight);
        lease
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(d.clone());
        true
    }

    /// Publish a verified download under its digest, for `lease`.
    fn publish_download(&self, lease: &LeaseGuard<'_>, ingest: &str, d: &Digest) -> Result<()> {
        let mut inflight = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let created = self.content().publish_ingest(ingest, d)?;
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
        Ok(())
    }

    /// Pull `r` for `platform` through `client` into the store and tag it.
    /// Runs on a blocking thread; `rt` drives the client's futures.
    pub fn pull(
        &self,
        rt: &tokio::runtime::Handle,
        client: &Client,
        r: &client::Reference,
        platform: &PlatformSpec,
        progress: &(dyn Fn(Event) + Sync),
    ) -> Result<Pulled> {
        let local = local_reference(r)?;
        let previous = if local.tag().is_some() {
            self.db.read(|rx| rx.tag(&local.to_string()))?
        } else {
            None
        };
        let lease = self.lease("pull")?;
        match self.pull_in(&lease, rt, client, r, &local, platform, progress) {
            Ok((id, digest)) => Ok(Pulled {
                up_to_date: previous.as_ref() == Some(&id),
                id,
                digest,
            }),
            Err(e) => {
                self.discard(lease);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pull_in(
        &self,
        lease: &LeaseGuard<'_>,
        rt: &tokio::runtime::Handle,
        client: &Client,
        r: &client::Reference,
        local: &Reference,
        platform: &PlatformSpec,
        progress: &(dyn Fn(Event) + Sync),
    ) -> Result<(Digest, String)> {
        let (tx, rx) = std::sync::mpsc::channel::<Digest>();
        let sink = Sink {
            store: self,
            lease,
            open: Mutex::new(HashMap::new()),
            unpack: Mutex::new(Some(tx)),
        };
        // Layers announced by the client ("Waiting"): only those get
        // extraction messages (the config blob goes through the sink too).
        let layers_seen: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
        let report = |e: Event| {
            if let Event::Client(ProgressEvent::Waiting { digest }) = &e {
                layers_seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(digest.to_string());
            }
            progress(e);
        };
        let unpacked: Mutex<HashMap<Digest, (TempSnapshot, Applied)>> = Mutex::new(HashMap::new());
        let rx = Mutex::new(rx);
        let workers = std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .clamp(1, 4);
        let pulled = std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let next = rx
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        let Ok(d) = next else { return };
                        let announce = layers_seen
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .contains(&d.to_string());
                        if !announce {
                            // The config, or a layer not yet announced.
                            let head = self.content().read_head(&d).unwrap_or_default();
                            if head.first() == Some(&b'{') {
                                continue;
                            }
                        }
                        let size = self.content().size(&d).ok().flatten().unwrap_or(0);
                        progress(Event::Extracting {
                            digest: d.to_string(),
                            size,
                        });
                        if let Ok(u) = self.unpack_any(&d) {
                            unpacked
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(d.clone(), u);
                            progress(Event::Extracted {
                                digest: d.to_string(),
                            });
                        }
                    }
                });
            }
            let res = rt.block_on(client.pull(r, platform, &sink, &Forward(&report)));
            // Closing the channel lets the workers finish.
            sink.unpack
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            res
        })?;
        let mut unpacked = unpacked
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);

        // The manifest, byte-exact.
        let (mbytes, mtype) = &pulled.manifest;
        let mdigest = from_reg_digest(&pulled.manifest_digest)?;
        let (md, msize) = self.ingest(lease, &mbytes[..], Some(&mdigest), None)?;
        let config: Descriptor = convert(&pulled.config)?;
        let cfg =
            manifest::ImageConfig::parse(&self.content().read_blob(&config.digest, JSON_LIMIT)?)
                .map_err(super::Error::from)?;
        let chains = snapshot::chain_ids(&cfg.rootfs.diff_ids);
        let mut layers = Vec::new();
        for (i, l) in pulled.layers.iter().enumerate() {
            let blob: Descriptor = convert(l)?;
            let mut u = unpacked.remove(&blob.digest);
            // Layers not unpacked yet (their blob was already here) and
            // without a snapshot: unpack now.
            if let (None, Some(diff_id), Some(chain)) =
                (&u, cfg.rootfs.diff_ids.get(i), chains.get(i))
            {
                if self.db.read(|rx| rx.snapshot(chain))?.is_none() {
                    progress(Event::Extracting {
                        digest: blob.digest.to_string(),
                        size: blob.size,
                    });
                    u = Some(self.unpack_blob(&blob.digest, diff_id)?);
                    progress(Event::Extracted {
                        digest: blob.digest.to_string(),
                    });
                }
            }
            layers.push(PendingLayer { blob, unpacked: u });
        }
        let named = from_reg_digest(&pulled.digest)?;
        // The index the platform was chosen from, byte-exact under the
        // digest the reference resolved to, so a push can send it back.
        let index = match &pulled.index {
            Some((ibytes, itype)) => {
                let (idigest, isize) = self.ingest(lease, &ibytes[..], Some(&named), None)?;
                Some(Descriptor {
                    media_type: itype.clone(),
                    digest: idigest,
                    size: isize,
                    urls: None,
                    annotations: None,
                    platform: None,
                })
            }
            None => None,
        };
        let image = PendingImage {
            manifest: Descriptor {
                media_type: mtype.clone(),
                digest: md,
                size: msize,
                urls: None,
                annotations: None,
                platform: None,
            },
            config,
            layers,
            tags: local
                .tag()
                .is_some()
                .then(|| local.clone())
                .into_iter()
                .collect(),
            repo_digests: vec![format!("{}@{named}", local.name())],
            index,
        };
        let ids = self.record_images(lease, vec![image], &mut |_| {})?;
        let id = ids.into_iter().next().expect("one image was recorded");
        if local.tag().is_none() {
            tracing::debug!(image = %id, "pulled by digest; no tag recorded");
        }
        Ok((id, named.to_string()))
    }

    /// Unpack a blob whose diff ID is not known yet (it is checked when the
    /// image is recorded).
    fn unpack_any(&self, blob: &Digest) -> super::Result<(TempSnapshot, Applied)> {
        let f = self.content().open_blob(blob)?;
        let tmp = self.snapshots().temp()?;
        let applied = super::layer::apply(
            io::BufReader::with_capacity(1 << 20, f),
            tmp.path(),
            None,
            self.limits(),
        )
        .map_err(|source| super::Error::Layer {
            digest: blob.to_string(),
            source,
        })?;
        Ok((tmp, applied))
    }

    /// Make every layer of the image `reference` a compressed blob (gzip),
    /// reusing a compressed blob another image has for the same diff ID,
    /// and switch the record to them. Returns the (possibly new) record.
    fn compressed_for_push(&self, reference: &str) -> Result<ImageRecord> {
        let rec = self.resolve(reference)?;
        let plain = |mt: &str| mt == manifest::DOCKER_LAYER || mt == manifest::OCI_LAYER;
        if !rec.layers.iter().any(|l| plain(&l.blob.media_type)) {
            return Ok(rec);
        }
        let lease = self.lease("push")?;
        let res = (|| {
            let known: HashMap<Digest, Descriptor> = self.db.read(|rx| {
                let mut m = HashMap::new();
                for img in rx.images()? {
                    for l in img.layers {
                        if !plain(&l.blob.media_type) && self.content().contains(&l.blob.digest) {
                            m.insert(l.diff_id, l.blob);
                        }
                    }
                }
                Ok::<_, super::Error>(m)
            })?;
            let mbytes = self.content().read_blob(&rec.manifest.digest, JSON_LIMIT)?;
            let oci = rec.manifest.media_type == manifest::OCI_MANIFEST;
            let mut m: Manifest = serde_json::from_slice(&mbytes).map_err(|e| Error::Convert {
                what: "manifest",
                value: e.to_string(),
            })?;
            let mut new = rec.clone();
            for (i, l) in rec.layers.iter().enumerate() {
                if !plain(&l.blob.media_type) {
                    continue;
                }
                let desc = match known.get(&l.diff_id) {
                    Some(d) if self.hold_blob(&lease, &d.digest) => d.clone(),
                    _ => {
                        let f = self.content().open_blob(&l.blob.digest)?;
                        let gz = flate2::read::GzEncoder::new(
                            io::BufReader::with_capacity(1 << 20, f),
                            flate2::Compression::fast(),
                        );
                        let (d, n) = self.ingest(&lease, gz, None, None)?;
                        Descriptor {
                            media_type: if oci {
                                manifest::OCI_LAYER_GZIP
                            } else {
                                manifest::DOCKER_LAYER_GZIP
                            }
                            .into(),
                            digest: d,
                            size: n,
                            urls: None,
                            annotations: None,
                            platform: None,
                        }
                    }
                };
                new.layers[i].blob = desc.clone();
                if let Some(ml) = m.layers.get_mut(i) {
                    *ml = desc;
                }
            }
            let mb = manifest::to_bytes(&m);
            let (md, ms) = self.ingest(&lease, &mb[..], None, None)?;
            new.manifest = Descriptor {
                media_type: rec.manifest.media_type.clone(),
                digest: md,
                size: ms,
                urls: None,
                annotations: None,
                platform: None,
            };
            self.db.write(|tx| {
                tx.put_image(&new)?;
                tx.delete_lease(&lease.id)?;
                Ok::<_, super::Error>(())
            })?;
            Ok(new)
        })();
        match res {
            Ok(new) => {
                tracing::info!(image = %new.id, "layers compressed for push");
                drop(lease);
                Ok(new)
            }
            Err(e) => {
                self.discard(lease);
                Err(e)
            }
        }
    }

    /// The manifest push of an image record: its manifest bytes and blobs.
    fn push_image_of(&self, rec: &ImageRecord) -> Result<PushImage> {
        let mbytes = self.content().read_blob(&rec.manifest.digest, JSON_LIMIT)?;
        let mut blobs = vec![convert(&rec.config)?];
        for l in &rec.layers {
            blobs.push(convert(&l.blob)?);
        }
        Ok(PushImage::Image {
            manifest: Bytes::from(mbytes),
            media_type: rec.manifest.media_type.clone(),
            blobs,
        })
    }

    /// The index to push with `rec` when pushed as `local`: the one `local`
    /// was pulled through if any, else the latest; only one that still
    /// names the image's manifest (compressing layers for a push makes a
    /// new manifest no index names). Bytes, media type and entries.
    fn index_for_push(
        &self,
        rec: &ImageRecord,
        local: &str,
    ) -> Result<Option<(Bytes, String, Vec<Descriptor>)>> {
        let name = Reference::parse(local).map(|r| r.name().clone()).ok();
        let chosen = rec
            .indexes
            .iter()
            .rev()
            .find(|ix| {
                name.as_ref()
                    .is_some_and(|n| rec.repo_digests.contains(&format!("{n}@{}", ix.digest)))
            })
            .or_else(|| rec.indexes.last());
        let Some(ix) = chosen else { return Ok(None) };
        if !self.content().contains(&ix.digest) {
            tracing::warn!(index = %ix.digest, "index of the image is missing from the store; pushing the manifest alone");
            return Ok(None);
        }
        let bytes = self.content().read_blob(&ix.digest, JSON_LIMIT)?;
        let entries = match manifest::parse(&bytes, Some(&ix.media_type)) {
            Ok(manifest::Parsed::Index(i)) => i.manifests,
            _ => return Ok(None),
        };
        if !entries.iter().any(|e| e.digest == rec.manifest.digest) {
            return Ok(None);
        }
        Ok(Some((Bytes::from(bytes), ix.media_type.clone(), entries)))
    }

    /// Push the image `local` (a name with tag) to `target`. An image
    /// pulled through an index is pushed with that index, byte-exact, when
    /// every manifest it names can be made present in the target: held
    /// here, already there, or copied from the repository it was pulled
    /// from (mounted on the same registry). Otherwise only the image's own
    /// manifest goes under the tag, and a progress message says so.
    pub fn push(
        &self,
        rt: &tokio::runtime::Handle,
        client: &Client,
        local: &str,
        target: &client::Reference,
        progress: &(dyn Fn(Event) + Sync),
    ) -> Result<PushResult> {
        let rec = self.compressed_for_push(local)?;
        // Hold off garbage collection while blobs are read.
        let lease = self.lease("push")?;
        let res = (|| {
            let cfgd = to_reg_digest(&rec.config.digest)?;
            progress(Event::Layers(
                rec.layers
                    .iter()
                    .map(|l| l.blob.digest.to_string())
                    .collect(),
            ));
            let filter = |e: Event| {
                if let Event::Client(ev) = &e {
                    if event_digest(ev) == Some(&cfgd) {
                        return;
                    }
                }
                progress(e);
            };
            let image = self.push_image_of(&rec)?;
            let mounts: Vec<client::Reference> = rec
                .repo_digests
                .iter()
                .filter_map(|s| client::Reference::parse(s).ok())
                .filter(|c| c.registry == target.registry && c.repository != target.repository)
                .collect();
            let source = Source {
                store: self,
                mounts: mounts.clone(),
            };
            let pushed = match self.index_for_push(&rec, local)? {
                None => rt.block_on(client.push(target, &image, &source, &Forward(&filter)))?,
                Some((bytes, media_type, entries)) => self.push_with_index(
                    rt,
                    client,
                    target,
                    &rec,
                    &image,
                    (bytes, media_type, entries),
                    &source,
                    &filter,
                )?,
            };
            let rd = format!("{}@{}", local_reference(target)?.name(), pushed.digest);
            self.db.write(|tx| {
                if let Some(mut cur) = tx.image(&rec.id)? {
                    if !cur.repo_digests.contains(&rd) {
                        cur.repo_digests.push(rd.clone());
                        tx.put_image(&cur)?;
                    }
                }
                Ok::<_, super::Error>(())
            })?;
            Ok(pushed)
        })();
        self.discard(lease);
        res
    }

    /// Push `image` and then `index` under the target's tag, or `image`
    /// alone when some platform the index names cannot be made present.
    #[allow(clippy::too_many_arguments)]
    fn push_with_index(
        &self,
        rt: &tokio::runtime::Handle,
        client: &Client,
        target: &client::Reference,
        rec: &ImageRecord,
        image: &PushImage,
        (bytes, media_type, entries): (Bytes, String, Vec<Descriptor>),
        source: &Source<'_>,
        progress: &(dyn Fn(Event) + Sync),
    ) -> Result<PushResult> {
        let fwd = Forward(progress);
        let mut children = vec![image.clone()];
        let mut missing = Vec::new();
        let index_digest = Digest::sha256_of(&bytes);
        for e in entries.iter().filter(|e| e.digest != rec.manifest.digest) {
            let what = entry_name(e);
            // Another platform of the same index held here.
            let held = self.db.read(|rx| {
                Ok::<_, super::Error>(
                    rx.images()?
                        .into_iter()
                        .find(|i| i.manifest.digest == e.digest),
                )
            })?;
            if let Some(other) = held {
                children.push(self.push_image_of(&other)?);
                continue;
            }
            let d = to_reg_digest(&e.digest)?;
            if rt.block_on(client.manifest_exists(target, &d))? {
                tracing::debug!(manifest = %e.digest, "already in the target repository");
                continue;
            }
            let mut copied = false;
            for from in &source.mounts {
                match rt.block_on(client.copy_manifest(from, target, &d, &fwd)) {
                    Ok(_) => {
                        progress(Event::Notice(format!(
                            "{what}: manifest {} copied from {}",
                            e.digest.short(),
                            from.repository
                        )));
                        copied = true;
                        break;
                    }
                    Err(client::Error::NotFound(_)) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            if !copied {
                missing.push(what);
            }
        }
        if missing.is_empty() {
            let index = PushImage::Index {
                manifest: bytes,
                media_type,
                children,
            };
            return Ok(rt.block_on(client.push(target, &index, source, &fwd))?);
        }
        let tag = target.tag.as_deref().unwrap_or("latest");
        progress(Event::Notice(format!(
            "not pushing index {index_digest}: this daemon holds only {} of it, and {} is missing here and in {}; pushing the platform manifest alone as {tag}",
            entries
                .iter()
                .find(|e| e.digest == rec.manifest.digest)
                .map_or_else(|| rec.manifest.digest.short(), entry_name),
            missing.join(", "),
            target.repository,
        )));
        Ok(rt.block_on(client.push(target, image, source, &fwd))?)
    }
}

/// An index entry as people name it: its platform, else its digest.
fn entry_name(e: &Descriptor) -> String {
    e.platform
        .as_ref()
        .map_or_else(|| e.digest.short(), ToString::to_string)
}
