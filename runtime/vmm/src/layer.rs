//! Read-only filesystem images of container image layers, and scratch
//! disks.
//!
//! Owns turning an unpacked layer directory into a block-device image
//! (EROFS by default, or ext4) with Debian's `mkfs.erofs` / `mkfs.ext4 -d`,
//! and the cache of those images keyed by the layer's diff ID, so each
//! layer is converted once and shared by every microVM that uses it. Images
//! are written under a temporary name, synced and renamed: a cached image is
//! always complete. Overlay whiteouts (0/0 character devices, `trusted.*`
//! xattrs) are carried as they are; the guest's overlayfs understands them.
//! Unpacking layers is the image store's job, not this module's.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The filesystem of a layer image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageFormat {
    /// EROFS, uncompressed: fastest to build and to read.
    #[default]
    Erofs,
    /// ext4 without a journal.
    Ext4,
}

impl ImageFormat {
    fn extension(self) -> &'static str {
        match self {
            ImageFormat::Erofs => "erofs",
            ImageFormat::Ext4 => "ext4",
        }
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("layer key {0:?} is not a digest like sha256:<64 hex digits>")]
    BadKey(String),
    #[error("layer directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {tool} for {path} (is it installed? apt-get install {package})")]
    Spawn {
        tool: &'static str,
        package: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed for {path}: {stderr}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        stderr: String,
    },
    #[error("scratch disk size {0} bytes is below the 1 MiB minimum or not a multiple of 4096")]
    ScratchSize(u64),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of layer images named by diff ID.
#[derive(Clone, Debug)]
pub struct LayerImages {
    dir: PathBuf,
    format: ImageFormat,
}

impl LayerImages {
    /// Use (and create) `dir` for images of `format`.
    pub fn new(dir: &Path, format: ImageFormat) -> Result<LayerImages> {
        fs::create_dir_all(dir).map_err(io_err("creating layer image directory", dir))?;
        Ok(LayerImages {
            dir: dir.to_path_buf(),
            format,
        })
    }

    /// Where the image of the layer with diff ID `key` lives (whether or not
    /// it exists yet).
    pub fn path_for(&self, key: &str) -> Result<PathBuf> {
        let (algo, hex) = key
            .split_once(':')
            .ok_or_else(|| Error::BadKey(key.to_string()))?;
        let hex_ok = |len| {
            hex.len() == len
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let ok = match algo {
            "sha256" => hex_ok(64),
            "sha512" => hex_ok(128),
            _ => false,
        };
        if !ok {
            return Err(Error::BadKey(key.to_string()));
        }
        Ok(self
            .dir
            .join(format!("{algo}-{hex}.{}", self.format.extension())))
    }

    /// The image of layer `key`, built from `layer_dir` if it is not cached
    /// yet. Concurrent callers for the same key build it once (an exclusive
    /// lock on a per-key lock file).
    pub fn get_or_build(&self, key: &str, layer_dir: &Path) -> Result<PathBuf> {
        let path = self.path_for(key)?;
        if path.exists() {
            return Ok(path);
        }
        let lock_path = path.with_extension("lock");
        let lock = File::create(&lock_path).map_err(io_err("creating lock", &lock_path))?;
        flock(&lock, &lock_path)?;
        if !path.exists() {
            build_image(layer_dir, &path, self.format)?;
            tracing::debug!(key, image = %path.display(), "layer image built");
        }
        drop(lock);
        let _ = fs::remove_file(&lock_path);
        Ok(path)
    }
}

fn flock(file: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io_err("locking", path)(e));
        }
    }
}

/// Build a read-only image of `src` at `out` (atomically).
pub fn build_image(src: &Path, out: &Path, format: ImageFormat) -> Result<()> {
    if !src.is_dir() {
        return Err(Error::NotADirectory(src.to_path_buf()));
    }
    let tmp = out.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = match format {
        ImageFormat::Erofs => run(
            Command::new("mkfs.erofs")
                .arg("--quiet")
                .arg("-T0")
                .arg(&tmp)
                .arg(src),
            "mkfs.erofs",
            "erofs-utils",
            out,
        ),
        ImageFormat::Ext4 => {
            let size = ext4_size(src)?;
            File::create(&tmp)
                .and_then(|f| f.set_len(size))
                .map_err(io_err("creating", &tmp))?;
            run(
                Command::new("mkfs.ext4")
                    .args([
                        "-q",
                        "-F",
                        "-O",
                        "^has_journal",
                        "-b",
                        "4096",
                        "-m",
                        "0",
                        "-E",
                        "root_owner=0:0",
                        "-d",
                    ])
                    .arg(src)
                    .arg(&tmp),
                "mkfs.ext4",
                "e2fsprogs",
                out,
            )
        }
    };
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let f = File::open(&tmp).map_err(io_err("opening", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    fs::rename(&tmp, out).map_err(io_err("publishing", out))
}

fn run(cmd: &mut Command, tool: &'static str, package: &'static str, path: &Path) -> Result<()> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        tool,
        package,
        path: path.to_path_buf(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool,
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// An ext4 size that holds the tree: its data rounded to blocks, an inode
/// per entry, and slack for metadata.
fn ext4_size(src: &Path) -> Result<u64> {
    let mut bytes: u64 = 0;
    let mut entries: u64 = 0;
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
            let e = e.map_err(io_err("reading", &dir))?;
            let md = e
                .path()
                .symlink_metadata()
                .map_err(io_err("inspecting", &e.path()))?;
            entries += 1;
            bytes += md.size().next_multiple_of(4096);
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    let size = (bytes + entries * 512) * 5 / 4 + (16 << 20);
    Ok(size.next_multiple_of(1 << 20))
}

/// Create an empty ext4 scratch disk of `size` bytes (sparse) for a VM's
/// writable layer.
pub fn create_scratch_disk(path: &Path, size: u64) -> Result<()> {
    if size < (1 << 20) || size % 4096 != 0 {
        return Err(Error::ScratchSize(size));
    }
    File::create(path)
        .and_then(|f| f.set_len(size))
        .map_err(io_err("creating", path))?;
    run(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,root_owner=0:0",
            ])
            .arg(path),
        "mkfs.ext4",
        "e2fsprogs",
        path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/os-release"), b"ID=test\n").unwrap();
        fs::write(root.join("big"), vec![3u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("etc/os-release", root.join("link")).unwrap();
    }

    #[test]
    fn keys_are_checked() {
        let t = vessel_testkit::TempRoot::new("vmm-layer");
        let l = LayerImages::new(&t.join("images"), ImageFormat::Erofs).unwrap();
        assert!(
            l.path_for(KEY)
                .unwrap()
                .ends_with(format!("sha256-{}.erofs", &KEY[7..]))
        );
        for bad in [
            "",
            "sha256:",
            "sha256:../../etc",
            "md5:abcd",
            &KEY.to_uppercase(),
            "sha256:0123",
        ] {
            assert!(matches!(l.path_for(bad), Err(Error::BadKey(_))), "{bad}");
        }
    }

    fn check_format(format: ImageFormat, tool: &str) {
        vessel_testkit::require!(vessel_testkit::have_command(tool), "needs {tool}");
        let t = vessel_testkit::TempRoot::new("vmm-layer");
        let src = t.join("layer");
        tree(&src);
        let l = LayerImages::new(&t.join("images"), format).unwrap();
        let img = l.get_or_build(KEY, &src).unwrap();
        let len = fs::metadata(&img).unwrap().len();
        assert!(len > 100_000 && len % 512 == 0, "{len}");
        // Cached: a second call does not rebuild (the source may even be gone).
        let mtime = fs::metadata(&img).unwrap().modified().unwrap();
        fs::remove_dir_all(&src).unwrap();
        assert_eq!(l.get_or_build(KEY, &src).unwrap(), img);
        assert_eq!(fs::metadata(&img).unwrap().modified().unwrap(), mtime);
        // No temporary or lock files left behind.
        let names: Vec<_> = fs::read_dir(t.join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn erofs_images_are_built_once() {
        check_format(ImageFormat::Erofs, "mkfs.erofs");
    }

    #[test]
    fn ext4_images_are_built_once() {
        check_format(ImageFormat::Ext4, "mkfs.ext4");
    }

    #[test]
    fn missing_source_is_an_error_and_leaves_nothing() {
        let t = vessel_testkit::TempRoot::new("vmm-layer");
        let l = LayerImages::new(&t.join("images"), ImageFormat::Erofs).unwrap();
        assert!(matches!(
            l.get_or_build(KEY, &t.join("nope")),
            Err(Error::NotADirectory(_))
        ));
        assert!(!l.path_for(KEY).unwrap().exists());
    }

    #[test]
    fn scratch_disks() {
        vessel_testkit::require!(vessel_testkit::have_command("mkfs.ext4"), "needs mkfs.ext4");
        let t = vessel_testkit::TempRoot::new("vmm-layer");
        let p = t.join("scratch.ext4");
        create_scratch_disk(&p, 64 << 20).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!(md.len(), 64 << 20);
        assert!(md.blocks() * 512 < 16 << 20, "sparse");
        assert!(matches!(
            create_scratch_disk(&p, 1000),
            Err(Error::ScratchSize(1000))
        ));
    }
}
