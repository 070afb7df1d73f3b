//! Interoperability with other tools on this machine: archives written by
//! skopeo and podman load into the store, what the store saves loads into
//! podman, and OCI layouts round-trip through skopeo byte for byte.

#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{E, Img, busybox_archive, docker_archive, tar_of};
use vessel_testkit::{TempRoot, have_command, require};
use vesseld::images::{ImageStore, SaveFormat};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A short-named directory under /tmp (podman refuses run roots longer
/// than 50 characters), removed on drop.
struct ShortDir(std::path::PathBuf);

impl ShortDir {
    fn new() -> ShortDir {
        let p = std::path::PathBuf::from("/tmp").join(vessel_testkit::unique_name("vp"));
        std::fs::create_dir(&p).unwrap();
        ShortDir(p)
    }
}

impl Drop for ShortDir {
    fn drop(&mut self) {
        vessel_testkit::unmount_below(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// podman with its own storage under `dir` and run root under `run` (vfs:
/// no mounts to clean up).
fn podman(dir: &Path, run: &ShortDir) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(&run.0)
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager=cgroupfs",
            "--events-backend=none",
        ]);
    c
}

/// Every file under `blobs/` with its bytes.
fn blobs(layout: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for alg in std::fs::read_dir(layout.join("blobs")).unwrap() {
        let alg = alg.unwrap();
        for b in std::fs::read_dir(alg.path()).unwrap() {
            let b = b.unwrap();
            out.insert(
                format!(
                    "{}/{}",
                    alg.file_name().to_string_lossy(),
                    b.file_name().to_string_lossy()
                ),
                std::fs::read(b.path()).unwrap(),
            );
        }
    }
    out
}

fn fixture_id() -> String {
    let mut a = tar::Archive::new(std::fs::File::open(busybox_archive()).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("manifest.json") {
            let v: serde_json::Value = serde_json::from_reader(&mut e).unwrap();
            let cfg = v[0]["Config"].as_str().unwrap();
            return format!(
                "sha256:{}",
                cfg.rsplit('/').next().unwrap().trim_end_matches(".json")
            );
        }
    }
    panic!("fixture has no manifest.json");
}

#[test]
fn archives_written_by_skopeo_and_podman_load() {
    require!(
        have_command("skopeo") && have_command("podman"),
        "skopeo and podman are not installed (apt-get install skopeo podman)"
    );
    require!(
        vessel_testkit::is_root(),
        "podman with its own storage root needs root here"
    );
    let t = TempRoot::new("interop-in");
    let id = fixture_id();

    // skopeo: docker-archive -> OCI layout -> docker-archive.
    let oci = t.join("oci");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", busybox_archive().display()))
        .arg(format!("oci:{}:latest", oci.display())));
    let sk = t.join("skopeo.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:latest", oci.display()))
        .arg(format!(
            "docker-archive:{}:example.local/tools/busybox:skopeo",
            sk.display()
        )));

    // podman: load, then save in docker-archive format (the classic layout
    // with per-layer directories and symlinks).
    let pd = t.join("podman");
    let runroot = ShortDir::new();
    run(podman(&pd, &runroot)
        .arg("load")
        .arg("-i")
        .arg(busybox_archive()));
    let ps = t.join("podman.tar");
    run(podman(&pd, &runroot)
        .args(["save", "--format", "docker-archive", "-o"])
        .arg(&ps)
        .arg("busybox:latest"));
    run(podman(&pd, &runroot).args(["rmi", "-a", "-f"]));

    let store = ImageStore::open(&t.join("store")).unwrap();
    let a = store
        .load_archive(
            std::fs::File::open(&sk).unwrap(),
            &mut common::no_progress(),
        )
        .unwrap();
    let b = store
        .load_archive(
            std::fs::File::open(&ps).unwrap(),
            &mut common::no_progress(),
        )
        .unwrap();
    let c = store
        .load_oci_layout(&oci, Some("busybox"), &mut common::no_progress())
        .unwrap();
    // podman keeps the config byte for byte; skopeo's OCI conversion
    // rewrites it, so that image has a new ID (the same in both forms).
    assert_eq!(b[0].to_string(), id);
    assert_eq!(a, c);
    let tags: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .flat_map(|s| s.repo_tags)
        .collect();
    assert!(
        tags.contains(&"example.local/tools/busybox:skopeo".to_string()),
        "{tags:?}"
    );
    assert!(tags.contains(&"busybox:latest".to_string()), "{tags:?}");
    assert_eq!(
        store
            .resolve("example.local/tools/busybox:skopeo")
            .unwrap()
            .id,
        a[0]
    );
    // Both images share the one snapshot of their single, identical layer.
    assert_eq!(
        store.lowerdirs(&a[0].to_string()).unwrap(),
        store.lowerdirs(&b[0].to_string()).unwrap()
    );

    let d = store.inspect("busybox").unwrap();
    assert!(d.snapshot_dirs[0].join("bin/busybox").is_file());
    assert!(store.verify().unwrap().is_consistent());
}

#[test]
fn what_we_save_loads_into_podman() {
    require!(
        have_command("podman"),
        "podman is not installed (apt-get install podman)"
    );
    require!(
        vessel_testkit::is_root(),
        "podman with its own storage root needs root here"
    );
    let t = TempRoot::new("interop-out");
    let store = ImageStore::open(&t.join("store")).unwrap();
    store
        .load_archive(
            std::fs::File::open(busybox_archive()).unwrap(),
            &mut common::no_progress(),
        )
        .unwrap();
    let layers = vec![
        tar_of(&[E::dir("app"), E::file("app/a", b"one\n")]),
        tar_of(&[E::file("app/b", b"two\n"), E::file("app/.wh.a", b"")]),
    ];
    store
        .load_archive(
            &docker_archive(&[Img::new("example.local/app:2", &layers, true)])[..],
            &mut common::no_progress(),
        )
        .unwrap();
    let out = t.join("saved.tar");
    let mut f = std::fs::File::create(&out).unwrap();
    store
        .save(
            &["busybox:latest", "example.local/app:2"],
            SaveFormat::DockerArchive,
            &mut f,
        )
        .unwrap();
    drop(f);

    let pd = t.join("podman");
    let runroot = ShortDir::new();
    let loaded = run(podman(&pd, &runroot).arg("load").arg("-i").arg(&out));
    let images =
        run(podman(&pd, &runroot).args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]));
    let inspect = run(podman(&pd, &runroot).args([
        "image",
        "inspect",
        "example.local/app:2",
        "--format",
        "{{json .RootFS.Layers}}",
    ]));
    run(podman(&pd, &runroot).args(["rmi", "-a", "-f"]));
    assert!(
        loaded.contains("busybox:latest") && loaded.contains("example.local/app:2"),
        "{loaded}"
    );
    let app = store.inspect("example.local/app:2").unwrap();
    assert!(images.contains(&app.summary.id.hex()[..12]), "{images}");
    let layers: Vec<String> = serde_json::from_str(inspect.trim()).unwrap();
    let ours: Vec<String> = app
        .record
        .layers
        .iter()
        .map(|l| l.diff_id.to_string())
        .collect();
    assert_eq!(layers, ours);
}

#[test]
fn oci_layouts_round_trip_through_skopeo_byte_identically() {
    require!(
        have_command("skopeo"),
        "skopeo is not installed (apt-get install skopeo)"
    );
    let t = TempRoot::new("interop-oci");
    // A layout written by skopeo (gzip layer, OCI manifest).
    let src = t.join("src");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", busybox_archive().display()))
        .arg(format!("oci:{}:latest", src.display())));
    let store = ImageStore::open(&t.join("store")).unwrap();
    store
        .load_oci_layout(&src, Some("busybox"), &mut common::no_progress())
        .unwrap();
    let ours = t.join("ours");
    store.save_oci_layout(&["busybox:latest"], &ours).unwrap();
    assert_eq!(
        blobs(&src),
        blobs(&ours),
        "our saved layout differs from the one we loaded"
    );
    // skopeo reads ours and writes the same bytes again.
    let copy = t.join("copy");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:latest", ours.display()))
        .arg(format!("oci:{}:latest", copy.display())));
    assert_eq!(
        blobs(&ours),
        blobs(&copy),
        "skopeo's copy of our layout differs"
    );
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
    let ours_idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ours.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        idx["manifests"][0]["digest"],
        ours_idx["manifests"][0]["digest"]
    );
    // And the copy loads back to the same image.
    let again = ImageStore::open(&t.join("again")).unwrap();
    let ids = again
        .load_oci_layout(&copy, Some("busybox"), &mut common::no_progress())
        .unwrap();
    assert_eq!(ids[0], store.resolve("busybox").unwrap().id);
}
