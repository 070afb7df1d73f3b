//! Faults: a push cut off mid-blob leaves nothing visible and resumes or
//! restarts; `kill -9` of the registry during 20 concurrent pushes never
//! leaves a manifest that names a missing or corrupt blob; garbage
//! collection during concurrent pushes deletes nothing a completed push
//! references.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{
    Http, TestImage, TestRegistry, random_bytes, registry_bin, spawn_vessel_registry,
    wait_listening,
};
use tokio::io::AsyncWriteExt as _;
use vessel_registry::Digest;
use vessel_registry::gc::{self, GcOptions};
use vessel_registry::oci::Manifest;
use vessel_testkit::TempRoot;

/// Every tag of every repository resolves to a manifest whose blobs are
/// all served and hash to their digests. Returns the manifests checked.
async fn check_consistent(http: &Http) -> BTreeSet<(String, Digest)> {
    let mut seen = BTreeSet::new();
    let cat = http.get("/v2/_catalog").await;
    assert_eq!(cat.status, 200);
    for repo in cat.json()["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags = http.get(&format!("/v2/{repo}/tags/list")).await;
        for tag in tags.json()["tags"].as_array().cloned().unwrap_or_default() {
            let tag = tag.as_str().unwrap();
            let m = http.get(&format!("/v2/{repo}/manifests/{tag}")).await;
            assert_eq!(
                m.status, 200,
                "{repo}:{tag} is tagged but its manifest is not served"
            );
            let d = Digest::sha256_of(&m.body);
            assert_eq!(
                m.header("docker-content-digest"),
                Some(d.to_string().as_str())
            );
            let (man, _) = Manifest::parse(&m.body, "").unwrap();
            for b in man.blob_refs() {
                let r = http.get(&format!("/v2/{repo}/blobs/{}", b.digest)).await;
                assert_eq!(
                    r.status, 200,
                    "{repo}:{tag} names blob {} which is missing",
                    b.digest
                );
                assert_eq!(
                    Digest::sha256_of(&r.body),
                    b.digest,
                    "{repo}:{tag}: blob {} is corrupt",
                    b.digest
                );
                assert_eq!(r.body.len() as u64, b.size);
            }
            seen.insert((repo.to_string(), d));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_push_leaves_nothing_and_resumes() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let data = random_bytes(4_000_000, 80);
    let d = Digest::sha256_of(&data);
    let r = http
        .send("POST", "/v2/fault/app/blobs/uploads/", &[], Bytes::new())
        .await;
    let loc = r.header("location").unwrap().to_string();

    // A raw connection announces the whole blob, sends 1.5 MB, and dies.
    let mut sock = tokio::net::TcpStream::connect(reg.addr).await.unwrap();
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        reg.host(),
        data.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&data[..1_500_000]).await.unwrap();
    sock.flush().await.unwrap();
    drop(sock);

    // Wait until the server has finished (failed) that PATCH: its metrics
    // count it once the handler returns.
    wait_for_patches(&http, 1).await;
    assert_eq!(
        http.head(&format!("/v2/fault/app/blobs/{d}")).await.status,
        404
    );
    let st = http.get(&loc).await;
    assert_eq!(st.status, 204);
    let range = st.header("range").unwrap().to_string();
    let have = if range == "0-0" {
        0
    } else {
        range.split('-').nth(1).unwrap().parse::<u64>().unwrap() + 1
    };
    assert!(have <= 1_500_000, "kept {have} bytes of 1500000 sent");

    // Resume from where it stands.
    let r = http
        .send(
            "PATCH",
            &loc,
            &[("content-range", &format!("{have}-{}", data.len() - 1))],
            Bytes::copy_from_slice(&data[have as usize..]),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let r = http
        .send("PUT", &format!("{loc}?digest={d}"), &[], Bytes::new())
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        http.get(&format!("/v2/fault/app/blobs/{d}"))
            .await
            .body
            .as_ref(),
        data.as_slice()
    );

    // Or restart: a fresh session for other content works as usual, and a
    // cut-off session can be cancelled.
    let r = http
        .send("POST", "/v2/fault/app/blobs/uploads/", &[], Bytes::new())
        .await;
    let loc2 = r.header("location").unwrap().to_string();
    let mut sock = tokio::net::TcpStream::connect(reg.addr).await.unwrap();
    sock.write_all(
        format!(
            "PATCH {loc2} HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000000\r\n\r\n",
            reg.host()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    sock.write_all(&[7u8; 1000]).await.unwrap();
    drop(sock);
    wait_for_patches(&http, 3).await;
    assert_eq!(
        http.send("DELETE", &loc2, &[], Bytes::new()).await.status,
        204
    );
    let other = random_bytes(100_000, 81);
    http.push_blob("fault/app", &other).await;
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_pushes_keeps_manifests_consistent() {
    // Kill early, midway and late in the batch.
    for kill_after in [2, 9, 16] {
        kill_9_round(kill_after).await;
    }
}

async fn kill_9_round(kill_after: usize) {
    let tmp = TempRoot::new("fault-kill");
    let storage = tmp.join("storage");
    let (mut proc_, addr) = spawn_vessel_registry(&["--root", storage.to_str().unwrap()], "error");
    wait_listening(&addr, &mut proc_).await;
    let http = Http::new(&format!("http://{addr}"));

    // 20 pushes of random images with shared and private layers.
    let shared = Arc::new(TestImage::new(&[300_000], 90));
    let done = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let http = http.clone();
        let done = done.clone();
        let completed = completed.clone();
        let notify = notify.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let img = TestImage::new(
                &[200_000 + (i as usize * 37_000) % 500_000, 50_000],
                100 + i,
            );
            let repo = format!("kill/r{}", i % 5);
            let ok = async {
                for b in std::iter::once(&shared.layers[0])
                    .chain(img.layers.iter())
                    .chain([&img.config])
                {
                    try_push_blob(&http, &repo, b).await?;
                }
                let r = http_try(
                    &http,
                    "PUT",
                    &format!("/v2/{repo}/manifests/t{i}"),
                    img.media_type,
                    &img.manifest,
                )
                .await?;
                (r == 201).then_some(())
            }
            .await;
            if ok.is_some() {
                completed.lock().unwrap().push((repo, img.digest()));
            }
            done.fetch_add(1, Ordering::SeqCst);
            notify.notify_one();
        }));
    }
    // Kill as soon as some pushes finished and others are in flight.
    while done.load(Ordering::SeqCst) < kill_after {
        notify.notified().await;
    }
    let pid = proc_.pid() as i32;
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    proc_.kill();
    for t in tasks {
        let _ = t.await;
    }
    let completed = completed.lock().unwrap().clone();
    assert!(
        completed.len() >= kill_after,
        "only {} pushes completed before the kill",
        completed.len()
    );

    // Restart on the same storage and check everything the registry shows.
    let reg = TestRegistry::start_with(|c| c.storage.root.clone_from(&storage)).await;
    let http = Http::new(&reg.url());
    let seen = check_consistent(&http).await;
    for (repo, d) in &completed {
        assert!(
            seen.contains(&(repo.clone(), d.clone())),
            "acknowledged push {repo}@{d} is missing after the kill"
        );
    }
    // No temp files linger and uploads can be listed for cleanup.
    assert_eq!(std::fs::read_dir(storage.join("tmp")).unwrap().count(), 0);
    reg.stop().await;
}

/// PATCH requests the server has finished handling, from its metrics.
async fn patches_done(http: &Http) -> u64 {
    let m = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
    m.lines()
        .filter(|l| l.starts_with("vessel_registry_http_requests_total{method=\"PATCH\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Poll (bounded) until `n` PATCH requests have been handled.
async fn wait_for_patches(http: &Http, n: u64) {
    for _ in 0..1000 {
        if patches_done(http).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never finished the interrupted PATCH");
}

/// Push a blob; `None` if the registry went away.
async fn try_push_blob(http: &Http, repo: &str, data: &[u8]) -> Option<()> {
    let d = Digest::sha256_of(data);
    let c = http
        .client_send("HEAD", &format!("/v2/{repo}/blobs/{d}"), &[], Bytes::new())
        .await?;
    if c.status == 200 {
        return Some(());
    }
    let r = http
        .client_send(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Bytes::new(),
        )
        .await?;
    let loc = r.header("location")?.to_string();
    let r = http
        .client_send("PATCH", &loc, &[], Bytes::copy_from_slice(data))
        .await?;
    let loc = r.header("location")?.to_string();
    let r = http
        .client_send("PUT", &format!("{loc}?digest={d}"), &[], Bytes::new())
        .await?;
    (r.status == 201).then_some(())
}

async fn http_try(http: &Http, method: &str, path: &str, ct: &str, body: &[u8]) -> Option<u16> {
    http.client_send(
        method,
        path,
        &[("content-type", ct)],
        Bytes::copy_from_slice(body),
    )
    .await
    .map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_during_concurrent_pushes_keeps_completed_pushes() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let storage = reg.root.join("storage");

    // Garbage: blobs nobody references, aged past the grace period.
    let mut garbage = Vec::new();
    for i in 0..5 {
        let d = http
            .push_blob("gc/junk", &random_bytes(50_000, 200 + i))
            .await;
        let p = storage
            .join("blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex());
        std::fs::File::open(&p)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        garbage.push(d);
    }
    // An old image that stays referenced: its blobs are old but marked.
    let old = TestImage::new(&[120_000], 210);
    old.push(&http, "gc/old", "v1").await;
    for b in std::iter::once(&old.config)
        .chain(old.layers.iter())
        .chain([&old.manifest])
    {
        let d = Digest::sha256_of(b);
        let p = storage
            .join("blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex());
        std::fs::File::open(&p)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
    }

    let registry = reg.handle.as_ref().unwrap().state().registry.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc_runs = Arc::new(AtomicUsize::new(0));
    let gc_task = {
        let stop = stop.clone();
        let gc_runs = gc_runs.clone();
        tokio::spawn(async move {
            let opts = GcOptions {
                grace: Duration::from_secs(3600),
                upload_grace: Duration::from_secs(3600),
                delete_untagged: false,
                dry_run: false,
            };
            while !stop.load(Ordering::SeqCst) || gc_runs.load(Ordering::SeqCst) == 0 {
                gc::collect(&registry, &opts).await.unwrap();
                gc_runs.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    let mut pushes = Vec::new();
    for i in 0..10u64 {
        let http = http.clone();
        let old_layer = old.layers[0].clone();
        pushes.push(tokio::spawn(async move {
            let img = TestImage::new(&[150_000, 30_000], 300 + i);
            let repo = format!("gc/p{}", i % 3);
            // Reuse an old, referenced layer as well (existence check path).
            http.push_blob(&repo, &old_layer).await;
            img.push(&http, &repo, &format!("t{i}")).await;
            (repo, img.digest())
        }));
    }
    let mut completed = Vec::new();
    for p in pushes {
        completed.push(p.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    gc_task.await.unwrap();
    assert!(gc_runs.load(Ordering::SeqCst) >= 1);

    let seen = check_consistent(&http).await;
    for c in &completed {
        assert!(seen.contains(c), "completed push {c:?} lost");
    }
    assert!(seen.contains(&("gc/old".to_string(), old.digest())));
    for d in &garbage {
        assert_eq!(
            http.head(&format!("/v2/gc/junk/blobs/{d}")).await.status,
            404,
            "garbage {d} kept"
        );
        assert!(
            !storage
                .join("blobs/sha256")
                .join(&d.hex()[..2])
                .join(d.hex())
                .exists()
        );
    }
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_cli_dry_run_and_untagged() {
    let keep = TempRoot::new("gc-cli");
    let storage = keep.join("storage");
    let reg = TestRegistry::start_with(|c| c.storage.root = storage.clone()).await;
    let http = Http::new(&reg.url());
    let a = TestImage::new(&[10_000], 400);
    let b = TestImage::new(&[10_000], 401);
    a.push(&http, "cli/app", "v1").await;
    b.push(&http, "cli/app", "v2").await;
    // Untag b: its manifest stays (by digest) until --delete-untagged.
    assert_eq!(
        http.send("DELETE", "/v2/cli/app/manifests/v2", &[], Bytes::new())
            .await
            .status,
        202
    );
    // A sweep refuses to run beside a live registry on the same storage.
    let out = Command::new(registry_bin())
        .args(["gc", "--grace", "0s", "--root"])
        .arg(&storage)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running registry"));
    reg.stop().await;

    let out = Command::new(registry_bin())
        .args([
            "gc",
            "--dry-run",
            "--grace",
            "0s",
            "--delete-untagged",
            "--root",
        ])
        .arg(&storage)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("would delete manifest cli/app@{}", b.digest())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "would delete blob {}",
            Digest::sha256_of(&b.layers[0])
        )),
        "{text}"
    );
    assert!(!text.contains(&a.digest().to_string()), "{text}");
    // Dry run deleted nothing.
    let d = Digest::sha256_of(&b.layers[0]);
    let blob = storage
        .join("blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex());
    assert!(blob.exists());

    let out = Command::new(registry_bin())
        .args(["gc", "--grace", "0s", "--delete-untagged", "--root"])
        .arg(&storage)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!blob.exists());
    let reg = TestRegistry::start_with(|c| c.storage.root = storage.clone()).await;
    let http = Http::new(&reg.url());
    let seen = check_consistent(&http).await;
    assert!(seen.contains(&("cli/app".to_string(), a.digest())));
    assert_eq!(
        http.get(&format!("/v2/cli/app/manifests/{}", b.digest()))
            .await
            .status,
        404
    );
    reg.stop().await;
}

/// With `gc.interval` set, the server collects on its own: an aged,
/// unreferenced blob disappears without anyone calling GC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_server_gc_runs_on_its_schedule() {
    let reg = TestRegistry::start_with(|c| {
        c.gc.interval = Duration::from_millis(20);
        c.gc.grace = Duration::from_secs(60);
    })
    .await;
    let http = Http::new(&reg.url());
    let storage = reg.root.join("storage");
    let d = http
        .push_blob("sched/junk", &random_bytes(10_000, 600))
        .await;
    let p = storage
        .join("blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex());
    std::fs::File::open(&p)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    // Poll the server's own metrics (bounded) until a run freed the blob.
    let mut gone = false;
    for _ in 0..500 {
        let m = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
        if m.lines()
            .any(|l| l.starts_with("vessel_registry_gc_blobs_deleted_total ") && !l.ends_with(" 0"))
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the scheduled GC never deleted the aged blob");
    assert!(!p.exists());
    assert_eq!(
        http.head(&format!("/v2/sched/junk/blobs/{d}")).await.status,
        404
    );
    reg.stop().await;
}
