//! The filesystem driver passes the storage-driver conformance suite, and
//! survives what a crash leaves behind.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use vessel_registry::storage::fs::{FsDriver, FsOptions};
use vessel_registry::storage::{StorageDriver, conformance};
use vessel_testkit::TempRoot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_driver_conforms() {
    let root = TempRoot::new("reg-fs");
    let driver = FsDriver::open(root.path(), FsOptions::default()).unwrap();
    let failures = conformance::run(&driver).await;
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_driver_conforms_without_fsync() {
    let root = TempRoot::new("reg-fs-nosync");
    let driver = FsDriver::open(root.path(), FsOptions { fsync: false }).unwrap();
    let failures = conformance::run(&driver).await;
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}

/// A restart loses the in-memory hash state of uploads; appending and
/// committing must still verify against the bytes on disk, and temp files
/// left by a crash are cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_survive_a_restart() {
    use bytes::Bytes;
    let root = TempRoot::new("reg-fs-restart");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = vessel_registry::Digest::sha256_of(&data);
    {
        let d = FsDriver::open(root.path(), FsOptions::default()).unwrap();
        d.create_upload("restart-1").await.unwrap();
        let first = Bytes::from(data[..1_000_000].to_vec());
        d.append_upload(
            "restart-1",
            0,
            Box::pin(futures_util::stream::iter([Ok(first)])),
        )
        .await
        .unwrap();
    }
    std::fs::write(root.join("tmp/leftover"), b"half a manifest").unwrap();
    let d = FsDriver::open(root.path(), FsOptions::default()).unwrap();
    assert!(
        !root.join("tmp/leftover").exists(),
        "temp files survive a restart"
    );
    assert_eq!(d.upload_size("restart-1").await.unwrap(), 1_000_000);
    let rest = Bytes::from(data[1_000_000..].to_vec());
    d.append_upload(
        "restart-1",
        1_000_000,
        Box::pin(futures_util::stream::iter([Ok(rest)])),
    )
    .await
    .unwrap();
    assert_eq!(
        d.commit_upload("restart-1", &digest).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(d.read_blob_bytes(&digest, 10 << 20).await.unwrap(), data);
}
