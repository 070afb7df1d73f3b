//! Credentials without a daemon: `logout` erases through a credential
//! helper named by `credsStore`, and plain `auths` entries, as docker does.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn vessel(
    config: &std::path::Path,
    path_prefix: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let path = format!(
        "{}:{}",
        path_prefix.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(env!("CARGO_BIN_EXE_vessel"))
        .env("DOCKER_CONFIG", config)
        .env("PATH", path)
        .env("DOCKER_HOST", "unix:///nonexistent/vessel-test.sock")
        .args(args)
        .output()
        .expect("run vessel")
}

#[test]
fn logout_uses_the_credential_helper() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("helper.log");
    // A helper that records its verb and input.
    let helper = bin.join("docker-credential-vtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nprintf '%s:' \"$1\" >> {0}\ncat >> {0}\necho >> {0}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        r#"{"credsStore": "vtest", "auths": {"reg.example:5000": {}}, "proxies": {"default": {}}}"#,
    )
    .unwrap();

    let o = vessel(&config, &bin, &["logout", "reg.example:5000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Removing login credentials for reg.example:5000\n"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "erase:reg.example:5000\n"
    );
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config.join("config.json")).unwrap()).unwrap();
    assert!(conf["auths"].get("reg.example:5000").is_none());
    assert_eq!(
        conf["proxies"],
        serde_json::json!({"default": {}}),
        "other keys survive"
    );
}

#[test]
fn logout_of_plain_auths_and_unknown_servers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"auths": {"https://index.docker.io/v1/": {"auth": "dTpw"}, "127.0.0.1:5000": {"auth": "dTpw"}}}"#,
    )
    .unwrap();
    let o = vessel(dir.path(), dir.path(), &["logout"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Removing login credentials for index.docker.io\n"
    );
    let o = vessel(dir.path(), dir.path(), &["logout", "10.0.0.1:5000"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Not logged in to 10.0.0.1:5000\n"
    );
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(conf["auths"].as_object().unwrap().len(), 1);
    let mode = std::fs::metadata(dir.path().join("config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
