//! Helpers shared by the registry's black-box tests: a registry on a
//! loopback port, a small HTTP client, test images made from random bytes,
//! and child processes that are killed when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use vessel_registry::Digest;
use vessel_registry::config::Config;
use vessel_registry::server::{Server, ServerHandle};
use vessel_testkit::TempRoot;

/// A registry served by the library on 127.0.0.1:<free port>.
pub struct TestRegistry {
    pub handle: Option<ServerHandle>,
    pub root: TempRoot,
    pub addr: SocketAddr,
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestRegistry {
        let root = TempRoot::new("registry");
        let mut cfg = Config::default();
        cfg.server.addr = "127.0.0.1:0".parse().unwrap();
        cfg.server.access_log = false;
        cfg.storage.root = root.join("storage");
        tweak(&mut cfg);
        let handle = Server::start(cfg).await.expect("start registry");
        let addr = handle.local_addr();
        TestRegistry {
            handle: Some(handle),
            root,
            addr,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first OCI error code in the body.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Minimal HTTP/1.1 client against one base URL.
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).unwrap();
        let resp = self.client.request(req).await.expect("send request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("read body")
            .to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Like [`Http::send`], but `None` when the connection fails.
    pub async fn client_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Option<Resp> {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .client
            .request(b.body(Full::new(body)).unwrap())
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Resp {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], Bytes::new()).await
    }

    pub async fn head(&self, path: &str) -> Resp {
        self.send("HEAD", path, &[], Bytes::new()).await
    }

    /// Monolithic upload (POST then PUT); returns the digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        let r = self
            .send(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 202, "start upload: {r:?}");
        let loc = r.header("location").unwrap().to_string();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .send(
                "PUT",
                &format!("{loc}{sep}digest={d}"),
                &[("content-type", "application/octet-stream")],
                Bytes::copy_from_slice(data),
            )
            .await;
        assert_eq!(r.status, 201, "finish upload: {r:?}");
        d
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        self.send(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            Bytes::copy_from_slice(body),
        )
        .await
    }
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A gzip-compressed tar layer holding one file of `size` random bytes.
pub fn make_layer(size: usize, seed: u64) -> Vec<u8> {
    make_layer_with_diff_id(size, seed).0
}

/// A layer and the digest of its uncompressed tar (its diff ID).
pub fn make_layer_with_diff_id(size: usize, seed: u64) -> (Vec<u8>, Digest) {
    let data = random_bytes(size, seed);
    let mut tar_buf = Vec::new();
    {
        let mut ar = tar::Builder::new(&mut tar_buf);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        ar.append_data(&mut h, format!("data-{seed}.bin"), data.as_slice())
            .unwrap();
        ar.finish().unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_buf).unwrap();
    (gz.finish().unwrap(), Digest::sha256_of(&tar_buf))
}

/// An image: config, layers and the manifest that ties them.
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
}

impl TestImage {
    pub fn new(layer_sizes: &[usize], seed: u64) -> TestImage {
        Self::with_type(layer_sizes, seed, vessel_registry::oci::OCI_MANIFEST)
    }

    pub fn with_type(layer_sizes: &[usize], seed: u64, media_type: &'static str) -> TestImage {
        let (layers, diff_ids): (Vec<Vec<u8>>, Vec<Digest>) = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, s)| make_layer_with_diff_id(*s, seed * 1000 + i as u64))
            .unzip();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": ["/bin/sh"], "Labels": { "seed": seed.to_string() } },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .unwrap();
        let docker = media_type == vessel_registry::oci::DOCKER_MANIFEST;
        let (cfg_type, layer_type) = if docker {
            (
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": { "mediaType": cfg_type, "digest": Digest::sha256_of(&config), "size": config.len() },
            "layers": layers.iter().map(|l| json!({
                "mediaType": layer_type, "digest": Digest::sha256_of(l), "size": l.len()
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        TestImage {
            config,
            layers,
            manifest,
            media_type,
        }
    }

    pub fn digest(&self) -> Digest {
        Digest::sha256_of(&self.manifest)
    }

    pub async fn push(&self, http: &Http, repo: &str, tag: &str) -> Digest {
        http.push_blob(repo, &self.config).await;
        for l in &self.layers {
            http.push_blob(repo, l).await;
        }
        let r = http
            .push_manifest(repo, tag, self.media_type, &self.manifest)
            .await;
        assert_eq!(r.status, 201, "push manifest: {r:?}");
        self.digest()
    }

    /// Write this image as an OCI image layout directory (for skopeo).
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        for b in std::iter::once(&self.config)
            .chain(self.layers.iter())
            .chain(std::iter::once(&self.manifest))
        {
            std::fs::write(blobs.join(Digest::sha256_of(b).hex()), b).unwrap();
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": vessel_registry::oci::OCI_INDEX,
            "manifests": [{
                "mediaType": self.media_type,
                "digest": self.digest(),
                "size": self.manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

/// An index over several images (one per platform).
pub fn make_index(images: &[(&TestImage, &str)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": vessel_registry::oci::OCI_INDEX,
        "manifests": images.iter().map(|(img, arch)| json!({
            "mediaType": img.media_type,
            "digest": img.digest(),
            "size": img.manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawn `cmd` (which binds port 0) with stderr piped, read its log until
/// `find` yields the address it listens on, and drain the rest on a thread
/// so the child never blocks on a full pipe. Asking the process for its
/// address closes the race of picking a free port here and binding it
/// there later, when another test may take it in between.
pub fn spawn_listening(
    name: &str,
    cmd: &mut Command,
    find: impl Fn(&str) -> Option<String>,
) -> (Proc, String) {
    use std::io::BufRead as _;
    let mut p = Proc::spawn(name, cmd.stderr(Stdio::piped()));
    let stderr = p.child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            p.kill();
            panic!("{name} exited before it listened:\n{}", seen.join("\n"));
        };
        if let Some(a) = find(&line) {
            break a;
        }
        seen.push(line);
    };
    std::thread::spawn(move || lines.for_each(drop));
    (p, addr)
}

/// The address in `vessel-registry --log-json`'s "registry listening".
pub fn vessel_registry_listening(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["fields"]["message"] != "registry listening" {
        return None;
    }
    v["fields"]["addr"].as_str().map(String::from)
}

/// Start `vessel-registry serve`-style `args` on 127.0.0.1:0 (the caller
/// passes no `--addr`); returns the process and its address. The log
/// level keeps the listening line whatever `level` says otherwise.
pub fn spawn_vessel_registry(args: &[&str], level: &str) -> (Proc, String) {
    spawn_listening(
        "vessel-registry",
        Command::new(registry_bin())
            .args(args)
            .args(["--addr", "127.0.0.1:0", "--log-json", "--log"])
            .arg(format!("{level},vessel_registry::server=info"))
            .stdout(Stdio::null()),
        vessel_registry_listening,
    )
}

/// The address in distribution's `msg="listening on ADDR"` (2.8 logs the
/// bound address, so port 0 in its config works).
pub fn distribution_listening(line: &str) -> Option<String> {
    let rest = &line[line.find("msg=\"listening on ")? + "msg=\"listening on ".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Wait until `addr` accepts TCP connections (polling a real readiness
/// condition, bounded).
pub async fn wait_listening(addr: &str, proc_: &mut Proc) {
    for _ in 0..500 {
        if let Ok(Some(st)) = proc_.child.try_wait() {
            panic!("{} exited before listening: {st}", proc_.name);
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} did not listen on {addr}", proc_.name);
}

/// Run a command, panic with its output on failure, return stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Path to the `vessel-registry` binary built for these tests.
pub fn registry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vessel-registry"))
}
