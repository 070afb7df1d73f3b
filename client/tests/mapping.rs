//! Flag-to-API mapping without a daemon: `run` flags parsed by the real
//! command line, mapped to the create body, checked field by field against
//! what the docker CLI sends (as recorded by `docker_parity`).

use std::collections::BTreeMap;

use clap::Parser;
use serde_json::{Value, json};
use vessel_cli::cli::{Cli, Command};
use vessel_cli::opts::{self, build_create};

fn body(args: &[&str]) -> Result<Value, String> {
    let mut argv = vec!["vessel", "run"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let Some(Command::Run(r)) = cli.command else {
        return Err("not a run command".into());
    };
    let env = BTreeMap::from([("HOME_VAR".to_string(), "from-env".to_string())]);
    let image = &r.image_and_args[0];
    build_create(&r.opts, image, &r.image_and_args[1..], r.detach, &env)
        .map(|c| c.body)
        .map_err(|e| e.to_string())
}

fn hc(v: &Value) -> &Value {
    &v["HostConfig"]
}

#[test]
fn defaults_match_docker() {
    let v = body(&["busybox"]).unwrap();
    assert_eq!(v["Image"], "busybox");
    assert_eq!(v["AttachStdout"], true);
    assert_eq!(v["AttachStderr"], true);
    assert_eq!(v["AttachStdin"], false);
    assert!(v.get("Cmd").is_none(), "no command means the image's");
    assert_eq!(hc(&v)["NetworkMode"], "default");
    assert_eq!(
        hc(&v)["RestartPolicy"],
        json!({"Name": "no", "MaximumRetryCount": 0})
    );
    assert_eq!(hc(&v)["MemorySwappiness"], -1);
    assert!(
        v["NetworkingConfig"]["EndpointsConfig"]
            .get("default")
            .is_some()
    );
}

#[test]
fn detach_and_interactive() {
    let v = body(&["-d", "-i", "busybox", "cat"]).unwrap();
    assert_eq!(v["AttachStdin"], false);
    assert_eq!(v["AttachStdout"], false);
    assert_eq!(v["OpenStdin"], true);
    assert_eq!(v["StdinOnce"], false);
    let v = body(&["-i", "-t", "busybox", "sh"]).unwrap();
    assert_eq!(v["AttachStdin"], true);
    assert_eq!(v["StdinOnce"], true);
    assert_eq!(v["Tty"], true);
    assert!(
        body(&["-d", "-a", "stdout", "busybox"])
            .unwrap_err()
            .contains("Conflicting options: -a and -d")
    );
    let v = body(&["-a", "stderr", "busybox"]).unwrap();
    assert_eq!(v["AttachStdout"], false);
    assert_eq!(v["AttachStderr"], true);
}

#[test]
fn environment_labels_and_command() {
    let v = body(&[
        "-e", "A=1", "-e", "HOME_VAR", "-e", "NOT_SET", "-l", "x=y", "-l", "bare", "busybox", "sh",
        "-c", "echo $A",
    ])
    .unwrap();
    assert_eq!(v["Env"], json!(["A=1", "HOME_VAR=from-env", "NOT_SET"]));
    assert_eq!(v["Labels"], json!({"x": "y", "bare": ""}));
    assert_eq!(v["Cmd"], json!(["sh", "-c", "echo $A"]));
    let v = body(&["--entrypoint", "", "busybox"]).unwrap();
    assert_eq!(
        v["Entrypoint"],
        json!([""]),
        "an empty entrypoint resets the image's"
    );
    let v = body(&["--entrypoint", "/bin/sh -c", "busybox"]).unwrap();
    assert_eq!(
        v["Entrypoint"],
        json!(["/bin/sh -c"]),
        "not split, as docker"
    );
}

#[test]
fn resources() {
    let v = body(&[
        "-m",
        "512m",
        "--memory-swap",
        "-1",
        "--memory-reservation",
        "1.5g",
        "--shm-size",
        "64m",
        "--cpus",
        "0.25",
        "--pids-limit",
        "-1",
        "--cpu-shares",
        "100",
        "--blkio-weight",
        "500",
        "--oom-kill-disable",
        "busybox",
    ])
    .unwrap();
    let h = hc(&v);
    assert_eq!(h["Memory"], 536_870_912);
    assert_eq!(h["MemorySwap"], -1);
    assert_eq!(h["MemoryReservation"], 1_610_612_736);
    assert_eq!(h["ShmSize"], 67_108_864);
    assert_eq!(h["NanoCpus"], 250_000_000);
    assert_eq!(h["PidsLimit"], -1);
    assert_eq!(h["CpuShares"], 100);
    assert_eq!(h["BlkioWeight"], 500);
    assert_eq!(h["OomKillDisable"], true);
    assert!(
        body(&["-m", "lots", "busybox"])
            .unwrap_err()
            .contains("memory")
    );
    assert!(body(&["--blkio-weight", "5", "busybox"]).is_err());
    assert!(
        body(&["--cpus", "1", "--cpu-quota", "1000", "busybox"])
            .unwrap_err()
            .contains("Conflicting options")
    );
    assert!(body(&["--memory-swappiness", "101", "busybox"]).is_err());
}

#[test]
fn io_throttles_devices_ulimits() {
    let v = body(&[
        "--device-read-bps",
        "/dev/sda:1mb",
        "--device-write-iops",
        "/dev/sda:300",
        "--ulimit",
        "nofile=10:20",
        "--ulimit",
        "core=0",
        "--device",
        "/dev/fuse",
        "busybox",
    ])
    .unwrap();
    let h = hc(&v);
    assert_eq!(
        h["BlkioDeviceReadBps"],
        json!([{"Path": "/dev/sda", "Rate": 1_048_576}])
    );
    assert_eq!(
        h["BlkioDeviceWriteIOps"],
        json!([{"Path": "/dev/sda", "Rate": 300}])
    );
    assert_eq!(
        h["Ulimits"],
        json!([{"Name": "nofile", "Soft": 10, "Hard": 20}, {"Name": "core", "Soft": 0, "Hard": 0}])
    );
    assert_eq!(
        h["Devices"],
        json!([{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse", "CgroupPermissions": "rwm"}])
    );
    assert!(body(&["--device-read-bps", "sda:1mb", "busybox"]).is_err());
}

#[test]
fn ports_volumes_mounts() {
    let v = body(&[
        "-p",
        "80",
        "-p",
        "127.0.0.1:8080:80/tcp",
        "-p",
        "53:53/udp",
        "--expose",
        "9000",
        "-v",
        "/host:/ctr:ro,z",
        "-v",
        "/anon",
        "--tmpfs",
        "/run:size=1m",
        "--mount",
        "type=volume,src=data,dst=/data",
        "busybox",
    ])
    .unwrap();
    assert_eq!(
        v["ExposedPorts"],
        json!({"80/tcp": {}, "53/udp": {}, "9000/tcp": {}})
    );
    assert_eq!(
        hc(&v)["PortBindings"],
        json!({"80/tcp": [{"HostIp": "", "HostPort": ""}, {"HostIp": "127.0.0.1", "HostPort": "8080"}],
               "53/udp": [{"HostIp": "", "HostPort": "53"}]})
    );
    assert_eq!(hc(&v)["Binds"], json!(["/host:/ctr:ro,z"]));
    assert_eq!(v["Volumes"], json!({"/anon": {}}));
    assert_eq!(hc(&v)["Tmpfs"], json!({"/run": "size=1m"}));
    assert_eq!(
        hc(&v)["Mounts"],
        json!([{"Type": "volume", "Source": "data", "Target": "/data"}])
    );
    let cwd = std::env::current_dir().unwrap();
    let v = body(&["-v", "./rel:/r", "busybox"]).unwrap();
    assert_eq!(
        hc(&v)["Binds"],
        json!([format!("{}/rel:/r", cwd.display())])
    );
    assert!(body(&["-v", "/a:relative", "busybox"]).is_err());
    assert!(body(&["-p", "70000:80", "busybox"]).is_err());
}

#[test]
fn policies_health_security_network() {
    let v = body(&[
        "--restart",
        "on-failure:5",
        "--health-cmd",
        "curl -f localhost",
        "--health-interval",
        "1m30s",
        "--health-retries",
        "2",
        "--cap-add",
        "sys_admin",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "seccomp=unconfined",
        "--init",
        "--rm=false",
        "--network",
        "mynet",
        "--network-alias",
        "web",
        "--ip",
        "10.1.0.5",
        "--add-host",
        "db=10.0.0.2",
        "busybox",
    ])
    .unwrap();
    let h = hc(&v);
    assert_eq!(
        h["RestartPolicy"],
        json!({"Name": "on-failure", "MaximumRetryCount": 5})
    );
    assert_eq!(
        v["Healthcheck"]["Test"],
        json!(["CMD-SHELL", "curl -f localhost"])
    );
    assert_eq!(v["Healthcheck"]["Interval"], 90_000_000_000_i64);
    assert_eq!(v["Healthcheck"]["Retries"], 2);
    assert_eq!(h["CapAdd"], json!(["CAP_SYS_ADMIN"]));
    assert_eq!(h["CapDrop"], json!(["ALL"]));
    assert_eq!(h["SecurityOpt"], json!(["seccomp=unconfined"]));
    assert_eq!(h["Init"], true);
    assert!(h.get("AutoRemove").is_none());
    assert_eq!(h["NetworkMode"], "mynet");
    assert_eq!(h["ExtraHosts"], json!(["db:10.0.0.2"]));
    let ep = &v["NetworkingConfig"]["EndpointsConfig"]["mynet"];
    assert_eq!(ep["Aliases"], json!(["web"]));
    assert_eq!(ep["IPAMConfig"]["IPv4Address"], "10.1.0.5");
    assert!(
        body(&["--rm", "--restart", "always", "busybox"])
            .unwrap_err()
            .contains("--restart and --rm")
    );
    assert!(body(&["--network-alias", "x", "busybox"]).is_err());
    assert!(body(&["--no-healthcheck", "--health-cmd", "x", "busybox"]).is_err());
    let v = body(&["--no-healthcheck", "busybox"]).unwrap();
    assert_eq!(v["Healthcheck"], json!({"Test": ["NONE"]}));
}

#[test]
fn seccomp_profile_is_read_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("profile.json");
    std::fs::write(&p, "{\n  \"defaultAction\": \"SCMP_ACT_ALLOW\"\n}\n").unwrap();
    let arg = format!("seccomp={}", p.display());
    let v = body(&["--security-opt", &arg, "busybox"]).unwrap();
    assert_eq!(
        hc(&v)["SecurityOpt"],
        json!(["seccomp={\"defaultAction\":\"SCMP_ACT_ALLOW\"}"])
    );
    assert!(body(&["--security-opt", "seccomp=/no/such/file", "busybox"]).is_err());
}

#[test]
fn normalize_drops_zeros_but_keeps_keyed_maps() {
    let v = json!({"A": 0, "B": "", "C": [], "D": {"E": false}, "Volumes": {"/x": {}}, "Tmpfs": {"/t": ""}, "F": [0]});
    assert_eq!(
        opts::normalize(&v),
        json!({"Volumes": {"/x": {}}, "Tmpfs": {"/t": ""}, "F": [0]})
    );
}
