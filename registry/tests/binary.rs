//! The `vessel-registry` binary: config file plus flags, clear errors for
//! bad configuration, graceful stop on SIGTERM, and the htpasswd helper.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::{Http, registry_bin, spawn_vessel_registry, wait_listening};
use vessel_testkit::TempRoot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_flags_and_sigterm() {
    let tmp = TempRoot::new("bin-config");
    let mut child = Command::new(registry_bin())
        .args(["htpasswd", "dave", "--cost", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"d-pass\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    std::fs::write(tmp.join("htpasswd"), &out.stdout).unwrap();
    std::fs::write(
        tmp.join("registry.toml"),
        format!(
            "[server]\naddr = \"127.0.0.1:1\"\nread_only = true\n[storage]\nroot = \"{}\"\n[auth.htpasswd]\npath = \"{}\"\n",
            tmp.join("storage").display(),
            tmp.join("htpasswd").display()
        ),
    )
    .unwrap();
    // The flag overrides the file's address (port 0: the registry reports
    // the one it bound).
    let cfg = tmp.join("registry.toml");
    let (mut p, addr) = spawn_vessel_registry(&["--config", cfg.to_str().unwrap()], "error");
    assert!(!addr.ends_with(":1"), "{addr}");
    wait_listening(&addr, &mut p).await;
    let http = Http::new(&format!("http://{addr}"));
    assert_eq!(http.get("/v2/").await.status, 401);
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "dave:d-pass")
    );
    let r = http
        .send("GET", "/v2/", &[("authorization", &auth)], Bytes::new())
        .await;
    assert_eq!(r.status, 200);
    let r = http
        .send(
            "POST",
            "/v2/x/blobs/uploads/",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 405, "read_only from the file");

    // SIGTERM: a clean exit.
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(p.pid() as i32, libc::SIGTERM);
    }
    let st = p.child.wait().unwrap();
    assert!(st.success(), "exit status after SIGTERM: {st}");
}

#[test]
fn bad_config_is_refused_with_the_reason() {
    let tmp = TempRoot::new("bin-badconfig");
    std::fs::write(tmp.join("bad.toml"), "[server]\nport = 5000\n").unwrap();
    let out = Command::new(registry_bin())
        .arg("--config")
        .arg(tmp.join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("unknown field `port`"),
        "{err}"
    );

    std::fs::write(tmp.join("driver.toml"), "[storage]\ndriver = \"s3\"\n").unwrap();
    let out = Command::new(registry_bin())
        .arg("--config")
        .arg(tmp.join("driver.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.driver \"s3\" is unknown"));
}
