//! Image archives: loading and saving the `docker save` tar format and the
//! OCI image layout (as a directory or a tar), and `import` of a root
//! filesystem tarball.
//!
//! Loading streams the input once: each member is hashed into the content
//! store and, when it looks like a layer, unpacked into a temporary snapshot
//! at the same time. Only when the archive's manifests have been read are
//! the layers matched to images (by diff ID) and recorded; a member that is
//! not what the manifests say is re-unpacked from the content store or
//! rejected. Saving writes deterministic archives (sorted, fixed times) and
//! stores nothing.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::{Algorithm, Digest, HashingReader};
use super::layer::{self, Applied, Compression};
use super::manifest::{self, Descriptor, ImageConfig, Index, Manifest, Platform};
use super::reference::Reference;
use super::snapshot::TempSnapshot;
use super::{ImageStore, JSON_LIMIT, LeaseGuard, PendingImage, PendingLayer, Progress};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the archive")]
    Read(#[source] io::Error),
    #[error("writing the archive")]
    Write(#[source] io::Error),
    #[error("archive: {0} not found in the archive")]
    Missing(String),
    #[error("archive: manifest.json")]
    ManifestJson(#[source] serde_json::Error),
    #[error("archive has neither manifest.json nor an OCI index.json")]
    NotAnArchive,
    #[error("archive: member {name} should be blob {expected} but hashes to {actual}")]
    BlobName {
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("OCI layout {0}: missing or unsupported oci-layout file")]
    Layout(PathBuf),
    #[error("OCI layout: blob {0} missing")]
    LayoutBlob(Digest),
    #[error("archive: member {name}: {reason}")]
    BadMember { name: String, reason: String },
    #[error("layer {blob}: content no longer matches diff ID {diff_id}")]
    LayerChanged { blob: Digest, diff_id: Digest },
}

pub type Result<T, E = super::Error> = std::result::Result<T, E>;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// One entry of a docker-archive `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A member of an archive after ingest.
struct Member {
    digest: Digest,
    size: u64,
    compression: Option<Compression>,
    unpacked: Option<(TempSnapshot, Applied)>,
}

/// A reader that copies what it reads into a writer, remembering the first
/// write error (readers downstream only see that the stream stopped).
struct Tee<'a, R, W> {
    r: R,
    w: &'a mut W,
    err: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        if let Err(e) = self.w.write_all(&buf[..n]) {
            let msg = e.to_string();
            self.err = Some(e);
            return Err(io::Error::other(msg));
        }
        Ok(n)
    }
}

/// A writer that hands copies of its input to another thread.
struct ChannelWriter {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("blob writer closed"))?;
        tx.send(buf.to_vec())
            .map_err(|_| io::Error::other("blob writer stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn looks_like_layer(head: &[u8]) -> bool {
    matches!(
        Compression::detect(head),
        Ok(Compression::Gzip | Compression::Zstd)
    ) || (head.len() >= 262 && &head[257..262] == b"ustar")
}

fn read_head(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match r.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(filled);
    Ok(head)
}

impl ImageStore {
    /// Ingest one stream into the content store, unpacking it on the way
    /// when it looks like a layer.
    fn ingest_member(
        &self,
        lease: &LeaseGuard<'_>,
        mut r: impl Read,
        expected: Option<&Digest>,
        try_unpack: bool,
    ) -> Result<Member> {
        let head = read_head(&mut r, 512).map_err(Error::Read)?;
        let alg = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let mut w = self.content().temp_writer(alg)?;
        let layerish = try_unpack && looks_like_layer(&head);
        let compression = if layerish {
            Compression::detect(&head).ok()
        } else {
            None
        };
        let mut unpacked = None;
        if layerish {
            let tmp = self.snapshots().temp()?;
            // Two stages on two threads: this one decompresses, hashes the
            // tar stream and writes the files; a helper hashes and writes
            // the compressed blob.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(32);
            let (res, drained, blob) = std::thread::scope(|s| {
                let blob_writer = s.spawn(move || {
                    for chunk in rx {
                        if let Err(e) = w.write_all(&chunk) {
                            return (w, Err(e));
                        }
                    }
                    (w, Ok(()))
                });
                let mut chan = ChannelWriter { tx: Some(tx) };
                let mut tee = Tee {
                    r: io::Cursor::new(head).chain(&mut r),
                    w: &mut chan,
                    err: None,
                };
                let res = layer::apply(&mut tee, tmp.path(), None, self.limits());
                let drained = io::copy(&mut tee, &mut io::sink());
                chan.tx = None;
                let blob = blob_writer.join();
                (res, drained, blob)
            });
            let (writer, written) =
                blob.map_err(|_| Error::Read(io::Error::other("blob writer thread panicked")))?;
            w = writer;
            written.map_err(Error::Read)?;
            drained.map_err(Error::Read)?;

            match res {
                Ok(applied) => unpacked = Some((tmp, applied)),
                Err(e) => {
                    tracing::debug!(error = %e, "member did not unpack as a layer; deciding when manifests are read");
                }
            }
        } else {
            w.write_all(&head).map_err(Error::Read)?;
            super::copy_into(&mut r, &mut w).map_err(Error::Read)?;
        }
        let (digest, size) = self.commit_blob(lease, w, expected, None)?;
        Ok(Member {
            digest,
            size,
            compression,
            unpacked,
        })
    }

    /// Load a `docker save` archive (either the classic layout or the
    /// Docker 25+ one with an OCI layout inside), or an OCI image layout
    /// packed as a tar. Returns the IDs of the images loaded.
    pub fn load_archive(
        &self,
        reader: impl Read,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<Digest>> {
        let lease = self.lease("load")?;
        match self.load_archive_in(&lease, reader, progress) {
            Ok(ids) => Ok(ids),
            Err(e) => {
                self.discard(lease);
                Err(e)
            }
        }
    }

    /// Alias of [`ImageStore::load_archive`] under the format's name.
    pub fn load_docker_archive(
        &self,
        reader: impl Read,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<Digest>> {
        self.load_archive(reader, progress)
    }

    fn load_archive_in(
        &self,
        lease: &LeaseGuard<'_>,
        reader: impl Read,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<Digest>> {
        // The outer archive is untrusted too: bound its metadata members.
        let mut outer = tar::Archive::new(super::targuard::TarGuard::new(reader, u64::MAX));

        let mut members: HashMap<String, Member> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let mut small: HashMap<String, Vec<u8>> = HashMap::new();
        for entry in outer.entries().map_err(Error::Read)? {
            let mut entry = entry.map_err(Error::Read)?;
            let raw = entry.path_bytes().into_owned();
            let Some(comps) = layer::clean_components(&raw) else {
                continue;
            };
            let name = String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
            match entry.header().entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(std::borrow::Cow::into_owned)
                        .unwrap_or_default();
                    let joined = if entry.header().entry_type() == tar::EntryType::Symlink
                        && !target.starts_with(b"/")
                    {
                        let mut base: Vec<u8> = comps[..comps.len().saturating_sub(1)].join(&b'/');
                        base.push(b'/');
                        base.extend_from_slice(&target);
                        base
                    } else {
                        target
                    };
                    if let Some(t) = layer::clean_components(&joined) {
                        links.insert(name, String::from_utf8_lossy(&t.join(&b'/')).into_owned());
                    }
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    // Blobs of an OCI layout are named by digest: check them.
                    let expected = name
                        .strip_prefix("blobs/")
                        .and_then(|rest| rest.split_once('/'))
                        .and_then(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().ok());
                    if size <= JSON_LIMIT && !name.starts_with("blobs/") || size <= 64 << 10 {
                        let mut data = Vec::with_capacity(size as usize);
                        entry.read_to_end(&mut data).map_err(Error::Read)?;
                        if looks_like_layer(&data) {
                            let m = self.ingest_member(lease, &data[..], None, true)?;
                            check_name(&name, expected.as_ref(), &m.digest)?;
                            members.insert(name, m);
                        } else {
                            // Metadata files stay in memory; only blobs of an
                            // OCI layout go to the store now (configs of the
                            // classic format are stored when referenced).
                            if let Some(expected) = &expected {
                                let (digest, n) = self.ingest(lease, &data[..], None, None)?;
                                check_name(&name, Some(expected), &digest)?;
                                members.insert(
                                    name.clone(),
                                    Member {
                                        digest,
                                        size: n,
                                        compression: None,
                                        unpacked: None,
                                    },
                                );
                            }
                            small.insert(name, data);
                        }
                    } else {
                        let m = self.ingest_member(lease, &mut entry, None, true)?;
                        check_name(&name, expected.as_ref(), &m.digest)?;
                        progress(&Progress::Blob {
                            digest: m.digest.clone(),
                            size: m.size,
                            unpacked: m.unpacked.is_some(),
                        });
                        members.insert(name, m);
                    }
                }
                _ => {}
            }
        }
        let resolve = |name: &str| -> String {
            let mut n = name.trim_start_matches("./").to_string();
            for _ in 0..16 {
                match links.get(&n) {
                    Some(t) => n = t.clone(),
                    None => break,
                }
            }
            n
        };

        if let Some(mj) = small.get("manifest.json") {
            let entries: Vec<DockerEntry> =
                serde_json::from_slice(mj).map_err(Error::ManifestJson)?;
            let mut images = Vec::new();
            for e in entries {
                let cfg_name = resolve(&e.config);
                let (cfg_digest, cfg_size) = match (members.get(&cfg_name), small.get(&cfg_name)) {
                    (Some(m), _) => (m.digest.clone(), m.size),
                    (None, Some(data)) => self.ingest(lease, &data[..], None, None)?,
                    (None, None) => return Err(Error::Missing(e.config.clone()).into()),
                };
                let config = Descriptor {
                    media_type: manifest::DOCKER_CONFIG.into(),
                    digest: cfg_digest,
                    size: cfg_size,

                    urls: None,
                    annotations: None,
                    platform: None,
                };
                let mut layers = Vec::new();
                let mut oci = false;
                for l in &e.layers {
                    let lname = resolve(l);
                    let m = members
                        .get_mut(&lname)
                        .ok_or_else(|| Error::Missing(l.clone()))?;
                    let compression = if let Some(c) = m.compression {
                        c
                    } else {
                        let mut f = self.content().open_blob(&m.digest)?;
                        let head = read_head(&mut f, 8).map_err(Error::Read)?;
                        Compression::detect(&head).map_err(|c| Error::BadMember {
                            name: l.clone(),
                            reason: format!("{c} compression is not supported"),
                        })?
                    };
                    let media_type = match compression {
                        Compression::None => manifest::DOCKER_LAYER,
                        Compression::Gzip => manifest::DOCKER_LAYER_GZIP,
                        Compression::Zstd => {
                            oci = true;
                            manifest::OCI_LAYER_ZSTD
                        }
                    };
                    layers.push(PendingLayer {
                        blob: Descriptor {
                            media_type: media_type.into(),
                            digest: m.digest.clone(),
                            size: m.size,
                            urls: None,
                            annotations: None,
                            platform: None,
                        },
                        unpacked: m.unpacked.take(),
                    });
                }
                let mut config = config;
                if oci {
                    config.media_type = manifest::OCI_CONFIG.into();
                    for l in &mut layers {
                        l.blob.media_type = match l.blob.media_type.as_str() {
                            manifest::DOCKER_LAYER => manifest::OCI_LAYER.into(),
                            manifest::DOCKER_LAYER_GZIP => manifest::OCI_LAYER_GZIP.into(),
                            other => other.into(),
                        };
                    }
                }
                let m = Manifest {
                    schema_version: 2,
                    media_type: Some(
                        if oci {
                            manifest::OCI_MANIFEST
                        } else {
                            manifest::DOCKER_MANIFEST
                        }
                        .into(),
                    ),
                    config: config.clone(),
                    layers: layers.iter().map(|l| l.blob.clone()).collect(),
                    annotations: None,
                };
                let bytes = manifest::to_bytes(&m);
                let (md, msize) = self.ingest(lease, &bytes[..], None, None)?;
                let tags = e
                    .repo_tags
                    .unwrap_or_default()
                    .iter()
                    .map(|t| Reference::parse(t))
                    .collect::<Result<Vec<_>, _>>()?;
                images.push(PendingImage {
                    manifest: Descriptor {
                        media_type: m.media_type.clone().unwrap_or_default(),
                        digest: md,
                        size: msize,
                        urls: None,
                        annotations: None,
                        platform: None,
                    },
                    config,
                    layers,
                    tags,
                    repo_digests: Vec::new(),
                    index: None,
                });
            }
            return self.record_images(lease, images, progress);
        }
        if let Some(ij) = small.get("index.json") {
            let mut unpacked: HashMap<Digest, (TempSnapshot, Applied)> = HashMap::new();
            for m in members.into_values() {
                if let Some(u) = m.unpacked {
                    unpacked.insert(m.digest, u);
                }
            }
            let images = self.images_from_index(lease, ij, None, &mut unpacked, &|_d| Ok(()))?;
            return self.record_images(lease, images, progress);
        }
        Err(Error::NotAnArchive.into())
    }

    /// Turn an OCI index (with every blob it names already in the content
    /// store, or fetched through `fetch`) into images to record.
    fn images_from_index(
        &self,
        lease: &LeaseGuard<'_>,
        index_bytes: &[u8],
        name: Option<&str>,
        unpacked: &mut HashMap<Digest, (TempSnapshot, Applied)>,
        fetch: &dyn Fn(&Descriptor) -> Result<()>,
    ) -> Result<Vec<PendingImage>> {
        let _ = lease;
        let index: Index = match manifest::parse(index_bytes, Some(manifest::OCI_INDEX))? {
            manifest::Parsed::Index(i) => i,
            manifest::Parsed::Manifest(_) => return Err(Error::NotAnArchive.into()),
        };
        let host = Platform::host();
        let mut images = Vec::new();
        for desc in &index.manifests {
            let annotations = desc.annotations.clone().unwrap_or_default();
            let reference = annotations
                .get(CONTAINERD_NAME)
                .and_then(|n| Reference::parse(n).ok())
                .or_else(|| {
                    let r = annotations.get(REF_NAME)?;
                    match name {
                        Some(n) => Reference::parse(&format!("{n}:{r}")).ok(),
                        None if r.contains('/') || r.contains(':') => Reference::parse(r).ok(),
                        None => None,
                    }
                })
                .or_else(|| name.and_then(|n| Reference::parse(n).ok()));
            fetch(desc)?;
            let mut mdesc = desc.clone();
            let mut bytes = self.content().read_blob(&mdesc.digest, JSON_LIMIT)?;
            if let manifest::Parsed::Index(inner) =
                manifest::parse(&bytes, Some(&mdesc.media_type))?
            {
                mdesc = manifest::select_platform(&inner, &host)?.clone();
                fetch(&mdesc)?;
                bytes = self.content().read_blob(&mdesc.digest, JSON_LIMIT)?;
            }
            let manifest::Parsed::Manifest(m) = manifest::parse(&bytes, Some(&mdesc.media_type))?
            else {
                return Err(Error::BadMember {
                    name: mdesc.digest.to_string(),
                    reason: "nested index inside an index entry".into(),
                }
                .into());
            };
            fetch(&m.config)?;
            let mut layers = Vec::new();
            for l in &m.layers {
                fetch(l)?;
                layers.push(PendingLayer {
                    blob: l.clone(),
                    unpacked: unpacked.remove(&l.digest),
                });
            }
            let media_type = m
                .media_type
                .clone()
                .unwrap_or_else(|| mdesc.media_type.clone());
            images.push(PendingImage {
                manifest: Descriptor {
                    media_type,
                    digest: mdesc.digest.clone(),
                    size: bytes.len() as u64,
                    urls: None,
                    annotations: None,
                    platform: None,
                },
                config: m.config.clone(),
                layers,
                repo_digests: reference
                    .iter()
                    .map(|r| format!("{}@{}", r.name(), mdesc.digest))
                    .collect(),
                tags: reference
                    .into_iter()
                    .filter(|r| r.tag().is_some())
                    .collect(),
                index: None,
            });
        }
        Ok(images)
    }

    /// Load an OCI image layout directory. Images are tagged from their
    /// `io.containerd.image.name` annotation, or `name` plus their
    /// `org.opencontainers.image.ref.name` tag.
    pub fn load_oci_layout(
        &self,
        dir: &Path,
        name: Option<&str>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<Digest>> {
        let lease = self.lease("load-oci")?;
        let res = (|| {
            let layout =
                fs::read(dir.join("oci-layout")).map_err(|_| Error::Layout(dir.to_path_buf()))?;
            let v: serde_json::Value =
                serde_json::from_slice(&layout).map_err(|_| Error::Layout(dir.to_path_buf()))?;
            if v["imageLayoutVersion"] != "1.0.0" {
                return Err(Error::Layout(dir.to_path_buf()).into());
            }
            let index_path = dir.join("index.json");
            let index = fs::read(&index_path).map_err(|_| Error::Missing("index.json".into()))?;
            let unpacked = std::cell::RefCell::new(HashMap::new());
            let progress = std::cell::RefCell::new(progress);
            let fetch = |d: &Descriptor| -> Result<()> {
                if self.content().contains(&d.digest) {
                    return Ok(());
                }
                let p = dir
                    .join("blobs")
                    .join(d.digest.algorithm().name())
                    .join(d.digest.hex());
                let f = File::open(&p).map_err(|_| Error::LayoutBlob(d.digest.clone()))?;
                let is_layer = manifest::layer_kind(&d.media_type).is_ok();
                let m = self.ingest_member(
                    &lease,
                    io::BufReader::with_capacity(1 << 20, f),
                    Some(&d.digest),
                    is_layer,
                )?;
                if m.size != d.size {
                    return Err(super::content::Error::SizeMismatch {
                        digest: d.digest.to_string(),
                        expected: d.size,
                        actual: m.size,
                    }
                    .into());
                }
                (progress.borrow_mut())(&Progress::Blob {
                    digest: m.digest.clone(),
                    size: m.size,
                    unpacked: m.unpacked.is_some(),
                });
                if let Some(u) = m.unpacked {
                    unpacked.borrow_mut().insert(m.digest, u);
                }
                Ok(())
            };
            let images = {
                let mut none = HashMap::new();
                let imgs = self.images_from_index(&lease, &index, name, &mut none, &fetch)?;
                let mut u = unpacked.borrow_mut();
                imgs.into_iter()
                    .map(|mut img| {
                        for l in &mut img.layers {
                            if l.unpacked.is_none() {
                                l.unpacked = u.remove(&l.blob.digest);
                            }
                        }
                        img
                    })
                    .collect::<Vec<_>>()
            };
            let progress = progress.into_inner();
            self.record_images(&lease, images, progress)
        })();
        match res {
            Ok(ids) => Ok(ids),
            Err(e) => {
                self.discard(lease);
                Err(e)
            }
        }
    }

    /// Import a root filesystem tarball (plain, gzip or zstd) as a
    /// single-layer image. The stream is stored as the layer blob as given.
    pub fn import(&self, reader: impl Read, options: &super::ImportOptions) -> Result<Digest> {
        let lease = self.lease("import")?;
        match self.import_in(&lease, reader, options) {
            Ok(id) => Ok(id),
            Err(e) => {
                self.discard(lease);
                Err(e)
            }
        }
    }

    fn import_in(
        &self,
        lease: &LeaseGuard<'_>,
        reader: impl Read,
        options: &super::ImportOptions,
    ) -> Result<Digest> {
        let mut m = self.ingest_member(lease, reader, None, true)?;
        let Some((tmp, applied)) = m.unpacked.take() else {
            // Not recognisable as a layer: unpack once more to get the error.
            let tmp = self.snapshots().temp()?;
            let f = self.content().open_blob(&m.digest)?;
            let err = layer::apply(f, tmp.path(), None, self.limits()).err();
            return Err(super::Error::Layer {
                digest: m.digest.to_string(),
                source: err.unwrap_or(layer::Error::Compression("unknown")),
            });
        };
        let platform = options.platform.clone().unwrap_or_else(Platform::host);
        let mut rc = super::RunConfig::default();
        options.changes.apply(&mut rc);
        let now = manifest::now_rfc3339();
        let config = ImageConfig {
            created: Some(now.clone()),
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            config: Some(rc),
            rootfs: manifest::RootFs {
                kind: "layers".into(),
                diff_ids: vec![applied.diff_id.clone()],
            },
            history: vec![manifest::History {
                created: Some(now),
                comment: Some(
                    options
                        .message
                        .clone()
                        .unwrap_or_else(|| "Imported from -".into()),
                ),
                ..manifest::History::default()
            }],
            ..ImageConfig::default()
        };
        let media_type = match applied.compression {
            Compression::None => manifest::DOCKER_LAYER,
            Compression::Gzip => manifest::DOCKER_LAYER_GZIP,
            Compression::Zstd => manifest::OCI_LAYER_ZSTD,
        };
        let layer = Descriptor {
            media_type: media_type.into(),
            digest: m.digest.clone(),
            size: m.size,
            urls: None,
            annotations: None,
            platform: None,
        };
        let tags = options
            .reference
            .as_deref()
            .map(Reference::parse)
            .transpose()?
            .into_iter()
            .collect();
        let img = self.pending_from_config(
            lease,
            &config,
            vec![PendingLayer {
                blob: layer,
                unpacked: Some((tmp, applied)),
            }],
            tags,
        )?;
        let ids = self.record_images(lease, vec![img], &mut |_| {})?;
        Ok(ids.into_iter().next().expect("one image was recorded"))
    }

    /// Store a config we built and a manifest for it.
    pub(crate) fn pending_from_config(
        &self,
        lease: &LeaseGuard<'_>,
        config: &ImageConfig,
        layers: Vec<PendingLayer>,
        tags: Vec<Reference>,
    ) -> Result<PendingImage> {
        let cfg_bytes = manifest::to_bytes(config);
        let (cd, cs) = self.ingest(lease, &cfg_bytes[..], None, None)?;
        let oci = layers
            .iter()
            .any(|l| l.blob.media_type.starts_with("application/vnd.oci."));
        let config_desc = Descriptor {
            media_type: if oci {
                manifest::OCI_CONFIG
            } else {
                manifest::DOCKER_CONFIG
            }
            .into(),
            digest: cd,
            size: cs,
            urls: None,
            annotations: None,
            platform: None,
        };
        let m = Manifest {
            schema_version: 2,
            media_type: Some(
                if oci {
                    manifest::OCI_MANIFEST
                } else {
                    manifest::DOCKER_MANIFEST
                }
                .into(),
            ),
            config: config_desc.clone(),
            layers: layers.iter().map(|l| l.blob.clone()).collect(),
            annotations: None,
        };
        let mb = manifest::to_bytes(&m);
        let (md, ms) = self.ingest(lease, &mb[..], None, None)?;
        Ok(PendingImage {
            manifest: Descriptor {
                media_type: m.media_type.clone().unwrap_or_default(),
                digest: md,
                size: ms,
                urls: None,
                annotations: None,
                platform: None,
            },
            config: config_desc,
            layers,
            tags,
            repo_digests: Vec::new(),
            index: None,
        })
    }

    /// Write images as an archive: `SaveFormat::DockerArchive` is what
    /// `docker save` writes (manifest.json, uncompressed layers, plus an OCI
    /// layout of the same blobs); `SaveFormat::OciArchive` is an OCI image
    /// layout with the stored blobs byte for byte.
    pub fn save(&self, references: &[&str], format: SaveFormat, writer: impl Write) -> Result<()> {
        let _gc = self.gc_read();
        let mut tar = tar::Builder::new(writer);
        let mut sink = TarSink { b: &mut tar };
        match format {
            SaveFormat::DockerArchive => self.write_docker(references, &mut sink)?,
            SaveFormat::OciArchive => self.write_oci(references, &mut sink)?,
        }
        tar.into_inner()
            .map_err(Error::Write)?
            .flush()
            .map_err(Error::Write)?;
        Ok(())
    }

    /// Write an OCI image layout directory (which must not exist or be
    /// empty), blobs byte for byte as stored.
    pub fn save_oci_layout(&self, references: &[&str], dir: &Path) -> Result<()> {
        let _gc = self.gc_read();
        fs::create_dir_all(dir).map_err(Error::Write)?;
        self.write_oci(
            references,
            &mut DirSink {
                root: dir.to_path_buf(),
            },
        )
    }

    fn saved_images(
        &self,
        references: &[&str],
    ) -> Result<Vec<(super::ImageRecord, Vec<Reference>)>> {
        let tags = self.db_tags()?;
        let mut out: Vec<(super::ImageRecord, Vec<Reference>)> = Vec::new();
        for r in references {
            let rec = self.resolve(r)?;
            // A name saves that tag; an ID saves every tag of the image.
            let named: Vec<Reference> = match Reference::parse(r) {
                Ok(rf)
                    if rf.digest().is_none() && tags.iter().any(|(t, _)| *t == rf.to_string()) =>
                {
                    vec![rf]
                }
                _ => tags
                    .iter()
                    .filter(|(_, id)| *id == rec.id)
                    .filter_map(|(t, _)| Reference::parse(t).ok())
                    .collect(),
            };
            if let Some(existing) = out.iter_mut().find(|(r2, _)| r2.id == rec.id) {
                for n in named {
                    if !existing.1.contains(&n) {
                        existing.1.push(n);
                    }
                }
            } else {
                out.push((rec, named));
            }
        }
        Ok(out)
    }

    fn write_docker(&self, references: &[&str], sink: &mut dyn Sink) -> Result<()> {
        let images = self.saved_images(references)?;
        sink.dir("blobs")?;
        sink.dir("blobs/sha256")?;
        let mut written: std::collections::BTreeSet<Digest> = std::collections::BTreeSet::new();
        let mut entries = Vec::new();
        let mut index = Vec::new();
        for (rec, tags) in &images {
            let cfg = self.content().read_blob(&rec.config.digest, JSON_LIMIT)?;
            let cfg_path = format!("blobs/sha256/{}", rec.config.digest.hex());
            if written.insert(rec.config.digest.clone()) {
                sink.file(&cfg_path, cfg.len() as u64, &mut &cfg[..])?;
            }
            let mut layer_paths = Vec::new();
            let mut oci_layers = Vec::new();
            for l in &rec.layers {
                let path = format!("blobs/sha256/{}", l.diff_id.hex());
                let size = self.db_snapshot_size(&l.chain_id)?;
                if written.insert(l.diff_id.clone()) {
                    self.write_uncompressed(l, size, &path, sink)?;
                }
                layer_paths.push(path);
                oci_layers.push(Descriptor {
                    media_type: manifest::OCI_LAYER.into(),
                    digest: l.diff_id.clone(),
                    size,
                    urls: None,
                    annotations: None,
                    platform: None,
                });
            }
            let om = Manifest {
                schema_version: 2,
                media_type: Some(manifest::OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: manifest::OCI_CONFIG.into(),
                    digest: rec.config.digest.clone(),
                    size: cfg.len() as u64,
                    urls: None,
                    annotations: None,
                    platform: None,
                },
                layers: oci_layers,
                annotations: None,
            };
            let ob = manifest::to_bytes(&om);
            let od = Digest::sha256_of(&ob);
            if written.insert(od.clone()) {
                sink.file(
                    &format!("blobs/sha256/{}", od.hex()),
                    ob.len() as u64,
                    &mut &ob[..],
                )?;
            }
            index.extend(index_entries(
                manifest::OCI_MANIFEST,
                &od,
                ob.len() as u64,
                tags,
            ));
            entries.push(DockerEntry {
                config: cfg_path,
                repo_tags: Some(
                    tags.iter()
                        .filter(|t| t.tag().is_some())
                        .map(Reference::familiar)
                        .collect(),
                ),
                layers: layer_paths,
            });
        }
        let idx = Index {
            schema_version: 2,
            media_type: Some(manifest::OCI_INDEX.into()),
            manifests: index,
            annotations: None,
        };
        let ib = manifest::to_bytes(&idx);
        sink.file("index.json", ib.len() as u64, &mut &ib[..])?;
        let mj = serde_json::to_vec(&entries).map_err(Error::ManifestJson)?;
        sink.file("manifest.json", mj.len() as u64, &mut &mj[..])?;
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        sink.file("oci-layout", layout.len() as u64, &mut &layout[..])?;
        Ok(())
    }

    fn write_uncompressed(
        &self,
        l: &super::LayerRecord,
        size: u64,
        path: &str,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let f = self.content().open_blob(&l.blob.digest)?;
        let (_, dec) =
            layer::decompress(io::BufReader::with_capacity(1 << 20, f)).map_err(|source| {
                super::Error::Layer {
                    digest: l.blob.digest.to_string(),
                    source,
                }
            })?;
        let mut hr = HashingReader::new(dec.take(size), Algorithm::Sha256);
        sink.file(path, size, &mut hr)?;
        let (d, n, _) = hr.drain_and_finish().map_err(Error::Read)?;
        if d != l.diff_id || n != size {
            return Err(Error::LayerChanged {
                blob: l.blob.digest.clone(),
                diff_id: l.diff_id.clone(),
            }
            .into());
        }
        Ok(())
    }

    fn write_oci(&self, references: &[&str], sink: &mut dyn Sink) -> Result<()> {
        let images = self.saved_images(references)?;
        sink.dir("blobs")?;
        let mut written = std::collections::BTreeSet::new();
        let mut index = Vec::new();
        for (rec, tags) in &images {
            let mut blobs = vec![&rec.manifest, &rec.config];
            blobs.extend(rec.layers.iter().map(|l| &l.blob));
            for d in blobs {
                if !written.insert(d.digest.clone()) {
                    continue;
                }
                let alg = d.digest.algorithm().name();
                if written
                    .iter()
                    .filter(|x| x.algorithm() == d.digest.algorithm())
                    .count()
                    == 1
                {
                    sink.dir(&format!("blobs/{alg}"))?;
                }
                let f = self.content().open_blob(&d.digest)?;
                let size = f.metadata().map_err(Error::Read)?.len();
                let mut hr = HashingReader::new(
                    io::BufReader::with_capacity(1 << 20, f).take(size),
                    d.digest.algorithm(),
                );
                sink.file(&format!("blobs/{alg}/{}", d.digest.hex()), size, &mut hr)?;
                let (got, _, _) = hr.drain_and_finish().map_err(Error::Read)?;
                if got != d.digest {
                    return Err(super::content::Error::DigestMismatch {
                        expected: d.digest.clone(),
                        actual: got,
                    }
                    .into());
                }
            }
            index.extend(index_entries(
                &rec.manifest.media_type,
                &rec.manifest.digest,
                rec.manifest.size,
                tags,
            ));
        }
        let idx = Index {
            schema_version: 2,
            media_type: Some(manifest::OCI_INDEX.into()),
            manifests: index,
            annotations: None,
        };
        let ib = manifest::to_bytes(&idx);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        sink.file("oci-layout", layout.len() as u64, &mut &layout[..])?;
        sink.file("index.json", ib.len() as u64, &mut &ib[..])?;
        Ok(())
    }
}

fn check_name(name: &str, expected: Option<&Digest>, actual: &Digest) -> Result<()> {
    match expected {
        Some(e) if e != actual => Err(Error::BlobName {
            name: name.to_string(),
            expected: e.clone(),
            actual: actual.clone(),
        }
        .into()),
        _ => Ok(()),
    }
}

fn index_entries(
    media_type: &str,
    digest: &Digest,
    size: u64,
    tags: &[Reference],
) -> Vec<Descriptor> {
    let one = |annotations: Option<BTreeMap<String, String>>| Descriptor {
        media_type: media_type.to_string(),
        digest: digest.clone(),
        size,
        urls: None,
        annotations,
        platform: None,
    };
    let tagged: Vec<&Reference> = tags.iter().filter(|t| t.tag().is_some()).collect();
    if tagged.is_empty() {
        return vec![one(None)];
    }
    tagged
        .into_iter()
        .map(|t| {
            let mut a = BTreeMap::new();
            a.insert(CONTAINERD_NAME.to_string(), t.to_string());
            a.insert(
                REF_NAME.to_string(),
                t.tag().unwrap_or("latest").to_string(),
            );
            one(Some(a))
        })
        .collect()
}

/// The format `save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    DockerArchive,
    OciArchive,
}

/// Where `save` puts files: a tar stream or a directory.
trait Sink {
    fn dir(&mut self, path: &str) -> Result<()>;
    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<()>;
}

struct TarSink<'a, W: Write> {
    b: &'a mut tar::Builder<W>,
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

impl<W: Write> Sink for TarSink<'_, W> {
    fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        self.b
            .append_data(&mut h, format!("{path}/"), io::empty())
            .map_err(Error::Write)?;
        Ok(())
    }

    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<()> {
        let mut h = header(tar::EntryType::Regular, size, 0o644);
        let mut counted = CountingReader {
            r: data.take(size),
            n: 0,
        };
        self.b
            .append_data(&mut h, path, &mut counted)
            .map_err(Error::Write)?;
        if counted.n != size {
            return Err(Error::Write(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: source ended after {} of {size} bytes", counted.n),
            ))
            .into());
        }
        Ok(())
    }
}

struct CountingReader<R> {
    r: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

struct DirSink {
    root: PathBuf,
}

impl Sink for DirSink {
    fn dir(&mut self, path: &str) -> Result<()> {
        fs::create_dir_all(self.root.join(path)).map_err(Error::Write)?;
        Ok(())
    }

    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<()> {
        let dest = self.root.join(path);
        let tmp = self.root.join(format!("{path}.tmp"));
        let mut f = File::create(&tmp).map_err(Error::Write)?;
        let n = super::copy_into(&mut data.take(size), &mut f).map_err(Error::Write)?;
        if n != size {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Write(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: source ended after {n} of {size} bytes"),
            ))
            .into());
        }
        f.sync_all().map_err(Error::Write)?;
        fs::rename(&tmp, &dest).map_err(Error::Write)?;
        Ok(())
    }
}
