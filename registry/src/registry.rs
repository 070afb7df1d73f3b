//! The transport-neutral core of the registry: the distribution protocol's
//! rules on top of a [`StorageDriver`].
//!
//! Owns: which blobs a repository may serve, upload sessions and their
//! binding to a repository, manifest validation (size limit, media type,
//! referenced content present), tags, referrers, catalog and tag pagination,
//! and the lock that lets garbage collection run while the registry serves.
//! It does not own HTTP (see [`crate::server`]), authentication, or the
//! on-disk format (see [`crate::storage`]).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::digest::Digest;
use crate::oci::{self, Descriptor, Manifest, ManifestKind};
use crate::storage::{self, BlobReader, ByteStream, LinkKind, StorageDriver};

/// Errors of the protocol core; the HTTP layer maps each to a status and an
/// OCI error code in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Blob not known in this repository.
    #[error("blob {0} is unknown to this repository")]
    BlobUnknown(Digest),
    /// Upload id unknown (or bound to another repository).
    #[error("upload {0:?} is unknown")]
    UploadUnknown(String),
    /// Upload rejected (bad offset, bad Content-Range).
    #[error("upload {id:?}: {reason}")]
    UploadInvalid {
        /// Upload id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A chunk out of order: the upload holds `size` bytes.
    #[error("upload {id:?}: chunk starts at {offset} but the upload holds {size} bytes")]
    RangeOutOfOrder {
        /// Upload id.
        id: String,
        /// Start of the rejected chunk.
        offset: u64,
        /// Current size.
        size: u64,
    },
    /// Digest malformed or content does not match it.
    #[error("digest {digest}: {reason}")]
    DigestInvalid {
        /// The digest (as given).
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// Manifest references content the repository does not have.
    #[error("manifest references unknown {0}")]
    ManifestBlobUnknown(Digest),
    /// Manifest malformed.
    #[error("manifest is invalid")]
    ManifestInvalid(#[source] oci::Error),
    /// Manifest (tag or digest) unknown.
    #[error("manifest {0:?} is unknown")]
    ManifestUnknown(String),
    /// No manifest variant the client accepts.
    #[error(
        "manifest {reference:?} has media type {media_type}, which the request does not accept"
    )]
    ManifestNotAcceptable {
        /// Tag or digest.
        reference: String,
        /// Stored media type.
        media_type: String,
    },
    /// Manifest larger than the limit.
    #[error("manifest is larger than {limit} bytes")]
    ManifestTooLarge {
        /// The limit.
        limit: u64,
    },
    /// Repository name invalid.
    #[error("repository name {0:?} is invalid")]
    NameInvalid(String),
    /// Repository unknown.
    #[error("repository {0:?} is unknown")]
    NameUnknown(String),
    /// Tag (or reference) invalid.
    #[error("reference {0:?} is neither a valid tag nor a digest")]
    TagInvalid(String),
    /// Range header outside the blob.
    #[error("range {start}..{end} is outside the blob of {size} bytes")]
    RangeNotSatisfiable {
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// Blob size.
        size: u64,
    },
    /// Pagination parameter invalid.
    #[error("pagination parameter {0}")]
    PaginationInvalid(String),
    /// The registry is read-only.
    #[error("the registry is in read-only mode")]
    ReadOnly,
    /// The storage backend failed.
    #[error("storage failed")]
    Storage(#[source] storage::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Error {
        match e {
            storage::Error::BlobUnknown(d) => Error::BlobUnknown(d),
            storage::Error::UploadUnknown(id) => Error::UploadUnknown(id),
            storage::Error::DigestMismatch { expected, actual } => Error::DigestInvalid {
                digest: expected.to_string(),
                reason: format!("content hashes to {actual}"),
            },
            storage::Error::OffsetMismatch { id, offset, size } => {
                Error::RangeOutOfOrder { id, offset, size }
            }
            storage::Error::RangeNotSatisfiable {
                start, end, size, ..
            } => Error::RangeNotSatisfiable { start, end, size },
            other => Error::Storage(other),
        }
    }
}

/// Limits the core enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest manifest accepted (413 above it). Default 4 MiB.
    pub max_manifest_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 << 20,
        }
    }
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Exact bytes as pushed.
    pub bytes: Bytes,
    /// Media type (from the manifest, or inferred from its shape).
    pub media_type: String,
    /// Digest of `bytes`.
    pub digest: Digest,
}

/// Result of a manifest push.
#[derive(Debug, Clone)]
pub struct PutManifest {
    /// Digest of the stored bytes.
    pub digest: Digest,
    /// The subject, when the manifest has one (for the `OCI-Subject` header).
    pub subject: Option<Digest>,
}

/// State of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStatus {
    /// Bytes received.
    pub size: u64,
}

/// The referrers response (an OCI image index).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrersIndex {
    /// Always 2.
    pub schema_version: u32,
    /// Always the OCI index type.
    pub media_type: &'static str,
    /// One descriptor per referrer.
    pub manifests: Vec<Descriptor>,
}

/// The registry core. Cheap to share behind an `Arc`.
pub struct Registry {
    storage: Arc<dyn StorageDriver>,
    limits: Limits,
    read_only: bool,
    /// Shared by operations that make content referenced (manifest push,
    /// mount); taken exclusively by GC to delete one blob at a time.
    gc_lock: tokio::sync::RwLock<()>,
}

fn upload_binding(repo: &str) -> String {
    Digest::sha256_of(repo.as_bytes()).hex()[..16].to_string()
}

/// Parse `n`/`last` pagination and apply it to a sorted list.
fn paginate(items: &[String], n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    let start = match last {
        Some(l) => items.partition_point(|x| x.as_str() <= l),
        None => 0,
    };
    let rest = &items[start..];
    match n {
        Some(n) if n < rest.len() => (rest[..n].to_vec(), true),
        _ => (rest.to_vec(), false),
    }
}

impl Registry {
    /// A registry over `storage`.
    pub fn new(storage: Arc<dyn StorageDriver>, limits: Limits, read_only: bool) -> Registry {
        Registry {
            storage,
            limits,
            read_only,
            gc_lock: tokio::sync::RwLock::new(()),
        }
    }

    /// The storage driver.
    pub fn storage(&self) -> &Arc<dyn StorageDriver> {
        &self.storage
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn gc_lock(&self) -> &tokio::sync::RwLock<()> {
        &self.gc_lock
    }

    fn check_repo(repo: &str) -> Result<()> {
        if oci::valid_repository(repo) {
            Ok(())
        } else {
            Err(Error::NameInvalid(repo.to_string()))
        }
    }

    fn check_write(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Parse a digest given by a client.
    pub fn parse_digest(s: &str) -> Result<Digest> {
        s.parse()
            .map_err(|e: crate::digest::Error| Error::DigestInvalid {
                digest: s.to_string(),
                reason: e.to_string(),
            })
    }

    // ---- blobs ----

    /// Size of a blob the repository may serve.
    pub async fn stat_blob(&self, repo: &str, digest: &Digest) -> Result<u64> {
        Self::check_repo(repo)?;
        if !self.storage.is_linked(repo, LinkKind::Blob, digest).await? {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        match self.storage.blob_info(digest).await? {
            Some(i) => Ok(i.size),
            None => Err(Error::BlobUnknown(digest.clone())),
        }
    }

    /// Read a blob (or a range) the repository may serve.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobReader> {
        Self::check_repo(repo)?;
        if !self.storage.is_linked(repo, LinkKind::Blob, digest).await? {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        Ok(self.storage.read_blob(digest, range).await?)
    }

    /// Remove a blob from a repository (content goes at the next GC).
    pub async fn delete_blob(&self, repo: &str, digest: &Digest) -> Result<()> {
        Self::check_repo(repo)?;
        self.check_write()?;
        if !self.storage.unlink(repo, LinkKind::Blob, digest).await? {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        Ok(())
    }

    /// Make a blob of `from` available in `repo` without copying. Returns
    /// false when `from` does not have it (the caller then starts an upload).
    pub async fn mount_blob(&self, repo: &str, from: &str, digest: &Digest) -> Result<bool> {
        Self::check_repo(repo)?;
        self.check_write()?;
        if !oci::valid_repository(from)
            || !self.storage.is_linked(from, LinkKind::Blob, digest).await?
        {
            return Ok(false);
        }
        let _g = self.gc_lock.read().await;
        match self.storage.touch_blob(digest).await {
            Ok(()) => {}
            Err(storage::Error::BlobUnknown(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.storage.link(repo, LinkKind::Blob, digest).await?;
        Ok(true)
    }

    // ---- uploads ----

    /// Start an upload session bound to `repo`; returns its id.
    pub async fn start_upload(&self, repo: &str) -> Result<String> {
        Self::check_repo(repo)?;
        self.check_write()?;
        let id = format!("{:032x}-{}", rand::random::<u128>(), upload_binding(repo));
        self.storage.create_upload(&id).await?;
        Ok(id)
    }

    fn check_upload(repo: &str, id: &str) -> Result<()> {
        match id.rsplit_once('-') {
            Some((_, bind)) if bind == upload_binding(repo) => Ok(()),
            _ => Err(Error::UploadUnknown(id.to_string())),
        }
    }

    /// Bytes received by an upload.
    pub async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
        Self::check_repo(repo)?;
        Self::check_upload(repo, id)?;
        Ok(UploadStatus {
            size: self.storage.upload_size(id).await?,
        })
    }

    /// Append a chunk. `start` is the chunk's first offset from
    /// Content-Range, or `None` for a streamed append at the current end.
    pub async fn append_upload(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus> {
        Self::check_repo(repo)?;
        self.check_write()?;
        Self::check_upload(repo, id)?;
        let offset = match start {
            Some(s) => s,
            None => self.storage.upload_size(id).await?,
        };
        let size = self.storage.append_upload(id, offset, body).await?;
        Ok(UploadStatus { size })
    }

    /// Finish an upload: append the optional final chunk, verify the digest
    /// and link the blob into `repo`.
    pub async fn finish_upload(
        &self,
        repo: &str,
        id: &str,
        digest: &Digest,
        last_chunk: Option<(Option<u64>, ByteStream)>,
    ) -> Result<u64> {
        Self::check_repo(repo)?;
        self.check_write()?;
        Self::check_upload(repo, id)?;
        if let Some((start, body)) = last_chunk {
            self.append_upload(repo, id, start, body).await?;
        }
        let _g = self.gc_lock.read().await;
        let size = self.storage.commit_upload(id, digest).await?;
        self.storage.link(repo, LinkKind::Blob, digest).await?;
        Ok(size)
    }

    /// Abandon an upload.
    pub async fn cancel_upload(&self, repo: &str, id: &str) -> Result<()> {
        Self::check_repo(repo)?;
        self.check_write()?;
        Self::check_upload(repo, id)?;
        if !self.storage.cancel_upload(id).await? {
            return Err(Error::UploadUnknown(id.to_string()));
        }
        Ok(())
    }

    // ---- manifests ----

    async fn resolve(&self, repo: &str, reference: &str) -> Result<Digest> {
        if reference.contains(':') {
            let d = Self::parse_digest(reference)?;
            if !self.storage.is_linked(repo, LinkKind::Manifest, &d).await? {
                return Err(Error::ManifestUnknown(reference.to_string()));
            }
            Ok(d)
        } else if oci::valid_tag(reference) {
            self.storage
                .get_tag(repo, reference)
                .await?
                .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))
        } else {
            Err(Error::TagInvalid(reference.to_string()))
        }
    }

    /// Fetch a manifest by tag or digest. `accept` lists the media types the
    /// client takes (empty or containing `*/*` means any).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<StoredManifest> {
        Self::check_repo(repo)?;
        let digest = self.resolve(repo, reference).await?;
        let bytes = match self
            .storage
            .read_blob_bytes(&digest, self.limits.max_manifest_bytes)
            .await
        {
            Ok(b) => b,
            Err(storage::Error::BlobUnknown(_)) => {
                return Err(Error::ManifestUnknown(reference.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let (_, media_type) = Manifest::parse(&bytes, "").map_err(Error::ManifestInvalid)?;
        // Refuse only when the client named manifest types and none fits;
        // a digest names fixed content, so it is always served.
        let names_manifest_types = accept.iter().any(|a| oci::MANIFEST_TYPES.contains(a));
        let acceptable =
            !names_manifest_types || accept.iter().any(|a| *a == "*/*" || *a == media_type);
        if !acceptable && !reference.contains(':') {
            return Err(Error::ManifestNotAcceptable {
                reference: reference.to_string(),
                media_type,
            });
        }
        Ok(StoredManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Store a manifest under a tag or its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<PutManifest> {
        Self::check_repo(repo)?;
        self.check_write()?;
        if body.len() as u64 > self.limits.max_manifest_bytes {
            return Err(Error::ManifestTooLarge {
                limit: self.limits.max_manifest_bytes,
            });
        }
        let (tag, by_digest) = if reference.contains(':') {
            (None, Some(Self::parse_digest(reference)?))
        } else if oci::valid_tag(reference) {
            (Some(reference), None)
        } else {
            return Err(Error::TagInvalid(reference.to_string()));
        };
        let digest = match &by_digest {
            Some(d) => {
                let mut h = crate::digest::Hasher::new(d.algorithm());
                h.update(&body);
                let actual = h.finish();
                if &actual != d {
                    return Err(Error::DigestInvalid {
                        digest: d.to_string(),
                        reason: format!("manifest hashes to {actual}"),
                    });
                }
                actual
            }
            None => Digest::sha256_of(&body),
        };
        let (manifest, media_type) =
            Manifest::parse(&body, content_type).map_err(Error::ManifestInvalid)?;
        if manifest.schema_version != Some(2) {
            return Err(Error::ManifestInvalid(oci::Error::UnknownMediaType(
                format!(
                    "schemaVersion {:?} (only 2 is supported)",
                    manifest.schema_version
                ),
            )));
        }

        // Hold the GC lock from the existence checks to the link, so GC
        // cannot delete content between "present" and "referenced".
        let _g = self.gc_lock.read().await;
        match manifest.kind(&media_type) {
            ManifestKind::Image => {
                for d in manifest.blob_refs() {
                    if !self
                        .storage
                        .is_linked(repo, LinkKind::Blob, &d.digest)
                        .await?
                    {
                        return Err(Error::ManifestBlobUnknown(d.digest.clone()));
                    }
                    match self.storage.touch_blob(&d.digest).await {
                        Ok(()) => {}
                        Err(storage::Error::BlobUnknown(x)) => {
                            return Err(Error::ManifestBlobUnknown(x));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            ManifestKind::Index => {
                for d in manifest.manifest_refs() {
                    if !self
                        .storage
                        .is_linked(repo, LinkKind::Manifest, &d.digest)
                        .await?
                    {
                        return Err(Error::ManifestBlobUnknown(d.digest.clone()));
                    }
                    match self.storage.touch_blob(&d.digest).await {
                        Ok(()) => {}
                        Err(storage::Error::BlobUnknown(x)) => {
                            return Err(Error::ManifestBlobUnknown(x));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        self.storage.put_blob(&digest, body).await?;
        self.storage.link(repo, LinkKind::Manifest, &digest).await?;
        let subject = manifest.subject.as_ref().map(|s| s.digest.clone());
        if let Some(s) = &subject {
            self.storage.add_referrer(repo, s, &digest).await?;
        }
        if let Some(t) = tag {
            self.storage.set_tag(repo, t, &digest).await?;
        }
        Ok(PutManifest { digest, subject })
    }

    /// Delete a manifest by digest (with every tag pointing at it) or just
    /// a tag.
    pub async fn delete_manifest(&self, repo: &str, reference: &str) -> Result<()> {
        Self::check_repo(repo)?;
        self.check_write()?;
        if !reference.contains(':') {
            if !oci::valid_tag(reference) {
                return Err(Error::TagInvalid(reference.to_string()));
            }
            if !self.storage.delete_tag(repo, reference).await? {
                return Err(Error::ManifestUnknown(reference.to_string()));
            }
            return Ok(());
        }
        let digest = Self::parse_digest(reference)?;
        if !self
            .storage
            .is_linked(repo, LinkKind::Manifest, &digest)
            .await?
        {
            return Err(Error::ManifestUnknown(reference.to_string()));
        }
        if let Some(tags) = self.storage.list_tags(repo).await? {
            for t in tags {
                if self.storage.get_tag(repo, &t).await?.as_ref() == Some(&digest) {
                    self.storage.delete_tag(repo, &t).await?;
                }
            }
        }
        if let Ok(bytes) = self
            .storage
            .read_blob_bytes(&digest, self.limits.max_manifest_bytes)
            .await
        {
            if let Ok((m, _)) = Manifest::parse(&bytes, "") {
                if let Some(s) = m.subject {
                    self.storage
                        .remove_referrer(repo, &s.digest, &digest)
                        .await?;
                }
            }
        }
        self.storage
            .unlink(repo, LinkKind::Manifest, &digest)
            .await?;
        Ok(())
    }

    // ---- listings ----

    /// Tags of `repo`, paginated; the bool says whether more follow.
    pub async fn list_tags(
        &self,
        repo: &str,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool)> {
        Self::check_repo(repo)?;
        let tags = self
            .storage
            .list_tags(repo)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.to_string()))?;
        Ok(paginate(&tags, n, last))
    }

    /// Repositories, paginated; the bool says whether more follow.
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool)> {
        let repos = self.storage.list_repositories().await?;
        Ok(paginate(&repos, n, last))
    }

    /// Manifests in `repo` whose subject is `subject`, optionally only those
    /// of `artifact_type`.
    pub async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersIndex> {
        Self::check_repo(repo)?;
        let mut manifests = Vec::new();
        for d in self.storage.list_referrers(repo, subject).await? {
            if !self.storage.is_linked(repo, LinkKind::Manifest, &d).await? {
                continue;
            }
            let Ok(bytes) = self
                .storage
                .read_blob_bytes(&d, self.limits.max_manifest_bytes)
                .await
            else {
                continue;
            };
            let Ok((m, media_type)) = Manifest::parse(&bytes, "") else {
                continue;
            };
            let at = m.effective_artifact_type();
            if let Some(want) = artifact_type {
                if at.as_deref() != Some(want) {
                    continue;
                }
            }
            manifests.push(Descriptor {
                media_type,
                digest: d,
                size: bytes.len() as u64,
                artifact_type: at,
                annotations: m.annotations,
                platform: None,
                urls: None,
            });
        }
        Ok(ReferrersIndex {
            schema_version: 2,
            media_type: oci::OCI_INDEX,
            manifests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination() {
        let items: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            paginate(&items, Some(2), None),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            paginate(&items, Some(2), Some("b")),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(
            paginate(&items, None, Some("bb")),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(paginate(&items, Some(0), None), (vec![], true));
        assert_eq!(paginate(&items, Some(10), Some("d")), (vec![], false));
    }

    #[test]
    fn uploads_are_bound_to_their_repository() {
        let id = format!("{:032x}-{}", 7u128, upload_binding("a/b"));
        assert!(Registry::check_upload("a/b", &id).is_ok());
        assert!(Registry::check_upload("a/c", &id).is_err());
    }
}
