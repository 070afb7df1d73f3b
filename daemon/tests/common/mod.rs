//! Helpers shared by the image store's integration tests: the busybox
//! fixture, crafted tar entries (including names a well-behaved tar library
//! refuses to write), and docker-archive assembly.
#![allow(dead_code, clippy::unwrap_used, clippy::items_after_statements)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// `busybox:latest` as a docker-archive built by scripts/busybox-image.sh,
/// cached under the fixtures directory.
pub fn busybox_archive() -> PathBuf {
    let dir = vessel_testkit::fixtures_dir();
    let out = dir.join("busybox-image.tar");
    vessel_testkit::with_lock(&dir.join("busybox-image.lock"), || {
        if !out.exists() {
            let tmp = dir.join(format!("busybox-image.tar.tmp.{}", std::process::id()));
            let st =
                Command::new(vessel_testkit::workspace_root().join("scripts/busybox-image.sh"))
                    .arg(&tmp)
                    .status()
                    .expect("run scripts/busybox-image.sh");
            assert!(st.success(), "scripts/busybox-image.sh failed");
            std::fs::rename(&tmp, &out).expect("publish busybox image fixture");
        }
    });
    out
}

/// A tar entry described loosely enough to express hostile input.
#[derive(Clone, Debug)]
pub struct E {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    pub mode: u32,
    pub dev: (u32, u32),
    pub pax: Vec<(String, Vec<u8>)>,
    /// Size written in the header when it should lie about the data.
    pub claimed_size: Option<u64>,
}

impl E {
    pub fn file(name: &str, data: &[u8]) -> E {
        E {
            name: name.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            link: Vec::new(),
            data: data.to_vec(),
            mode: 0o644,
            dev: (0, 0),
            pax: Vec::new(),
            claimed_size: None,
        }
    }
    pub fn dir(name: &str) -> E {
        E {
            kind: tar::EntryType::Directory,
            mode: 0o755,
            ..E::file(name, b"")
        }
    }
    pub fn symlink(name: &str, target: &str) -> E {
        E {
            kind: tar::EntryType::Symlink,
            link: target.as_bytes().to_vec(),
            mode: 0o777,
            ..E::file(name, b"")
        }
    }
    pub fn hardlink(name: &str, target: &str) -> E {
        E {
            kind: tar::EntryType::Link,
            link: target.as_bytes().to_vec(),
            ..E::file(name, b"")
        }
    }
    pub fn device(name: &str, kind: tar::EntryType, major: u32, minor: u32) -> E {
        E {
            kind,
            dev: (major, minor),
            mode: 0o666,
            ..E::file(name, b"")
        }
    }
    pub fn mode(mut self, mode: u32) -> E {
        self.mode = mode;
        self
    }
}

/// Write entries into an uncompressed tar, bypassing the tar library's path
/// checks by writing the name fields directly (names up to 100 bytes).
pub fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if !e.pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &e.pax {
                let rest = [b" ".as_slice(), k.as_bytes(), b"=", v, b"\n"].concat();
                let mut len = rest.len() + 1;
                while format!("{len}").len() + rest.len() != len {
                    len = format!("{len}").len() + rest.len();
                }
                body.extend_from_slice(format!("{len}").as_bytes());
                body.extend_from_slice(&rest);
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(body.len() as u64);
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_mode(0o644);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&body);
            pad(&mut out);
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        assert!(e.name.len() <= 100, "test entry names must fit the header");
        h.as_old_mut().name[..e.name.len()].copy_from_slice(&e.name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(&e.link);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_size(e.claimed_size.unwrap_or(e.data.len() as u64));
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn pad(out: &mut Vec<u8>) {
    while out.len() % 512 != 0 {
        out.push(0);
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One image of a docker-archive: layer blobs (as stored in the archive)
/// with the diff IDs the config claims.
pub struct Img {
    pub tag: Option<String>,
    pub layers: Vec<Vec<u8>>,
    pub diff_ids: Vec<String>,
}

impl Img {
    /// An image whose diff IDs are the true ones for uncompressed `tars`,
    /// stored gzip-compressed when `compress`.
    pub fn new(tag: &str, tars: &[Vec<u8>], compress: bool) -> Img {
        Img {
            tag: Some(tag.to_string()),
            diff_ids: tars
                .iter()
                .map(|t| format!("sha256:{}", sha256_hex(t)))
                .collect(),
            layers: tars
                .iter()
                .map(|t| if compress { gzip(t) } else { t.clone() })
                .collect(),
        }
    }
}

pub fn config_json(diff_ids: &[String]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[{}]}}"#,
        ids.join(","),
        diff_ids.iter().map(|_| r#"{"created_by":"test"}"#).collect::<Vec<_>>().join(",")
    )
    .into_bytes()
}

/// Assemble a classic docker-archive for `images`.
pub fn docker_archive(images: &[Img]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut manifest = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        if seen.insert(name.to_string()) {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
    };
    for img in images {
        let cfg = config_json(&img.diff_ids);
        let cfg_name = format!("{}.json", sha256_hex(&cfg));
        add(&mut b, &cfg_name, &cfg);
        let mut layers = Vec::new();
        for l in &img.layers {
            let name = format!("{}/layer.tar", sha256_hex(l));
            add(&mut b, &name, l);
            layers.push(name);
        }
        manifest.push(serde_json::json!({
            "Config": cfg_name,
            "RepoTags": img.tag.iter().collect::<Vec<_>>(),
            "Layers": layers,
        }));
    }
    let mj = serde_json::to_vec(&manifest).unwrap();
    add(&mut b, "manifest.json", &mj);
    b.into_inner().unwrap()
}

/// Every path below `dir` with its type, mode and content hash, for
/// "nothing changed" checks.
pub fn tree_state(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            use std::os::unix::fs::MetadataExt;
            let content = if m.is_file() {
                sha256_hex(&std::fs::read(&p).unwrap())
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            out.push(format!("{rel} {:o} {} {content}", m.mode(), m.nlink()));
            if m.is_dir() {
                walk(&p, base, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub fn no_progress() -> impl FnMut(&vesseld::images::Progress) {
    |_| {}
}
