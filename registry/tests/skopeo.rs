//! skopeo against vessel-registry: copy in both directions (including
//! `--all` on an index), registry-to-registry copies that mount blobs,
//! inspect, list-tags and delete.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Http, TestImage, TestRegistry, make_index, run};
use vessel_registry::Digest;
use vessel_registry::oci::OCI_INDEX;
use vessel_testkit::{TempRoot, have_command, require};

fn skopeo(tmp: &Path) -> Command {
    let policy = tmp.join("policy.json");
    if !policy.exists() {
        std::fs::write(
            &policy,
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
    }
    let mut c = Command::new("skopeo");
    c.arg("--policy")
        .arg(&policy)
        .env("REGISTRY_AUTH_FILE", tmp.join("auth.json"));
    c
}

fn blob_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copy_inspect_list_delete() {
    require!(
        have_command("skopeo"),
        "skopeo is not installed (apt-get install skopeo)"
    );
    let reg = TestRegistry::start().await;
    let tmp = TempRoot::new("skopeo");
    let http = Http::new(&reg.url());
    let host = reg.host();

    // Push from an OCI layout (streamed PATCH uploads).
    let img = TestImage::new(&[300_000, 1_000_000, 50_000], 30);
    let src = tmp.join("src");
    img.write_oci_layout(&src, "v1");
    run(skopeo(tmp.path()).args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{host}/sk/app:v1"),
    ]));
    let r = http.get("/v2/sk/app/manifests/v1").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.as_ref(),
        img.manifest.as_slice(),
        "manifest kept byte-exact"
    );

    // Registry to registry in the same registry: blobs are mounted.
    run(skopeo(tmp.path()).args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{host}/sk/app:v1"),
        &format!("docker://{host}/sk/copy:v1"),
    ]));
    assert_eq!(http.get("/v2/sk/copy/manifests/v1").await.status, 200);

    // Inspect.
    let out = run(skopeo(tmp.path()).args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{host}/sk/app:v1"),
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Digest"], img.digest().to_string());
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3);
    let out = run(skopeo(tmp.path()).args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/sk/app:v1"),
    ]));
    assert_eq!(out.as_bytes(), img.manifest.as_slice());

    // Pull back and compare every blob.
    let dst = tmp.join("dst");
    run(skopeo(tmp.path()).args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host}/sk/app:v1"),
        &format!("oci:{}:v1", dst.display()),
    ]));
    assert_eq!(blob_files(&src), blob_files(&dst));
    for l in &img.layers {
        let d = Digest::sha256_of(l);
        assert_eq!(
            &std::fs::read(dst.join("blobs/sha256").join(d.hex())).unwrap(),
            l
        );
    }

    // list-tags.
    for t in ["v2", "v3"] {
        run(skopeo(tmp.path()).args([
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{host}/sk/app:v1"),
            &format!("docker://{host}/sk/app:{t}"),
        ]));
    }
    let out = run(skopeo(tmp.path()).args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/sk/app"),
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Tags"], serde_json::json!(["v1", "v2", "v3"]));

    // delete (by digest: every tag of the manifest goes).
    run(skopeo(tmp.path()).args([
        "delete",
        "--tls-verify=false",
        &format!("docker://{host}/sk/app:v1"),
    ]));
    assert_eq!(http.get("/v2/sk/app/manifests/v1").await.status, 404);
    assert_eq!(http.get("/v2/sk/app/manifests/v3").await.status, 404);
    assert_eq!(
        http.get("/v2/sk/copy/manifests/v1").await.status,
        200,
        "other repositories keep theirs"
    );
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copy_all_on_an_index() {
    require!(
        have_command("skopeo"),
        "skopeo is not installed (apt-get install skopeo)"
    );
    let reg = TestRegistry::start().await;
    let tmp = TempRoot::new("skopeo-all");
    let http = Http::new(&reg.url());
    let host = reg.host();

    // An OCI layout whose tag names an index over two platform images.
    let amd = TestImage::new(&[200_000], 31);
    let arm = TestImage::new(&[150_000, 10_000], 32);
    let src = tmp.join("src");
    amd.write_oci_layout(&src, "amd");
    let arm_dir = tmp.join("arm");
    arm.write_oci_layout(&arm_dir, "arm");
    for f in std::fs::read_dir(arm_dir.join("blobs/sha256")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), src.join("blobs/sha256").join(f.file_name())).unwrap();
    }
    let index = make_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    let index_d = Digest::sha256_of(&index);
    std::fs::write(src.join("blobs/sha256").join(index_d.hex()), &index).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": OCI_INDEX, "digest": index_d, "size": index.len(),
                        "annotations": { "org.opencontainers.image.ref.name": "multi" } }],
    });
    std::fs::write(src.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    run(skopeo(tmp.path()).args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", src.display()),
        &format!("docker://{host}/sk/multi:v1"),
    ]));
    let r = http
        .send(
            "GET",
            "/v2/sk/multi/manifests/v1",
            &[("accept", OCI_INDEX)],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), index.as_slice());
    for img in [&amd, &arm] {
        assert_eq!(
            http.get(&format!("/v2/sk/multi/manifests/{}", img.digest()))
                .await
                .status,
            200
        );
    }

    // Copy the whole index back out.
    let dst = tmp.join("dst");
    run(skopeo(tmp.path()).args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{host}/sk/multi:v1"),
        &format!("oci:{}:multi", dst.display()),
    ]));
    let got = blob_files(&dst);
    for b in [
        &index,
        &amd.manifest,
        &arm.manifest,
        &amd.layers[0],
        &arm.layers[1],
    ] {
        assert!(got.contains(&Digest::sha256_of(b).hex().to_string()));
    }
    reg.stop().await;
}
