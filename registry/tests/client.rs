//! The registry client against real registries on loopback: vessel-registry
//! (push, pull, indexes and platform selection, chunked uploads, mounts,
//! resumed downloads, progress events) and Debian's docker-registry
//! (distribution 2.8) started by the test.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Mutex;

use bytes::Bytes;
use common::{
    Http, Proc, TestImage, TestRegistry, distribution_listening, make_index, spawn_listening,
    wait_listening,
};
use vessel_registry::Digest;
use vessel_registry::client::{
    BlobSink, Client, ClientConfig, CredentialStore, FsStore, PlatformSpec, ProgressEvent,
    ProgressSink, PushImage, Reference,
};
use vessel_registry::oci::{Descriptor, Manifest, OCI_INDEX};
use vessel_testkit::{TempRoot, have_command, require};

#[derive(Default)]
struct Events(Mutex<Vec<ProgressEvent>>);

impl ProgressSink for Events {
    fn event(&self, e: ProgressEvent) {
        self.0.lock().unwrap().push(e);
    }
}

impl Events {
    fn count(&self, f: impl Fn(&ProgressEvent) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|e| f(e)).count()
    }
}

fn client(cfg: ClientConfig) -> Client {
    Client::new(cfg, CredentialStore::new()).unwrap()
}

/// Put an image's blobs into a store and describe it for a push.
fn stage(store: &FsStore, img: &TestImage) -> PushImage {
    store.put(&img.config).unwrap();
    for l in &img.layers {
        store.put(l).unwrap();
    }
    let (m, _) = Manifest::parse(&img.manifest, img.media_type).unwrap();
    PushImage::Image {
        manifest: Bytes::from(img.manifest.clone()),
        media_type: img.media_type.to_string(),
        blobs: m.blob_refs().cloned().collect::<Vec<Descriptor>>(),
    }
}

fn assert_same_blobs(store: &FsStore, img: &TestImage) {
    assert_eq!(
        std::fs::read(store.blob_path(&Digest::sha256_of(&img.config))).unwrap(),
        img.config
    );
    for l in &img.layers {
        assert_eq!(
            &std::fs::read(store.blob_path(&Digest::sha256_of(l))).unwrap(),
            l
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_against_vessel_registry() {
    let reg = TestRegistry::start().await;
    let tmp = TempRoot::new("client");
    let c = client(ClientConfig::default());
    let img = TestImage::new(&[2_000_000, 300_000, 10], 60);
    let src = FsStore::open(tmp.join("src")).unwrap();
    let push = stage(&src, &img);
    let r = Reference::parse(&format!("{}/cl/app:v1", reg.host())).unwrap();
    let ev = Events::default();
    let res = c.push(&r, &push, &src, &ev).await.unwrap();
    assert_eq!(res.digest, img.digest());
    assert_eq!(ev.count(|e| matches!(e, ProgressEvent::Pushed { .. })), 4);
    assert!(ev.count(|e| matches!(e, ProgressEvent::Progress { upload: true, .. })) > 0);

    // Pushing again finds every blob present.
    let ev = Events::default();
    c.push(&r, &push, &src, &ev).await.unwrap();
    assert_eq!(
        ev.count(|e| matches!(e, ProgressEvent::AlreadyExists { .. })),
        4
    );

    // Pull into a fresh store.
    let dst = FsStore::open(tmp.join("dst")).unwrap();
    let ev = Events::default();
    let pulled = c.pull(&r, &PlatformSpec::host(), &dst, &ev).await.unwrap();
    assert_eq!(pulled.digest, img.digest());
    assert_eq!(pulled.manifest.0.as_ref(), img.manifest.as_slice());
    assert_eq!(pulled.layers.len(), 3);
    assert_same_blobs(&dst, &img);
    assert_eq!(
        ev.count(|e| matches!(e, ProgressEvent::DownloadComplete { .. })),
        4
    );
    // Pull again: everything exists.
    let ev = Events::default();
    c.pull(&r, &PlatformSpec::host(), &dst, &ev).await.unwrap();
    assert_eq!(
        ev.count(|e| matches!(e, ProgressEvent::AlreadyExists { .. })),
        4
    );

    // Tags.
    c.put_manifest(
        &r.with_tag("v2"),
        Bytes::from(img.manifest.clone()),
        img.media_type,
        &ev,
    )
    .await
    .unwrap();
    assert_eq!(c.list_tags(&r).await.unwrap(), ["v1", "v2"]);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_mounts_and_indexes() {
    let reg = TestRegistry::start_with(|c| c.server.max_page_size = 1).await;
    let tmp = TempRoot::new("client-chunked");
    let c = client(ClientConfig {
        chunk_size: Some(256 << 10),
        ..ClientConfig::default()
    });
    let amd = TestImage::new(&[1_500_000], 61);
    let arm = TestImage::new(&[700_000], 62);
    let src = FsStore::open(tmp.join("src")).unwrap();
    let children = vec![stage(&src, &amd), stage(&src, &arm)];
    let index = make_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    let push = PushImage::Index {
        manifest: Bytes::from(index.clone()),
        media_type: OCI_INDEX.to_string(),
        children,
    };
    let r = Reference::parse(&format!("{}/cl/multi:v1", reg.host())).unwrap();
    c.push(&r, &push, &src, &vessel_registry::client::NoProgress)
        .await
        .unwrap();

    // The uploads went in chunks.
    let http = Http::new(&reg.url());
    let metrics = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
    let patches: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("vessel_registry_http_requests_total{method=\"PATCH\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        patches >= 8,
        "expected chunked uploads, saw {patches} PATCH requests"
    );

    // Platform selection.
    for (arch, img) in [("amd64", &amd), ("arm64", &arm)] {
        let dst = FsStore::open(tmp.join(format!("dst-{arch}"))).unwrap();
        let p = PlatformSpec::parse(&format!("linux/{arch}")).unwrap();
        let pulled = c
            .pull(&r, &p, &dst, &vessel_registry::client::NoProgress)
            .await
            .unwrap();
        assert_eq!(pulled.digest, Digest::sha256_of(&index));
        assert_eq!(pulled.manifest_digest, img.digest());
        assert!(pulled.index.is_some());
        assert_same_blobs(&dst, img);
    }
    let dst = FsStore::open(tmp.join("dst-none")).unwrap();
    let err = c
        .pull(
            &r,
            &PlatformSpec::parse("linux/s390x").unwrap(),
            &dst,
            &vessel_registry::client::NoProgress,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("linux/amd64, linux/arm64"),
        "{err}"
    );

    // Cross-repository mount: the source says where the blob lives.
    let layer = Digest::sha256_of(&amd.layers[0]);
    src.remember_source(&layer, r.clone());
    let target = Reference::parse(&format!("{}/cl/mounted:v1", reg.host())).unwrap();
    let ev = Events::default();
    c.push(&target, &stage(&src, &amd), &src, &ev)
        .await
        .unwrap();
    assert_eq!(
        ev.count(|e| matches!(e, ProgressEvent::Mounted { from, .. } if from == "cl/multi")),
        1
    );

    // Tag listing follows pagination (pages of one).
    for t in ["a", "b", "c"] {
        c.put_manifest(
            &target.with_tag(t),
            Bytes::from(amd.manifest.clone()),
            amd.media_type,
            &ev,
        )
        .await
        .unwrap();
    }
    assert_eq!(c.list_tags(&target).await.unwrap(), ["a", "b", "c", "v1"]);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_manifest_mounts_on_one_registry_and_streams_across() {
    let a = TestRegistry::start().await;
    let b = TestRegistry::start().await;
    let tmp = TempRoot::new("client-copy");
    let c = client(ClientConfig::default());
    let amd = TestImage::new(&[300_000], 66);
    let arm = TestImage::new(&[200_000, 1_000], 67);
    let src = FsStore::open(tmp.join("src")).unwrap();
    let index = make_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    let from = Reference::parse(&format!("{}/cp/src:v1", a.host())).unwrap();
    let push = PushImage::Index {
        manifest: Bytes::from(index.clone()),
        media_type: OCI_INDEX.to_string(),
        children: vec![stage(&src, &amd), stage(&src, &arm)],
    };
    c.push(&from, &push, &src, &vessel_registry::client::NoProgress)
        .await
        .unwrap();
    let index_digest = Digest::sha256_of(&index);

    // Same registry: the index and both children, every blob mounted.
    let to = Reference::parse(&format!("{}/cp/dst:v1", a.host())).unwrap();
    assert!(!c.manifest_exists(&to, &arm.digest()).await.unwrap());
    let ev = Events::default();
    let res = c
        .copy_manifest(&from, &to, &index_digest, &ev)
        .await
        .unwrap();
    assert_eq!(res.digest, index_digest);
    assert_eq!(
        ev.count(|e| matches!(e, ProgressEvent::Mounted { from, .. } if from == "cp/src")),
        5
    );
    assert_eq!(ev.count(|e| matches!(e, ProgressEvent::Pushed { .. })), 0);
    assert!(c.manifest_exists(&to, &arm.digest()).await.unwrap());
    let (bytes, _, _) = c
        .get_manifest(&to, &index_digest.to_string())
        .await
        .unwrap();
    assert_eq!(&bytes[..], &index[..]);

    // Another registry: no mount there, so the blobs stream through.
    let other = Reference::parse(&format!("{}/cp/copy:v1", b.host())).unwrap();
    let ev = Events::default();
    c.copy_manifest(&from, &other, &arm.digest(), &ev)
        .await
        .unwrap();
    assert_eq!(ev.count(|e| matches!(e, ProgressEvent::Pushed { .. })), 3);
    let dst = FsStore::open(tmp.join("dst")).unwrap();
    let pulled = c
        .pull(
            &other.with_digest(arm.digest()),
            &PlatformSpec::host(),
            &dst,
            &vessel_registry::client::NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(&pulled.manifest.0[..], &arm.manifest[..]);
    assert_same_blobs(&dst, &arm);

    // A manifest the source does not have is NotFound.
    let err = c
        .copy_manifest(&from, &other, &Digest::sha256_of(b"absent"), &ev)
        .await
        .unwrap_err();
    assert!(
        matches!(err, vessel_registry::client::Error::NotFound(_)),
        "{err}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_resume_and_verify() {
    let reg = TestRegistry::start().await;
    let tmp = TempRoot::new("client-resume");
    let http = Http::new(&reg.url());
    let img = TestImage::new(&[3_000_000], 63);
    img.push(&http, "cl/resume", "v1").await;
    let r = Reference::parse(&format!("{}/cl/resume:v1", reg.host())).unwrap();
    let c = client(ClientConfig::default());
    let dst = FsStore::open(tmp.join("dst")).unwrap();

    // A partial download from an earlier attempt: the first 1 MB.
    let layer = &img.layers[0];
    let ld = Digest::sha256_of(layer);
    dst.write(&ld, 0, Bytes::copy_from_slice(&layer[..1_000_000]))
        .await
        .unwrap();
    c.pull(
        &r,
        &PlatformSpec::host(),
        &dst,
        &vessel_registry::client::NoProgress,
    )
    .await
    .unwrap();
    assert_same_blobs(&dst, &img);
    let metrics = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
    assert!(
        metrics.contains("route=\"blob\",code=\"206\"} 1"),
        "the layer must resume with a range request:\n{metrics}"
    );

    // A corrupt partial (wrong bytes) fails verification and is discarded.
    let dst2 = FsStore::open(tmp.join("dst2")).unwrap();
    dst2.write(&ld, 0, Bytes::from(vec![0u8; 1_000_000]))
        .await
        .unwrap();
    let err = c
        .pull(
            &r,
            &PlatformSpec::host(),
            &dst2,
            &vessel_registry::client::NoProgress,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hashes to"), "{err}");
    assert!(!dst2.has(&ld).await.unwrap());
    assert!(
        dst2.partial(&ld).await.unwrap().is_none(),
        "bad partial kept"
    );
    // The next attempt starts from zero and succeeds.
    c.pull(
        &r,
        &PlatformSpec::host(),
        &dst2,
        &vessel_registry::client::NoProgress,
    )
    .await
    .unwrap();
    assert_same_blobs(&dst2, &img);
    reg.stop().await;
}

/// Debian's distribution on 127.0.0.1:0, its address read from its log:
/// the log level must stay at info for the "listening on" line.
fn start_distribution(tmp: &TempRoot) -> (Proc, String) {
    let cfg = tmp.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
            tmp.join("storage").display()
        ),
    )
    .unwrap();
    spawn_listening(
        "docker-registry",
        Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .env_remove("REGISTRY_AUTH_FILE")
            .stdout(std::process::Stdio::null()),
        distribution_listening,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_against_distribution() {
    require!(
        have_command("docker-registry"),
        "docker-registry (distribution) is not installed (apt-get install docker-registry)"
    );
    let tmp = TempRoot::new("client-distribution");
    let (mut proc_, host) = start_distribution(&tmp);
    wait_listening(&host, &mut proc_).await;

    let c = client(ClientConfig {
        chunk_size: Some(512 << 10),
        ..ClientConfig::default()
    });
    let img = TestImage::new(&[1_200_000, 40_000], 64);
    let dimg = TestImage::with_type(&[100_000], 65, vessel_registry::oci::DOCKER_MANIFEST);
    let src = FsStore::open(tmp.join("src")).unwrap();
    let r = Reference::parse(&format!("{host}/dist/app:v1")).unwrap();
    let res = c
        .push(
            &r,
            &stage(&src, &img),
            &src,
            &vessel_registry::client::NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(res.digest, img.digest());
    let rd = Reference::parse(&format!("{host}/dist/app:docker")).unwrap();
    c.push(
        &rd,
        &stage(&src, &dimg),
        &src,
        &vessel_registry::client::NoProgress,
    )
    .await
    .unwrap();

    // Streamed (non-chunked) uploads too.
    let plain = client(ClientConfig::default());
    let img2 = TestImage::new(&[800_000], 66);
    let r2 = Reference::parse(&format!("{host}/dist/other:v1")).unwrap();
    plain
        .push(
            &r2,
            &stage(&src, &img2),
            &src,
            &vessel_registry::client::NoProgress,
        )
        .await
        .unwrap();

    for (reference, image) in [(&r, &img), (&rd, &dimg), (&r2, &img2)] {
        let dst = FsStore::open(tmp.join(format!("dst-{}", image.digest().hex()))).unwrap();
        let pulled = c
            .pull(
                reference,
                &PlatformSpec::host(),
                &dst,
                &vessel_registry::client::NoProgress,
            )
            .await
            .unwrap();
        assert_eq!(pulled.manifest.0.as_ref(), image.manifest.as_slice());
        assert_eq!(pulled.manifest.1, image.media_type);
        assert_same_blobs(&dst, image);
    }
    let mut tags = c.list_tags(&r).await.unwrap();
    tags.sort();
    assert_eq!(tags, ["docker", "v1"]);
    proc_.kill();
}
