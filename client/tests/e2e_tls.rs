//! End-to-end: a daemon on TCP with TLS and client certificates (a private
//! dockerd on 127.0.0.1), reached with `--tlsverify` flags, with
//! `DOCKER_CERT_PATH`/`DOCKER_TLS_VERIFY`, and refused without a client
//! certificate or against the wrong CA.

// Short names (d: daemon, o: output) keep the scenario readable.
#![allow(clippy::many_single_char_names)]

mod common;

use common::{stderr, stdout, vessel_cmd};
use vessel_testkit::TempRoot;

struct Pki {
    dir: TempRoot,
}

fn issue(
    ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>,
    name: &str,
    sans: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_string()).collect::<Vec<_>>())
            .expect("certificate params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().expect("generate key");
    let cert = params.signed_by(&key, ca).expect("sign certificate");
    (cert.pem(), key.serialize_pem())
}

fn make_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().expect("CA key"))
        .expect("self-sign CA")
}

fn make_pki() -> Pki {
    let dir = TempRoot::new("cli-tls");
    let ca = make_ca("vessel cli test CA");
    let (server, server_key) = issue(
        &ca,
        "127.0.0.1",
        &["127.0.0.1", "localhost"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = issue(
        &ca,
        "client",
        &[],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let other = make_ca("another CA");
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write pem");
    write("ca.pem", &ca.pem());
    write("server.pem", &server);
    write("server-key.pem", &server_key);
    write("cert.pem", &client);
    write("key.pem", &client_key);
    write("other-ca.pem", &other.pem());
    Pki { dir }
}

#[test]
fn tls_with_client_certificates() {
    let pki = make_pki();
    let p = |n: &str| pki.dir.join(n).display().to_string();
    // Port 0, and the address dockerd reports binding: a port picked free
    // here and bound by dockerd later could be taken in between.
    let extra = vec![
        "-H".to_string(),
        "tcp://127.0.0.1:0".to_string(),
        "--tlsverify".to_string(),
        format!("--tlscacert={}", p("ca.pem")),
        format!("--tlscert={}", p("server.pem")),
        format!("--tlskey={}", p("server-key.pem")),
    ];
    let Some(d) = common::private_dockerd("tls_with_client_certificates", &extra) else {
        return;
    };
    let addr = d
        .listening
        .iter()
        .find(|a| a.starts_with("127.0.0.1:"))
        .map_or_else(
            || panic!("no TCP address in {:?}", d.listening),
            |a| format!("tcp://{a}"),
        );
    let version = |args: &[&str]| {
        vessel_cmd(&d, args)
            .env_remove("DOCKER_HOST")
            .output()
            .expect("run vessel")
    };

    let flags = [
        "--tlsverify",
        "--tlscacert",
        &p("ca.pem"),
        "--tlscert",
        &p("cert.pem"),
        "--tlskey",
        &p("key.pem"),
        "-H",
        &addr,
        "version",
        "--format",
        "{{.Server.Os}}",
    ];
    let o = version(&flags);
    assert_eq!(stdout(&o), "linux\n", "{}", stderr(&o));

    // The same from the environment: DOCKER_CERT_PATH holds ca/cert/key.pem.
    let o = vessel_cmd(&d, &["version", "--format", "{{.Server.Os}}"])
        .env("DOCKER_HOST", &addr)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", pki.dir.path())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "linux\n", "{}", stderr(&o));

    // Without a client certificate the daemon refuses us.
    let o = version(&[
        "--tlsverify",
        "--tlscacert",
        &p("ca.pem"),
        "-H",
        &addr,
        "version",
        "--format",
        "{{.Server.Os}}",
    ]);
    assert_ne!(o.status.code(), Some(0));
    // Against the wrong CA we refuse the daemon.
    let o = version(&[
        "--tlsverify",
        "--tlscacert",
        &p("other-ca.pem"),
        "--tlscert",
        &p("cert.pem"),
        "--tlskey",
        &p("key.pem"),
        "-H",
        &addr,
        "version",
        "--format",
        "{{.Server.Os}}",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).to_lowercase().contains("certificate"),
        "{}",
        stderr(&o)
    );
    // --tls without verification still encrypts and accepts the server.
    let o = version(&[
        "--tls",
        "--tlscert",
        &p("cert.pem"),
        "--tlskey",
        &p("key.pem"),
        "-H",
        &addr,
        "version",
        "--format",
        "{{.Server.Os}}",
    ]);
    assert_eq!(stdout(&o), "linux\n", "{}", stderr(&o));
}
