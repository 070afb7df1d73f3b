//! Garbage collection: mark and sweep that can run while the registry
//! serves.
//!
//! Mark: every manifest linked in any repository is a root; it marks itself,
//! its config and layers, and (for indexes) its children. Sweep: a blob that
//! is unmarked *and* was last written, linked or referenced before
//! `start - grace` is deleted, one blob at a time under the registry's GC
//! lock, re-checking its modification time under the lock.
//!
//! Why that is safe with concurrent pushes: a manifest push takes the same
//! lock shared, checks that every blob it references exists, and refreshes
//! each blob's modification time before linking the manifest. So a blob a
//! push references either is deleted before the push checks it (the push
//! fails with MANIFEST_BLOB_UNKNOWN and nothing dangling is stored), or has
//! a fresh modification time by the time the sweep re-checks it. Blobs
//! uploaded for a push whose manifest is not written yet are fresh and
//! within the grace period.
//!
//! Also removes uploads idle longer than `upload_grace`, and blob links to
//! deleted blobs. Owns the algorithm only; scheduling is the server's.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::oci::Manifest;
use crate::registry::Registry;
use crate::storage::{self, LinkKind};

/// Errors during garbage collection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage failed.
    #[error("garbage collection")]
    Storage(#[from] storage::Error),
    /// Deleting an untagged manifest failed.
    #[error("delete untagged manifest {digest} in {repo}")]
    Untagged {
        /// Repository.
        repo: String,
        /// Manifest digest.
        digest: Digest,
        /// Cause.
        #[source]
        source: crate::registry::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced blobs younger than this are kept.
    pub grace: Duration,
    /// Uploads idle longer than this are deleted.
    pub upload_grace: Duration,
    /// Delete manifests no tag reaches (directly or through an index).
    pub delete_untagged: bool,
    /// Report what would be deleted without deleting.
    pub dry_run: bool,
}

/// What a run did (or would do, in a dry run).
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    /// Blobs reachable from some manifest.
    pub marked: usize,
    /// Blobs deleted, with their sizes.
    pub deleted_blobs: Vec<(Digest, u64)>,
    /// Unreferenced blobs kept because they are within the grace period.
    pub kept_in_grace: usize,
    /// Untagged manifests removed (repository, digest).
    pub deleted_manifests: Vec<(String, Digest)>,
    /// Stale uploads removed.
    pub deleted_uploads: Vec<String>,
    /// Blob links removed because their blob is gone.
    pub removed_links: usize,
}

impl GcReport {
    /// Bytes freed by deleted blobs.
    pub fn freed_bytes(&self) -> u64 {
        self.deleted_blobs.iter().map(|(_, s)| s).sum()
    }
}

async fn reachable_untagged(reg: &Registry, repo: &str) -> Result<Vec<Digest>> {
    let st = reg.storage();
    let limit = reg.limits().max_manifest_bytes;
    let mut keep: HashSet<Digest> = HashSet::new();
    let mut queue: Vec<Digest> = Vec::new();
    for t in st.list_tags(repo).await?.unwrap_or_default() {
        if let Some(d) = st.get_tag(repo, &t).await? {
            queue.push(d);
        }
    }
    let links = st.list_links(repo, LinkKind::Manifest).await?;
    // Referrers of kept manifests are kept too.
    let mut subjects: Vec<(Digest, Digest)> = Vec::new();
    for d in &links {
        if let Ok(b) = st.read_blob_bytes(d, limit).await {
            if let Ok((m, _)) = Manifest::parse(&b, "") {
                if let Some(s) = m.subject {
                    subjects.push((s.digest, d.clone()));
                }
            }
        }
    }
    loop {
        while let Some(d) = queue.pop() {
            if !keep.insert(d.clone()) {
                continue;
            }
            if let Ok(b) = st.read_blob_bytes(&d, limit).await {
                if let Ok((m, _)) = Manifest::parse(&b, "") {
                    queue.extend(m.manifest_refs().map(|c| c.digest.clone()));
                }
            }
        }
        let before = keep.len();
        for (subject, referrer) in &subjects {
            if keep.contains(subject) && !keep.contains(referrer) {
                queue.push(referrer.clone());
            }
        }
        if queue.is_empty() && keep.len() == before {
            break;
        }
    }
    Ok(links.into_iter().filter(|d| !keep.contains(d)).collect())
}

/// Run one collection.
pub async fn collect(reg: &Registry, opts: &GcOptions) -> Result<GcReport> {
    let start = SystemTime::now();
    let cutoff = start
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let st = reg.storage().clone();
    let limit = reg.limits().max_manifest_bytes;
    let mut report = GcReport::default();
    let repos = st.list_repositories().await?;

    if opts.delete_untagged {
        for repo in &repos {
            for d in reachable_untagged(reg, repo).await? {
                if !opts.dry_run {
                    reg.delete_manifest(repo, &d.to_string())
                        .await
                        .map_err(|source| Error::Untagged {
                            repo: repo.clone(),
                            digest: d.clone(),
                            source,
                        })?;
                }
                report.deleted_manifests.push((repo.clone(), d));
            }
        }
    }

    // Mark.
    let mut marked: HashSet<Digest> = HashSet::new();
    for repo in &repos {
        for d in st.list_links(repo, LinkKind::Manifest).await? {
            if opts.dry_run
                && report
                    .deleted_manifests
                    .iter()
                    .any(|(r, x)| r == repo && x == &d)
            {
                continue;
            }
            marked.insert(d.clone());
            let bytes = match st.read_blob_bytes(&d, limit).await {
                Ok(b) => b,
                Err(storage::Error::BlobUnknown(_)) => {
                    tracing::warn!(repo, manifest = %d, "manifest link without content");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Ok((m, _)) = Manifest::parse(&bytes, "") else {
                tracing::warn!(repo, manifest = %d, "stored manifest does not parse; keeping what it names is impossible");
                continue;
            };
            marked.extend(m.blob_refs().map(|x| x.digest.clone()));
            marked.extend(m.manifest_refs().map(|x| x.digest.clone()));
        }
    }
    report.marked = marked.len();

    // Sweep blobs.
    for (d, info) in st.list_blobs().await? {
        if marked.contains(&d) {
            continue;
        }
        if info.modified > cutoff {
            report.kept_in_grace += 1;
            continue;
        }
        if opts.dry_run {
            report.deleted_blobs.push((d, info.size));
            continue;
        }
        let _g = reg.gc_lock().write().await;
        match st.blob_info(&d).await? {
            Some(now) if now.modified <= cutoff && st.delete_blob(&d).await? => {
                tracing::debug!(blob = %d, size = now.size, "gc deleted blob");
                report.deleted_blobs.push((d, now.size));
            }
            Some(now) if now.modified <= cutoff => {}
            Some(_) => report.kept_in_grace += 1,
            None => {}
        }
    }

    // Links to deleted blobs.
    if !opts.dry_run {
        let gone: HashSet<&Digest> = report.deleted_blobs.iter().map(|(d, _)| d).collect();
        if !gone.is_empty() {
            for repo in &repos {
                for d in st.list_links(repo, LinkKind::Blob).await? {
                    if gone.contains(&d) {
                        let _g = reg.gc_lock().write().await;
                        if st.blob_info(&d).await?.is_none()
                            && st.unlink(repo, LinkKind::Blob, &d).await?
                        {
                            report.removed_links += 1;
                        }
                    }
                }
            }
        }
    }

    // Stale uploads.
    let upload_cutoff = start
        .checked_sub(opts.upload_grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for u in st.list_uploads().await? {
        if u.modified <= upload_cutoff {
            if !opts.dry_run {
                st.cancel_upload(&u.id).await?;
            }
            report.deleted_uploads.push(u.id);
        }
    }
    tracing::info!(
        marked = report.marked,
        deleted = report.deleted_blobs.len(),
        freed = report.freed_bytes(),
        kept_in_grace = report.kept_in_grace,
        uploads = report.deleted_uploads.len(),
        dry_run = opts.dry_run,
        "garbage collection finished"
    );
    Ok(report)
}
