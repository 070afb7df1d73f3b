//! A conformance suite for [`StorageDriver`] implementations.
//!
//! Every driver runs it from its own integration test:
//!
//! ```ignore
//! let failures = vessel_registry::storage::conformance::run(&driver).await;
//! assert!(failures.is_empty(), "{failures:#?}");
//! ```
//!
//! The suite owns the behavioural contract of the trait (what each call
//! returns on present and absent objects, digest verification, resumable
//! appends, deduplication, ordering of listings). It expects an empty store
//! and leaves objects behind; run it on a scratch instance.

use bytes::Bytes;
use futures_util::StreamExt;

use super::{ByteStream, Error, LinkKind, StorageDriver};
use crate::digest::Digest;

type CheckResult = std::result::Result<(), String>;

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn stream_of(parts: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(futures_util::stream::iter(
        parts.into_iter().map(|p| Ok(Bytes::from(p))),
    ))
}

fn failing_stream(first: Vec<u8>) -> ByteStream {
    Box::pin(futures_util::stream::iter([
        Ok(Bytes::from(first)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ]))
}

async fn read_all(
    driver: &dyn StorageDriver,
    d: &Digest,
    range: Option<std::ops::Range<u64>>,
) -> Result<Vec<u8>, String> {
    let mut r = driver
        .read_blob(d, range)
        .await
        .map_err(|e| format!("read_blob {d}: {e}"))?;
    let mut out = Vec::new();
    while let Some(chunk) = r.stream.next().await {
        out.extend_from_slice(&chunk.map_err(|e| format!("read_blob {d} stream: {e}"))?);
    }
    Ok(out)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn blobs_put_read_delete(d: &dyn StorageDriver) -> CheckResult {
    let data = pattern(3 << 20, 1);
    let dg = Digest::sha256_of(&data);
    check!(
        d.blob_info(&dg).await.map_err(|e| e.to_string())?.is_none(),
        "blob present before put"
    );
    check!(
        matches!(d.read_blob(&dg, None).await, Err(Error::BlobUnknown(_))),
        "reading an absent blob must be BlobUnknown"
    );
    d.put_blob(&dg, Bytes::from(data.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let info = d.blob_info(&dg).await.map_err(|e| e.to_string())?;
    check!(
        info.is_some_and(|i| i.size == data.len() as u64),
        "blob_info size wrong: {info:?}"
    );
    check!(read_all(d, &dg, None).await? == data, "whole read differs");
    check!(
        read_all(d, &dg, Some(10..5000)).await? == data[10..5000],
        "ranged read differs"
    );
    let len = data.len() as u64;
    check!(
        matches!(
            d.read_blob(&dg, Some(0..len + 1)).await,
            Err(Error::RangeNotSatisfiable { .. })
        ),
        "range past the end must be RangeNotSatisfiable"
    );
    check!(
        matches!(
            d.read_blob_bytes(&dg, 100).await,
            Err(Error::TooLarge { .. })
        ),
        "read_blob_bytes must honour its limit"
    );
    let listed = d.list_blobs().await.map_err(|e| e.to_string())?;
    check!(
        listed.iter().any(|(x, _)| x == &dg),
        "list_blobs misses the blob"
    );
    check!(
        d.delete_blob(&dg).await.map_err(|e| e.to_string())?,
        "delete returned false"
    );
    check!(
        !d.delete_blob(&dg).await.map_err(|e| e.to_string())?,
        "second delete returned true"
    );
    check!(
        d.blob_info(&dg).await.map_err(|e| e.to_string())?.is_none(),
        "blob survives delete"
    );
    Ok(())
}

async fn put_blob_verifies_digest(d: &dyn StorageDriver) -> CheckResult {
    let claimed = Digest::sha256_of(b"one thing");
    let r = d
        .put_blob(&claimed, Bytes::from_static(b"another thing"))
        .await;
    check!(
        matches!(r, Err(Error::DigestMismatch { .. })),
        "wrong content accepted: {r:?}"
    );
    check!(
        d.blob_info(&claimed)
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "mismatched content became visible"
    );
    Ok(())
}

async fn uploads_chunked_commit(d: &dyn StorageDriver) -> CheckResult {
    let data = pattern((5 << 20) + 123, 2);
    let dg = Digest::sha256_of(&data);
    let id = "conformance-chunked";
    d.create_upload(id).await.map_err(|e| e.to_string())?;
    check!(
        d.upload_size(id).await.map_err(|e| e.to_string())? == 0,
        "new upload not empty"
    );
    let (first, rest) = data.split_at(1 << 20);
    let (second, third) = rest.split_at(3 << 20);
    let n = d
        .append_upload(
            id,
            0,
            stream_of(vec![first[..100].to_vec(), first[100..].to_vec()]),
        )
        .await
        .map_err(|e| e.to_string())?;
    check!(n == first.len() as u64, "size after first append {n}");
    let bad = d
        .append_upload(id, 5, stream_of(vec![second.to_vec()]))
        .await;
    check!(
        matches!(bad, Err(Error::OffsetMismatch { size, .. }) if size == first.len() as u64),
        "append at a wrong offset must be OffsetMismatch with the size: {bad:?}"
    );
    d.append_upload(id, n, stream_of(vec![second.to_vec()]))
        .await
        .map_err(|e| e.to_string())?;
    d.append_upload(
        id,
        (first.len() + second.len()) as u64,
        stream_of(vec![third.to_vec()]),
    )
    .await
    .map_err(|e| e.to_string())?;
    check!(
        d.blob_info(&dg).await.map_err(|e| e.to_string())?.is_none(),
        "blob visible before commit"
    );
    let size = d.commit_upload(id, &dg).await.map_err(|e| e.to_string())?;
    check!(size == data.len() as u64, "commit size {size}");
    check!(
        read_all(d, &dg, None).await? == data,
        "committed content differs"
    );
    check!(
        matches!(d.upload_size(id).await, Err(Error::UploadUnknown(_))),
        "upload survives commit"
    );
    Ok(())
}

async fn uploads_interrupted_then_resumed(d: &dyn StorageDriver) -> CheckResult {
    let data = pattern(2 << 20, 3);
    let dg = Digest::sha256_of(&data);
    let id = "conformance-resume";
    d.create_upload(id).await.map_err(|e| e.to_string())?;
    let r = d
        .append_upload(id, 0, failing_stream(data[..700_000].to_vec()))
        .await;
    check!(
        matches!(r, Err(Error::Body(_))),
        "a failing body must be reported as Body: {r:?}"
    );
    let have = d.upload_size(id).await.map_err(|e| e.to_string())?;
    check!(have <= 700_000, "upload holds more than was sent: {have}");
    check!(
        d.blob_info(&dg).await.map_err(|e| e.to_string())?.is_none(),
        "interrupted upload became visible"
    );
    d.append_upload(id, have, stream_of(vec![data[have as usize..].to_vec()]))
        .await
        .map_err(|e| e.to_string())?;
    d.commit_upload(id, &dg).await.map_err(|e| e.to_string())?;
    check!(
        read_all(d, &dg, None).await? == data,
        "resumed content differs"
    );
    Ok(())
}

async fn uploads_commit_verifies(d: &dyn StorageDriver) -> CheckResult {
    let id = "conformance-badcommit";
    d.create_upload(id).await.map_err(|e| e.to_string())?;
    d.append_upload(id, 0, stream_of(vec![b"real bytes".to_vec()]))
        .await
        .map_err(|e| e.to_string())?;
    let claimed = Digest::sha256_of(b"other bytes");
    let r = d.commit_upload(id, &claimed).await;
    check!(
        matches!(r, Err(Error::DigestMismatch { .. })),
        "bad digest committed: {r:?}"
    );
    check!(
        d.blob_info(&claimed)
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "mismatched upload became visible"
    );
    let sha512: Digest = format!("sha512:{}", "0".repeat(128))
        .parse()
        .map_err(|e| format!("{e}"))?;
    let id2 = "conformance-sha512";
    d.create_upload(id2).await.map_err(|e| e.to_string())?;
    let r = d.commit_upload(id2, &sha512).await;
    check!(
        matches!(r, Err(Error::DigestMismatch { .. })),
        "sha512 commit not verified: {r:?}"
    );
    Ok(())
}

async fn uploads_cancel_and_list(d: &dyn StorageDriver) -> CheckResult {
    let id = "conformance-cancel";
    d.create_upload(id).await.map_err(|e| e.to_string())?;
    let listed = d.list_uploads().await.map_err(|e| e.to_string())?;
    check!(
        listed.iter().any(|u| u.id == id),
        "list_uploads misses {id}"
    );
    check!(
        d.cancel_upload(id).await.map_err(|e| e.to_string())?,
        "cancel returned false"
    );
    check!(
        !d.cancel_upload(id).await.map_err(|e| e.to_string())?,
        "second cancel returned true"
    );
    check!(
        matches!(
            d.append_upload(id, 0, stream_of(vec![b"x".to_vec()])).await,
            Err(Error::UploadUnknown(_))
        ),
        "append to a cancelled upload must be UploadUnknown"
    );
    check!(
        matches!(
            d.upload_size("no-such-upload").await,
            Err(Error::UploadUnknown(_))
        ),
        "unknown upload must be UploadUnknown"
    );
    Ok(())
}

async fn dedup_across_repositories(d: &dyn StorageDriver) -> CheckResult {
    let data = pattern(1000, 4);
    let dg = Digest::sha256_of(&data);
    for (i, repo) in ["dedup/one", "dedup/two"].iter().enumerate() {
        let id = format!("conformance-dedup-{i}");
        d.create_upload(&id).await.map_err(|e| e.to_string())?;
        d.append_upload(&id, 0, stream_of(vec![data.clone()]))
            .await
            .map_err(|e| e.to_string())?;
        d.commit_upload(&id, &dg).await.map_err(|e| e.to_string())?;
        d.link(repo, LinkKind::Blob, &dg)
            .await
            .map_err(|e| e.to_string())?;
    }
    let count = d
        .list_blobs()
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|(x, _)| x == &dg)
        .count();
    check!(count == 1, "blob stored {count} times");
    check!(
        d.is_linked("dedup/one", LinkKind::Blob, &dg)
            .await
            .map_err(|e| e.to_string())?
            && d.is_linked("dedup/two", LinkKind::Blob, &dg)
                .await
                .map_err(|e| e.to_string())?,
        "links missing"
    );
    check!(
        !d.is_linked("dedup/one", LinkKind::Manifest, &dg)
            .await
            .map_err(|e| e.to_string())?,
        "blob link leaks into manifest links"
    );
    check!(
        d.unlink("dedup/one", LinkKind::Blob, &dg)
            .await
            .map_err(|e| e.to_string())?,
        "unlink false"
    );
    check!(
        !d.is_linked("dedup/one", LinkKind::Blob, &dg)
            .await
            .map_err(|e| e.to_string())?,
        "unlinked blob still linked"
    );
    check!(
        d.blob_info(&dg).await.map_err(|e| e.to_string())?.is_some(),
        "unlink deleted the shared blob"
    );
    Ok(())
}

async fn tags_and_catalog(d: &dyn StorageDriver) -> CheckResult {
    let m1 = Digest::sha256_of(b"manifest one");
    let m2 = Digest::sha256_of(b"manifest two");
    check!(
        d.list_tags("tagged/app")
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "unknown repository must list as None"
    );
    d.link("tagged/app", LinkKind::Manifest, &m1)
        .await
        .map_err(|e| e.to_string())?;
    for t in ["v2", "latest", "V1", "v10", "_x"] {
        d.set_tag("tagged/app", t, &m1)
            .await
            .map_err(|e| e.to_string())?;
    }
    d.set_tag("tagged/app", "latest", &m2)
        .await
        .map_err(|e| e.to_string())?;
    check!(
        d.get_tag("tagged/app", "latest")
            .await
            .map_err(|e| e.to_string())?
            == Some(m2.clone()),
        "retag did not move the tag"
    );
    let tags = d
        .list_tags("tagged/app")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    check!(
        tags == ["V1", "_x", "latest", "v10", "v2"],
        "tags not in lexical order: {tags:?}"
    );
    check!(
        d.delete_tag("tagged/app", "v2")
            .await
            .map_err(|e| e.to_string())?,
        "delete_tag false"
    );
    check!(
        d.get_tag("tagged/app", "v2")
            .await
            .map_err(|e| e.to_string())?
            .is_none(),
        "deleted tag resolves"
    );
    let links = d
        .list_links("tagged/app", LinkKind::Manifest)
        .await
        .map_err(|e| e.to_string())?;
    check!(links == vec![m1.clone()], "manifest links {links:?}");
    d.link("tagged", LinkKind::Manifest, &m1)
        .await
        .map_err(|e| e.to_string())?;
    let repos = d.list_repositories().await.map_err(|e| e.to_string())?;
    let want = ["dedup/one", "dedup/two", "tagged", "tagged/app"];
    check!(
        want.iter().all(|w| repos.iter().any(|r| r == w)),
        "catalog {repos:?} misses one of {want:?}"
    );
    let mut sorted = repos.clone();
    sorted.sort();
    check!(sorted == repos, "catalog not sorted: {repos:?}");
    Ok(())
}

async fn referrers(d: &dyn StorageDriver) -> CheckResult {
    let subject = Digest::sha256_of(b"subject");
    let r1 = Digest::sha256_of(b"sig");
    let r2 = Digest::sha256_of(b"sbom");
    check!(
        d.list_referrers("ref/app", &subject)
            .await
            .map_err(|e| e.to_string())?
            .is_empty(),
        "referrers of an unknown subject must be empty"
    );
    d.add_referrer("ref/app", &subject, &r1)
        .await
        .map_err(|e| e.to_string())?;
    d.add_referrer("ref/app", &subject, &r2)
        .await
        .map_err(|e| e.to_string())?;
    d.add_referrer("ref/app", &subject, &r2)
        .await
        .map_err(|e| e.to_string())?;
    let mut want = vec![r1.clone(), r2.clone()];
    want.sort();
    let got = d
        .list_referrers("ref/app", &subject)
        .await
        .map_err(|e| e.to_string())?;
    check!(got == want, "referrers {got:?}");
    check!(
        d.remove_referrer("ref/app", &subject, &r1)
            .await
            .map_err(|e| e.to_string())?,
        "remove_referrer false"
    );
    let got = d
        .list_referrers("ref/app", &subject)
        .await
        .map_err(|e| e.to_string())?;
    check!(got == vec![r2], "referrers after removal {got:?}");
    Ok(())
}

async fn concurrent_uploads_same_content(d: &dyn StorageDriver) -> CheckResult {
    let data = pattern(2 << 20, 9);
    let dg = Digest::sha256_of(&data);
    let mut jobs = Vec::new();
    for i in 0..4 {
        let id = format!("conformance-race-{i}");
        let data = data.clone();
        let dg = dg.clone();
        jobs.push(async move {
            d.create_upload(&id).await?;
            d.append_upload(&id, 0, stream_of(vec![data])).await?;
            d.commit_upload(&id, &dg).await
        });
    }
    for r in futures_util::future::join_all(jobs).await {
        r.map_err(|e| format!("concurrent commit: {e}"))?;
    }
    check!(
        read_all(d, &dg, None).await? == data,
        "content after racing commits differs"
    );
    Ok(())
}

/// Run every check; returns the failures (empty on success).
pub async fn run(driver: &dyn StorageDriver) -> Vec<String> {
    let mut failures = Vec::new();
    macro_rules! run_check {
        ($f:ident) => {
            if let Err(e) = $f(driver).await {
                failures.push(format!("{}: {e}", stringify!($f)));
            }
        };
    }
    run_check!(blobs_put_read_delete);
    run_check!(put_blob_verifies_digest);
    run_check!(uploads_chunked_commit);
    run_check!(uploads_interrupted_then_resumed);
    run_check!(uploads_commit_verifies);
    run_check!(uploads_cancel_and_list);
    run_check!(dedup_across_repositories);
    run_check!(tags_and_catalog);
    run_check!(referrers);
    run_check!(concurrent_uploads_same_content);
    failures
}
