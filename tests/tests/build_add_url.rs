//! `ADD <url>` and `COPY --link` end to end: the real docker CLI (classic
//! `POST /build`) against a private vesseld with busybox loaded, a plain
//! HTTP server in this test and `openssl s_server` as the HTTPS server,
//! all on loopback. The daemon trusts the test's CA the way it trusts a
//! registry's: through the system trust store, here `SSL_CERT_FILE`. One
//! daemon serves every case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::Daemon;

/// `Last-Modified` of /file.txt and the mtime it stands for.
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const LAST_MODIFIED_SECS: u64 = 1_445_412_480;
/// What the HTTPS server serves.
const TLS_BODY: &str = "served over https\n";

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn context(d: &Daemon, name: &str, dockerfile: &str) -> PathBuf {
    let dir = d.tmp.join(vessel_testkit::unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "Dockerfile", dockerfile);
    dir
}

fn build(d: &Daemon, dir: &Path, extra: &[&str]) -> (bool, String) {
    let out: Output = d
        .docker()
        .env("DOCKER_BUILDKIT", "0")
        .arg("build")
        .args(extra)
        .arg(dir)
        .output()
        .expect("run docker build");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn build_ok(d: &Daemon, dir: &Path, extra: &[&str]) -> String {
    let (ok, text) = build(d, dir, extra);
    assert!(ok, "docker build failed: {text}\ndaemon log:\n{}", d.log());
    text
}

fn build_err(d: &Daemon, dir: &Path) -> String {
    let (ok, text) = build(d, dir, &[]);
    assert!(!ok, "docker build should fail: {text}");
    text
}

/// Whether the step whose instruction is `ins` was taken from the cache.
fn cached(out: &str, ins: &str) -> bool {
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        if l.starts_with("Step ") && l.ends_with(&format!(" : {ins}")) {
            return lines.next() == Some(" ---> Using cache");
        }
    }
    panic!("no step {ins:?} in:\n{out}");
}

fn layers(d: &Daemon, image: &str) -> Vec<String> {
    let v = common::json(&d.ok(&["image", "inspect", image]));
    v[0]["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, made in `dir` as
/// `<name>-ca.pem`, `<name>.pem` and `<name>.key`.
fn make_pki(dir: &Path, name: &str) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let cert = format!("{name}.pem");
    let ext = format!("{name}.ext");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN=vessel test CA {name}"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    write(
        dir,
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// `openssl s_server -WWW` serving the files of a directory over HTTPS
/// on a loopback port it picks; stopped on drop.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path, name: &str) -> TlsServer {
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-WWW", "-cert"])
            .arg(format!("{name}.pem"))
            .arg("-key")
            .arg(format!("{name}.key"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut port = None;
        let mut line = String::new();
        while out.read_line(&mut line).unwrap() > 0 {
            if let Some(p) = line.trim().strip_prefix("ACCEPT 127.0.0.1:") {
                port = Some(p.parse().unwrap());
                break;
            }
            line.clear();
        }
        // Keep draining what it prints so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        TlsServer {
            child,
            port: port.expect("openssl s_server printed its port"),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 server on loopback with the routes the cases use;
/// each connection carries one request.
struct HttpServer {
    port: u16,
    /// The body of /file.txt, changeable between builds.
    file: Arc<Mutex<String>>,
    /// Requests for /file.txt.
    hits: Arc<AtomicUsize>,
}

impl HttpServer {
    fn start(tls_port: u16) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let file = Arc::new(Mutex::new("version one\n".to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (f, h) = (file.clone(), hits.clone());
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(c) = c else { continue };
                Self::answer(c, tls_port, &f, &h);
            }
        });
        HttpServer { port, file, hits }
    }

    fn answer(mut c: TcpStream, tls_port: u16, file: &Mutex<String>, hits: &AtomicUsize) {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&req);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let redirect = |status: &str, to: &str| {
            format!(
                "HTTP/1.1 {status}\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        let answer = match path.as_str() {
            "/file.txt" => {
                hits.fetch_add(1, Ordering::SeqCst);
                let body = file.lock().unwrap().clone();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: {LAST_MODIFIED}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            }
            "/r1" => redirect("302 Found", "/r2"),
            "/r2" => redirect(
                "307 Temporary Redirect",
                &format!("http://127.0.0.1:{}/chunked", c.local_addr().unwrap().port()),
            ),
            "/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n9\r\nchunked, \r\nb\r\nredirected\n\r\n0\r\n\r\n".to_string(),
            "/to-https" => redirect(
                "301 Moved Permanently",
                &format!("https://127.0.0.1:{tls_port}/tls.txt"),
            ),
            "/short" => "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly ten b".to_string(),
            _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
        };
        let _ = c.write_all(answer.as_bytes());
    }
}

fn sha256_hex(data: &str) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn add_url_and_copy_link() {
    if !common::can_run() {
        vessel_testkit::require!(false, "needs root and the docker CLI");
        return;
    }
    vessel_testkit::require!(
        vessel_testkit::have_command("openssl"),
        "needs openssl (scripts/deps.sh)"
    );
    let t0 = std::time::Instant::now();
    let pki = vessel_testkit::TempRoot::new("add-url-pki");
    make_pki(pki.path(), "good");
    make_pki(pki.path(), "rogue");
    write(pki.path(), "tls.txt", TLS_BODY);
    let tls = TlsServer::start(pki.path(), "good");
    let rogue = TlsServer::start(pki.path(), "rogue");
    let http = HttpServer::start(tls.port);

    let ca = pki.join("good-ca.pem");
    let d = Daemon::start_with_env(
        "build-add-url",
        &[],
        &[("SSL_CERT_FILE", ca.to_str().expect("UTF-8 path"))],
    );
    d.load_busybox();
    let t_setup = t0.elapsed();

    let t = std::time::Instant::now();
    downloads(&d, &http, &tls, &rogue);
    let t_add = t.elapsed();
    let t = std::time::Instant::now();
    copy_link(&d);
    eprintln!(
        "setup {:.2} s, ADD <url> {:.2} s, COPY --link {:.2} s",
        t_setup.as_secs_f64(),
        t_add.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}

fn downloads(d: &Daemon, http: &HttpServer, tls: &TlsServer, rogue: &TlsServer) {
    let p = http.port;
    let sum = sha256_hex(TLS_BODY);
    let df = format!(
        "FROM busybox\n\
         ADD http://127.0.0.1:{p}/file.txt /web/\n\
         ADD --chmod=644 --chown=1:2 http://127.0.0.1:{p}/r1 /web/redirected.txt\n\
         ADD http://127.0.0.1:{p}/to-https /web/\n\
         ADD --checksum=sha256:{sum} https://127.0.0.1:{}/tls.txt /web/tls.txt\n",
        tls.port
    );
    let dir = context(d, "ctx-url", &df);
    build_ok(d, &dir, &["-t", "urls:1"]);
    let out = d.ok(&[
        "run",
        "--rm",
        "urls:1",
        "sh",
        "-c",
        "cd /web && cat file.txt redirected.txt to-https tls.txt && \
         stat -c '%n %a %u:%g %Y' file.txt redirected.txt to-https tls.txt",
    ]);
    assert_eq!(
        out,
        format!(
            "version one\nchunked, redirected\n{TLS_BODY}{TLS_BODY}\
             file.txt 600 0:0 {LAST_MODIFIED_SECS}\n\
             redirected.txt 644 1:2 0\n\
             to-https 600 0:0 0\n\
             tls.txt 600 0:0 0\n"
        )
    );

    // Downloaded again, the same content hits the cache.
    let before = http.hits.load(Ordering::SeqCst);
    let out = build_ok(d, &dir, &["-t", "urls:2"]);
    assert_eq!(http.hits.load(Ordering::SeqCst), before + 1);
    assert!(
        cached(&out, &format!("ADD http://127.0.0.1:{p}/file.txt /web/")),
        "{out}"
    );
    assert_eq!(layers(d, "urls:1"), layers(d, "urls:2"));
    // New content misses it.
    *http.file.lock().unwrap() = "version two\n".to_string();
    let out = build_ok(d, &dir, &["-t", "urls:3"]);
    assert!(
        !cached(&out, &format!("ADD http://127.0.0.1:{p}/file.txt /web/")),
        "{out}"
    );
    let out = d.ok(&["run", "--rm", "urls:3", "cat", "/web/file.txt"]);
    assert_eq!(out, "version two\n");

    // Failures name the URL and what went wrong; no image is made.
    let cases = [
        (
            format!("ADD http://127.0.0.1:{p}/missing /x\n"),
            format!("ADD http://127.0.0.1:{p}/missing: server answered 404"),
        ),
        (
            format!("ADD http://127.0.0.1:{p}/short /x\n"),
            format!(
                "ADD http://127.0.0.1:{p}/short: the body ended after 10 of the 100 bytes announced"
            ),
        ),
        (
            format!(
                "ADD --checksum=sha256:{} https://127.0.0.1:{}/tls.txt /x\n",
                "0".repeat(64),
                tls.port
            ),
            format!(
                "checksum mismatch: expected sha256:{}, downloaded sha256:{sum}",
                "0".repeat(64)
            ),
        ),
        (
            format!("ADD https://127.0.0.1:{}/tls.txt /x\n", rogue.port),
            format!(
                "ADD https://127.0.0.1:{0}/tls.txt: TLS handshake with 127.0.0.1:{0} failed: the server's certificate is not trusted",
                rogue.port
            ),
        ),
    ];
    for (step, want) in cases {
        let dir = context(d, "ctx-url-err", &format!("FROM busybox\n{step}"));
        let err = build_err(d, &dir);
        assert!(err.contains(&want), "want {want:?} in:\n{err}");
    }
    d.ok(&["rmi", "urls:1", "urls:2", "urls:3"]);
}

fn copy_link(d: &Daemon) {
    let dir = context(
        d,
        "ctx-link",
        "FROM busybox\n\
         ARG V=1\n\
         RUN mkdir -p /app /data && echo base-$V > /app/base.txt && ln -s /data /link\n\
         COPY f.txt /link/nolink.txt\n\
         COPY --link f.txt /app/\n\
         COPY --link --chown=7:8 f.txt /link/\n\
         RUN cat /app/base.txt /app/f.txt > /after.txt\n",
    );
    write(&dir, "f.txt", "file\n");
    let first = build_ok(d, &dir, &["--build-arg", "V=1", "-t", "link:1"]);
    assert!(!cached(&first, "COPY --link f.txt /app/"), "{first}");
    let out = build_ok(d, &dir, &["--build-arg", "V=2", "-t", "link:2"]);
    // The RUN before changed: steps on the old parent rebuild, the --link
    // layers are found again, the RUN after them rebuilds.
    assert!(
        !cached(
            &out,
            "RUN mkdir -p /app /data && echo base-$V > /app/base.txt && ln -s /data /link"
        ),
        "{out}"
    );
    assert!(!cached(&out, "COPY f.txt /link/nolink.txt"), "{out}");
    assert!(cached(&out, "COPY --link f.txt /app/"), "{out}");
    assert!(
        cached(&out, "COPY --link --chown=7:8 f.txt /link/"),
        "{out}"
    );
    assert!(
        !cached(&out, "RUN cat /app/base.txt /app/f.txt > /after.txt"),
        "{out}"
    );
    let (l1, l2) = (layers(d, "link:1"), layers(d, "link:2"));
    let n = l1.len();
    assert_eq!(n, l2.len());
    assert_ne!(l1[n - 5], l2[n - 5], "the RUN's layer");
    assert_eq!(l1[n - 3], l2[n - 3], "COPY --link f.txt /app/");
    assert_eq!(l1[n - 2], l2[n - 2], "COPY --link f.txt /link/");
    assert_ne!(l1[n - 1], l2[n - 1], "the last RUN's layer");

    // The layer sits on the new parent: /app merges with the parent's
    // directory, and /link, a symlink below, is a directory in the --link
    // layer (it does not follow the symlink, the plain COPY did).
    let out = d.ok(&[
        "run",
        "--rm",
        "link:2",
        "sh",
        "-c",
        "cat /after.txt; ls /app /data /link; test -L /link || echo link is a directory; \
         stat -c '%u:%g' /link/f.txt /app/f.txt",
    ]);
    assert_eq!(
        out,
        "base-2\nfile\n/app:\nbase.txt\nf.txt\n\n/data:\nnolink.txt\n\n/link:\nf.txt\nlink is a directory\n7:8\n0:0\n"
    );
    // A full rebuild with the same argument hits every step.
    let out = build_ok(d, &dir, &["--build-arg", "V=2", "-t", "link:3"]);
    assert!(
        cached(&out, "RUN cat /app/base.txt /app/f.txt > /after.txt"),
        "{out}"
    );
    assert_eq!(layers(d, "link:3"), l2);
    d.ok(&["rmi", "link:1", "link:2", "link:3"]);
}
