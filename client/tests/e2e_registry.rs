//! End-to-end: login, push, pull and logout against a local registry
//! (Debian's docker-registry on 127.0.0.1 with htpasswd auth), through the
//! daemon under test.

// Short names (d: daemon, o: output, c: cleanup) keep the scenarios readable.
#![allow(clippy::many_single_char_names)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use common::{Cleanup, load_busybox, ok, stderr, stdout, vessel, vessel_cmd};
use vessel_testkit::TempRoot;

struct Registry {
    child: Child,
    addr: String,
    _root: TempRoot,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(user: &str, password: &str) -> Registry {
    let root = TempRoot::new("cli-registry");
    let hash = Command::new("python3")
        .args([
            "-c",
            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            password,
        ])
        .output()
        .expect("run python3 for a bcrypt hash");
    let hash = String::from_utf8(hash.stdout).expect("utf-8 hash");
    std::fs::write(root.join("htpasswd"), format!("{user}:{}\n", hash.trim()))
        .expect("write htpasswd");
    // Port 0: distribution logs the address it bound ("listening on
    // 127.0.0.1:N"), read below. A port picked free here and bound by the
    // registry later could be taken by another test in between.
    std::fs::write(
        root.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  htpasswd:\n    realm: vessel-test\n    path: {}\n",
            root.join("data").display(),
            root.join("htpasswd").display()
        ),
    )
    .expect("write registry config");
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(root.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start docker-registry");
    // Wait for its "listening on" line instead of polling the port.
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            lines.read_line(&mut line).expect("read registry log") > 0,
            "docker-registry exited early"
        );
        if let Some(rest) = line.split("msg=\"listening on ").nth(1) {
            break rest.split('"').next().unwrap_or_default().to_string();
        }
    };
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::copy(&mut lines, &mut sink);
    });
    Registry {
        child,
        addr,
        _root: root,
    }
}

#[test]
fn login_push_pull_logout() {
    let Some(d) = common::daemon("login_push_pull_logout") else {
        return;
    };
    vessel_testkit::require!(
        vessel_testkit::have_command("docker-registry"),
        "docker-registry is not installed"
    );
    vessel_testkit::require!(
        vessel_testkit::have_command("python3"),
        "python3 is needed for a bcrypt hash"
    );
    load_busybox(&d);
    let reg = start_registry("tester", "s3cret");
    let mut c = Cleanup::new(&d);
    let image = format!(
        "{}/cli/{}:1",
        reg.addr,
        vessel_testkit::unique_name("pushed")
    );
    c.images.push(image.clone());
    ok(&d, &["tag", "busybox", &image]);

    // Without credentials the registry refuses the push.
    let o = vessel(&d, &["push", &image]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "push without login succeeded: {}",
        stdout(&o)
    );

    let mut child = vessel_cmd(
        &d,
        &["login", "-u", "tester", "--password-stdin", &reg.addr],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Login Succeeded\n");
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.config.join("config.json")).unwrap()).unwrap();
    let stored = conf["auths"][&reg.addr]["auth"]
        .as_str()
        .expect("auth stored as docker does");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(stored)
            .unwrap(),
        b"tester:s3cret"
    );

    let o = vessel(&d, &["push", &image]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    ok(&d, &["rmi", &image]);
    let o = vessel(&d, &["pull", &image]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).trim_end().ends_with(&image), "{}", stdout(&o));
    assert_eq!(
        ok(&d, &["run", "--rm", &image, "echo", "pulled"]),
        "pulled\n"
    );

    // run pulls a missing image by itself.
    ok(&d, &["rmi", &image]);
    let o = vessel(&d, &["run", "--rm", &image, "echo", "auto-pulled"]);
    assert_eq!(stdout(&o), "auto-pulled\n", "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("Unable to find image '{image}' locally")),
        "{}",
        stderr(&o)
    );

    assert_eq!(
        ok(&d, &["logout", &reg.addr]),
        format!("Removing login credentials for {}\n", reg.addr)
    );
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.config.join("config.json")).unwrap()).unwrap();
    assert!(conf["auths"].get(&reg.addr).is_none());
    let o = vessel(&d, &["login", "-u", "tester", "-p", "wrong", &reg.addr]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("Error response from daemon"),
        "{}",
        stderr(&o)
    );
}
