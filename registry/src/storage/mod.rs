//! The storage-driver seam: everything the registry keeps, behind one trait.
//!
//! The model has four parts:
//! - **blobs**: content-addressed, shared by every repository (a layer pushed
//!   to ten repositories is stored once), verified against their digest
//!   before they become visible, never modified after;
//! - **uploads**: staging areas for blobs being pushed, appended to in order
//!   and turned into a blob by a digest-verified commit;
//! - **repository links**: which blobs and manifests a repository may serve,
//!   its tags, and its referrers index (subject digest -> referrer digests);
//! - the repository catalog, derived from the links.
//!
//! Manifests are stored as ordinary blobs plus a manifest link, so garbage
//! collection sees one content store. A driver owns durability and atomicity
//! of each operation; it does not own protocol rules (what a manifest must
//! reference, who may push), which live in [`crate::registry`].
//!
//! [`conformance`] is a test suite any driver must pass.

use std::ops::Range;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;

use crate::digest::Digest;

pub mod conformance;
pub mod fs;

pub use fs::FsDriver;

/// A stream of bytes in or out of the store.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Errors a storage driver reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The blob does not exist.
    #[error("blob {0} is unknown")]
    BlobUnknown(Digest),
    /// The upload does not exist (never created, committed or cancelled).
    #[error("upload {0:?} is unknown")]
    UploadUnknown(String),
    /// An append did not start where the upload ends.
    #[error("upload {id:?}: append at offset {offset} but the upload holds {size} bytes")]
    OffsetMismatch {
        /// Upload identifier.
        id: String,
        /// Offset the caller asked to append at.
        offset: u64,
        /// Current size of the upload.
        size: u64,
    },
    /// Content did not hash to the digest it was committed under.
    #[error("content hashes to {actual}, not {expected}")]
    DigestMismatch {
        /// Digest the caller claimed.
        expected: Digest,
        /// Digest of the bytes received.
        actual: Digest,
    },
    /// A range outside the blob.
    #[error("range {start}..{end} is outside blob {digest} of {size} bytes")]
    RangeNotSatisfiable {
        /// The blob.
        digest: Digest,
        /// Start of the requested range.
        start: u64,
        /// End (exclusive) of the requested range.
        end: u64,
        /// Size of the blob.
        size: u64,
    },
    /// The blob is larger than the caller allows.
    #[error("blob {digest} is larger than {limit} bytes")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Limit in bytes.
        limit: u64,
    },
    /// The request body failed while streaming into the store.
    #[error("reading the upload body failed")]
    Body(#[source] std::io::Error),
    /// The backing store failed.
    #[error("storage {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The object (path or key) involved.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Stored data is damaged (a link that is not a digest, for example).
    #[error("stored data at {path} is corrupt: {what}")]
    Corrupt {
        /// The object involved.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Facts about a stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// Size in bytes.
    pub size: u64,
    /// When the blob was last written, linked or touched; garbage
    /// collection spares blobs touched within its grace period.
    pub modified: SystemTime,
}

/// A readable blob (or a range of one).
pub struct BlobReader {
    /// Total size of the blob.
    pub size: u64,
    /// The requested bytes.
    pub stream: ByteStream,
}

/// Which link set inside a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// Blobs (layers, configs) the repository may serve.
    Blob,
    /// Manifests (by digest) the repository holds.
    Manifest,
}

/// An in-progress upload as listed for cleanup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// Identifier.
    pub id: String,
    /// Bytes received.
    pub size: u64,
    /// Last time data arrived.
    pub modified: SystemTime,
}

/// Storage for a registry. Implementations must be safe for concurrent use
/// from many tasks, and every mutating call must be atomic: after a crash an
/// object is either entirely there under its final name or absent.
#[async_trait::async_trait]
pub trait StorageDriver: Send + Sync + 'static {
    /// A short name for logs and metrics (`filesystem`).
    fn name(&self) -> &'static str;

    // ---- blobs ----

    /// Size and modification time of a blob, or `None` if absent.
    async fn blob_info(&self, digest: &Digest) -> Result<Option<BlobInfo>>;

    /// Read a blob, or `range` of it (end exclusive, within the blob).
    async fn read_blob(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobReader>;

    /// Read a whole small blob into memory, failing if it exceeds `limit`.
    async fn read_blob_bytes(&self, digest: &Digest, limit: u64) -> Result<Bytes>;

    /// Store `data` as a blob after checking it hashes to `digest`. Storing a
    /// blob that exists refreshes its modification time.
    async fn put_blob(&self, digest: &Digest, data: Bytes) -> Result<()>;

    /// Refresh a blob's modification time (it was just referenced again).
    async fn touch_blob(&self, digest: &Digest) -> Result<()>;

    /// Delete a blob; `false` if it was absent.
    async fn delete_blob(&self, digest: &Digest) -> Result<bool>;

    /// Every stored blob.
    async fn list_blobs(&self) -> Result<Vec<(Digest, BlobInfo)>>;

    // ---- uploads ----

    /// Start an empty upload named `id` (chosen by the caller, unique).
    async fn create_upload(&self, id: &str) -> Result<()>;

    /// Bytes received so far.
    async fn upload_size(&self, id: &str) -> Result<u64>;

    /// Append `data` at `offset`, which must equal the current size; returns
    /// the new size. If the body fails midway, the bytes that arrived stay
    /// and the upload can be resumed from the returned error's size (see
    /// [`StorageDriver::upload_size`]).
    async fn append_upload(&self, id: &str, offset: u64, data: ByteStream) -> Result<u64>;

    /// Verify the upload hashes to `digest` and make it a blob. The upload
    /// is gone afterwards, also when verification fails. Returns the size.
    async fn commit_upload(&self, id: &str, digest: &Digest) -> Result<u64>;

    /// Discard an upload; `false` if it was absent.
    async fn cancel_upload(&self, id: &str) -> Result<bool>;

    /// Every upload in progress.
    async fn list_uploads(&self) -> Result<Vec<UploadInfo>>;

    // ---- repository links ----

    /// Link `digest` into `repo`, creating the repository if needed.
    async fn link(&self, repo: &str, kind: LinkKind, digest: &Digest) -> Result<()>;

    /// Remove a link; `false` if it was absent.
    async fn unlink(&self, repo: &str, kind: LinkKind, digest: &Digest) -> Result<bool>;

    /// Whether `digest` is linked into `repo`.
    async fn is_linked(&self, repo: &str, kind: LinkKind, digest: &Digest) -> Result<bool>;

    /// All links of one kind in `repo` (empty if the repository is unknown).
    async fn list_links(&self, repo: &str, kind: LinkKind) -> Result<Vec<Digest>>;

    /// Point `tag` at `digest`.
    async fn set_tag(&self, repo: &str, tag: &str, digest: &Digest) -> Result<()>;

    /// The digest `tag` points at.
    async fn get_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>>;

    /// Remove a tag; `false` if it was absent.
    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool>;

    /// Tags of `repo` in lexical (byte) order; `None` if the repository is unknown.
    async fn list_tags(&self, repo: &str) -> Result<Option<Vec<String>>>;

    /// Record that manifest `referrer` in `repo` has `subject` as subject.
    async fn add_referrer(&self, repo: &str, subject: &Digest, referrer: &Digest) -> Result<()>;

    /// Forget a referrer; `false` if it was absent.
    async fn remove_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<bool>;

    /// Referrers of `subject` in `repo`.
    async fn list_referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Digest>>;

    /// Every repository, in lexical order.
    async fn list_repositories(&self) -> Result<Vec<String>>;
}
