//! Hostile layer tarballs: each must give a clear error or a result
//! contained in the snapshot, and nothing outside the store may change.

#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{E, Img, docker_archive, gzip, tar_of, tree_state};
use tar::EntryType;
use vessel_testkit::TempRoot;
use vesseld::images::{Error, ImageStore, Limits, Options, layer};

struct Case {
    t: TempRoot,
    store: ImageStore,
    before: Vec<String>,
}

impl Case {
    fn new(name: &str) -> Case {
        let t = TempRoot::new(name);
        std::fs::create_dir(t.join("outside")).unwrap();
        std::fs::write(t.join("outside/victim"), b"original").unwrap();
        std::fs::create_dir(t.join("outside/dir")).unwrap();
        let store = ImageStore::open_with(
            &t.join("store"),
            Options {
                limits: Limits {
                    max_uncompressed: 64 << 20,
                    max_entries: 10_000,
                },
            },
        )
        .unwrap();
        let before = tree_state(&t.join("outside"));
        Case { t, store, before }
    }

    fn outside(&self) -> String {
        self.t.join("outside").display().to_string()
    }

    fn load(&self, img: Img) -> Result<Vec<vesseld::images::Digest>, Error> {
        self.store
            .load_archive(&docker_archive(&[img])[..], &mut common::no_progress())
    }

    fn load_entries(&self, entries: &[E]) -> Result<Vec<vesseld::images::Digest>, Error> {
        self.load(Img::new("hostile:latest", &[tar_of(entries)], true))
    }

    /// Nothing outside the store changed, the store is consistent, and a
    /// failed load left no image behind.
    fn check(&self, result: &Result<Vec<vesseld::images::Digest>, Error>) {
        assert_eq!(
            self.before,
            tree_state(&self.t.join("outside")),
            "the directory outside the store changed"
        );
        let top: Vec<String> = std::fs::read_dir(self.t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut top = top;
        top.sort();
        assert_eq!(
            top,
            ["outside", "store"],
            "something was created next to the store"
        );
        let report = self.store.verify().unwrap();
        assert!(report.is_consistent(), "{:?}", report.damage);
        if result.is_err() {
            assert!(
                self.store.list().unwrap().is_empty(),
                "a failed load left an image"
            );
            assert!(
                report.unreferenced_blobs.is_empty(),
                "a failed load left blobs: {:?}",
                report.unreferenced_blobs
            );
            assert!(report.unreferenced_snapshots.is_empty());
        }
    }

    fn snapshot(&self) -> std::path::PathBuf {
        let d = self.store.inspect("hostile:latest").unwrap();
        d.snapshot_dirs.last().unwrap().clone()
    }
}

fn layer_error(e: &Error) -> &layer::Error {
    match e {
        Error::Layer { source, .. } => source,
        other => panic!("expected a layer error, got {other:?}"),
    }
}

fn chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn relative_path_traversal_is_rejected() {
    let c = Case::new("h-trav");
    let r = c.load_entries(&[
        E::file("../../outside/victim", b"pwned"),
        E::file("a/../../../x", b"x"),
    ]);
    let e = r.as_ref().unwrap_err();
    assert!(
        matches!(layer_error(e), layer::Error::Escape { .. }),
        "{e:?}"
    );
    let msg = chain(e);
    assert!(
        msg.contains("layer sha256:") && msg.contains("escapes the root"),
        "{msg}"
    );
    c.check(&r);
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let c = Case::new("h-abs");
    let victim = format!("{}/victim", c.outside());
    let r = c.load_entries(&[E::file(&victim, b"pwned")]);
    r.as_ref().unwrap();
    c.check(&r);
    let inside = c.snapshot().join(victim.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"pwned");
}

#[test]
fn absolute_symlink_then_write_stays_inside() {
    let c = Case::new("h-abslink");
    let r = c.load_entries(&[
        E::symlink("esc", &c.outside()),
        E::file("esc/victim", b"pwned"),
        E::file("esc/new", b"x"),
    ]);
    // Either contained (the symlink resolves inside the root) or rejected.
    c.check(&r);
    if r.is_ok() {
        let snap = c.snapshot();
        assert!(
            std::fs::symlink_metadata(snap.join("esc"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}

#[test]
fn relative_symlink_escape_stays_inside() {
    let c = Case::new("h-rellink");
    let r = c.load_entries(&[
        E::symlink("up", "../../../../../../../../.."),
        E::file(&format!("up{}/victim", c.outside()), b"pwned"),
        E::symlink("out", "../outside"),
        E::file("out/victim", b"pwned"),
    ]);
    c.check(&r);
}

#[test]
fn hardlink_escape_is_rejected() {
    let c = Case::new("h-hlink");
    let r = c.load_entries(&[E::hardlink("hl", "../../outside/victim")]);
    let e = r.as_ref().unwrap_err();
    assert!(
        matches!(layer_error(e), layer::Error::HardlinkEscape { .. }),
        "{e:?}"
    );
    c.check(&r);
}

#[test]
fn absolute_hardlink_resolves_in_the_layer_root() {
    let c = Case::new("h-abshl");
    // Absolute target naming a host file: resolved inside the layer, where
    // it does not exist, so a clear error and no link to the host file.
    let r = c.load_entries(&[E::hardlink("pw", &format!("{}/victim", c.outside()))]);
    let e = r.as_ref().unwrap_err();
    assert!(
        matches!(layer_error(e), layer::Error::HardlinkMissing { .. }),
        "{e:?}"
    );
    c.check(&r);
    // Absolute target naming a file of the layer itself: real images do this.
    let c = Case::new("h-abshl2");
    let r = c.load_entries(&[
        E::dir("bin"),
        E::file("bin/a", b"same"),
        E::hardlink("bin/b", "/bin/a"),
    ]);
    r.as_ref().unwrap();
    c.check(&r);
    let snap = c.snapshot();
    assert_eq!(
        std::fs::metadata(snap.join("bin/a")).unwrap().ino(),
        std::fs::metadata(snap.join("bin/b")).unwrap().ino()
    );
}

#[test]
fn hardlink_through_symlinked_directory_stays_inside() {
    let c = Case::new("h-hlsym");
    let r = c.load_entries(&[E::symlink("d", &c.outside()), E::hardlink("hl", "d/victim")]);
    let e = r.as_ref().unwrap_err();
    assert!(
        matches!(layer_error(e), layer::Error::HardlinkMissing { .. }),
        "{e:?}"
    );
    c.check(&r);
}

#[test]
fn write_over_symlink_replaces_the_link() {
    let c = Case::new("h-overlink");
    let victim = format!("{}/victim", c.outside());
    let r = c.load_entries(&[E::symlink("f", &victim), E::file("f", b"pwned")]);
    r.as_ref().unwrap();
    c.check(&r);
    let snap = c.snapshot();
    assert_eq!(std::fs::read(snap.join("f")).unwrap(), b"pwned");
    assert!(std::fs::symlink_metadata(snap.join("f")).unwrap().is_file());
}

#[test]
fn directory_replaced_by_symlink_then_written() {
    let c = Case::new("h-dirswap");
    let r = c.load_entries(&[
        E::dir("d"),
        E::file("d/a", b"a"),
        E::symlink("d", &c.outside()),
        E::file("d/victim", b"pwned"),
    ]);
    c.check(&r);
}

#[test]
fn whiteouts_outside_the_root_are_rejected_or_contained() {
    let c = Case::new("h-wh");
    let r = c.load_entries(&[E::file("../.wh.victim", b"")]);
    assert!(matches!(
        layer_error(r.as_ref().unwrap_err()),
        layer::Error::Escape { .. }
    ));
    c.check(&r);
    let c = Case::new("h-wh2");
    let r = c.load_entries(&[
        E::symlink("d", &c.outside()),
        E::file("d/.wh.victim", b""),
        E::file("d/.wh..wh..opq", b""),
    ]);
    c.check(&r);
    // The symlink dangles inside the root: a clear error, or (if the
    // parent is created) a whiteout inside the snapshot.
    let Ok(_) = r else {
        assert!(chain(r.as_ref().unwrap_err()).contains("d/.wh.victim"));
        return;
    };
    let snap = c.snapshot();
    let wh = snap
        .join(c.outside().trim_start_matches('/'))
        .join("victim");
    let m = std::fs::symlink_metadata(wh).unwrap();
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let c = Case::new("h-whok");
    let r = c.load_entries(&[
        E::dir("etc"),
        E::file("etc/.wh.passwd", b""),
        E::dir("opt"),
        E::file("opt/.wh..wh..opq", b""),
        E::file("opt/keep", b"k"),
    ]);
    r.as_ref().unwrap();
    c.check(&r);
    let snap = c.snapshot();
    let m = std::fs::symlink_metadata(snap.join("etc/passwd")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
    let mut buf = [0u8; 8];
    let p = std::ffi::CString::new(snap.join("opt").display().to_string()).unwrap();
    // SAFETY: valid C strings and a writable buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 1);
    assert_eq!(buf[0], b'y');
    assert!(!snap.join("opt/.wh..wh..opq").exists());
}

#[test]
fn device_nodes_and_setuid_files_are_contained() {
    let c = Case::new("h-dev");
    let r = c.load_entries(&[
        E::dir("dev"),
        E::device("dev/mem", EntryType::Char, 1, 1),
        E::device("dev/sda", EntryType::Block, 8, 0),
        E::device("fifo", EntryType::Fifo, 0, 0),
        E::file("su", b"#!/bin/sh\n").mode(0o4755),
        E::file("sg", b"x").mode(0o2711),
    ]);
    r.as_ref().unwrap();
    c.check(&r);
    let snap = c.snapshot();
    let m = std::fs::symlink_metadata(snap.join("dev/mem")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), libc::makedev(1, 1));
    assert!(
        std::fs::symlink_metadata(snap.join("dev/sda"))
            .unwrap()
            .file_type()
            .is_block_device()
    );
    assert!(
        std::fs::symlink_metadata(snap.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        std::fs::metadata(snap.join("su"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(
        std::fs::metadata(snap.join("sg"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o2711
    );
}

#[test]
fn trusted_xattrs_from_a_layer_are_dropped() {
    let c = Case::new("h-xattr");
    let mut d = E::dir("d");
    d.pax
        .push(("SCHILY.xattr.trusted.overlay.opaque".into(), b"y".to_vec()));
    d.pax.push((
        "SCHILY.xattr.trusted.overlay.redirect".into(),
        b"/etc".to_vec(),
    ));
    d.pax
        .push(("SCHILY.xattr.user.note".into(), b"kept".to_vec()));
    let r = c.load_entries(&[d]);
    r.as_ref().unwrap();
    c.check(&r);
    let snap = c.snapshot();
    let p = std::ffi::CString::new(snap.join("d").display().to_string()).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: valid C strings and a writable buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1);
    // SAFETY: as above.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            c"user.note".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n as usize], b"kept");
}

#[test]
fn huge_claimed_size_is_a_clear_error() {
    let c = Case::new("h-huge");
    let mut e = E::file("big", b"tiny");
    e.claimed_size = Some(100 << 30);
    let r = c.load_entries(&[e]);
    let err = r.as_ref().unwrap_err();
    assert!(
        matches!(
            layer_error(err),
            layer::Error::Stream(_) | layer::Error::Guard(_)
        ),
        "{err:?}"
    );
    c.check(&r);
}

#[test]
fn decompression_bomb_is_bounded() {
    let c = Case::new("h-bomb");
    // 200 MiB of zeros in one file compresses to about 200 KiB; the store's
    // limit is 64 MiB of uncompressed data.
    let zeros = vec![0u8; 200 << 20];
    let tar = tar_of(&[E::file("zeros", &zeros)]);
    drop(zeros);
    let img = Img {
        tag: Some("hostile:latest".into()),
        diff_ids: vec![format!("sha256:{}", common::sha256_hex(&tar))],
        layers: vec![gzip(&tar)],
    };
    drop(tar);
    let r = c.load(img);
    let err = r.as_ref().unwrap_err();
    assert!(
        chain(err).contains("exceeds the 67108864 byte limit"),
        "{}",
        chain(err)
    );
    c.check(&r);
}

#[test]
fn oversized_pax_header_is_rejected() {
    let c = Case::new("h-pax");
    let mut e = E::file("f", b"x");
    e.pax.push(("comment".into(), vec![b'a'; 2 << 20]));
    let r = c.load_entries(&[e]);
    let err = r.as_ref().unwrap_err();
    assert!(chain(err).contains("metadata member"), "{}", chain(err));
    c.check(&r);
}

#[test]
fn truncated_gzip_is_a_clear_error() {
    let c = Case::new("h-trunc");
    let tar = tar_of(&[E::file("a", &vec![7u8; 300_000])]);
    let mut gz = gzip(&tar);
    gz.truncate(gz.len() / 2);
    let img = Img {
        tag: Some("hostile:latest".into()),
        diff_ids: vec![format!("sha256:{}", common::sha256_hex(&tar))],
        layers: vec![gz],
    };
    let r = c.load(img);
    let err = r.as_ref().unwrap_err();
    assert!(
        matches!(
            layer_error(err),
            layer::Error::Stream(_) | layer::Error::DiffId { .. }
        ),
        "{err:?}"
    );
    c.check(&r);
}

#[test]
fn wrong_diff_id_is_rejected() {
    let c = Case::new("h-diffid");
    let mut img = Img::new("hostile:latest", &[tar_of(&[E::file("a", b"a")])], true);
    img.diff_ids[0] = format!("sha256:{}", common::sha256_hex(b"something else"));
    let r = c.load(img);
    let err = r.as_ref().unwrap_err();
    assert!(
        matches!(layer_error(err), layer::Error::DiffId { .. }),
        "{err:?}"
    );
    assert!(chain(err).contains("expected diff ID"), "{}", chain(err));
    c.check(&r);
}

#[test]
fn wrong_blob_digest_in_an_oci_layout_is_rejected() {
    let c = Case::new("h-digest");
    let layout = c.t.join("layout");
    // A valid layout first, then one layer blob is swapped for other bytes.
    let good = Case::new("h-digest-src");
    good.load_entries(&[E::file("a", b"a")]).unwrap();
    good.store
        .save_oci_layout(&["hostile:latest"], &layout)
        .unwrap();
    let rec = good.store.resolve("hostile:latest").unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(rec.layers[0].blob.digest.hex());
    std::fs::write(&blob, gzip(&tar_of(&[E::file("a", b"evil")]))).unwrap();
    let before = c.before.clone();
    let r = c
        .store
        .load_oci_layout(&layout, None, &mut common::no_progress());
    let err = r.as_ref().unwrap_err();
    assert!(chain(err).contains("hashes to"), "{}", chain(err));
    std::fs::remove_dir_all(&layout).unwrap();
    assert_eq!(before, tree_state(&c.t.join("outside")));
    c.check(&r);
}

#[test]
fn symlink_loops_and_non_directories_fail_cleanly() {
    let c = Case::new("h-loop");
    let r = c.load_entries(&[
        E::symlink("a", "b"),
        E::symlink("b", "a"),
        E::file("a/x", b"x"),
    ]);
    assert!(r.is_err());
    c.check(&r);
    let c = Case::new("h-notdir");
    let r = c.load_entries(&[E::file("f", b"x"), E::file("f/x", b"x")]);
    assert!(r.is_err());
    c.check(&r);
}

#[test]
fn too_many_entries_is_bounded() {
    let c = Case::new("h-many");
    let entries: Vec<E> = (0..10_001)
        .map(|i| E::file(&format!("f{i}"), b""))
        .collect();
    let r = c.load_entries(&entries);
    assert!(matches!(
        layer_error(r.as_ref().unwrap_err()),
        layer::Error::TooManyEntries(_)
    ));
    c.check(&r);
}

#[test]
fn unpack_into_a_directory_directly() {
    // The layer module on its own: sparse files keep their holes.
    let t = TempRoot::new("h-sparse");
    let mut data = vec![0u8; 1 << 20];
    data[0] = 1;
    data[(1 << 20) - 1] = 2;
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "plain", &data[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let dest = t.join("root");
    std::fs::create_dir(&dest).unwrap();
    let applied = layer::apply(&tar[..], &dest, None, &Limits::default()).unwrap();
    assert_eq!(applied.entries, 1);
    assert_eq!(std::fs::read(dest.join("plain")).unwrap(), data);
    assert!(Path::new(&dest).join("plain").exists());
}

#[test]
fn oversized_metadata_in_the_outer_archive_is_rejected() {
    let c = Case::new("h-outer");
    let mut e = E::file("manifest.json", b"[]");
    e.pax.push(("comment".into(), vec![b'a'; 2 << 20]));
    let r = c
        .store
        .load_archive(&tar_of(&[e])[..], &mut common::no_progress());
    let err = r.as_ref().unwrap_err();
    assert!(chain(err).contains("metadata member"), "{}", chain(err));
    c.check(&r);
}

#[test]
fn archive_without_manifests_is_a_clear_error() {
    let c = Case::new("h-noman");
    let r = c.store.load_archive(
        &tar_of(&[E::file("hello", b"x")])[..],
        &mut common::no_progress(),
    );
    let err = r.as_ref().unwrap_err();
    assert!(
        err.to_string()
            .contains("neither manifest.json nor an OCI index.json"),
        "{err}"
    );
    c.check(&r);
}
