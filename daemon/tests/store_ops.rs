//! The image store's operations on real files: load, list, inspect,
//! history, tag, save/load round trips, import, remove with conflicts,
//! prune, verify, shared snapshots, and (privileged) overlay mounts.

#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

mod common;

use std::path::PathBuf;

use common::{E, Img, busybox_archive, docker_archive, tar_of};
use vessel_testkit::{TempRoot, require};
use vesseld::images::{
    ConfigChanges, Error, ImageStore, ImportOptions, MountMethod, RemoveEvent, SaveFormat, snapshot,
};

fn load_busybox(store: &ImageStore) -> vesseld::images::Digest {
    let f = std::fs::File::open(busybox_archive()).unwrap();
    let ids = store.load_archive(f, &mut common::no_progress()).unwrap();
    assert_eq!(ids.len(), 1);
    ids[0].clone()
}

/// busybox plus one layer on top, as a docker-archive that shares the
/// busybox layer byte for byte.
fn busybox_plus(tag: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let base = busybox_layer();
    let top = tar_of(&files.iter().map(|(n, d)| E::file(n, d)).collect::<Vec<_>>());
    docker_archive(&[Img::new(tag, &[base, top], false)])
}

/// The uncompressed busybox layer from the fixture archive.
fn busybox_layer() -> Vec<u8> {
    let mut a = tar::Archive::new(std::fs::File::open(busybox_archive()).unwrap());
    let mut manifest = None;
    let mut blobs = std::collections::HashMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if name == "manifest.json" {
            manifest = Some(data);
        } else {
            blobs.insert(name, data);
        }
    }
    let m: serde_json::Value = serde_json::from_slice(&manifest.unwrap()).unwrap();
    blobs.remove(m[0]["Layers"][0].as_str().unwrap()).unwrap()
}

#[test]
fn load_list_inspect_history_tag() {
    let t = TempRoot::new("img-basic");
    let store = ImageStore::open(&t.join("store")).unwrap();
    let id = load_busybox(&store);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].repo_tags, ["busybox:latest"]);
    assert_eq!(list[0].id, id);
    let d = store.inspect("busybox").unwrap();
    assert_eq!(
        d.config.config.as_ref().unwrap().cmd.as_deref(),
        Some(&["sh".to_string()][..])
    );
    assert!(d.snapshot_dirs[0].join("bin/busybox").is_file());
    assert!(
        std::fs::symlink_metadata(d.snapshot_dirs[0].join("bin/sh"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // Short ID and full ID resolve too.
    assert_eq!(store.inspect(&id.hex()[..12]).unwrap().summary.id, id);
    assert_eq!(store.inspect(&id.to_string()).unwrap().summary.id, id);
    let h = store.history("busybox:latest").unwrap();
    assert_eq!(h.len(), 1);
    assert!(h[0].size > 1_000_000);
    store
        .tag("busybox", "example.local:5000/tools/bb:1")
        .unwrap();
    let tags = &store.list().unwrap()[0].repo_tags;
    assert_eq!(tags, &["busybox:latest", "example.local:5000/tools/bb:1"]);
    assert!(matches!(
        store.inspect("nothing:here"),
        Err(Error::NotFound(_))
    ));
    // Loading the same archive again changes nothing.
    assert_eq!(load_busybox(&store), id);
    let report = store.verify().unwrap();
    assert!(report.is_consistent(), "{:?}", report.damage);
    assert!(report.unreferenced_blobs.is_empty() && report.unreferenced_snapshots.is_empty());
}

#[test]
fn save_and_load_round_trip_in_both_formats() {
    let t = TempRoot::new("img-save");
    let store = ImageStore::open(&t.join("a")).unwrap();
    let id = load_busybox(&store);
    store.tag("busybox", "other:2").unwrap();

    let mut docker = Vec::new();
    store
        .save(
            &["busybox:latest", "other:2"],
            SaveFormat::DockerArchive,
            &mut docker,
        )
        .unwrap();
    let mut again = Vec::new();
    store
        .save(
            &["busybox:latest", "other:2"],
            SaveFormat::DockerArchive,
            &mut again,
        )
        .unwrap();
    assert_eq!(docker, again, "save is deterministic");
    let b = ImageStore::open(&t.join("b")).unwrap();
    assert_eq!(
        b.load_archive(&docker[..], &mut common::no_progress())
            .unwrap(),
        std::slice::from_ref(&id)
    );
    assert_eq!(
        b.list().unwrap()[0].repo_tags,
        ["busybox:latest", "other:2"]
    );

    let mut oci = Vec::new();
    store
        .save(&["busybox"], SaveFormat::OciArchive, &mut oci)
        .unwrap();
    let c = ImageStore::open(&t.join("c")).unwrap();
    assert_eq!(
        c.load_archive(&oci[..], &mut common::no_progress())
            .unwrap(),
        std::slice::from_ref(&id)
    );
    assert_eq!(c.list().unwrap()[0].repo_tags, ["busybox:latest"]);

    store
        .save_oci_layout(&["busybox"], &t.join("layout"))
        .unwrap();
    let d = ImageStore::open(&t.join("d")).unwrap();
    assert_eq!(
        d.load_oci_layout(&t.join("layout"), None, &mut common::no_progress())
            .unwrap(),
        std::slice::from_ref(&id)
    );
    // The OCI layout carries the stored manifest byte for byte.
    let rec = store.resolve("busybox").unwrap();
    assert_eq!(
        std::fs::read(
            t.join("layout/blobs/sha256")
                .join(rec.manifest.digest.hex())
        )
        .unwrap(),
        std::fs::read(store.content().blob_path(&rec.manifest.digest)).unwrap()
    );
    for s in [&b, &c, &d] {
        assert!(s.verify().unwrap().is_consistent());
    }
}

#[test]
fn shared_base_layers_share_snapshots_and_survive_removal() {
    let t = TempRoot::new("img-share");
    let store = ImageStore::open(&t.join("store")).unwrap();
    let base = load_busybox(&store);
    let app = store
        .load_archive(
            &busybox_plus("app:1", &[("app/hello.txt", b"hello from app\n")])[..],
            &mut common::no_progress(),
        )
        .unwrap()[0]
        .clone();
    let b = store.inspect("busybox").unwrap();
    let a = store.inspect("app:1").unwrap();
    assert_eq!(a.snapshot_dirs.len(), 2);
    assert_eq!(
        a.snapshot_dirs[0], b.snapshot_dirs[0],
        "the base layer is one shared snapshot directory"
    );
    let snaps = std::fs::read_dir(t.join("store/snapshots"))
        .unwrap()
        .count();
    assert_eq!(snaps, 2, "two images, two distinct chains");

    // Removing busybox keeps app's base snapshot.
    let ev = store.remove("busybox", false).unwrap();
    assert_eq!(
        ev,
        [
            RemoveEvent::Untagged("busybox:latest".into()),
            RemoveEvent::Deleted(base)
        ]
    );
    assert!(a.snapshot_dirs[0].join("bin/busybox").is_file());
    let report = store.verify().unwrap();
    assert!(report.is_consistent(), "{:?}", report.damage);
    assert!(report.unreferenced_blobs.is_empty());

    // And app still runs as a rootfs: mount it for real.
    require!(vessel_testkit::is_root(), "mounting an overlay needs root");
    let upper = t.join("c/upper");
    let work = t.join("c/work");
    let target = t.join("c/rootfs");
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mounts = store
        .mounts_for("app:1", Some((upper.clone(), work)))
        .unwrap();
    snapshot::mount(&mounts[0], &target).unwrap();
    let hello = std::fs::read_to_string(target.join("app/hello.txt"));
    let sh = target.join("bin/busybox").is_file();
    std::fs::write(target.join("new"), b"written").unwrap();
    snapshot::unmount(&target).unwrap();
    assert_eq!(hello.unwrap(), "hello from app\n");
    assert!(sh);
    assert_eq!(std::fs::read(upper.join("new")).unwrap(), b"written");
    // The lower snapshot was not written to.
    assert!(!a.snapshot_dirs[1].join("new").exists());
    let _ = app;
}

#[test]
fn in_use_images_conflict_and_prune_keeps_them() {
    let t = TempRoot::new("img-inuse");
    let store = ImageStore::open(&t.join("store")).unwrap();
    let id = load_busybox(&store);
    store.hold("busybox", "container-1").unwrap();
    let e = store.remove("busybox", false).unwrap_err();
    assert!(matches!(e, Error::InUse { .. }));
    assert!(
        e.to_string().contains("image is in use by container-1"),
        "{e}"
    );
    // Forced: untagged but kept while held.
    assert_eq!(
        store.remove("busybox", true).unwrap(),
        [RemoveEvent::Untagged("busybox:latest".into())]
    );
    assert!(store.prune(false).unwrap().images.is_empty());
    assert!(store.inspect(&id.to_string()).unwrap().snapshot_dirs[0].exists());
    store.release("container-1").unwrap();
    let report = store.prune(false).unwrap();
    assert_eq!(report.images, [id]);
    assert!(report.reclaimed_bytes > 0);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(t.join("store/snapshots"))
            .unwrap()
            .count(),
        0
    );
    assert!(store.content().list().unwrap().is_empty());
}

#[test]
fn multiple_tags_need_force_when_removing_by_id() {
    let t = TempRoot::new("img-multi");
    let store = ImageStore::open(&t.join("store")).unwrap();
    let id = load_busybox(&store);
    store.tag("busybox", "copy:1").unwrap();
    assert!(matches!(
        store.remove(&id.to_string(), false),
        Err(Error::MultipleTags { .. })
    ));
    // By tag: only that tag goes.
    assert_eq!(
        store.remove("copy:1", false).unwrap(),
        [RemoveEvent::Untagged("copy:1".into())]
    );
    store.tag("busybox", "copy:1").unwrap();
    let ev = store.remove(&id.hex()[..12], true).unwrap();
    assert_eq!(ev.len(), 3);
    assert!(store.verify().unwrap().is_consistent());
}

#[test]
fn import_a_rootfs_tarball() {
    let t = TempRoot::new("img-import");
    let store = ImageStore::open(&t.join("store")).unwrap();
    let rootfs = t.join("rootfs");
    vessel_testkit::busybox_rootfs(&rootfs);
    let mut tarball = Vec::new();
    ImageStore::export(&rootfs, &mut tarball).unwrap();
    let gz = common::gzip(&tarball);
    let opts = ImportOptions {
        reference: Some("imported:v1".into()),
        message: Some("from a test".into()),
        changes: ConfigChanges {
            cmd: Some(vec!["/bin/sh".into()]),
            env: vec!["A=1".into()],
            ..ConfigChanges::default()
        },
        platform: None,
    };
    let id = store.import(&gz[..], &opts).unwrap();
    let d = store.inspect("imported:v1").unwrap();
    assert_eq!(d.summary.id, id);
    assert_eq!(
        d.config.config.as_ref().unwrap().env.as_deref(),
        Some(&["A=1".to_string()][..])
    );
    assert_eq!(
        d.record.layers[0].blob.media_type,
        vesseld::images::manifest::DOCKER_LAYER_GZIP
    );
    assert_eq!(
        store.history("imported:v1").unwrap()[0].comment.as_deref(),
        Some("from a test")
    );
    assert!(d.snapshot_dirs[0].join("bin/busybox").is_file());
    // Not a tarball: a clear error and nothing left behind.
    let e = store
        .import(
            &b"this is not a tar stream at all"[..],
            &ImportOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Layer { .. }), "{e:?}");
    let r = store.verify().unwrap();
    assert!(
        r.is_consistent() && r.unreferenced_blobs.is_empty(),
        "{r:?}"
    );
}

#[test]
fn commit_an_upper_dir_with_whiteouts_and_export() {
    require!(vessel_testkit::is_root(), "mounting an overlay needs root");
    let t = TempRoot::new("img-commit");
    let store = ImageStore::open(&t.join("store")).unwrap();
    load_busybox(&store);
    let (upper, work, target) = (t.join("upper"), t.join("work"), t.join("rootfs"));
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d).unwrap();
    }
    let m = store
        .mounts_for("busybox", Some((upper.clone(), work.clone())))
        .unwrap();
    snapshot::mount(&m[0], &target).unwrap();
    std::fs::write(target.join("etc/motd"), b"committed\n").unwrap();
    std::fs::remove_file(target.join("etc/hostname")).unwrap();
    std::fs::remove_dir_all(target.join("var")).unwrap();
    std::fs::create_dir_all(target.join("var/new")).unwrap();
    snapshot::unmount(&target).unwrap();

    let id = store
        .commit(
            &upper,
            Some("busybox"),
            &vesseld::images::CommitOptions {
                reference: Some("committed:1".into()),
                comment: Some("a change".into()),
                changes: ConfigChanges {
                    working_dir: Some("/etc".into()),
                    ..ConfigChanges::default()
                },
                ..Default::default()
            },
        )
        .unwrap();
    let d = store.inspect("committed:1").unwrap();
    assert_eq!(d.summary.id, id);
    assert_eq!(d.record.layers.len(), 2);
    assert_eq!(
        d.config.config.as_ref().unwrap().working_dir.as_deref(),
        Some("/etc")
    );
    assert_eq!(
        store.history("committed:1").unwrap()[0].comment.as_deref(),
        Some("a change")
    );

    // Mount the committed image read-only and check the changes.
    let view = t.join("view");
    std::fs::create_dir(&view).unwrap();
    let m = store.mounts_for("committed:1", None).unwrap();
    snapshot::mount(&m[0], &view).unwrap();
    let motd = std::fs::read(view.join("etc/motd"));
    let hostname_gone = !view.join("etc/hostname").exists();
    let var_log_gone = !view.join("var/log").exists();
    let var_new = view.join("var/new").is_dir();
    let mut exported = Vec::new();
    ImageStore::export(&view, &mut exported).unwrap();
    snapshot::unmount(&view).unwrap();
    assert_eq!(motd.unwrap(), b"committed\n");
    assert!(hostname_gone && var_log_gone && var_new);
    let names: Vec<String> = tar::Archive::new(&exported[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"etc/motd".to_string()));
    assert!(names.contains(&"bin/busybox".to_string()));
    assert!(
        !names
            .iter()
            .any(|n| n.contains(".wh.") || n == "etc/hostname")
    );
    assert!(store.verify().unwrap().is_consistent());
}

#[test]
fn overlay_with_many_layers_mounts_both_ways() {
    require!(vessel_testkit::is_root(), "mounting an overlay needs root");
    let t = TempRoot::new("img-deep");
    let store = ImageStore::open(&t.join("store")).unwrap();
    let layers: Vec<Vec<u8>> = (0..128)
        .map(|i| {
            tar_of(&[
                E::dir("layers"),
                E::file(&format!("layers/{i:03}"), format!("layer {i}\n").as_bytes()),
                E::file("top", format!("{i}").as_bytes()),
            ])
        })
        .collect();
    store
        .load_archive(
            &docker_archive(&[Img::new("deep:128", &layers, true)])[..],
            &mut common::no_progress(),
        )
        .unwrap();
    let lower = store.lowerdirs("deep:128").unwrap();
    assert_eq!(lower.len(), 128);
    let total: usize = lower.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(
        total > 4096,
        "the lowerdir list ({total} bytes) must exceed a page for this test to mean anything"
    );
    for (k, classic) in [(0, false), (1, true)] {
        let (upper, work, target) = (
            t.join(format!("u{k}")),
            t.join(format!("w{k}")),
            t.join(format!("r{k}")),
        );
        for d in [&upper, &work, &target] {
            std::fs::create_dir_all(d).unwrap();
        }
        let m = store.mounts_for("deep:128", Some((upper, work))).unwrap();
        let method = snapshot::mount_with(&m[0], &target, classic).unwrap();
        let first = std::fs::read_to_string(target.join("layers/000"));
        let last = std::fs::read_to_string(target.join("layers/127"));
        let top = std::fs::read_to_string(target.join("top"));
        let count = std::fs::read_dir(target.join("layers")).map(Iterator::count);
        snapshot::unmount(&target).unwrap();
        assert_eq!(
            method,
            if classic {
                MountMethod::ClassicShortLinks
            } else {
                MountMethod::LowerdirPlus
            }
        );
        assert_eq!(first.unwrap(), "layer 0\n");
        assert_eq!(last.unwrap(), "layer 127\n");
        assert_eq!(top.unwrap(), "127", "the topmost layer wins");
        assert_eq!(count.unwrap(), 128);
    }
    // No short-link scratch directories are left behind.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".ovl-")
        })
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_second_process_cannot_open_the_store() {
    let t = TempRoot::new("img-lock");
    let _a = ImageStore::open(&t.join("store")).unwrap();
    // flock is per open file description, so a second open in this process
    // conflicts exactly as another process would.
    assert!(matches!(
        ImageStore::open(&t.join("store")),
        Err(Error::Locked(_))
    ));
}
