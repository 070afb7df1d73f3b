//! End-to-end: images (tag, list, save, load, rmi, history, import,
//! build with .dockerignore), volumes, networks listing, contexts and
//! hosts.

// Short names (d: daemon, o: output, c: cleanup) keep the scenarios readable.
#![allow(clippy::many_single_char_names)]

mod common;

use common::{Cleanup, load_busybox, ok, stderr, stdout, vessel, vessel_cmd};

#[test]
fn tag_list_save_load_remove() {
    let Some(d) = common::daemon("tag_list_save_load_remove") else {
        return;
    };
    load_busybox(&d);
    let mut c = Cleanup::new(&d);
    let repo = vessel_testkit::unique_name("tagged");
    let image = format!("{repo}:t1");
    c.images.push(image.clone());
    ok(&d, &["tag", "busybox", &image]);

    let rows = ok(
        &d,
        &[
            "images",
            &repo,
            "--format",
            "{{.Repository}} {{.Tag}} {{len .ID}}",
        ],
    );
    assert_eq!(rows, format!("{repo} t1 12\n"));
    let table = ok(&d, &["images", &repo]);
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("REPOSITORY"), "{header}");
    assert!(
        header.contains("IMAGE ID") && header.ends_with("SIZE"),
        "{header}"
    );
    let json = ok(&d, &["image", "ls", &repo, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["Tag"], "t1");

    let inspect = ok(
        &d,
        &[
            "image",
            "inspect",
            "-f",
            "{{.Os}} {{index .RepoTags 0}}",
            &image,
        ],
    );
    assert!(
        inspect == format!("linux {image}\n") || inspect.starts_with("linux "),
        "{inspect}"
    );
    assert!(ok(&d, &["history", &image]).starts_with("IMAGE"));

    let tmp = vessel_testkit::TempRoot::new("cli-save");
    let tarball = tmp.join("img.tar");
    ok(&d, &["save", "-o", tarball.to_str().unwrap(), &image]);
    assert!(std::fs::metadata(&tarball).unwrap().len() > 1024);
    let rmi = ok(&d, &["rmi", &image]);
    assert!(rmi.contains(&format!("Untagged: {image}")), "{rmi}");
    assert_eq!(ok(&d, &["images", "-q", &repo]), "");
    let loaded = ok(&d, &["load", "-i", tarball.to_str().unwrap()]);
    assert!(loaded.contains(&image), "load reports the tag: {loaded}");
    assert_eq!(ok(&d, &["images", "--format", "{{.Tag}}", &repo]), "t1\n");

    // save refuses a terminal and writes to a pipe.
    let o = vessel(&d, &["save", &image]);
    assert!(o.status.success());
    assert!(o.stdout.len() > 1024);

    // import a root filesystem tarball.
    let exported = tmp.join("fs.tar");
    let name = c.name("imp");
    ok(&d, &["create", "--name", &name, "busybox", "true"]);
    ok(&d, &["export", "-o", exported.to_str().unwrap(), &name]);
    let imported = format!("{}:imp", vessel_testkit::unique_name("imported"));
    c.images.push(imported.clone());
    let out = ok(
        &d,
        &[
            "import",
            "-c",
            "CMD [\"echo\", \"imported\"]",
            exported.to_str().unwrap(),
            &imported,
        ],
    );
    assert!(out.contains("sha256:"), "{out}");
    assert_eq!(ok(&d, &["run", "--rm", &imported]), "imported\n");

    let o = vessel(&d, &["rmi", "vessel-test-no-such-image:x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Error response from daemon"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn build_honours_dockerignore_and_args() {
    let Some(d) = common::daemon("build_honours_dockerignore_and_args") else {
        return;
    };
    load_busybox(&d);
    let mut c = Cleanup::new(&d);
    let ctx = vessel_testkit::TempRoot::new("cli-build");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nARG X=default\nCOPY . /ctx\nRUN echo \"$X\" > /x\nLABEL built=yes\n",
    )
    .unwrap();
    std::fs::write(
        ctx.join(".dockerignore"),
        "*.log\n!keep.log\nsecret\nDockerfile\n",
    )
    .unwrap();
    std::fs::write(ctx.join("a.txt"), "a").unwrap();
    std::fs::write(ctx.join("b.log"), "b").unwrap();
    std::fs::write(ctx.join("keep.log"), "k").unwrap();
    std::fs::create_dir(ctx.join("secret")).unwrap();
    std::fs::write(ctx.join("secret/s.txt"), "s").unwrap();
    let image = format!("{}:b1", vessel_testkit::unique_name("built"));
    let image2 = format!("{}:b2", vessel_testkit::unique_name("built"));
    c.images.push(image.clone());
    c.images.push(image2.clone());
    let outdir = vessel_testkit::TempRoot::new("cli-build-out");
    let iid = outdir.join("iid");
    let out = ok(
        &d,
        &[
            "build",
            "-t",
            &image,
            "-t",
            &image2,
            "--build-arg",
            "X=given",
            "--label",
            "extra=1",
            "--iidfile",
            iid.to_str().unwrap(),
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(
        out.starts_with("Sending build context to Docker daemon"),
        "{out}"
    );
    let id = std::fs::read_to_string(&iid).unwrap();
    assert!(id.starts_with("sha256:"), "{id}");
    let files = ok(
        &d,
        &["run", "--rm", &image, "sh", "-c", "ls -A /ctx; cat /x"],
    );
    let mut listed: Vec<&str> = files.lines().collect();
    assert_eq!(listed.pop(), Some("given"));
    listed.sort_unstable();
    // The client sends the Dockerfile even though .dockerignore lists it (the
    // build needs it), and the daemon's COPY still leaves it out, exactly as
    // with the docker CLI and dockerd.
    assert_eq!(listed, vec![".dockerignore", "a.txt", "keep.log"]);
    assert_eq!(
        ok(
            &d,
            &[
                "image",
                "inspect",
                "-f",
                "{{.Config.Labels.built}} {{.Config.Labels.extra}}",
                &image2
            ]
        ),
        "yes 1\n"
    );

    // -q prints only the ID; a failing step sets the exit code.
    let q = ok(
        &d,
        &[
            "build",
            "-q",
            "--build-arg",
            "X=given",
            "--label",
            "extra=1",
            ctx.path().to_str().unwrap(),
        ],
    );
    assert_eq!(q.trim(), id.trim());
    std::fs::write(ctx.join("Dockerfile.fail"), "FROM busybox\nRUN exit 3\n").unwrap();
    let o = vessel(
        &d,
        &[
            "build",
            "-f",
            ctx.join("Dockerfile.fail").to_str().unwrap(),
            ctx.path().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));

    // A Dockerfile from stdin with an empty context.
    let mut child = vessel_cmd(&d, &["build", "-q", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"FROM busybox\nENV FROM_STDIN=1\n",
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let built = stdout(&o).trim().to_string();
    assert!(built.starts_with("sha256:"), "{built}");
    c.images.push(built.clone());
    assert_eq!(
        ok(&d, &["run", "--rm", &built, "sh", "-c", "echo $FROM_STDIN"]),
        "1\n"
    );
}

#[test]
fn volumes_and_networks() {
    let Some(d) = common::daemon("volumes_and_networks") else {
        return;
    };
    load_busybox(&d);
    let mut c = Cleanup::new(&d);
    let vol = vessel_testkit::unique_name("vol");
    c.volumes.push(vol.clone());
    assert_eq!(
        ok(&d, &["volume", "create", "--label", "k=v", &vol]),
        format!("{vol}\n")
    );
    assert!(ok(&d, &["volume", "ls", "-q"]).lines().any(|l| l == vol));
    assert!(ok(&d, &["volume", "ls"]).starts_with("DRIVER    VOLUME NAME"));
    assert_eq!(
        ok(
            &d,
            &["volume", "inspect", "-f", "{{.Name}} {{.Labels.k}}", &vol]
        ),
        format!("{vol} v\n")
    );
    ok(
        &d,
        &[
            "run",
            "--rm",
            "-v",
            &format!("{vol}:/data"),
            "busybox",
            "sh",
            "-c",
            "echo kept > /data/f",
        ],
    );
    assert_eq!(
        ok(
            &d,
            &[
                "run",
                "--rm",
                "--mount",
                &format!("type=volume,src={vol},dst=/d,readonly"),
                "busybox",
                "cat",
                "/d/f"
            ]
        ),
        "kept\n"
    );
    assert_eq!(ok(&d, &["volume", "rm", &vol]), format!("{vol}\n"));
    let o = vessel(&d, &["volume", "inspect", &vol]);
    assert_eq!(o.status.code(), Some(1));

    let nets = ok(&d, &["network", "ls", "--format", "{{.Name}}"]);
    assert!(nets.lines().any(|l| l == "none"), "{nets}");
    assert!(ok(&d, &["network", "ls"]).starts_with("NETWORK ID     NAME"));
    assert_eq!(
        ok(&d, &["network", "inspect", "-f", "{{.Name}}", "none"]),
        "none\n"
    );

    let df = ok(&d, &["system", "df"]);
    assert!(df.starts_with("TYPE"), "{df}");
    assert!(
        df.contains("Images") && df.contains("Local Volumes"),
        "{df}"
    );
    assert!(ok(&d, &["info", "--format", "{{.OSType}}"]).starts_with("linux"));
    let v = ok(&d, &["version", "--format", "{{.Server.ApiVersion}}"]);
    assert!(v.trim().starts_with("1."), "{v}");
}

#[test]
fn hosts_contexts_and_config() {
    let Some(d) = common::daemon("hosts_contexts_and_config") else {
        return;
    };
    let cfg = d.config.path();

    // A wrong DOCKER_HOST fails like docker; -H wins over it.
    let o = vessel_cmd(&d, &["version", "--format", "{{.Server.Os}}"])
        .env("DOCKER_HOST", "unix:///nonexistent/vessel.sock")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Cannot connect to the daemon at unix:///nonexistent/vessel.sock"),
        "{}",
        stderr(&o)
    );
    let o = vessel_cmd(
        &d,
        &["-H", &d.host(), "version", "--format", "{{.Server.Os}}"],
    )
    .env("DOCKER_HOST", "unix:///nonexistent/vessel.sock")
    .output()
    .unwrap();
    assert_eq!(stdout(&o), "linux\n");
    // VESSEL_HOST wins over DOCKER_HOST.
    let o = vessel_cmd(&d, &["version", "--format", "{{.Server.Os}}"])
        .env("DOCKER_HOST", "unix:///nonexistent/vessel.sock")
        .env("VESSEL_HOST", d.host())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "linux\n");

    // A context in docker's store, made current with `context use`.
    ok(
        &d,
        &[
            "context",
            "create",
            "--docker",
            &format!("host={}", d.host()),
            "--description",
            "test",
            "ctx1",
        ],
    );
    assert!(cfg.join("contexts/meta").read_dir().unwrap().count() == 1);
    ok(&d, &["context", "use", "ctx1"]);
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
    assert_eq!(conf["currentContext"], "ctx1");
    let no_host = |args: &[&str]| {
        vessel_cmd(&d, args)
            .env_remove("DOCKER_HOST")
            .output()
            .unwrap()
    };
    let o = no_host(&["version", "--format", "{{.Client.Context}} {{.Server.Os}}"]);
    assert_eq!(stdout(&o), "ctx1 linux\n", "{}", stderr(&o));
    let ls = stdout(&no_host(&["context", "ls"]));
    assert!(ls.lines().any(|l| l.starts_with("ctx1 *")), "{ls}");
    assert_eq!(stdout(&no_host(&["context", "show"])), "ctx1\n");
    ok(&d, &["context", "use", "default"]);
    ok(&d, &["context", "rm", "ctx1"]);
    assert!(
        cfg.join("contexts/meta")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );

    // psFormat from config.json is the default format.
    std::fs::write(cfg.join("config.json"), r#"{"psFormat": "X{{.Names}}"}"#).unwrap();
    let o = vessel(&d, &["ps", "-a", "--filter", "name=vessel-test-none-such"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");

    // completion scripts need no daemon.
    for shell in ["bash", "zsh", "fish"] {
        let o = vessel(&d, &["completion", shell]);
        assert!(
            o.status.success() && stdout(&o).contains("vessel"),
            "{shell}"
        );
    }
}
