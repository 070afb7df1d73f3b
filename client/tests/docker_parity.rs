//! `vessel create` must send the same container create body as the docker
//! CLI for the same flags. Both CLIs talk to a real daemon through a
//! recording proxy; the bodies are compared after dropping zero values
//! (the daemon treats an absent field and its zero value alike).

// Short names (d: daemon, o: output, c: cleanup) keep the scenarios readable.
#![allow(clippy::many_single_char_names)]

mod common;

use std::process::{Command, Stdio};

use serde_json::Value;
use vessel_cli::opts::normalize;

/// The docker CLI to compare with (v28 is installed at /usr/local/bin).
fn docker_cli() -> Option<String> {
    ["/usr/local/bin/docker", "/usr/bin/docker"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| (*p).to_string())
}

fn create_body(proxy: &common::RecordingProxy) -> Value {
    let bodies = proxy.bodies("/containers/create");
    let (line, body) = bodies.last().expect("a create request was recorded");
    let v: Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("{line}: body is not JSON: {e}"));
    let mut n = normalize(&v);
    // The terminal size depends on where the test runs.
    // The docker CLI's order of -e values and of binds varies from run to
    // run (it passes them through Go maps).
    if let Some(Value::Array(e)) = n.get_mut("Env") {
        e.sort_by_key(ToString::to_string);
    }
    if let Some(hc) = n.get_mut("HostConfig").and_then(Value::as_object_mut) {
        hc.remove("ConsoleSize");
        if let Some(Value::Array(b)) = hc.get_mut("Binds") {
            b.sort_by_key(ToString::to_string);
        }
    }
    n
}

#[test]
fn create_bodies_match_the_docker_cli() {
    let Some(d) = common::daemon("create_bodies_match_the_docker_cli") else {
        return;
    };
    let Some(docker) = docker_cli() else {
        vessel_testkit::skip(
            "create_bodies_match_the_docker_cli",
            "no docker CLI installed",
        );
        return;
    };
    common::load_busybox(&d);
    let tmp = vessel_testkit::TempRoot::new("cli-parity");
    std::fs::write(tmp.join("env"), "# comment\nFROMFILE=1\nSPACED=a b\n").unwrap();
    std::fs::write(tmp.join("labels"), "l1=v1\nl2\n").unwrap();
    let env_file = tmp.join("env").display().to_string();
    let label_file = tmp.join("labels").display().to_string();
    let proxy = common::RecordingProxy::start(&tmp.join("proxy.sock"), &d.sock);
    let host = format!("unix://{}", proxy.sock.display());

    let named = vessel_testkit::unique_name("parity-vol");
    let named2 = vessel_testkit::unique_name("parity-vol");
    let cases: Vec<Vec<String>> = [
        "busybox true",
        "-t -i busybox sh",
        "-a stdout -a stderr busybox echo hi",
        "-e A=1 -e UNSET_IN_ENV --env-file ENVFILE -l a=b --label-file LABELFILE -w /tmp -u 1000:1000 --hostname h --domainname d.example --entrypoint /bin/sh busybox -c true",
        "-p 8080:80 -p 127.0.0.1::53/udp -p 9000-9001:90-91 -p 7000 --expose 7100-7101 -P busybox true",
        "-v /tmp:/data:ro -v /anon -v NAMEDVOL:/named --mount type=bind,src=/tmp,dst=/m,readonly --mount type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=1777 --mount type=volume,src=VOLV1,dst=/v,volume-nocopy,volume-label=a=b --tmpfs /run:rw,size=1m --tmpfs /scratch busybox true",
        "--memory 512m --memory-swap 1g --memory-reservation 256m --cpus 1.5 --cpu-shares 512 --cpuset-cpus 0 --cpuset-mems 0 --pids-limit 100 --blkio-weight 300 --oom-kill-disable --shm-size 64m --memory-swappiness 10 busybox true",
        "--cpu-period 100000 --cpu-quota 50000 --cpu-rt-period 1000 --oom-score-adj 100 busybox true",
        "--device-read-bps /dev/null:1mb --device-write-bps /dev/null:10k --device-read-iops /dev/null:100 --device-write-iops /dev/null:50 --blkio-weight-device /dev/null:200 --ulimit nofile=1024:2048 --ulimit nproc=100 --device /dev/null:/dev/xnull:rw --device /dev/zero busybox true",
        "--restart on-failure:3 --health-cmd true --health-interval 5s --health-timeout 2s --health-retries 3 --health-start-period 1s --stop-signal SIGUSR1 --stop-timeout 7 --init --read-only --privileged --cap-add NET_ADMIN --cap-drop MKNOD --security-opt no-new-privileges --group-add 10 --sysctl kernel.msgmax=8192 busybox true",
        "--restart always --no-healthcheck busybox true",
        "--restart unless-stopped --dns 1.1.1.1 --dns-search example.com --dns-option ndots:2 --add-host h:10.0.0.1 --add-host v6:::1 --network none --log-driver json-file --log-opt max-size=1m --log-opt max-file=2 --runtime runc --ipc private --pid host --uts host busybox true",
        "--rm -i busybox cat",
        "--network host --cgroupns private --userns host --stop-timeout 0 busybox true",
        "--cidfile CIDFILE busybox true",
    ]
    .iter()
    .map(|c| {
        c.replace("ENVFILE", &env_file)
            .replace("NAMEDVOL", &named)
            .replace("VOLV1", &named2)
            .replace("LABELFILE", &label_file)
            .replace("CIDFILE", &tmp.join("cid").display().to_string())
            .split(' ')
            .map(str::to_string)
            .collect()
    })
    .collect();

    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name_d = vessel_testkit::unique_name("parity-docker");
        let name_v = vessel_testkit::unique_name("parity-vessel");
        let _ = std::fs::remove_file(tmp.join("cid"));
        proxy.clear();
        let out = Command::new(&docker)
            .env("DOCKER_CONFIG", d.config.path())
            .env_remove("DOCKER_HOST")
            .args(["-H", &host, "create", "--name", &name_d])
            .args(case)
            .stdin(Stdio::null())
            .output()
            .expect("run docker");
        let docker_ok = out.status.success();
        let docker_err = String::from_utf8_lossy(&out.stderr).into_owned();
        let want = create_body(&proxy);
        let _ = std::fs::remove_file(tmp.join("cid"));
        proxy.clear();
        let out = Command::new(common::vessel_bin())
            .env("DOCKER_CONFIG", d.config.path())
            .env_remove("DOCKER_HOST")
            .env_remove("VESSEL_HOST")
            .args(["-H", &host, "create", "--name", &name_v])
            .args(case)
            .stdin(Stdio::null())
            .output()
            .expect("run vessel");
        let vessel_ok = out.status.success();
        let vessel_err = String::from_utf8_lossy(&out.stderr).into_owned();
        let got = create_body(&proxy);
        for n in [&name_d, &name_v] {
            let _ = common::vessel(&d, &["rm", "-f", "-v", n]);
        }
        for v in [&named, &named2] {
            let _ = common::vessel(&d, &["volume", "rm", "-f", v]);
        }
        if docker_ok != vessel_ok {
            failures.push(format!(
                "case {i} {case:?}: docker ok={docker_ok} ({docker_err}) vessel ok={vessel_ok} ({vessel_err})"
            ));
        }
        if want != got {
            failures.push(format!(
                "case {i} {case:?}:\n  docker: {}\n  vessel: {}",
                serde_json::to_string(&want).unwrap(),
                serde_json::to_string(&got).unwrap()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
