//! The docker CLI pulling, pushing and logging in through vesseld against a
//! real `vessel-registry` on loopback, with skopeo and `vessel pull` as
//! other clients, and a registry connection that breaks mid-blob.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, json};
use vessel_testkit::TempRoot;

macro_rules! need {
    () => {
        vessel_testkit::require!(common::can_run(), "needs root and the docker CLI");
    };
}

/// A `vessel-registry` on a free port with a temporary root.
struct Registry {
    _tmp: TempRoot,
    child: Child,
    addr: std::net::SocketAddr,
}

fn wait_port(addr: std::net::SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "registry did not come up");
        assert!(child.try_wait().unwrap().is_none(), "registry exited");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Registry {
    fn start(name: &str, htpasswd: Option<(&str, &str)>) -> Registry {
        Registry::start_on(name, "127.0.0.1", htpasswd, &[])
    }

    /// On `ip` (port 0), with extra `vessel-registry` flags.
    fn start_on(name: &str, ip: &str, htpasswd: Option<(&str, &str)>, extra: &[&str]) -> Registry {
        let tmp = TempRoot::new(name);
        // Port 0, and the address from the registry's own log: a port
        // picked here and bound later could be taken by another test's
        // registry in between, and this test would talk to that one.
        let mut cmd = Command::new(vessel_testkit::cargo_bin("vessel-registry"));
        cmd.arg("--addr")
            .arg(format!("{ip}:0"))
            .arg("--log-json")
            .args(extra)
            .arg("--root")
            .arg(tmp.join("storage"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((user, pass)) = htpasswd {
            let mut h = Command::new(vessel_testkit::cargo_bin("vessel-registry"))
                .args(["htpasswd", user, "--cost", "4"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            h.stdin.take().unwrap().write_all(pass.as_bytes()).unwrap();
            let out = h.wait_with_output().unwrap();
            assert!(out.status.success());
            std::fs::write(tmp.join("htpasswd"), &out.stdout).unwrap();
            cmd.arg("--htpasswd").arg(tmp.join("htpasswd"));
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("registry exited before it listened");
            };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "registry listening" {
                let addr: std::net::SocketAddr = v["fields"]["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no address in {line}"));
                break addr;
            }
        };
        // Keep reading so the registry never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        wait_port(addr, &mut child);
        Registry {
            _tmp: tmp,
            child,
            addr,
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn image_id(d: &Daemon, name: &str) -> String {
    d.ok(&["image", "inspect", "--format", "{{.Id}}", name])
        .trim()
        .to_string()
}

/// `curl` with the given arguments; returns stdout (headers included
/// when asked with -i).
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").arg("-sS").args(args).output().unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sha256:<hex>` from a `... digest: sha256:<hex> size: N` push line.
fn pushed_digest(out: &str) -> (String, u64) {
    let line = out
        .lines()
        .find(|l| l.contains(": digest: sha256:"))
        .unwrap_or_else(|| panic!("no digest line in {out}"));
    let mut it = line.split_whitespace();
    let mut digest = String::new();
    let mut size = 0;
    while let Some(w) = it.next() {
        if w == "digest:" {
            digest = it.next().unwrap().to_string();
        } else if w == "size:" {
            size = it.next().unwrap().parse().unwrap();
        }
    }
    (digest, size)
}

#[test]
fn push_pull_run_index_skopeo_and_errors() {
    need!();
    let reg = Registry::start("reg-plain", None);
    let d = Daemon::start("reg-cli");
    d.load_busybox();
    let busybox_id = image_id(&d, "busybox");
    let name = format!("{}/x/busybox:1", reg.host());

    // Push: layers compressed once, config, manifest, digest line.
    d.ok(&["tag", "busybox", &name]);
    let out = d.ok(&["push", &name]);
    assert!(
        out.contains(&format!(
            "The push refers to repository [{}/x/busybox]",
            reg.host()
        )),
        "{out}"
    );
    assert!(out.contains("Pushed"), "{out}");
    let (digest, size) = pushed_digest(&out);
    assert!(size > 0);
    // Pushing again finds every layer there.
    let again = d.ok(&["push", &name]);
    assert!(again.contains("Layer already exists"), "{again}");
    assert_eq!(pushed_digest(&again).0, digest);

    // The registry serves what was pushed, byte-exact under its digest.
    let manifest = curl(&[
        "-H",
        "Accept: application/vnd.docker.distribution.manifest.v2+json",
        &format!("http://{}/v2/x/busybox/manifests/1", reg.host()),
    ]);
    let m = json(&manifest);
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );

    // rmi, pull back, run.
    d.ok(&["rmi", &name, "busybox"]);
    let out = d.ok(&["pull", &name]);
    assert!(out.contains("Pulling from x/busybox"), "{out}");
    assert!(out.contains("Pull complete"), "{out}");
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {name}")),
        "{out}"
    );
    assert_eq!(image_id(&d, &name), busybox_id);
    let inspect = json(&d.ok(&["image", "inspect", &name]));
    assert_eq!(
        inspect[0]["RepoDigests"][0],
        format!("{}/x/busybox@{digest}", reg.host())
    );
    assert_eq!(d.ok(&["run", "--rm", &name, "echo", "pulled"]), "pulled\n");
    let out = d.ok(&["pull", &name]);
    assert!(
        out.contains(&format!("Status: Image is up to date for {name}")),
        "{out}"
    );

    // Events.
    let ev = d.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &format!("{}", now_secs() + 1),
        "--filter",
        "type=image",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ]);
    assert!(ev.contains(&format!("push {name}")), "{ev}");
    assert!(ev.contains(&format!("pull {name}")), "{ev}");

    // skopeo copies what vesseld pushed.
    if vessel_testkit::have_command("skopeo") {
        let tmp = TempRoot::new("reg-skopeo");
        let out = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{name}"))
            .arg(format!("dir:{}", tmp.join("dir").display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy: {}", text(&out));
        let copied = std::fs::read(tmp.join("dir/manifest.json")).unwrap();
        assert_eq!(copied, manifest.as_bytes());
    }

    // A multi-platform index: the daemon picks linux/amd64.
    let other = format!("{}/x/multi:arm", reg.host());
    let tarball = TempRoot::new("reg-other");
    std::fs::create_dir_all(tarball.join("root/etc")).unwrap();
    std::fs::write(tarball.join("root/etc/other"), b"other\n").unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(tarball.join("root"))
        .arg("-cf")
        .arg(tarball.join("other.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    d.ok(&[
        "import",
        tarball.join("other.tar").to_str().unwrap(),
        &other,
    ]);
    let (arm_digest, arm_size) = pushed_digest(&d.ok(&["push", &other]));
    let amd = format!("{}/x/multi:amd", reg.host());
    d.ok(&["tag", &name, &amd]);
    let (amd_digest, amd_size) = pushed_digest(&d.ok(&["push", &amd]));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": arm_digest, "size": arm_size,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": amd_digest, "size": amd_size,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    })
    .to_string();
    curl(&[
        "-f",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.index.v1+json",
        "--data-binary",
        &index,
        &format!("http://{}/v2/x/multi/manifests/1", reg.host()),
    ]);
    let multi = format!("{}/x/multi:1", reg.host());
    let out = d.ok(&["pull", &multi]);
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
    assert_eq!(image_id(&d, &multi), busybox_id);
    let out = d.run(&["pull", "--platform", "linux/s390x", &multi]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no matching manifest for linux/s390x"),
        "{}",
        text(&out)
    );

    // Missing repository and missing tag: Docker's words.
    let out = d.run(&["pull", &format!("{}/x/nope:1", reg.host())]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "pull access denied for {}/x/nope, repository does not exist or may require 'docker login'",
            reg.host()
        )),
        "{}",
        text(&out)
    );
    let out = d.run(&["pull", &format!("{}/x/busybox:nope", reg.host())]);
    assert!(!out.status.success());
    assert!(text(&out).contains("manifest unknown"), "{}", text(&out));
    // Pushing what is not there.
    let out = d.run(&["push", &format!("{}/x/absent:1", reg.host())]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("An image does not exist locally with the tag"),
        "{}",
        text(&out)
    );

    // Our own CLI through the same API.
    let vessel = vessel_testkit::cargo_bin("vessel");
    if vessel.exists() {
        d.ok(&["rmi", &name]);
        let out = Command::new(&vessel)
            .env("VESSEL_HOST", format!("unix://{}", d.sock.display()))
            .env("DOCKER_HOST", format!("unix://{}", d.sock.display()))
            .env("DOCKER_CONFIG", d.tmp.join("docker-config"))
            .args(["pull", &name])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "vessel pull: {}", text(&out));
        assert_eq!(image_id(&d, &name), busybox_id);
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn login_with_htpasswd_then_push_and_pull() {
    need!();
    let reg = Registry::start("reg-auth", Some(("alice", "s3cret")));
    let d = Daemon::start("reg-login");
    d.load_busybox();
    let name = format!("{}/team/busybox:1", reg.host());
    d.ok(&["tag", "busybox", &name]);

    // Anonymous push is refused.
    let out = d.run(&["push", &name]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("unauthorized"), "{}", text(&out));

    // Wrong password, then the right one.
    let out = d.run(&["login", "-u", "alice", "-p", "wrong", &reg.host()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("401 Unauthorized"), "{}", text(&out));
    let out = d.ok(&["login", "-u", "alice", "-p", "s3cret", &reg.host()]);
    assert!(out.contains("Login Succeeded"), "{out}");

    // The CLI now sends the credentials with push and pull.
    let out = d.ok(&["push", &name]);
    assert!(out.contains("digest: sha256:"), "{out}");
    d.ok(&["rmi", &name]);
    let out = d.ok(&["pull", &name]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    d.ok(&["logout", &reg.host()]);
    d.ok(&["rmi", &name]);
    let out = d.run(&["pull", &name]);
    assert!(!out.status.success());
    assert!(text(&out).contains("pull access denied"), "{}", text(&out));
}

/// A TCP proxy in front of the registry that, while `truncate` is set,
/// cuts every blob response off after half its body.
struct Proxy {
    port: u16,
    truncate: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => buf.push(b[0]),
            _ => return None,
        }
    }
    Some(buf)
}

/// Rewrite (or add) `Connection: close` in an HTTP head.
fn close_head(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n") {
        if line.is_empty() || line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn proxy_one(mut client: TcpStream, upstream: u16, truncate: bool) {
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let req = String::from_utf8_lossy(&head).into_owned();
    let content_length = req
        .lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; content_length];
    if client.read_exact(&mut body).is_err() {
        return;
    }
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = up.write_all(&close_head(&head));
    let _ = up.write_all(&body);
    let Some(rhead) = read_head(&mut up) else {
        return;
    };
    let mut rbody = Vec::new();
    let _ = up.read_to_end(&mut rbody);
    let blob = req.starts_with("GET ") && req.contains("/blobs/sha256:");
    let _ = client.write_all(&close_head(&rhead));
    if truncate && blob && rbody.len() > 1 {
        let _ = client.write_all(&rbody[..rbody.len() / 2]);
    } else {
        let _ = client.write_all(&rbody);
    }
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let truncate = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (truncate.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        let tr = t.load(Ordering::SeqCst);
                        std::thread::spawn(move || proxy_one(c, upstream, tr));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            port,
            truncate,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every blob in the daemon's content store hashes to its name, and no
/// blob is stored twice or half.
fn assert_store_consistent(root: &Path) {
    let blobs = root.join("root/images/content/blobs/sha256");
    let dir = if blobs.exists() {
        blobs
    } else {
        // Find the content store wherever the layout put it.
        let out = Command::new("find")
            .arg(root.join("root"))
            .args(["-type", "d", "-path", "*content/blobs/sha256"])
            .output()
            .unwrap();
        let p = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .to_string();
        std::path::PathBuf::from(p)
    };
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let out = Command::new("sha256sum").arg(e.path()).output().unwrap();
        let sum = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            sum.split_whitespace().next().unwrap(),
            e.file_name().to_string_lossy(),
            "blob {} is corrupt",
            e.path().display()
        );
    }
}

#[test]
fn interrupted_pull_leaves_a_consistent_store_and_resumes() {
    need!();
    let reg = Registry::start("reg-cut", None);
    let d = Daemon::start("reg-cut-cli");
    d.load_busybox();
    let direct = format!("{}/x/cut:1", reg.host());
    d.ok(&["tag", "busybox", &direct]);
    d.ok(&["push", &direct]);
    d.ok(&["rmi", &direct, "busybox"]);

    let proxy = Proxy::start(reg.addr.port());
    let via = format!("127.0.0.1:{}/x/cut:1", proxy.port);
    let out = d.run(&["pull", &via]);
    assert!(!out.status.success(), "{}", text(&out));
    let images = d.ok(&["images", "-q"]);
    assert!(images.trim().is_empty(), "{images}");
    assert_store_consistent(d.tmp.path());

    proxy.truncate.store(false, Ordering::SeqCst);
    let out = d.ok(&["pull", &via]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(d.ok(&["run", "--rm", &via, "echo", "ok"]), "ok\n");
    assert_store_consistent(d.tmp.path());
}

#[test]
fn embedded_registry_serves_push_and_pull() {
    need!();
    // Port 0: the daemon logs the address it bound before it serves its
    // API socket, so the line is there once the daemon is up.
    let d = Daemon::start_with("reg-embedded", &["--registry", "127.0.0.1:0"]);
    let log = d.log();
    let addr = log
        .lines()
        .find_map(|l| {
            l.contains("embedded registry listening")
                .then(|| l.split("addr=").nth(1))
                .flatten()
        })
        .map_or_else(
            || panic!("no embedded registry address in the log:\n{log}"),
            |a| a.split_whitespace().next().unwrap_or(a).to_string(),
        );
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    // GET /info says the same.
    let info = json(&curl(&[
        "--unix-socket",
        d.sock.to_str().unwrap(),
        "http://vessel/info",
    ]));
    assert_eq!(info["EmbeddedRegistry"], addr.as_str(), "{info}");
    d.load_busybox();
    let id = image_id(&d, "busybox");
    let name = format!("{addr}/self/busybox:1");
    d.ok(&["tag", "busybox", &name]);
    let out = d.ok(&["push", &name]);
    assert!(out.contains("digest: sha256:"), "{out}");
    assert!(d.tmp.join("root/registry").exists());
    d.ok(&["rmi", &name, "busybox"]);
    let out = d.ok(&["pull", &name]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(image_id(&d, &name), id);
}

/// `curl -i` PUT of a manifest; returns the `Docker-Content-Digest`.
fn put_manifest(url: &str, media_type: &str, body: &str) -> String {
    let out = curl(&[
        "-f",
        "-i",
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {media_type}"),
        "--data-binary",
        body,
        url,
    ]);
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no digest in {out}"))
}

/// Import a one-file image as `name`.
fn import_one_file(d: &Daemon, name: &str) {
    let t = TempRoot::new("reg-onefile");
    std::fs::create_dir_all(t.join("root/etc")).unwrap();
    std::fs::write(t.join("root/etc/other"), b"other\n").unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(t.join("root"))
        .arg("-cf")
        .arg(t.join("other.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    d.ok(&["import", t.join("other.tar").to_str().unwrap(), name]);
}

#[test]
fn multi_platform_index_is_kept_and_pushed_back() {
    need!();
    let reg = Registry::start("reg-index", None);
    let d = Daemon::start("reg-index-cli");
    d.load_busybox();
    let busybox_id = image_id(&d, "busybox");
    let h = reg.host();

    // A two-platform index in src/img: busybox as linux/amd64, a one-file
    // image as linux/arm64/v8; neither stays in the daemon.
    let arm = format!("{h}/src/img:arm");
    import_one_file(&d, &arm);
    let (arm_digest, arm_size) = pushed_digest(&d.ok(&["push", &arm]));
    let amd = format!("{h}/src/img:amd");
    d.ok(&["tag", "busybox", &amd]);
    let (amd_digest, amd_size) = pushed_digest(&d.ok(&["push", &amd]));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": arm_digest, "size": arm_size,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": amd_digest, "size": amd_size,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    })
    .to_string();
    let index_digest = put_manifest(
        &format!("http://{h}/v2/src/img/manifests/multi"),
        "application/vnd.oci.image.index.v1+json",
        &index,
    );
    d.ok(&["rmi", &arm, &amd, "busybox"]);

    // Pull by tag: RepoDigests names the index, as Docker shows it.
    let multi = format!("{h}/src/img:multi");
    let out = d.ok(&["pull", &multi]);
    assert!(out.contains(&format!("Digest: {index_digest}")), "{out}");
    assert_eq!(image_id(&d, &multi), busybox_id);
    let inspect = json(&d.ok(&["image", "inspect", &multi]));
    assert_eq!(
        inspect[0]["RepoDigests"],
        serde_json::json!([format!("{h}/src/img@{index_digest}")])
    );
    let listed = d.ok(&["images", "--digests", "--format", "{{.Digest}}", &multi]);
    assert_eq!(listed.trim(), index_digest);

    // Push to another repository: the arm64 manifest and its blobs are
    // mounted from src/img, and the index arrives byte-exact.
    let copy = format!("{h}/dst/img:copy");
    d.ok(&["tag", &multi, &copy]);
    let out = d.ok(&["push", &copy]);
    assert_eq!(pushed_digest(&out).0, index_digest, "{out}");
    assert!(out.contains("Mounted from src/img"), "{out}");
    assert!(out.contains("linux/arm64/v8: manifest"), "{out}");
    let got = curl(&[
        "-f",
        "-H",
        "Accept: application/vnd.oci.image.index.v1+json",
        &format!("http://{h}/v2/dst/img/manifests/copy"),
    ]);
    assert_eq!(got, index);
    curl(&[
        "-f",
        "-I",
        "-H",
        "Accept: application/vnd.docker.distribution.manifest.v2+json",
        &format!("http://{h}/v2/dst/img/manifests/{arm_digest}"),
    ]);
    let inspect = json(&d.ok(&["image", "inspect", &copy]));
    let rd = inspect[0]["RepoDigests"].to_string();
    assert!(rd.contains(&format!("{h}/dst/img@{index_digest}")), "{rd}");

    // The arm64 manifest gone from both repositories: a push elsewhere
    // cannot complete the index, so the platform manifest goes alone and
    // the progress stream says why.
    for repo in ["src/img", "dst/img"] {
        curl(&[
            "-f",
            "-X",
            "DELETE",
            &format!("http://{h}/v2/{repo}/manifests/{arm_digest}"),
        ]);
    }
    let lone = format!("{h}/lone/img:1");
    d.ok(&["tag", &multi, &lone]);
    let out = d.ok(&["push", &lone]);
    assert!(
        out.contains(&format!("not pushing index {index_digest}")),
        "{out}"
    );
    assert!(out.contains("linux/arm64/v8 is missing"), "{out}");
    assert_eq!(pushed_digest(&out).0, amd_digest, "{out}");

    // save and load still carry the image.
    let tar = d.tmp.join("multi.tar");
    d.ok(&["save", "-o", tar.to_str().unwrap(), &multi]);
    d.ok(&["rmi", &multi, &copy, &lone]);
    d.ok(&["load", "-i", tar.to_str().unwrap()]);
    assert_eq!(image_id(&d, &multi), busybox_id);
}

/// A veth pair (the kernel here has no dummy links) whose one end holds an
/// address from 198.18.0.0/15 (set aside for benchmarks, never routed): a
/// non-loopback address that lives on this machine, so traffic to it stays
/// here. Deleting one end on drop removes both.
struct VethAddr {
    link: String,
    ip: String,
}

impl VethAddr {
    fn new() -> VethAddr {
        let pid = std::process::id();
        let link = format!("vreg{:x}", pid & 0xff_ffff);
        let peer = format!("{link}p");
        let ip = format!("198.18.{}.{}", (pid >> 8) & 0xff, pid % 253 + 1);
        let ip_cmd = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", text(&out));
        };
        ip_cmd(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        let a = VethAddr { link, ip };
        ip_cmd(&["addr", "add", &format!("{}/32", a.ip), "dev", &a.link]);
        ip_cmd(&["link", "set", &a.link, "up"]);
        ip_cmd(&["link", "set", &peer, "up"]);
        a
    }
}

impl Drop for VethAddr {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
    }
}

#[test]
fn insecure_registry_on_a_non_loopback_address() {
    need!();
    vessel_testkit::require!(
        vessel_testkit::have_command("ip") && vessel_testkit::have_command("openssl"),
        "needs ip (iproute2) and openssl"
    );
    let veth = VethAddr::new();
    let certs = TempRoot::new("reg-selfsigned");
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=vessel-test", "-addext"])
        .arg(format!("subjectAltName=IP:{}", veth.ip))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", text(&out));
    let plain = Registry::start_on("reg-insecure-http", &veth.ip, None, &[]);
    let tls = Registry::start_on(
        "reg-insecure-tls",
        &veth.ip,
        None,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let strict = Registry::start_on("reg-strict-http", &veth.ip, None, &[]);
    let d = Daemon::start_with(
        "reg-insecure-cli",
        &[
            "--insecure-registry",
            &plain.host(),
            "--insecure-registry",
            &tls.host(),
        ],
    );
    d.load_busybox();
    let busybox_id = image_id(&d, "busybox");
    let ic = json(&d.ok(&["info", "--format", "{{json .RegistryConfig.IndexConfigs}}"]));
    assert_eq!(ic[plain.host()]["Secure"], false, "{ic}");
    assert_eq!(ic["docker.io"]["Secure"], true, "{ic}");

    // Listed: plain HTTP (https is tried first and fails), and https with
    // a certificate nobody here trusts.
    for reg in [&plain, &tls] {
        let name = format!("{}/x/bb:1", reg.host());
        d.ok(&["tag", "busybox", &name]);
        let out = d.ok(&["push", &name]);
        assert!(out.contains("digest: sha256:"), "{out}");
        d.ok(&["rmi", &name]);
        let out = d.ok(&["pull", &name]);
        assert!(out.contains("Downloaded newer image"), "{out}");
        assert_eq!(image_id(&d, &name), busybox_id);
    }

    // Not listed: https only, and a plain HTTP registry is refused.
    let name = format!("{}/x/bb:1", strict.host());
    d.ok(&["tag", "busybox", &name]);
    let out = d.run(&["push", &name]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("server gave HTTP response to HTTPS client"),
        "{}",
        text(&out)
    );
    let out = d.run(&["pull", &format!("{}/x/bb:1", strict.host())]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("server gave HTTP response to HTTPS client"),
        "{}",
        text(&out)
    );
}
