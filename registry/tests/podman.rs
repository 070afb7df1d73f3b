//! podman pull and push against vessel-registry, with podman's storage in
//! a temporary directory (vfs driver, cgroupfs manager: nothing is run).

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Http, TestImage, TestRegistry, run};
use vessel_testkit::{TempRoot, have_command, is_root, require};

fn podman(tmp: &Path) -> Command {
    let conf = tmp.join("containers.conf");
    if !conf.exists() {
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n",
        )
        .expect("write podman test config");
        std::fs::write(
            tmp.join("policy.json"),
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("write podman test config");
        std::fs::write(
            tmp.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .expect("write podman test config");
        std::fs::write(tmp.join("auth.json"), b"{\"auths\":{}}").expect("write podman test config");
    }
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", &conf)
        .env("CONTAINERS_REGISTRIES_CONF", tmp.join("registries.conf"))
        .env("REGISTRY_AUTH_FILE", tmp.join("auth.json"))
        .arg("--root")
        .arg(tmp.join("root"))
        .arg("--runroot")
        .arg(tmp.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ]);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pull_and_push() {
    require!(
        have_command("podman"),
        "podman is not installed (apt-get install podman)"
    );
    require!(
        is_root(),
        "podman with a private storage root needs root here"
    );
    let reg = TestRegistry::start().await;
    let tmp = TempRoot::new("podman");
    let http = Http::new(&reg.url());
    let host = reg.host();
    let img = TestImage::new(&[400_000, 20_000], 50);
    img.push(&http, "pod/app", "v1").await;

    let policy = tmp.join("policy.json");
    let _ = podman(tmp.path());
    run(podman(tmp.path()).args([
        "pull",
        "--tls-verify=false",
        "--signature-policy",
        policy.to_str().unwrap(),
        &format!("{host}/pod/app:v1"),
    ]));
    let out = run(podman(tmp.path()).args(["image", "inspect", &format!("{host}/pod/app:v1")]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["Digest"], img.digest().to_string());
    assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 2);

    // Push it back under another name: podman recompresses from its storage.
    run(podman(tmp.path()).args([
        "push",
        "--tls-verify=false",
        "--signature-policy",
        policy.to_str().unwrap(),
        &format!("{host}/pod/app:v1"),
        &format!("docker://{host}/pod/pushed:v1"),
    ]));
    let r = http.get("/v2/pod/pushed/manifests/v1").await;
    assert_eq!(r.status, 200);
    let m = r.json();
    assert_eq!(m["layers"].as_array().unwrap().len(), 2);
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(
            http.head(&format!("/v2/pod/pushed/blobs/{d}")).await.status,
            200
        );
    }
    // Clean podman's storage (vfs has no mounts, but be thorough).
    let _ = podman(tmp.path()).args(["rmi", "-a", "-f"]).output();
    reg.stop().await;
}
