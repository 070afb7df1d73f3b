//! The builder end to end: the real docker CLI (classic `POST /build`
//! path, as it is without buildx) and `vessel build` against a private
//! vesseld with busybox loaded. One daemon serves every case, to keep the
//! suite lean.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::Daemon;

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

fn build(d: &Daemon, dir: &Path, extra: &[&str]) -> Output {
    let mut c = d.docker();
    c.env("DOCKER_BUILDKIT", "0").arg("build");
    c.args(extra).arg(dir);
    c.output().expect("run docker build")
}

fn build_ok(d: &Daemon, dir: &Path, extra: &[&str]) -> String {
    let out = build(d, dir, extra);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "docker build failed: {text}\ndaemon log:\n{}",
        d.log()
    );
    text
}

fn build_err(d: &Daemon, dir: &Path, extra: &[&str]) -> String {
    let out = build(d, dir, extra);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "docker build should fail: {text}");
    text
}

fn inspect(d: &Daemon, image: &str) -> serde_json::Value {
    let v = common::json(&d.ok(&["image", "inspect", image]));
    v[0].clone()
}

#[test]
fn docker_build_end_to_end() {
    if !common::can_run() {
        vessel_testkit::require!(false, "needs root and the docker CLI");
        return;
    }
    let d = Daemon::start("docker-build");
    d.load_busybox();

    single_stage_and_cache(&d);
    intermediates_are_listed_only_with_all(&d);
    multi_stage_parallel_and_unused(&d);
    timed("copy --from", || copy_from_follows_the_source_stage(&d));
    layers_verify_after_save_and_load(&d);
    errors_name_the_line(&d);
    context_escapes(&d);
    run_steps_are_confined(&d);
    hostile_context_tar(&d);
    add_url_and_archive(&d);
    vessel_cli_builds_the_same(&d);
    prune_drops_the_cache(&d);
    timed("run limits", || run_limits_reach_the_run_containers(&d));
    timed("pull", || pull_refreshes_the_base(&d));
    // Last: `prune -a` empties the store.
    timed("image prune", || image_prune_keeps_parents(&d));
}

/// Run one case and print how long it took (shown with --nocapture).
fn timed(name: &str, f: impl FnOnce()) {
    let t = std::time::Instant::now();
    f();
    eprintln!("case {name}: {:.2} s", t.elapsed().as_secs_f64());
}

fn single_stage_and_cache(d: &Daemon) {
    let dir = context(
        d,
        "ctx-basic",
        "FROM busybox\n\
         ARG WHO=world\n\
         ENV GREETING=hello\n\
         WORKDIR /app\n\
         COPY a.txt ./\n\
         COPY dir/ /data/\n\
         COPY --chmod=700 --chown=12:34 x.sh /usr/local/bin/\n\
         RUN echo \"$GREETING $WHO\" > out.txt && rm /bin/vi\n\
         LABEL com.example.k=v\n\
         EXPOSE 8080/udp\n\
         USER 1:2\n\
         CMD [\"cat\", \"/app/out.txt\"]\n",
    );
    write(&dir, "a.txt", "alpha\n");
    write(&dir, "dir/one", "1\n");
    write(&dir, "dir/sub/two", "2\n");
    write(&dir, "x.sh", "#!/bin/sh\necho x\n");
    write(&dir, "ignored.txt", "nope\n");
    write(&dir, ".dockerignore", "ignored.txt\n");
    let iid = d.tmp.join("iid");
    let out = build_ok(
        d,
        &dir,
        &[
            "-t",
            "built:one",
            "-t",
            "built:two",
            "--build-arg",
            "WHO=there",
            "--label",
            "from-cli=yes",
            "--iidfile",
            iid.to_str().unwrap(),
        ],
    );
    assert!(out.contains("Step 1/12 : FROM busybox"), "{out}");
    assert!(out.contains("Successfully built"), "{out}");
    assert!(out.contains("Successfully tagged built:one"), "{out}");
    assert!(out.contains("Successfully tagged built:two"), "{out}");
    let id = std::fs::read_to_string(&iid).unwrap();
    assert!(id.starts_with("sha256:"), "{id}");

    // Run it: files, env, cmd, user.
    let run = d.ok(&["run", "--rm", "built:one"]);
    assert_eq!(run.trim(), "hello there");
    let files = d.ok(&[
        "run",
        "--rm",
        "--user",
        "0",
        "built:one",
        "sh",
        "-c",
        "cat /app/a.txt /data/one /data/sub/two; stat -c '%a %u %g' /usr/local/bin/x.sh; \
         test -e /bin/vi && echo vi-present; test -e /app/ignored.txt && echo ignored-present; id -u",
    ]);
    assert_eq!(files, "alpha\n1\n2\n700 12 34\n0\n", "{files}");

    let img = inspect(d, "built:one");
    assert_eq!(img["Id"].as_str().unwrap(), id.trim());
    let cfg = &img["Config"];
    assert_eq!(cfg["WorkingDir"], "/app");
    assert_eq!(cfg["User"], "1:2");
    assert_eq!(cfg["Cmd"], serde_json::json!(["cat", "/app/out.txt"]));
    assert_eq!(cfg["Labels"]["com.example.k"], "v");
    assert_eq!(cfg["Labels"]["from-cli"], "yes");
    assert!(cfg["ExposedPorts"]["8080/udp"].is_object(), "{cfg}");
    let env: Vec<String> = serde_json::from_value(cfg["Env"].clone()).unwrap();
    assert!(env.contains(&"GREETING=hello".to_string()), "{env:?}");
    assert!(!env.iter().any(|e| e.starts_with("WHO=")), "{env:?}");
    // Busybox's layer plus four layers (three COPY, one RUN).
    let layers = img["RootFS"]["Layers"].as_array().unwrap().len();
    let base = inspect(d, "busybox")["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(layers, base + 4);
    let history = d.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}|{{.Size}}",
        "built:one",
    ]);
    assert!(
        history.contains("#(nop)  ENV GREETING=hello|0B"),
        "{history}"
    );
    assert!(
        history.contains("|1 WHO=there /bin/sh -c echo"),
        "{history}"
    );

    // Rebuild: every step from the cache, same image.
    let same: &[&str] = &[
        "-t",
        "built:one",
        "--build-arg",
        "WHO=there",
        "--label",
        "from-cli=yes",
    ];
    let again = build_ok(d, &dir, same);
    assert_eq!(again.matches("Using cache").count(), 11, "{again}");
    let again_id = inspect(d, "built:one")["Id"].as_str().unwrap().to_string();
    assert_eq!(again_id, id.trim());

    // Touching a file without changing it still hits.
    let f = std::fs::File::options()
        .write(true)
        .open(dir.join("a.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let touched = build_ok(d, &dir, same);
    assert_eq!(touched.matches("Using cache").count(), 11, "{touched}");

    // Changing its content misses from that COPY on.
    write(&dir, "a.txt", "beta\n");
    let changed = build_ok(d, &dir, same);
    assert_eq!(changed.matches("Using cache").count(), 3, "{changed}");
    let a = d.ok(&["run", "--rm", "built:one", "cat", "/app/a.txt"]);
    assert_eq!(a, "beta\n");

    // A different build arg misses only the RUN.
    let arg = build_ok(d, &dir, &["-t", "built:three", "--build-arg", "WHO=you"]);
    assert_eq!(arg.matches("Using cache").count(), 6, "{arg}");
    assert_eq!(d.ok(&["run", "--rm", "built:three"]).trim(), "hello you");

    // --no-cache rebuilds everything.
    let nc = build_ok(d, &dir, &["--no-cache", "--build-arg", "WHO=there"]);
    assert_eq!(nc.matches("Using cache").count(), 0, "{nc}");
}

/// As with Docker: the untagged images a build made for its steps are
/// listed only with `-a` and are not dangling; an untagged build result is
/// listed, as dangling.
fn intermediates_are_listed_only_with_all(d: &Daemon) {
    let ids = |args: &[&str]| -> Vec<String> {
        d.ok(&[&["images", "-q"], args].concat())
            .lines()
            .map(str::to_string)
            .collect()
    };
    let dir = context(
        d,
        "ctx-intermediate",
        "FROM busybox\nRUN echo one > /1\nRUN echo two > /2\nCMD [\"true\"]\n",
    );
    let out = build_ok(d, &dir, &["-t", "inter:1"]);
    // The image after each step: FROM, RUN, RUN, CMD.
    let steps: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix(" ---> "))
        .filter(|l| !l.starts_with("Running") && !l.starts_with("Using"))
        .map(str::to_string)
        .collect();
    assert_eq!(steps.len(), 4, "{out}");
    let (shown, all, dangling) = (ids(&[]), ids(&["-a"]), ids(&["-f", "dangling=true"]));
    for step in &steps[1..3] {
        assert!(
            !shown.contains(step),
            "intermediate {step} listed: {shown:?}\n{out}"
        );
        assert!(all.contains(step), "intermediate {step} not in -a: {all:?}");
        assert!(!dangling.contains(step), "intermediate {step} is dangling");
    }
    assert!(
        shown.contains(&steps[3]),
        "result {} not listed: {shown:?}",
        steps[3]
    );

    let dir = context(d, "ctx-untagged", "FROM busybox\nRUN echo untagged > /u\n");
    let out = build_ok(d, &dir, &[]);
    let result = out
        .lines()
        .find_map(|l| l.strip_prefix("Successfully built "))
        .unwrap_or_else(|| panic!("{out}"))
        .trim()
        .to_string();
    assert!(
        ids(&[]).contains(&result),
        "untagged result {result} not listed"
    );
    assert!(ids(&["-f", "dangling=true"]).contains(&result));
    d.ok(&["rmi", "inter:1", &result]);
}

fn multi_stage_parallel_and_unused(d: &Daemon) {
    // Stages a and b each wait for a file the other creates in a shared
    // cache mount: the build only succeeds if they run at the same time
    // (each gives up after about 60 s, so a serial builder fails instead
    // of hanging).
    let nonce = vessel_testkit::unique_name("sync");
    let wait = |mine: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,id={nonce},target=/sync touch /sync/{mine} && i=0; \
             while [ ! -e /sync/{other} ]; do i=$((i+1)); [ $i -gt 600 ] && exit 7; sleep 0.1; done; \
             echo {mine} > /{mine}.txt\n"
        )
    };
    let df = format!(
        "FROM busybox AS a\n{}\
         FROM busybox AS b\n{}\
         FROM busybox AS unused\n\
         RUN echo this stage must not run && exit 9\n\
         FROM busybox AS final\n\
         COPY --from=a /a.txt /\n\
         COPY --from=b /b.txt /\n\
         CMD cat /a.txt /b.txt\n",
        wait("a", "b"),
        wait("b", "a"),
    );
    let dir = context(d, "ctx-multi", &df);
    let out = build_ok(d, &dir, &["-t", "multi:1"]);
    assert!(!out.contains("must not run"), "{out}");
    assert!(out.contains("Step 1/8 : FROM busybox AS a"), "{out}");
    assert_eq!(d.ok(&["run", "--rm", "multi:1"]), "a\nb\n");

    // --target builds only what that stage needs.
    let out = build_err(d, &dir, &["--target", "unused", "-t", "multi:unused"]);
    assert!(out.contains("Step 1/2 : FROM busybox AS unused"), "{out}");
    assert!(out.contains("returned a non-zero code: 9"), "{out}");
    assert!(!out.contains("AS a"), "{out}");
}

/// `COPY --from` hits the cache while the source stage's layers are the
/// same, and misses as soon as they change, even where the copied path
/// and the step's text stay the same.
fn copy_from_follows_the_source_stage(d: &Daemon) {
    let df = "FROM busybox AS src\n\
              COPY v.txt /v.txt\n\
              FROM busybox\n\
              COPY --from=src /v.txt /copied.txt\n\
              CMD cat /copied.txt\n";
    let dir = context(d, "ctx-copy-from", df);
    std::fs::write(dir.join("v.txt"), "one\n").unwrap();
    build_ok(d, &dir, &["-t", "copyfrom:1"]);
    assert_eq!(d.ok(&["run", "--rm", "copyfrom:1"]), "one\n");
    let again = build_ok(d, &dir, &["-t", "copyfrom:1"]);
    assert_eq!(
        again.matches("Using cache").count(),
        3,
        "both COPY steps and the CMD come from the cache: {again}"
    );
    std::fs::write(dir.join("v.txt"), "two\n").unwrap();
    let changed = build_ok(d, &dir, &["-t", "copyfrom:2"]);
    assert_eq!(
        changed.matches("Using cache").count(),
        0,
        "a changed source stage invalidates the copy: {changed}"
    );
    assert_eq!(d.ok(&["run", "--rm", "copyfrom:2"]), "two\n");
}

/// The hex SHA-256 of what `shell` writes to stdout.
fn sha256_of_output(shell: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{shell} | sha256sum"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{shell}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A layer of random bytes (which the builder stores without deflating)
/// next to compressible text: every blob in the store hashes to its name,
/// the layer blobs unpack to the image's diff IDs, and `docker save`
/// writes layers that hash to those diff IDs and load back.
fn layers_verify_after_save_and_load(d: &Daemon) {
    let dir = context(
        d,
        "ctx-layers",
        "FROM busybox\n\
         RUN head -c 3000000 /dev/urandom > /noise && seq 1 200000 > /text\n\
         CMD [\"sh\"]\n",
    );
    build_ok(d, &dir, &["-t", "layers:1"]);
    let diff_ids: Vec<String> = inspect(d, "layers:1")["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect();
    assert_eq!(diff_ids.len(), 2, "{diff_ids:?}");

    let blobs = d.tmp.join("root/images/content/blobs/sha256");
    let mut unpacked = Vec::new();
    for e in std::fs::read_dir(&blobs).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let q = p.to_string_lossy().to_string();
        assert_eq!(sha256_of_output(&format!("cat '{q}'")), name, "blob {q}");
        let mut magic = [0u8; 2];
        let mut f = std::fs::File::open(&p).unwrap();
        if f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b] {
            unpacked.push(sha256_of_output(&format!("gzip -dc '{q}'")));
        } else {
            // Uncompressed (the base image's layer, configs, manifests).
            unpacked.push(name);
        }
    }
    for id in &diff_ids {
        assert!(unpacked.contains(id), "no layer blob unpacks to {id}");
    }

    let saved = d.tmp.join(vessel_testkit::unique_name("layers-save"));
    std::fs::create_dir_all(&saved).unwrap();
    let archive = saved.join("image.tar");
    d.ok(&["save", "-o", archive.to_str().unwrap(), "layers:1"]);
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&saved)
        .status()
        .unwrap();
    assert!(st.success());
    let manifest = common::json(&std::fs::read_to_string(saved.join("manifest.json")).unwrap());
    let layers: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers.len(), diff_ids.len());
    for (path, id) in layers.iter().zip(&diff_ids) {
        let q = saved.join(path).to_string_lossy().to_string();
        assert_eq!(&sha256_of_output(&format!("cat '{q}'")), id, "{path}");
    }

    d.ok(&["rmi", "layers:1"]);
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    let out = d.ok(&[
        "run",
        "--rm",
        "layers:1",
        "sh",
        "-c",
        "wc -c < /noise; tail -n 1 /text",
    ]);
    assert_eq!(out, "3000000\n200000\n");
    d.ok(&["rmi", "layers:1"]);
}

fn errors_name_the_line(d: &Daemon) {
    let dir = context(d, "ctx-bad", "FROM busybox\nRUN echo hi\nFOOBAR x\n");
    let out = build_err(d, &dir, &[]);
    assert!(out.contains("line 3"), "{out}");
    assert!(out.contains("FOOBAR"), "{out}");

    let dir = context(d, "ctx-fail", "FROM busybox\n\nRUN echo ok\nRUN exit 3\n");
    let out = build_err(d, &dir, &[]);
    assert!(out.contains("line 4"), "{out}");
    assert!(out.contains("returned a non-zero code: 3"), "{out}");

    let dir = context(d, "ctx-missing", "FROM busybox\nCOPY nothere /x\n");
    let out = build_err(d, &dir, &[]);
    assert!(out.contains("line 2") && out.contains("nothere"), "{out}");
}

/// A Dockerfile is untrusted: RUN steps get the seccomp filter and the
/// device rules a container gets.
fn run_steps_are_confined(d: &Daemon) {
    let dir = context(
        d,
        "ctx-confined",
        "FROM busybox\n\
         RUN grep '^Seccomp:' /proc/self/status\n\
         RUN mknod /tmp/mem c 1 1 && if head -c1 /tmp/mem >/dev/null; then echo MEM-READABLE; else echo mem-refused; fi\n",
    );
    let out = build_ok(d, &dir, &["--no-cache"]);
    assert!(
        out.lines().any(|l| l == "Seccomp:\t2"),
        "RUN without a seccomp filter: {out}"
    );
    // (The step's own text names both words; its output is a line of one.)
    assert!(
        out.lines().any(|l| l == "mem-refused") && !out.lines().any(|l| l == "MEM-READABLE"),
        "{out}"
    );
}

fn context_escapes(d: &Daemon) {
    // A secret outside the context, and links to it inside.
    let secret_dir = d.tmp.join(vessel_testkit::unique_name("secret"));
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-CONTENT\n").unwrap();

    let dir = context(d, "ctx-link", "FROM busybox\nCOPY link /x\n");
    std::os::unix::fs::symlink(&secret, dir.join("link")).unwrap();
    let out = build(d, &dir, &["-t", "escape:abs"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let x = d.ok(&["run", "--rm", "escape:abs", "cat", "/x"]);
        assert!(!x.contains("TOP-SECRET"), "{x}");
    } else {
        assert!(!text.contains("TOP-SECRET"), "{text}");
    }

    // Relative link climbing out, copied with the whole context: it stays
    // a link and resolves inside the image, never to the host.
    let dir = context(
        d,
        "ctx-rel",
        "FROM busybox\nCOPY . /ctx/\nCOPY up/secret.txt /y\n",
    );
    let rel = format!("../../../../../../../../..{}", secret_dir.to_str().unwrap());
    std::os::unix::fs::symlink(&rel, dir.join("up")).unwrap();
    let out = build(d, &dir, &["-t", "escape:rel"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("TOP-SECRET"), "{text}");
    if out.status.success() {
        let y = d.ok(&[
            "run",
            "--rm",
            "escape:rel",
            "sh",
            "-c",
            "cat /y /ctx/up/secret.txt 2>&1; true",
        ]);
        assert!(!y.contains("TOP-SECRET"), "{y}");
    }

    // COPY ../x is refused.
    let dir = context(d, "ctx-dotdot", "FROM busybox\nCOPY ../secret.txt /z\n");
    let out = build_err(d, &dir, &[]);
    assert!(out.contains("outside the build context"), "{out}");

    // ADD of a hostile tar: entries climbing out are refused; entries
    // through a symlink land inside the layer.
    let outside = d.tmp.join(vessel_testkit::unique_name("outside"));
    std::fs::create_dir_all(&outside).unwrap();
    let dir = context(d, "ctx-evil-add", "FROM busybox\nADD evil.tar /dst/\n");
    std::fs::write(
        dir.join("evil.tar"),
        raw_tar(&[(
            "../../../../../../../../../../tmp/vessel-build-escape",
            b"x",
            None,
        )]),
    )
    .unwrap();
    let out = build_err(d, &dir, &[]);
    assert!(out.contains("escapes"), "{out}");
    assert!(!Path::new("/tmp/vessel-build-escape").exists());

    let dir = context(d, "ctx-link-add", "FROM busybox\nADD link.tar /dst/\n");
    std::fs::write(
        dir.join("link.tar"),
        raw_tar(&[
            ("s", b"", Some(outside.to_str().unwrap())),
            ("s/pwned", b"gotcha", None),
        ]),
    )
    .unwrap();
    build_ok(d, &dir, &["-t", "escape:add"]);
    assert!(
        !outside.join("pwned").exists(),
        "the tar wrote outside the layer"
    );
    // The link pointed nowhere inside the image, so the entry made a
    // directory in its place: still inside the layer.
    let inside = d.ok(&["run", "--rm", "escape:add", "cat", "/dst/s/pwned"]);
    assert_eq!(inside, "gotcha");
}

/// A tar with raw names (so `..` survives); `link` makes a symlink.
fn raw_tar(entries: &[(&str, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, link) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        let size = format!("{:011o}", data.len());
        h[124..135].copy_from_slice(size.as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = if link.is_some() { b'2' } else { b'0' };
        if let Some(l) = link {
            h[157..157 + l.len()].copy_from_slice(l.as_bytes());
        }
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// A context tar that climbs out, sent straight to the API.
fn hostile_context_tar(d: &Daemon) {
    let marker = format!("/tmp/{}", vessel_testkit::unique_name("ctx-escape"));
    let name = format!("../../../../../../../../..{marker}");
    let tar = raw_tar(&[("Dockerfile", b"FROM busybox\n", None), (&name, b"x", None)]);
    let mut s = UnixStream::connect(&d.sock).unwrap();
    write!(
        s,
        "POST /v1.47/build?t=hostile HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        tar.len()
    )
    .unwrap();
    s.write_all(&tar).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.contains("errorDetail") && resp.contains("escapes"),
        "{resp}"
    );
    assert!(!Path::new(&marker).exists());
}

fn add_url_and_archive(d: &Daemon) {
    // A one-shot HTTP server on loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "request ended early");
            req.extend_from_slice(&buf[..n]);
        }
        let body = "served over http\n";
        write!(
            c,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    let dir = context(
        d,
        "ctx-add",
        &format!(
            "FROM busybox\nADD http://127.0.0.1:{port}/files/page.txt /web/\nADD pkg.tar.gz /opt/\nCOPY <<EOF /inline.txt\nline $HOSTNAME\nEOF\n"
        ),
    );
    // A gzip tar made with busybox-free tooling: the tar crate is not a
    // dependency here, so build it by hand and gzip it with the system.
    std::fs::write(
        dir.join("pkg.tar"),
        raw_tar(&[("pkg/hello", b"from tar\n", None)]),
    )
    .unwrap();
    let st = std::process::Command::new("gzip")
        .arg(dir.join("pkg.tar"))
        .status()
        .unwrap();
    assert!(st.success());
    build_ok(d, &dir, &["-t", "adds:1"]);
    server.join().unwrap();
    let out = d.ok(&[
        "run",
        "--rm",
        "adds:1",
        "sh",
        "-c",
        "cat /web/page.txt /opt/pkg/hello /inline.txt; stat -c %a /web/page.txt",
    ]);
    assert_eq!(out, "served over http\nfrom tar\nline \n600\n");
}

fn vessel_cli_builds_the_same(d: &Daemon) {
    let df = "FROM busybox\nENV A=1\nWORKDIR /w\nCOPY f.txt .\nRUN echo made > made.txt\nENTRYPOINT [\"cat\"]\nCMD [\"/w/f.txt\"]\n";
    let dir = context(d, "ctx-cli", df);
    write(&dir, "f.txt", "file\n");
    build_ok(d, &dir, &["--no-cache", "-t", "same:docker"]);
    let out = std::process::Command::new(vessel_testkit::cargo_bin("vessel"))
        .arg("-H")
        .arg(format!("unix://{}", d.sock.display()))
        .args(["build", "--no-cache", "-t", "same:vessel"])
        .arg(&dir)
        .env("DOCKER_CONFIG", d.tmp.join("docker-config"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vessel build: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let a = inspect(d, "same:docker");
    let b = inspect(d, "same:vessel");
    assert_eq!(a["Config"], b["Config"]);
    assert_eq!(
        a["RootFS"]["Layers"].as_array().unwrap().len(),
        b["RootFS"]["Layers"].as_array().unwrap().len()
    );
    let tree = |img: &str| {
        d.ok(&[
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            img,
            "-c",
            "find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -print | sort | \
             while read f; do if [ -f \"$f\" ]; then echo \"$f $(stat -c %a:%u:%g \"$f\") $(md5sum < \"$f\")\"; \
             else echo \"$f $(stat -c %F:%a \"$f\")\"; fi; done",
        ])
    };
    let ta = tree("same:docker");
    let tb = tree("same:vessel");
    // /etc/hostname, hosts and resolv.conf are the run's own.
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with("/etc/host") && !l.starts_with("/etc/resolv"))
            .map(String::from)
            .collect()
    };
    assert_eq!(strip(&ta), strip(&tb));
}

fn prune_drops_the_cache(d: &Daemon) {
    let dir = context(d, "ctx-prune", "FROM busybox\nRUN echo cached > /c\n");
    build_ok(d, &dir, &["-t", "prune:1"]);
    let hit = build_ok(d, &dir, &["-t", "prune:1"]);
    assert!(hit.contains("Using cache"), "{hit}");
    d.ok(&["builder", "prune", "-f"]);
    let miss = build_ok(d, &dir, &["-t", "prune:1"]);
    assert!(!miss.contains("Using cache"), "{miss}");
}

fn vessel(d: &Daemon, args: &[&str]) -> Output {
    Command::new(vessel_testkit::cargo_bin("vessel"))
        .arg("-H")
        .arg(format!("unix://{}", d.sock.display()))
        .args(args)
        .env("DOCKER_CONFIG", d.tmp.join("docker-config"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What the RUN containers see of their limits, through the docker CLI
/// and through `vessel build`.
fn run_limits_reach_the_run_containers(d: &Daemon) {
    let dir = context(
        d,
        "ctx-limits",
        "FROM busybox\n\
         RUN echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) \
             memsw=$(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes) \
             shares=$(cat /sys/fs/cgroup/cpu/cpu.shares) \
             quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)/$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us) \
             cpus=$(cat /sys/fs/cgroup/cpuset/cpuset.cpus) \
             mems=$(cat /sys/fs/cgroup/cpuset/cpuset.mems) \
             shm=$(df -k /dev/shm | tail -1 | awk '{print $2}') \
             nofile=$(ulimit -n) && (grep myhost /etc/hosts || true)\n",
    );
    let out = build_ok(
        d,
        &dir,
        &[
            "--no-cache",
            "--memory",
            "64m",
            "--memory-swap",
            "96m",
            "--shm-size",
            "32m",
            "--cpu-shares",
            "512",
            "--cpu-period",
            "100000",
            "--cpu-quota",
            "50000",
            "--cpuset-cpus",
            "0",
            "--cpuset-mems",
            "0",
            "--ulimit",
            "nofile=1024:1024",
            "--add-host",
            "myhost:10.1.2.3",
            "-t",
            "limits:1",
        ],
    );
    assert!(
        out.contains(
            "mem=67108864 memsw=100663296 shares=512 quota=50000/100000 cpus=0 mems=0 shm=32768 nofile=1024"
        ),
        "{out}"
    );
    assert!(out.contains("10.1.2.3\tmyhost"), "{out}");
    // The /etc/hosts mount point is not part of the layer: the same step
    // without --add-host makes the same layer.
    build_ok(d, &dir, &["--no-cache", "-t", "limits:2"]);
    assert_eq!(
        inspect(d, "limits:1")["RootFS"]["Layers"],
        inspect(d, "limits:2")["RootFS"]["Layers"]
    );

    let o = vessel(
        d,
        &[
            "build",
            "--no-cache",
            "--memory",
            "48m",
            "--memory-swap",
            "80m",
            "--shm-size",
            "16m",
            "--cpu-shares",
            "256",
            "--cpu-period",
            "50000",
            "--cpu-quota",
            "25000",
            "--cpuset-cpus",
            "0",
            "--cpuset-mems",
            "0",
            "--ulimit",
            "nofile=512:512",
            "--add-host",
            "myhost=10.9.8.7",
            "--network",
            "none",
            dir.to_str().unwrap(),
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "vessel build: {t}");
    assert!(
        t.contains(
            "mem=50331648 memsw=83886080 shares=256 quota=25000/50000 cpus=0 mems=0 shm=16384 nofile=512"
        ),
        "{t}"
    );
    assert!(t.contains("10.9.8.7\tmyhost"), "{t}");

    // Past the memory limit: the step is killed and the error says why.
    let dir = context(
        d,
        "ctx-oom",
        "FROM busybox\nRUN awk 'BEGIN { s = \"x\"; for (i = 0; i < 28; i++) s = s s; print length(s) }'\n",
    );
    let err = build_err(d, &dir, &["--no-cache", "--memory", "32m"]);
    assert!(err.contains("returned a non-zero code: 137"), "{err}");
    assert!(err.contains("memory limit of 33554432 bytes"), "{err}");

    // A memory node the machine does not have reaches the RUN's cgroup and
    // fails the step there (with one node, `mems=0` above cannot tell a
    // value passed on from the runtime's default).
    let err = build_err(d, &dir, &["--no-cache", "--cpuset-mems", "63"]);
    assert!(err.contains("cpuset.mems"), "{err}");

    // Refused up front with a clear message.
    let err = build_err(d, &dir, &["--ulimit", "nofile=30000:30000"]);
    assert!(
        err.contains(
            "invalid ulimit nofile: hard limit 30000 is above the daemon's own hard limit"
        ),
        "{err}"
    );
    let err = build_err(d, &dir, &["--network", "bridge"]);
    assert!(
        err.contains("network mode \"bridge\" is not supported for builds"),
        "{err}"
    );
    let err = build_err(d, &dir, &["--network", "container:x"]);
    assert!(err.contains("use default, none or host"), "{err}");
    d.ok(&["rmi", "limits:1", "limits:2"]);
}

/// A `vessel-registry` on loopback, port 0, that wants a user and
/// password.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(root: &Path, user: &str, password: &str) -> Registry {
        std::fs::create_dir_all(root).unwrap();
        let mut h = Command::new(vessel_testkit::cargo_bin("vessel-registry"))
            .args(["htpasswd", user, "--cost", "4"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        h.stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        let out = h.wait_with_output().unwrap();
        assert!(out.status.success());
        let htpasswd = root.join("htpasswd");
        std::fs::write(&htpasswd, &out.stdout).unwrap();
        let mut child = Command::new(vessel_testkit::cargo_bin("vessel-registry"))
            .args(["--addr", "127.0.0.1:0", "--log-json", "--htpasswd"])
            .arg(&htpasswd)
            .arg("--root")
            .arg(root.join("storage"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("registry exited before it listened");
            };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "registry listening" {
                break v["fields"]["addr"].as_str().unwrap().to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Registry { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--pull` re-resolves the base against its registry (with the
/// credentials the CLI sends in X-Registry-Config); without it the local
/// image is used.
fn pull_refreshes_the_base(d: &Daemon) {
    let reg = Registry::start(&d.tmp.join("registry"), "builder", "s3cret");
    let mut login = d.docker();
    login
        .args(["login", "-u", "builder", "--password-stdin", &reg.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker login: {}", text(&out));
    let base = format!("{}/pull/base:latest", reg.addr);
    let make = |version: &str| {
        let dir = context(
            d,
            "ctx-base",
            &format!("FROM busybox\nRUN echo {version} > /version\n"),
        );
        build_ok(d, &dir, &["-t", &base]);
        let id = inspect(d, &base)["Id"].as_str().unwrap().to_string();
        d.ok(&["push", &base]);
        id
    };
    let v1 = make("v1");
    let v2 = make("v2");
    // Locally the tag names v1 again; the registry has v2.
    d.ok(&["tag", &v1, &base]);
    let dir = context(
        d,
        "ctx-pull",
        &format!("FROM {base}\nRUN cat /version > /seen\nCMD [\"cat\", \"/seen\"]\n"),
    );
    build_ok(d, &dir, &["-t", "pulled:1"]);
    assert_eq!(d.ok(&["run", "--rm", "pulled:1"]).trim(), "v1");
    let out = build_ok(d, &dir, &["--pull", "-t", "pulled:1"]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(d.ok(&["run", "--rm", "pulled:1"]).trim(), "v2");
    assert_eq!(inspect(d, &base)["Id"], v2.as_str());
    // Up to date now: the same base, so the cache holds.
    let out = build_ok(d, &dir, &["--pull", "-t", "pulled:1"]);
    assert!(out.contains("Image is up to date"), "{out}");
    assert!(out.contains("Using cache"), "{out}");
    // A base the registry does not have fails the build, naming it.
    let missing = context(
        d,
        "ctx-pull-missing",
        &format!("FROM {}/pull/nothing\nRUN true\n", reg.addr),
    );
    let err = build_err(d, &missing, &["--pull"]);
    assert!(err.contains("pulling"), "{err}");
    // A base missing locally is pulled without --pull too.
    d.ok(&["rmi", "pulled:1", &base]);
    let out = build_ok(d, &dir, &["-t", "pulled:1"]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(d.ok(&["run", "--rm", "pulled:1"]).trim(), "v2");
    // Without credentials the registry refuses the pull.
    d.ok(&["logout", &reg.addr]);
    let err = build_err(d, &dir, &["--pull"]);
    assert!(
        err.contains("pulling") && err.contains("authentication required"),
        "{err}"
    );
    d.ok(&["rmi", "pulled:1", &base, &v1]);
}

/// `image prune` keeps the intermediates a child still builds on and
/// removes a dangling image with the intermediates only it used;
/// `prune -a` removes every unused image with its intermediates.
fn image_prune_keeps_parents(d: &Daemon) {
    let all_ids = || -> Vec<String> {
        d.ok(&["images", "-a", "-q", "--no-trunc"])
            .lines()
            .map(str::to_string)
            .collect()
    };
    let step_ids = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(" ---> "))
            .filter(|l| !l.starts_with("Running") && !l.starts_with("Using"))
            .map(str::to_string)
            .collect()
    };
    let has = |ids: &[String], short: &str| ids.iter().any(|i| i[7..].starts_with(short));
    let dir = context(
        d,
        "ctx-prune-parents",
        "FROM busybox\nRUN echo a > /a\nRUN echo b > /b\n",
    );
    let kept = step_ids(&build_ok(d, &dir, &["--no-cache", "-t", "prunechild:1"]));
    assert_eq!(kept.len(), 3, "{kept:?}");
    // A dangling build on the same first step.
    write(
        &dir,
        "Dockerfile",
        "FROM busybox\nRUN echo a > /a\nRUN echo c > /c\n",
    );
    let dangling = step_ids(&build_ok(d, &dir, &[]));
    assert_eq!(dangling.len(), 3, "{dangling:?}");

    d.ok(&["image", "prune", "-f"]);
    let ids = all_ids();
    // The child's parent chain stays; the dangling top-level image goes.
    assert!(
        has(&ids, &kept[1]),
        "intermediate {} pruned: {ids:?}",
        kept[1]
    );
    assert!(has(&ids, &kept[2]), "{ids:?}");
    assert!(
        !has(&ids, &dangling[2]),
        "dangling {} kept: {ids:?}",
        dangling[2]
    );
    assert_eq!(
        d.ok(&["run", "--rm", "prunechild:1", "cat", "/a", "/b"]),
        "a\nb\n"
    );

    // `vessel image prune -a`: nothing unused stays, intermediates included.
    let o = vessel(d, &["image", "prune", "-a", "-f"]);
    assert!(o.status.success(), "{}", text(&o));
    let ids = all_ids();
    assert!(ids.is_empty(), "left after prune -a: {ids:?}");
}
