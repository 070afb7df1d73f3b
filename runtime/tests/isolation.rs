//! Linux container features from the runtime spec, checked from inside real
//! containers: namespaces, mounts, devices, identity, capabilities, limits,
//! hooks, the console socket and seccomp.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;

use common::{Env, stderr, stdout};
use serde_json::json;

#[test]
fn hostname_domainname_env_cwd() {
    need_root!();
    let env = Env::new("rt-uts");
    let mut b = env.bundle(&[]);
    b.config["hostname"] = json!("box1");
    b.config["domainname"] = json!("example.test");
    b.config["process"]["env"] = json!(["PATH=/bin:/usr/bin", "GREETING=hi there"]);
    b.config["process"]["cwd"] = json!("/var/work");
    b.sh("hostname; cat /proc/sys/kernel/domainname; echo \"$GREETING\"; pwd");
    assert_eq!(env.run_ok(&b), "box1\nexample.test\nhi there\n/var/work\n");
}

#[test]
fn pid_ipc_net_namespaces_are_private() {
    need_root!();
    let env = Env::new("rt-ns");
    let mut b = env.bundle(&[]);
    b.sh("echo $$; ls /proc | grep -c '^[0-9]'; ip link | grep -c '^[0-9]'; ipcs -m | grep -c '^0x' || true");
    let out = env.run_ok(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "the shell is PID 1");
    assert!(
        lines[1].parse::<u32>().unwrap() <= 3,
        "only the container's processes: {out}"
    );
    assert_eq!(
        lines[2], "1",
        "only loopback in a new network namespace: {out}"
    );
    for name in ["pid", "net", "ipc", "uts", "mnt", "cgroup"] {
        let b = env.bundle(&["readlink", &format!("/proc/self/ns/{name}")]);
        b.save();
        let inside = env.run_ok(&b);
        let host = std::fs::read_link(format!("/proc/self/ns/{name}")).unwrap();
        assert_ne!(
            inside.trim(),
            host.to_str().unwrap(),
            "{name} namespace is new"
        );
    }
}

#[test]
fn user_namespace_with_id_maps() {
    need_root!();
    let env = Env::new("rt-userns");
    let mut b = env.bundle(&[]);
    let base = 200_000u32;
    // The root filesystem must belong to the mapped root.
    let st = std::process::Command::new("chown")
        .args([
            "-R",
            &format!("{base}:{base}"),
            b.rootfs().to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    b.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": base, "size": 65536}]);
    b.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": base, "size": 65536}]);
    b.sh("id -u; cat /proc/self/uid_map; touch /created; ls -ln /created");
    let out = env.run_ok(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, ["0", &base.to_string(), "65536"]);
    // On the host the file belongs to the mapped ID.
    let meta = std::fs::metadata(b.rootfs().join("created")).unwrap();
    assert_eq!(meta.uid(), base);
}

#[test]
fn joining_namespaces_by_path() {
    need_root!();
    let env = Env::new("rt-join");
    let mut first = env.bundle(&["sleep", "1000"]);
    first.config["hostname"] = json!("shared-uts");
    let id = env.start(&first, "joinee");
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let mut b = env.bundle(&[]);
    for ns in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "uts" || ns["type"] == "network" {
            let name = if ns["type"] == "uts" { "uts" } else { "net" };
            ns["path"] = json!(format!("/proc/{pid}/ns/{name}"));
        }
    }
    b.config.as_object_mut().unwrap().remove("hostname");
    b.sh("hostname; readlink /proc/self/ns/net");
    let out = env.run_ok(&b);
    let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(out, format!("shared-uts\n{}\n", net.display()));
}

#[test]
fn mounts_binds_tmpfs_and_propagation() {
    need_root!();
    let env = Env::new("rt-mounts");
    let host_dir = env.tmp.join("shared");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("data"), "from host").unwrap();
    let host_file = env.tmp.join("single-file");
    std::fs::write(&host_file, "one file").unwrap();
    let mut b = env.bundle(&[]);
    b.mount(json!({"destination": "/data", "type": "bind", "source": host_dir, "options": ["rbind", "ro"]}));
    b.mount(json!({"destination": "/etc/single", "type": "bind", "source": host_file, "options": ["bind"]}));
    b.mount(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m", "mode=1777"]}));
    b.sh("cat /data/data; echo; cat /etc/single; echo; \
         touch /data/x 2>/dev/null && echo writable || echo readonly; \
         stat -c %a /scratch; grep ' /scratch ' /proc/mounts | grep -c size=1024k");
    assert_eq!(env.run_ok(&b), "from host\none file\nreadonly\n1777\n1\n");
    // Nothing the container mounted is visible on the host.
    assert!(vessel_testkit::mounts_below(&b.rootfs()).is_empty());
}

#[test]
fn tmpcopyup_keeps_the_image_contents() {
    need_root!();
    let env = Env::new("rt-copyup");
    let mut b = env.bundle(&[]);
    std::fs::create_dir_all(b.rootfs().join("opt/app/sub")).unwrap();
    std::fs::write(b.rootfs().join("opt/app/sub/conf"), "kept").unwrap();
    b.mount(json!({"destination": "/opt/app", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup"]}));
    b.sh("cat /opt/app/sub/conf; echo new > /opt/app/new; grep -c ' /opt/app tmpfs' /proc/mounts");
    assert_eq!(env.run_ok(&b), "kept1\n");
    assert!(
        !b.rootfs().join("opt/app/new").exists(),
        "writes stay in the tmpfs"
    );
}

#[test]
fn default_and_configured_devices() {
    need_root!();
    let env = Env::new("rt-dev");
    let mut b = env.bundle(&[]);
    b.config["linux"]["devices"] = json!([
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640, "uid": 0, "gid": 0}
    ]);
    b.config["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
    let caps = json!(["CAP_MKNOD", "CAP_DAC_OVERRIDE"]);
    b.config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    b.sh(
        "for d in null zero full random urandom tty fuse; do stat -c '%n %t:%T %a' /dev/$d; done; \
         echo x > /dev/null && echo null-ok; \
         mknod /dev/mem-copy c 1 1 && (head -c1 /dev/mem-copy >/dev/null 2>&1 && echo mem-readable || echo mem-denied); \
         readlink /dev/fd; readlink /dev/ptmx",
    );
    let out = env.run_ok(&b);
    assert!(out.contains("/dev/null 1:3 666"), "{out}");
    assert!(out.contains("/dev/fuse a:e5 640"), "{out}");
    assert!(out.contains("null-ok"));
    assert!(
        out.contains("mem-denied"),
        "device cgroup must deny /dev/mem: {out}"
    );
    assert!(out.contains("/proc/self/fd\npts/ptmx"), "{out}");
}

#[test]
fn masked_and_readonly_paths_and_readonly_root() {
    need_root!();
    let env = Env::new("rt-mask");
    let mut b = env.bundle(&[]);
    b.config["root"]["readonly"] = json!(true);
    // Masked paths that exist on this kernel: a file gets /dev/null, a
    // directory an empty tmpfs.
    b.sh(
        "wc -c < /proc/timer_list; ls /proc/acpi | wc -l; \
         echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo sys-writable || echo sys-readonly; \
         echo c > /proc/sysrq-trigger 2>/dev/null && echo sysrq-writable || echo sysrq-readonly; \
         touch /newfile 2>/dev/null && echo root-writable || echo root-readonly; \
         touch /tmp/x 2>/dev/null && echo tmp-writable || echo tmp-readonly",
    );
    let out = env.run_ok(&b);
    assert_eq!(
        out,
        "0\n0\nsys-readonly\nsysrq-readonly\nroot-readonly\ntmp-readonly\n"
    );
}

#[test]
fn sysctls_apply_inside_and_host_ones_are_refused() {
    need_root!();
    let env = Env::new("rt-sysctl");
    let mut b = env.bundle(&[
        "cat",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/kernel/shm_rmid_forced",
    ]);
    b.config["linux"]["sysctl"] =
        json!({"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"});
    // readonlyPaths would otherwise make /proc/sys read-only before we write.
    assert_eq!(env.run_ok(&b), "1\n1\n");
    b.config["linux"]["sysctl"] = json!({"vm.swappiness": "10"});
    let out = env.run(&b);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not namespaced"), "{}", stderr(&out));
}

#[test]
fn user_groups_umask() {
    need_root!();
    let env = Env::new("rt-user");
    let mut b = env.bundle(&[]);
    b.config["process"]["user"] =
        json!({"uid": 1000, "gid": 1001, "additionalGids": [5, 33], "umask": 0o027});
    b.sh("id -u; id -g; id -G; cd /tmp && touch f && stat -c %a f");
    assert_eq!(env.run_ok(&b), "1000\n1001\n1001 5 33\n640\n");
}

fn caps_line(out: &str, key: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} missing: {out}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn capabilities_all_five_sets() {
    need_root!();
    let env = Env::new("rt-caps");
    let mut b = env.bundle(&["grep", "^Cap", "/proc/self/status"]);
    let set = json!(["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_KILL"]);
    b.config["process"]["capabilities"] = json!({
        "bounding": set, "effective": set, "permitted": set, "inheritable": set, "ambient": set
    });
    let out = env.run_ok(&b);
    let want = (1u64 << 0) | (1 << 10) | (1 << 5);
    for key in ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(caps_line(&out, key), want, "{key}: {out}");
    }
    // A non-root user keeps exactly the ambient set across exec.
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    b.config["process"]["capabilities"]["ambient"] = json!(["CAP_NET_BIND_SERVICE"]);
    let out = env.run_ok(&b);
    assert_eq!(caps_line(&out, "CapEff"), 1 << 10, "{out}");
    assert_eq!(caps_line(&out, "CapAmb"), 1 << 10, "{out}");
    assert_eq!(caps_line(&out, "CapBnd"), want, "{out}");
    // Without CAP_CHOWN, chown fails.
    let mut b = env.bundle(&[]);
    b.config["process"]["capabilities"] =
        json!({"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []});
    b.sh("chown 1:1 /tmp 2>/dev/null && echo chowned || echo refused");
    assert_eq!(env.run_ok(&b), "refused\n");
}

#[test]
fn no_new_privileges_and_oom_score() {
    need_root!();
    let env = Env::new("rt-nnp");
    let mut b = env.bundle(&[]);
    b.config["process"]["noNewPrivileges"] = json!(true);
    b.config["process"]["oomScoreAdj"] = json!(500);
    b.sh("grep NoNewPrivs /proc/self/status; cat /proc/self/oom_score_adj");
    let out = env.run_ok(&b);
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.ends_with("500\n"), "{out}");
}

#[test]
fn rlimits_apply_and_raising_past_the_hard_limit_is_a_clear_error() {
    need_root!();
    let env = Env::new("rt-rlimit");
    let mut b = env.bundle(&[]);
    b.config["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 1234, "hard": 2345},
        {"type": "RLIMIT_NPROC", "soft": 100, "hard": 200}
    ]);
    b.sh("ulimit -n; ulimit -Hn; ulimit -u");
    assert_eq!(env.run_ok(&b), "1234\n2345\n100\n");
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let too_high = hard.saturating_add(1000);
    b.config["process"]["rlimits"] =
        json!([{"type": "RLIMIT_NOFILE", "soft": too_high, "hard": too_high}]);
    let out = env.run(&b);
    let raise_allowed = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false);
    if raise_allowed {
        assert!(out.status.success(), "{}", stderr(&out));
    } else {
        assert!(!out.status.success());
        assert!(stderr(&out).contains("RLIMIT_NOFILE"), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("CAP_SYS_RESOURCE"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    need_root!();
    let env = Env::new("rt-hooks");
    let log = env.tmp.join("hooks.log");
    let mut b = env.bundle(&["true"]);
    // Host-side hooks append "name: <state>" to a log; createContainer and
    // startContainer hooks run inside the container, whose /hooklog is a
    // bind mount of the same file.
    let script = env.tmp.join("hook.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf '%s: ' \"$1\" >> \"$2\"\ncat >> \"$2\"\necho >> \"$2\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(&log, "").unwrap();
    let host = |name: &str| json!({"path": script, "args": ["hook", name, log]});
    b.mount(json!({"destination": "/hooklog", "type": "bind", "source": log, "options": ["bind"]}));
    std::fs::copy(&script, b.rootfs().join("hook.sh")).unwrap();
    b.config["hooks"] = json!({
        "prestart": [host("prestart")],
        "createRuntime": [host("createRuntime")],
        "createContainer": [host("createContainer")],
        "startContainer": [{"path": "/hook.sh", "args": ["hook", "startContainer", "/hooklog"]}],
        "poststart": [host("poststart")],
        "poststop": [host("poststop")]
    });
    env.run_ok(&b);
    let text = std::fs::read_to_string(&log).unwrap();
    let names: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ],
        "{text}"
    );
    for line in text.lines() {
        let (name, state) = line.split_once(": ").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(state).unwrap_or_else(|e| panic!("{name}: {e}: {state}"));
        assert!(v["id"].as_str().unwrap().starts_with("run-"), "{name}: {v}");
        assert!(
            v["pid"].as_i64().unwrap() > 0 || name == "poststop",
            "{name}: {v}"
        );
    }
    // A failing createRuntime hook fails the create and leaves nothing.
    b.config["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    let out = env.run(&b);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("createRuntime hook"),
        "{}",
        stderr(&out)
    );
    assert!(env.ok(&["list", "-q"]).trim().is_empty());
}

#[test]
fn console_socket_receives_a_working_terminal() {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    need_root!();
    let env = Env::new("rt-tty");
    let mut b = env.bundle(&["sh"]);
    b.config["process"]["terminal"] = json!(true);
    b.config["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    let sock_path = env.tmp.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let id = env.id("tty");
    env.create(&b, &id, &["--console-socket", sock_path.to_str().unwrap()]);
    let (conn, _) = listener.accept().unwrap();
    let master = vessel_runtime::foreground::recv_fd(conn.as_fd()).unwrap();
    env.ok(&["start", &id]);
    let mut term = std::fs::File::from(master);
    term.write_all(b"stty size; tty; echo done-$((6*7)); exit 5\n")
        .unwrap();
    let mut out = Vec::new();
    // Read until the shell exits and the slave side closes (EIO).
    let mut buf = [0u8; 4096];
    loop {
        match term.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("30 100"), "{text}");
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("done-42"), "{text}");
}

#[test]
fn seccomp_rules_from_the_spec_and_the_default_profile() {
    need_root!();
    let env = Env::new("rt-seccomp");
    let mut b = env.bundle(&[]);
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    b.sh("mkdir /tmp/d 2>&1 || true; touch /tmp/f; chmod 777 /tmp/f 2>&1 || true; chmod 644 /tmp/f && echo chmod-644-ok");
    let out = env.run_ok(&b);
    assert!(
        out.contains("Permission denied"),
        "errnoRet 13 is EACCES: {out}"
    );
    assert!(
        out.contains("Operation not permitted"),
        "argument filter: {out}"
    );
    assert!(out.contains("chmod-644-ok"), "{out}");

    // The Docker-equivalent default profile for the default capability set.
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    let parsed: Vec<caps::Capability> = caps.iter().map(|c| c.parse().unwrap()).collect();
    let profile =
        vessel_runtime::seccomp::default_profile(parsed, vessel_runtime::seccomp::native_arch())
            .unwrap();
    b.config["linux"]["seccomp"] = serde_json::to_value(&profile).unwrap();
    b.config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    b.sh("unshare -U true 2>&1 || true; echo ok | cat; ls / | wc -l");
    let out = env.run_ok(&b);
    assert!(
        out.contains("Operation not permitted"),
        "unshare(CLONE_NEWUSER) refused: {out}"
    );
    assert!(out.contains("ok\n"), "{out}");
    assert!(
        stdout(&env.run(&b))
            .lines()
            .last()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            > 5
    );
}
