//! End-to-end: the `vessel` binary against a real daemon (see
//! `common::daemon` for which one). Container lifecycle, stdio, exit codes,
//! exec, logs, inspect, copy, export and commit.

// Short names (d: daemon, o: output, c: cleanup) keep the scenarios readable.
#![allow(clippy::many_single_char_names)]

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{Cleanup, load_busybox, ok, stderr, stdout, vessel, vessel_cmd};

#[test]
fn run_streams_and_exit_codes() {
    let Some(d) = common::daemon("run_streams_and_exit_codes") else {
        return;
    };
    load_busybox(&d);

    assert_eq!(
        ok(&d, &["run", "--rm", "busybox", "echo", "hello"]),
        "hello\n"
    );

    let o = vessel(
        &d,
        &[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert!(stderr(&o).contains("err"), "stderr: {}", stderr(&o));

    // docker's codes for a command that cannot be found or run.
    let o = vessel(&d, &["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("vessel: "), "{}", stderr(&o));
    let o = vessel(&d, &["run", "--rm", "busybox", "/etc"]);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));

    // A missing image with --pull never is a daemon error: 125.
    let o = vessel(
        &d,
        &[
            "run",
            "--rm",
            "--pull",
            "never",
            "vessel-test-no-such-image:1",
        ],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("No such image"), "{}", stderr(&o));

    // Flags reach the container.
    let out = ok(
        &d,
        &[
            "run",
            "--rm",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "busybox",
            "sh",
            "-c",
            "echo $A $PWD $(id -u):$(id -g)",
        ],
    );
    assert_eq!(out, "1 /tmp 1000:1000\n");
    assert_eq!(
        ok(
            &d,
            &["run", "--rm", "--entrypoint", "echo", "busybox", "a", "b"]
        ),
        "a b\n"
    );
    assert_eq!(
        ok(
            &d,
            &["run", "--rm", "--hostname", "box1", "busybox", "hostname"]
        ),
        "box1\n"
    );
    let o = vessel(
        &d,
        &["run", "--rm", "--read-only", "busybox", "touch", "/x"],
    );
    assert_ne!(
        o.status.code(),
        Some(0),
        "read-only root must refuse writes"
    );

    // stdin is forwarded with -i and closed at EOF.
    let mut child = vessel_cmd(
        &d,
        &["run", "--rm", "-i", "busybox", "sh", "-c", "cat; echo done"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn vessel");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "line one\nline two\ndone\n");
}

#[test]
fn detached_lifecycle() {
    let Some(d) = common::daemon("detached_lifecycle") else {
        return;
    };
    load_busybox(&d);
    let mut c = Cleanup::new(&d);
    let name = c.name("life");
    let id = ok(
        &d,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "-l",
            "suite=cli",
            "busybox",
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 1; done",
        ],
    );
    let id = id.trim();
    assert_eq!(id.len(), 64, "run -d prints the full ID: {id:?}");

    let ps = ok(
        &d,
        &[
            "ps",
            "--filter",
            &format!("name={name}"),
            "--format",
            "{{.Names}} {{.State}} {{.Label \"suite\"}}",
        ],
    );
    assert_eq!(ps, format!("{name} running cli\n"));
    let q = ok(&d, &["ps", "-q", "--filter", &format!("name={name}")]);
    assert_eq!(q.trim(), &id[..12]);
    let table = ok(&d, &["ps", "--filter", &format!("name={name}")]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("CONTAINER ID   IMAGE"), "{header}");
    assert!(header.ends_with("NAMES"), "{header}");
    assert!(lines.next().unwrap().ends_with(&name));

    let o = vessel(&d, &["exec", &name, "sh", "-c", "echo $((1+2)); exit 4"]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(stdout(&o), "3\n");
    assert_eq!(
        ok(
            &d,
            &[
                "exec",
                "-e",
                "X=9",
                "-w",
                "/tmp",
                &name,
                "sh",
                "-c",
                "echo $X $PWD"
            ]
        ),
        "9 /tmp\n"
    );
    let o = vessel(&d, &["exec", &name, "no-such-command"]);
    assert_eq!(
        o.status.code(),
        Some(126),
        "docker reports a failed exec start as 126"
    );

    let mut child = vessel_cmd(&d, &["exec", "-i", &name, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through exec\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "through exec\n");

    assert_eq!(
        ok(
            &d,
            &[
                "inspect",
                "-f",
                "{{.State.Running}} {{.Config.Labels.suite}}",
                &name
            ]
        ),
        "true cli\n"
    );
    let json = ok(&d, &["container", "inspect", &name]);
    assert!(
        json.starts_with("[\n    {\n        \"Id\": "),
        "inspect prints docker's indented array: {}",
        &json[..60.min(json.len())]
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["Id"], id);

    assert_eq!(
        ok(
            &d,
            &["stats", "--no-stream", "--format", "{{.Name}}", &name]
        ),
        format!("{name}\n")
    );
    assert!(ok(&d, &["top", &name]).contains("PID"));

    ok(&d, &["pause", &name]);
    assert_eq!(
        ok(&d, &["inspect", "-f", "{{.State.Paused}}", &name]),
        "true\n"
    );
    ok(&d, &["unpause", &name]);
    assert_eq!(
        ok(&d, &["inspect", "-f", "{{.State.Paused}}", &name]),
        "false\n"
    );

    let renamed = c.name("life-renamed");
    ok(&d, &["rename", &name, &renamed]);
    assert_eq!(
        ok(&d, &["stop", "-t", "10", &renamed]),
        format!("{renamed}\n")
    );
    assert_eq!(
        ok(&d, &["inspect", "-f", "{{.State.ExitCode}}", &renamed]),
        "7\n"
    );
    ok(&d, &["start", &renamed]);
    ok(&d, &["kill", "-s", "KILL", &renamed]);
    assert_eq!(ok(&d, &["wait", &renamed]), "137\n");
    ok(&d, &["rm", &renamed]);
    assert_eq!(
        ok(&d, &["ps", "-aq", "--filter", &format!("name={renamed}")]),
        ""
    );

    // Errors read like docker's and exit 1.
    let o = vessel(&d, &["rm", "vessel-test-no-such-container"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(
            "Error response from daemon: No such container: vessel-test-no-such-container"
        ),
        "{}",
        stderr(&o)
    );
    let o = vessel(&d, &["inspect", "vessel-test-no-such-object"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "[]\n");
    assert!(stderr(&o).contains("Error: No such object: vessel-test-no-such-object"));
}

#[test]
fn logs_wait_and_auto_remove() {
    let Some(d) = common::daemon("logs_wait_and_auto_remove") else {
        return;
    };
    load_busybox(&d);
    let mut c = Cleanup::new(&d);
    let name = c.name("logs");
    ok(
        &d,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "busybox",
            "sh",
            "-c",
            "echo one; echo two >&2; echo three; exit 2",
        ],
    );
    assert_eq!(ok(&d, &["wait", &name]), "2\n");
    let o = vessel(&d, &["logs", &name]);
    assert_eq!(stdout(&o), "one\nthree\n");
    assert_eq!(stderr(&o), "two\n");
    // stdout and stderr reach the log in either order: tail sees one line.
    let o = vessel(&d, &["logs", "--tail", "1", &name]);
    assert_eq!(format!("{}{}", stdout(&o), stderr(&o)).lines().count(), 1);
    let ts = ok(&d, &["logs", "-t", &name]);
    assert!(
        ts.lines().all(|l| l.len() > 31 && l.as_bytes()[4] == b'-'),
        "timestamps: {ts}"
    );
    // logs -f on an exited container ends by itself.
    assert_eq!(ok(&d, &["logs", "-f", &name]), "one\nthree\n");

    // --rm: the container is gone once run returns.
    let rm_name = c.name("autorm");
    ok(&d, &["run", "--rm", "--name", &rm_name, "busybox", "true"]);
    assert_eq!(
        ok(&d, &["ps", "-aq", "--filter", &format!("name={rm_name}")]),
        ""
    );

    // A tty container's logs are raw.
    let t = c.name("ttylogs");
    ok(
        &d,
        &[
            "run", "-d", "-t", "--name", &t, "busybox", "echo", "tty-out",
        ],
    );
    ok(&d, &["wait", &t]);
    assert_eq!(ok(&d, &["logs", &t]), "tty-out\r\n");
}

#[test]
fn create_start_attach_cp_export_commit() {
    let Some(d) = common::daemon("create_start_attach_cp_export_commit") else {
        return;
    };
    load_busybox(&d);
    let mut c = Cleanup::new(&d);
    let tmp = vessel_testkit::TempRoot::new("cli-cp");

    let name = c.name("created");
    let id = ok(
        &d,
        &[
            "create",
            "--name",
            &name,
            "busybox",
            "sh",
            "-c",
            "echo from-create; echo data > /made",
        ],
    );
    assert_eq!(id.trim().len(), 64);
    assert_eq!(
        ok(&d, &["inspect", "-f", "{{.State.Status}}", &name]),
        "created\n"
    );
    assert_eq!(ok(&d, &["start", "-a", &name]), "from-create\n");
    assert!(ok(&d, &["diff", &name]).lines().any(|l| l == "A /made"));

    // cp out of and into a stopped container.
    ok(
        &d,
        &[
            "cp",
            &format!("{name}:/made"),
            tmp.join("made").to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(tmp.join("made")).unwrap(), "data\n");
    std::fs::create_dir(tmp.join("dir")).unwrap();
    std::fs::write(tmp.join("dir/inner"), "inner\n").unwrap();
    ok(
        &d,
        &[
            "cp",
            tmp.join("dir").to_str().unwrap(),
            &format!("{name}:/copied"),
        ],
    );
    ok(
        &d,
        &[
            "cp",
            &format!("{name}:/copied/inner"),
            tmp.join("back").to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(tmp.join("back")).unwrap(),
        "inner\n"
    );
    ok(
        &d,
        &[
            "cp",
            &format!("{name}:/copied"),
            tmp.path().to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(tmp.join("copied/inner")).unwrap(),
        "inner\n"
    );

    // export is a tar of the root filesystem.
    let tarball = tmp.join("root.tar");
    ok(&d, &["export", "-o", tarball.to_str().unwrap(), &name]);
    let mut a = tar::Archive::new(std::fs::File::open(&tarball).unwrap());
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "made"), "export lacks /made");
    assert!(
        names.iter().any(|n| n.starts_with("bin/")),
        "export lacks bin/"
    );

    // commit makes an image that has the change.
    let image = format!("{}:v1", vessel_testkit::unique_name("committed"));
    c.images.push(image.clone());
    let img_id = ok(&d, &["commit", "-c", "ENV COMMITTED=yes", &name, &image]);
    assert!(img_id.starts_with("sha256:"), "{img_id}");
    assert_eq!(
        ok(
            &d,
            &[
                "run",
                "--rm",
                &image,
                "sh",
                "-c",
                "cat /made; echo $COMMITTED"
            ]
        ),
        "data\nyes\n"
    );
}

#[test]
fn tty_run_and_exec_through_a_pty() {
    let Some(d) = common::daemon("tty_run_and_exec_through_a_pty") else {
        return;
    };
    vessel_testkit::require!(
        vessel_testkit::have_command("script"),
        "util-linux script is needed for a pty"
    );
    load_busybox(&d);
    let mut c = Cleanup::new(&d);
    let script = |cmd: String, input: &[u8]| {
        let mut child = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("DOCKER_HOST", d.host())
            .env("DOCKER_CONFIG", d.config.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn script");
        // Keep our end of stdin open until the session ends: an EOF would
        // reach the container as a hang-up and race with the input.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        let o = child.wait_with_output().unwrap();
        drop(stdin);
        o
    };
    let bin = common::vessel_bin().display().to_string();
    let o = script(
        format!("{bin} run --rm -it busybox sh"),
        b"echo tty-$((40+2)); tty; exit 5\n",
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(5), "{out}");
    assert!(out.contains("tty-42"), "{out}");
    assert!(out.contains("/dev/pts/"), "the shell has a terminal: {out}");

    // ctrl-p ctrl-q detaches and leaves the container running. The keys
    // are sent only once the shell has answered, so the client's terminal
    // is already raw (a cooked pty would eat ctrl-q as flow control).
    let detached = c.name("detach");
    let mut child = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{bin} run -it --name {detached} busybox sh"),
            "/dev/null",
        ])
        .env("DOCKER_HOST", d.host())
        .env("DOCKER_CONFIG", d.config.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn script");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    stdin.write_all(b"echo be''fore\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("before") {
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(
            n > 0,
            "session ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    stdin.write_all(b"\x10\x11").unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        ok(&d, &["inspect", "-f", "{{.State.Running}}", &detached]),
        "true\n"
    );

    let name = c.name("ttyexec");
    ok(
        &d,
        &["run", "-d", "--name", &name, "busybox", "sleep", "600"],
    );
    let o = script(format!("{bin} exec -it {name} sh"), b"tty; exit 3\n");
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(stdout(&o).contains("/dev/pts/"), "{}", stdout(&o));
}

#[test]
fn events_report_a_run() {
    let Some(d) = common::daemon("events_report_a_run") else {
        return;
    };
    load_busybox(&d);
    let mut c = Cleanup::new(&d);
    let name = c.name("events");
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ok(&d, &["run", "--rm", "--name", &name, "busybox", "true"]);
    // --until in the near future ends the stream by itself.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let out = ok(
        &d,
        &[
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--filter",
            "type=container",
            "--filter",
            &format!("container={name}"),
        ],
    );
    let actions: Vec<&str> = out.lines().filter_map(|l| l.split(' ').nth(2)).collect();
    for want in ["create", "start", "die", "destroy"] {
        assert!(actions.contains(&want), "no {want} event in:\n{out}");
    }
    let first = out.lines().next().unwrap();
    assert!(first.contains(&format!("name={name}")), "{first}");
    assert_eq!(first.as_bytes()[10], b'T', "RFC 3339 time first: {first}");
    let json = ok(
        &d,
        &[
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--format",
            "{{.Action}}",
            "--filter",
            &format!("container={name}"),
        ],
    );
    assert!(json.lines().any(|l| l == "destroy"), "{json}");
}

#[test]
fn start_interactive_and_attach() {
    let Some(d) = common::daemon("start_interactive_and_attach") else {
        return;
    };
    load_busybox(&d);
    let mut c = Cleanup::new(&d);
    let piped = |args: &[&str], input: &[u8]| {
        let mut child = vessel_cmd(&d, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vessel");
        // Hold stdin open until the container has exited: dockerd may end
        // an attach session at stdin EOF before the output arrives (the
        // docker CLI loses that output too).
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        let o = child.wait_with_output().unwrap();
        drop(stdin);
        o
    };

    // start -ai: stdin reaches a created container, its status comes back.
    let name = c.name("startai");
    ok(
        &d,
        &[
            "create",
            "-i",
            "--name",
            &name,
            "busybox",
            "sh",
            "-c",
            "read l; echo got $l; exit 6",
        ],
    );
    let o = piped(&["start", "-ai", &name], b"hello\n");
    assert_eq!(stdout(&o), "got hello\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(6));

    // attach to a running container that waits for input.
    let name = c.name("attach");
    ok(
        &d,
        &[
            "run",
            "-d",
            "-i",
            "--name",
            &name,
            "busybox",
            "sh",
            "-c",
            "read l; echo attached $l; exit 4",
        ],
    );
    let o = piped(&["attach", &name], b"now\n");
    assert_eq!(stdout(&o), "attached now\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(4));
    let o = vessel(&d, &["attach", &name]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("You cannot attach to a stopped container"),
        "{}",
        stderr(&o)
    );
}
