//! Authentication and TLS, black-box: htpasswd basic auth refuses anonymous
//! pulls and pushes with 401 and the right challenge; token auth issues
//! scoped tokens and a pull-only token cannot push; over TLS our client and
//! skopeo verify the registry's certificate against a test CA.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use bytes::Bytes;
use common::{Http, TestImage, TestRegistry, run};
use vessel_registry::client::{
    Client, ClientConfig, CredentialStore, Credentials, FsStore, NoProgress, PlatformSpec,
    PushImage, Reference,
};
use vessel_registry::config::{AccessRule, HtpasswdConfig, TlsConfig, TokenConfig};
use vessel_registry::oci::{Manifest, OCI_MANIFEST};
use vessel_testkit::{TempRoot, have_command, require};

fn write_htpasswd(path: &Path, users: &[(&str, &str)]) {
    let mut s = String::new();
    for (u, p) in users {
        let _ = writeln!(s, "{u}:{}", bcrypt::hash(p, 4).unwrap());
    }
    std::fs::write(path, s).unwrap();
}

fn basic(u: &str, p: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    )
}

fn client_as(user: Option<(&str, &str)>, host: &str, cfg: ClientConfig) -> Client {
    let mut creds = CredentialStore::new();
    if let Some((u, p)) = user {
        creds.insert(
            host,
            Credentials::Basic {
                username: u.into(),
                password: p.into(),
            },
        );
    }
    Client::new(cfg, creds).unwrap()
}

fn stage(store: &FsStore, img: &TestImage) -> PushImage {
    store.put(&img.config).unwrap();
    for l in &img.layers {
        store.put(l).unwrap();
    }
    let (m, _) = Manifest::parse(&img.manifest, img.media_type).unwrap();
    PushImage::Image {
        manifest: Bytes::from(img.manifest.clone()),
        media_type: img.media_type.to_string(),
        blobs: m.blob_refs().cloned().collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_refuses_anonymous_and_accepts_accounts() {
    let tmp = TempRoot::new("auth-basic");
    let htpasswd = tmp.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "wonderland")]);
    let reg = TestRegistry::start_with(|c| {
        c.auth.htpasswd = Some(HtpasswdConfig {
            realm: "test-realm".into(),
            path: htpasswd.clone(),
        });
    })
    .await;
    let http = Http::new(&reg.url());
    let challenge = "Basic realm=\"test-realm\"";

    // Anonymous: base, pull and push are all 401 with the challenge.
    for (m, p) in [
        ("GET", "/v2/"),
        ("GET", "/v2/sec/app/manifests/v1"),
        (
            "HEAD",
            "/v2/sec/app/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        ("POST", "/v2/sec/app/blobs/uploads/"),
        ("PUT", "/v2/sec/app/manifests/v1"),
        ("GET", "/v2/_catalog"),
    ] {
        let r = http.send(m, p, &[], Bytes::new()).await;
        assert_eq!(r.status, 401, "{m} {p}");
        assert_eq!(r.header("www-authenticate"), Some(challenge), "{m} {p}");
        if m != "HEAD" {
            assert_eq!(r.error_code(), "UNAUTHORIZED");
        }
    }
    // Wrong password.
    let r = http
        .send(
            "GET",
            "/v2/",
            &[("authorization", &basic("alice", "nope"))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 401);
    // Right password.
    let r = http
        .send(
            "GET",
            "/v2/",
            &[("authorization", &basic("alice", "wonderland"))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);

    // The client: anonymous fails clearly, credentials work.
    let img = TestImage::new(&[50_000], 70);
    let src = FsStore::open(tmp.join("src")).unwrap();
    let push = stage(&src, &img);
    let r = Reference::parse(&format!("{}/sec/app:v1", reg.host())).unwrap();
    let anon = client_as(None, &reg.host(), ClientConfig::default());
    let err = anon.push(&r, &push, &src, &NoProgress).await.unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    let alice = client_as(
        Some(("alice", "wonderland")),
        &reg.host(),
        ClientConfig::default(),
    );
    alice.push(&r, &push, &src, &NoProgress).await.unwrap();
    let dst = FsStore::open(tmp.join("dst")).unwrap();
    alice
        .pull(&r, &PlatformSpec::host(), &dst, &NoProgress)
        .await
        .unwrap();
    assert!(
        anon.pull(&r, &PlatformSpec::host(), &dst, &NoProgress)
            .await
            .is_err()
    );
    alice.login(&reg.host()).await.unwrap();
    let mallory = client_as(
        Some(("alice", "guess")),
        &reg.host(),
        ClientConfig::default(),
    );
    assert!(mallory.login(&reg.host()).await.is_err());

    // skopeo with and without credentials.
    let skopeo = have_command("skopeo");
    if !skopeo {
        vessel_testkit::skip(
            module_path!(),
            "skopeo is not installed (apt-get install skopeo): its part of this test did not run",
        );
    }
    if skopeo {
        let policy = tmp.join("policy.json");
        std::fs::write(
            &policy,
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let url = format!("docker://{}/sec/app:v1", reg.host());
        let out = Command::new("skopeo")
            .args([
                "--policy",
                policy.to_str().unwrap(),
                "inspect",
                "--tls-verify=false",
                &url,
            ])
            .env("REGISTRY_AUTH_FILE", tmp.join("auth.json"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "anonymous skopeo inspect must fail");
        run(Command::new("skopeo")
            .args([
                "--policy",
                policy.to_str().unwrap(),
                "inspect",
                "--tls-verify=false",
                "--creds",
                "alice:wonderland",
                &url,
            ])
            .env("REGISTRY_AUTH_FILE", tmp.join("auth.json")));
    }
    reg.stop().await;
}

fn token_config(htpasswd: &Path) -> TokenConfig {
    let rule = |account: &str, repository: &str, actions: &[&str]| AccessRule {
        account: account.into(),
        repository: repository.into(),
        actions: actions.iter().map(ToString::to_string).collect(),
    };
    TokenConfig {
        realm: None,
        service: "vessel-test".into(),
        issuer: "vessel-test-issuer".into(),
        secret_file: None,
        htpasswd: Some(htpasswd.to_path_buf()),
        expiration: std::time::Duration::from_secs(300),
        access: vec![
            rule("alice", "team/*", &["pull", "push", "delete"]),
            rule("bob", "team/*", &["pull"]),
            rule("anonymous", "public/*", &["pull"]),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scopes_are_enforced() {
    let tmp = TempRoot::new("auth-token");
    let htpasswd = tmp.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "a-pass"), ("bob", "b-pass")]);
    let tc = token_config(&htpasswd);
    let reg = TestRegistry::start_with(|c| c.auth.token = Some(tc)).await;
    let http = Http::new(&reg.url());

    // The challenge names the token realm, service and scope.
    let r = http.get("/v2/team/app/manifests/v1").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"http://{}/token\",service=\"vessel-test\",scope=\"repository:team/app:pull\"",
                reg.host()
            )
            .as_str()
        )
    );
    let r = http
        .send("POST", "/v2/team/app/blobs/uploads/", &[], Bytes::new())
        .await;
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("scope=\"repository:team/app:pull,push\"")
    );

    // Bob asks for pull and push; he gets pull only.
    let t = http
        .send(
            "GET",
            "/token?service=vessel-test&scope=repository:team/app:pull,push",
            &[("authorization", &basic("bob", "b-pass"))],
            Bytes::new(),
        )
        .await;
    assert_eq!(t.status, 200);
    let bob_token = t.json()["token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {bob_token}");
    let r = http
        .send(
            "GET",
            "/v2/team/app/tags/list",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        r.status, 404,
        "pull is allowed (the repository just does not exist yet)"
    );
    let r = http
        .send(
            "POST",
            "/v2/team/app/blobs/uploads/",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 401, "a pull-only token cannot push");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
    let r = http
        .send(
            "GET",
            "/v2/other/app/tags/list",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        r.status, 401,
        "token scoped to team/app does not open other/app"
    );
    // Wrong password at the token endpoint.
    let t = http
        .send(
            "GET",
            "/token?service=vessel-test&scope=repository:team/app:pull",
            &[("authorization", &basic("bob", "wrong"))],
            Bytes::new(),
        )
        .await;
    assert_eq!(t.status, 401);
    // A forged token.
    let forged = format!("Bearer {}x", &bob_token[..bob_token.len() - 1]);
    let r = http
        .send(
            "GET",
            "/v2/team/app/tags/list",
            &[("authorization", &forged)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 401);

    // The client goes through the bearer flow on its own.
    let img = TestImage::new(&[80_000, 1000], 71);
    let src = FsStore::open(tmp.join("src")).unwrap();
    let push = stage(&src, &img);
    let r = Reference::parse(&format!("{}/team/app:v1", reg.host())).unwrap();
    let alice = client_as(
        Some(("alice", "a-pass")),
        &reg.host(),
        ClientConfig::default(),
    );
    alice.push(&r, &push, &src, &NoProgress).await.unwrap();
    // Login (what POST /auth does): good credentials pass, bad ones fail.
    client_as(
        Some(("alice", "a-pass")),
        &reg.host(),
        ClientConfig::default(),
    )
    .login(&reg.host())
    .await
    .unwrap();
    let err = client_as(
        Some(("alice", "nope")),
        &reg.host(),
        ClientConfig::default(),
    )
    .login(&reg.host())
    .await
    .unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    let bob = client_as(
        Some(("bob", "b-pass")),
        &reg.host(),
        ClientConfig::default(),
    );
    let dst = FsStore::open(tmp.join("dst")).unwrap();
    bob.pull(&r, &PlatformSpec::host(), &dst, &NoProgress)
        .await
        .unwrap();
    // Tokens are cached per scope: a push and a pull of a 2-layer image
    // (a dozen requests) fetch only a few tokens.
    let metrics = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
    let count = |route: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("vessel_registry_http_requests_total")
                    && l.contains(&format!("route=\"{route}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(count("token") <= 8, "{metrics}");
    assert!(count("blob") + count("blob_upload") >= 12);
    let err = bob
        .put_manifest(
            &r.with_tag("bob"),
            Bytes::from(img.manifest.clone()),
            OCI_MANIFEST,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    assert_eq!(http.get("/v2/team/app/manifests/bob").await.status, 401);

    // Anonymous pulls of public/* work through an anonymous token.
    alice
        .push(
            &Reference::parse(&format!("{}/team/pub:v1", reg.host())).unwrap(),
            &push,
            &src,
            &NoProgress,
        )
        .await
        .unwrap();
    let anon = client_as(None, &reg.host(), ClientConfig::default());
    let pub_ref = Reference::parse(&format!("{}/public/app:v1", reg.host())).unwrap();
    let err = anon
        .pull(&pub_ref, &PlatformSpec::host(), &dst, &NoProgress)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not found"),
        "anonymous may pull public/* (it just is not there): {err}"
    );
    let err = anon
        .pull(&r, &PlatformSpec::host(), &dst, &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    reg.stop().await;
}

struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn make_pki() -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vessel test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_verify_the_certificate() {
    let tmp = TempRoot::new("auth-tls");
    let pki = make_pki();
    std::fs::write(tmp.join("ca.pem"), &pki.ca).unwrap();
    std::fs::write(tmp.join("cert.pem"), &pki.cert).unwrap();
    std::fs::write(tmp.join("key.pem"), &pki.key).unwrap();
    let (cert, key) = (tmp.join("cert.pem"), tmp.join("key.pem"));
    let reg = TestRegistry::start_with(|c| {
        c.server.tls = Some(TlsConfig {
            certificate: cert,
            key,
        });
    })
    .await;
    let host = format!("localhost:{}", reg.addr.port());

    let img = TestImage::new(&[100_000], 72);
    let src = FsStore::open(tmp.join("src")).unwrap();
    let push = stage(&src, &img);
    let r = Reference::parse(&format!("{host}/tls/app:v1")).unwrap();

    // Trusting the test CA: works (and loopback is not treated as insecure).
    let trusting = ClientConfig {
        loopback_insecure: false,
        system_roots: false,
        ca_files: vec![tmp.join("ca.pem")],
        ..ClientConfig::default()
    };
    let c = client_as(None, &host, trusting);
    c.push(&r, &push, &src, &NoProgress).await.unwrap();
    let dst = FsStore::open(tmp.join("dst")).unwrap();
    c.pull(&r, &PlatformSpec::host(), &dst, &NoProgress)
        .await
        .unwrap();

    // certs.d layout works too.
    let certs_d = tmp.join("certs.d").join(&host);
    std::fs::create_dir_all(&certs_d).unwrap();
    std::fs::copy(tmp.join("ca.pem"), certs_d.join("ca.crt")).unwrap();
    let c2 = client_as(
        None,
        &host,
        ClientConfig {
            loopback_insecure: false,
            system_roots: false,
            certs_dir: Some(tmp.join("certs.d")),
            ..ClientConfig::default()
        },
    );
    c2.list_tags(&r).await.unwrap();

    // Not trusting it: refused.
    let strict = client_as(
        None,
        &host,
        ClientConfig {
            loopback_insecure: false,
            max_retries: 0,
            ..ClientConfig::default()
        },
    );
    let err = strict.list_tags(&r).await.unwrap_err();
    let msg = vessel_registry::error_chain(&err);
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");

    // skopeo: verifies with --cert-dir, refuses without.
    let skopeo = have_command("skopeo");
    if !skopeo {
        vessel_testkit::skip(
            module_path!(),
            "skopeo is not installed (apt-get install skopeo): its part of this test did not run",
        );
    }
    if skopeo {
        let policy = tmp.join("policy.json");
        std::fs::write(
            &policy,
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let url = format!("docker://{host}/tls/app:v1");
        let out = Command::new("skopeo")
            .args(["--policy", policy.to_str().unwrap(), "inspect", &url])
            .env("REGISTRY_AUTH_FILE", tmp.join("auth.json"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "skopeo must not trust an unknown CA");
        assert!(String::from_utf8_lossy(&out.stderr).contains("certificate"));
        run(Command::new("skopeo")
            .args([
                "--policy",
                policy.to_str().unwrap(),
                "inspect",
                "--cert-dir",
                certs_d.to_str().unwrap(),
                &url,
            ])
            .env("REGISTRY_AUTH_FILE", tmp.join("auth.json")));
        // A push and a pull over TLS.
        let big = TestImage::new(&[3_000_000, 200_000], 74);
        let layout = tmp.join("layout");
        big.write_oci_layout(&layout, "v1");
        run(Command::new("skopeo")
            .args([
                "--policy",
                policy.to_str().unwrap(),
                "copy",
                "--dest-cert-dir",
                certs_d.to_str().unwrap(),
                &format!("oci:{}:v1", layout.display()),
                &format!("docker://{host}/tls/big:v1"),
            ])
            .env("REGISTRY_AUTH_FILE", tmp.join("auth.json")));
        let back = tmp.join("back");
        run(Command::new("skopeo")
            .args([
                "--policy",
                policy.to_str().unwrap(),
                "copy",
                "--src-cert-dir",
                certs_d.to_str().unwrap(),
                &format!("docker://{host}/tls/big:v1"),
                &format!("oci:{}:v1", back.display()),
            ])
            .env("REGISTRY_AUTH_FILE", tmp.join("auth.json")));
        for l in &big.layers {
            let d = vessel_registry::Digest::sha256_of(l);
            assert_eq!(
                &std::fs::read(back.join("blobs/sha256").join(d.hex())).unwrap(),
                l
            );
        }
        let m = String::from_utf8_lossy(
            &reg.handle
                .as_ref()
                .unwrap()
                .state()
                .metrics
                .render()
                .into_bytes(),
        )
        .into_owned();
        assert!(m.contains("method=\"PATCH\""), "{m}");
    }
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_token_auth() {
    require!(
        have_command("skopeo"),
        "skopeo is not installed (apt-get install skopeo)"
    );
    let tmp = TempRoot::new("auth-skopeo-token");
    let htpasswd = tmp.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "a-pass"), ("bob", "b-pass")]);
    let tc = token_config(&htpasswd);
    let reg = TestRegistry::start_with(|c| c.auth.token = Some(tc)).await;
    let img = TestImage::new(&[30_000], 73);
    let src = tmp.join("layout");
    img.write_oci_layout(&src, "v1");
    let policy = tmp.join("policy.json");
    std::fs::write(
        &policy,
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let copy = |creds: &str| {
        Command::new("skopeo")
            .args([
                "--policy",
                policy.to_str().unwrap(),
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                creds,
                &format!("oci:{}:v1", src.display()),
                &format!("docker://{}/team/sk:v1", reg.host()),
            ])
            .env("REGISTRY_AUTH_FILE", tmp.join("auth.json"))
            .output()
            .unwrap()
    };
    assert!(!copy("bob:b-pass").status.success(), "bob may not push");
    let out = copy("alice:a-pass");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    reg.stop().await;
}
