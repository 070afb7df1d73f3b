//! The real docker CLI (v28) against vesseld: the everyday commands, their
//! output and exit codes.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Daemon, json};
use vessel_testkit::run_on_pty;

macro_rules! need {
    () => {
        vessel_testkit::require!(common::can_run(), "needs root and the docker CLI");
    };
}

#[test]
fn version_info_load_images() {
    need!();
    let d = Daemon::start("cli-basics");
    let v = json(&d.ok(&["version", "--format", "{{json .}}"]));
    assert_eq!(v["Server"]["ApiVersion"], vessel_api_version());
    let info = json(&d.ok(&["info", "--format", "{{json .}}"]));
    assert_eq!(info["OSType"], "linux");
    assert_eq!(info["Driver"], "overlay2");
    d.load_busybox();
    let images = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(images.trim(), "busybox:latest");
    let inspect = json(&d.ok(&["image", "inspect", "busybox"]));
    assert_eq!(inspect[0]["RepoTags"][0], "busybox:latest");
    assert_eq!(inspect[0]["RootFS"]["Type"], "layers");
    // A missing image is a clear 404.
    let out = d.run(&["image", "inspect", "nope:latest"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No such image"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn vessel_api_version() -> &'static str {
    "1.47"
}

#[test]
fn run_foreground_detached_logs_exec_lifecycle() {
    need!();
    let d = Daemon::start("cli-run");
    d.load_busybox();
    assert_eq!(
        d.ok(&["run", "--rm", "busybox", "echo", "hello"]),
        "hello\n"
    );
    let out = d.run(&[
        "run",
        "--name",
        "fails",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.starts_with("WARNING"))
            .collect::<Vec<_>>(),
        ["err"]
    );
    // A missing program maps to 127, as with Docker.
    let out = d.run(&["run", "--rm", "busybox", "no-such-program"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let id = d
        .ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "-e",
            "GREETING=hi",
            "busybox",
            "sh",
            "-c",
            "echo start; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64);
    let ps = d.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.lines().any(|l| l.starts_with("web Up")), "{ps}");
    let ps_a = d.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(ps_a.contains("fails") && ps_a.contains("web"), "{ps_a}");
    assert_eq!(
        d.ok(&["exec", "web", "sh", "-c", "echo $GREETING; hostname"]),
        format!("hi\n{}\n", &id[..12])
    );
    let out = d.run(&["exec", "web", "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    let inspect = json(&d.ok(&["inspect", "web"]));
    assert_eq!(inspect[0]["State"]["Status"], "running");
    assert!(inspect[0]["State"]["Pid"].as_i64().unwrap() > 0);
    assert_eq!(
        inspect[0]["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| *e == "GREETING=hi")
            .count(),
        1
    );
    let top = d.ok(&["top", "web"]);
    assert!(top.contains("sleep") || top.contains("sh -c"), "{top}");
    let stats = d.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.PIDs}}",
        "web",
    ]);
    assert!(stats.starts_with("web "), "{stats}");

    // stop runs the TERM trap; logs show all output.
    d.ok(&["stop", "-t", "10", "web"]);
    let inspect = json(&d.ok(&["inspect", "web"]));
    assert_eq!(inspect[0]["State"]["Status"], "exited");
    assert_eq!(inspect[0]["State"]["ExitCode"], 0);
    let logs = d.ok(&["logs", "web"]);
    assert_eq!(logs, "start\nbye\n");
    let stamped = d.ok(&["logs", "--timestamps", "--tail", "1", "web"]);
    assert!(
        stamped.ends_with(" bye\n") && stamped.starts_with("20"),
        "{stamped}"
    );

    d.ok(&["start", "web"]);
    d.ok(&["restart", "-t", "10", "web"]);
    assert_eq!(
        json(&d.ok(&["inspect", "web"]))[0]["State"]["Status"],
        "running"
    );
    d.ok(&["kill", "web"]);
    assert_eq!(
        json(&d.ok(&["inspect", "web"]))[0]["State"]["ExitCode"],
        137
    );
    d.ok(&["start", "web"]);
    // rm without -f refuses a running container.
    let out = d.run(&["rm", "web"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("container is running"));
    d.ok(&["rm", "-f", "web"]);
    let out = d.run(&["inspect", "web"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No such"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn logs_follow_streams_until_exit() {
    need!();
    let d = Daemon::start("cli-logs");
    d.load_busybox();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "counter",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line $i; sleep 0.1; done",
    ]);
    // Follows from the start and ends when the container exits.
    let logs = d.ok(&["logs", "-f", "counter"]);
    assert_eq!(logs, "line 1\nline 2\nline 3\nline 4\nline 5\n");
}

#[test]
fn interactive_terminals() {
    need!();
    let d = Daemon::start("cli-tty");
    d.load_busybox();
    let mut cmd = d.docker();
    cmd.args(["run", "--rm", "-it", "busybox", "sh"]);
    let (text, code) = run_on_pty(cmd, b"# ", b"tty; echo answer-$((6*7)); exit 3\r");
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("answer-42"), "{text}");
    assert_eq!(code, 3, "{text}");

    d.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"]);
    let mut cmd = d.docker();
    cmd.args(["exec", "-it", "box", "sh"]);
    let (text, code) = run_on_pty(cmd, b"# ", b"echo in-exec-$((1+1)); exit 7\r");
    assert!(text.contains("in-exec-2"), "{text}");
    assert_eq!(code, 7, "{text}");
}

#[test]
fn copy_commit_tag_save_export_diff() {
    need!();
    let d = Daemon::start("cli-files");
    d.load_busybox();
    d.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"]);
    let local = d.tmp.join("in.txt");
    std::fs::write(&local, "from the host\n").unwrap();
    d.ok(&["cp", local.to_str().unwrap(), "box:/tmp/"]);
    assert_eq!(
        d.ok(&["exec", "box", "cat", "/tmp/in.txt"]),
        "from the host\n"
    );
    let out_dir = d.tmp.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    d.ok(&["cp", "box:/etc/passwd", out_dir.to_str().unwrap()]);
    assert!(
        std::fs::read_to_string(out_dir.join("passwd"))
            .unwrap()
            .starts_with("root:")
    );
    d.ok(&["cp", "box:/etc", out_dir.join("etc").to_str().unwrap()]);
    assert!(out_dir.join("etc/group").is_file());
    // A path climbing out of the container's root stays inside it.
    d.ok(&["exec", "box", "ln", "-s", "/../../../../etc", "/escape"]);
    d.ok(&[
        "cp",
        "box:/escape/hostname",
        out_dir.join("h").to_str().unwrap(),
    ]);
    let copied = std::fs::read_to_string(out_dir.join("h")).unwrap();
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert_ne!(
        copied, host,
        "docker cp followed a symlink out of the container"
    );

    // Volumes, binds and tmpfs mounts are copied to and from as the
    // container sees them; a stopped container's volume still is.
    let bind = d.tmp.join("bind");
    std::fs::create_dir_all(&bind).unwrap();
    let bind_arg = format!("{}:/b", bind.display());
    d.ok(&[
        "run",
        "-d",
        "--name",
        "vbox",
        "-v",
        "cpvol:/data",
        "-v",
        &bind_arg,
        "--tmpfs",
        "/scratch",
        "busybox",
        "sleep",
        "1000",
    ]);
    for dir in ["/data", "/b", "/scratch"] {
        d.ok(&["cp", local.to_str().unwrap(), &format!("vbox:{dir}/")]);
        assert_eq!(
            d.ok(&["exec", "vbox", "cat", &format!("{dir}/in.txt")]),
            "from the host
",
            "copied into {dir}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(bind.join("in.txt")).unwrap(),
        "from the host
"
    );
    d.ok(&["exec", "vbox", "sh", "-c", "echo in-volume > /data/v.txt"]);
    d.ok(&["stop", "-t", "0", "vbox"]);
    d.ok(&[
        "cp",
        "vbox:/data/v.txt",
        out_dir.join("v.txt").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("v.txt")).unwrap(),
        "in-volume\n"
    );
    d.ok(&["rm", "vbox"]);
    d.ok(&["volume", "rm", "cpvol"]);

    d.ok(&[
        "exec",
        "box",
        "sh",
        "-c",
        "echo new > /added; rm /etc/shadow",
    ]);
    let diff = d.ok(&["diff", "box"]);
    assert!(
        diff.contains("A /added") && diff.contains("D /etc/shadow"),
        "{diff}"
    );
    let image = d.ok(&["commit", "box", "snap:1"]);
    assert!(image.trim().starts_with("sha256:"));
    assert_eq!(d.ok(&["run", "--rm", "snap:1", "cat", "/added"]), "new\n");
    d.ok(&["tag", "snap:1", "snap:2"]);
    assert!(
        d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .contains("snap:2")
    );
    let rmi = d.ok(&["rmi", "snap:2"]);
    assert!(rmi.contains("Untagged: snap:2"), "{rmi}");

    let saved = d.tmp.join("saved.tar");
    d.ok(&["save", "-o", saved.to_str().unwrap(), "busybox"]);
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&saved)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("manifest.json"));
    let exported = d.tmp.join("export.tar");
    d.ok(&["export", "-o", exported.to_str().unwrap(), "box"]);
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&exported)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout)
            .lines()
            .any(|l| l.trim_end_matches('/') == "added" || l == "./added")
    );
}

#[test]
fn volumes_events_and_df() {
    need!();
    let d = Daemon::start("cli-vols");
    d.load_busybox();
    d.ok(&["volume", "create", "data"]);
    assert!(
        d.ok(&["volume", "ls", "--format", "{{.Name}}"])
            .lines()
            .any(|l| l == "data")
    );
    d.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data",
            "busybox",
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );
    let out = d.run(&["volume", "rm", "nope"]);
    assert!(!out.status.success());
    d.ok(&["volume", "rm", "data"]);
    let events = d.ok(&[
        "events",
        "--since",
        "10m",
        "--until",
        "0s",
        "--filter",
        "type=volume",
        "--format",
        "{{.Action}}",
    ]);
    assert!(
        events.lines().any(|l| l == "create") && events.lines().any(|l| l == "destroy"),
        "{events}"
    );
    let df = d.ok(&["system", "df"]);
    assert!(df.contains("Images") && df.contains("Containers"), "{df}");
}

#[test]
fn init_reaps_orphans_and_forwards_signals() {
    need!();
    let d = Daemon::start("cli-init");
    d.load_busybox();
    // The reaper is PID 1; the program is its child; the exit code passes
    // through.
    let out = d.run(&[
        "run",
        "--rm",
        "--init",
        "busybox",
        "sh",
        "-c",
        "cat /proc/1/comm; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "vessel-init\n");

    // An orphan re-parented to PID 1 is reaped when it dies: its PID
    // disappears instead of staying a zombie.
    d.ok(&[
        "run",
        "-d",
        "--init",
        "--name",
        "reaper",
        "busybox",
        "sh",
        "-c",
        "trap 'echo got-term; exit 3' TERM; (sleep 1000 & echo $! > /tmp/orphan); \
         while true; do sleep 0.1; done",
    ]);
    let orphan = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = d.run(&["exec", "reaper", "cat", "/tmp/orphan"]);
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !s.is_empty() {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "no orphan pid");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    assert_eq!(
        d.ok(&[
            "exec",
            "reaper",
            "sh",
            "-c",
            &format!("cat /proc/{orphan}/stat | cut -d' ' -f4")
        ])
        .trim(),
        "1",
        "the orphan's parent is PID 1"
    );
    d.ok(&["exec", "reaper", "kill", &orphan]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let gone = !d
            .run(&["exec", "reaper", "test", "-e", &format!("/proc/{orphan}")])
            .status
            .success();
        if gone {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed orphan {orphan} was never reaped"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // `docker stop` signals PID 1, which forwards to the program.
    d.ok(&["stop", "-t", "30", "reaper"]);
    let st = json(&d.ok(&["inspect", "reaper"]));
    assert_eq!(st[0]["State"]["ExitCode"], 3, "{st}");
    assert!(d.ok(&["logs", "reaper"]).contains("got-term"));
}
