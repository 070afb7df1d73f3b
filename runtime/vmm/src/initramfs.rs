//! Writing initramfs archives (the "newc" cpio format the kernel unpacks).
//!
//! Owns the archive format only: directories, regular files (from memory or
//! streamed from disk), symlinks and device nodes, with the trailer and
//! padding the kernel expects. What goes into an archive is the caller's
//! business (the runtime puts the agent at `/init`; the end-to-end tests
//! build a whole L1 userland this way).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing initramfs")]
    Write(#[source] io::Error),
    #[error("reading {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("initramfs entry name {0:?} is empty or too long")]
    Name(String),
    #[error("initramfs entry {0}: {1} bytes is too large for the newc format")]
    TooLarge(String, u64),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A cpio "newc" writer.
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    offset: u64,
}

impl<W: Write> Cpio<W> {
    /// Start an archive on `out`.
    pub fn new(out: W) -> Cpio<W> {
        Cpio {
            out,
            ino: 1,
            offset: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(Error::Write)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.len() > 4000 {
            return Err(Error::Name(name.to_string()));
        }
        let size32 = u32::try_from(size).map_err(|_| Error::TooLarge(name.to_string(), size))?;
        let nlink = if mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            size32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            let _ = write!(h, "{f:08x}");
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    /// A directory.
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<()> {
        self.header(name, S_IFDIR | (perm & 0o7777), 0, (0, 0))
    }

    /// A regular file with `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.header(name, S_IFREG | (perm & 0o7777), data.len() as u64, (0, 0))?;
        self.put(data)?;
        self.pad()
    }

    /// A regular file copied from `src` on the host.
    pub fn file_from(&mut self, name: &str, perm: u32, src: &Path) -> Result<()> {
        let mut f = File::open(src).map_err(|e| Error::Read(src.to_path_buf(), e))?;
        let size = f
            .metadata()
            .map_err(|e| Error::Read(src.to_path_buf(), e))?
            .len();
        self.header(name, S_IFREG | (perm & 0o7777), size, (0, 0))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut left = size;
        while left > 0 {
            let n = f
                .read(&mut buf)
                .map_err(|e| Error::Read(src.to_path_buf(), e))?;
            if n == 0 {
                return Err(Error::Read(
                    src.to_path_buf(),
                    io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while archiving"),
                ));
            }
            let n = n.min(left as usize);
            self.put(&buf[..n])?;
            left -= n as u64;
        }
        self.pad()
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.header(name, S_IFLNK | 0o777, target.len() as u64, (0, 0))?;
        self.put(target.as_bytes())?;
        self.pad()
    }

    /// A character device node.
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.header(name, S_IFCHR | (perm & 0o7777), 0, (major, minor))
    }

    /// Write the trailer, pad to 512 bytes and return the writer.
    pub fn finish(mut self) -> Result<W> {
        self.ino = 0;
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        let n = (512 - (self.offset % 512) as usize) % 512;
        self.put(&vec![0u8; n])?;
        self.out.flush().map_err(Error::Write)?;
        Ok(self.out)
    }
}

/// Write the guest initramfs for the agent: `/init` is `agent` (a static
/// binary), with `/dev/console` and `/dev/null` and the mount points the
/// agent uses. Written to a temporary name and renamed, so `out` is never
/// half-written.
pub fn write_agent_initramfs(agent: &Path, out: &Path) -> Result<()> {
    let tmp = out.with_extension(format!("tmp.{}", std::process::id()));
    let file = File::create(&tmp).map_err(Error::Write)?;
    let mut c = Cpio::new(io::BufWriter::new(file));
    for d in ["dev", "proc", "sys", "run", "tmp", "mnt"] {
        c.dir(d, 0o755)?;
    }
    c.char_device("dev/console", 0o600, 5, 1)?;
    c.char_device("dev/null", 0o666, 1, 3)?;
    c.file_from("init", 0o755, agent)?;
    let w = c.finish()?;
    let file = w.into_inner().map_err(|e| Error::Write(e.into_error()))?;
    file.sync_all().map_err(Error::Write)?;
    std::fs::rename(&tmp, out).map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn archive_unpacks_with_cpio() {
        if !vessel_testkit::have_command("cpio") {
            eprintln!("SKIP: no cpio to cross-check with");
            return;
        }
        let t = vessel_testkit::TempRoot::new("vmm-cpio");
        let src = t.join("src.bin");
        std::fs::write(&src, vec![7u8; 70_001]).unwrap();
        let mut c = Cpio::new(Vec::new());
        c.dir("etc", 0o755).unwrap();
        c.file("/etc/hostname", 0o644, b"vessel\n").unwrap();
        c.file_from("big", 0o600, &src).unwrap();
        c.symlink("link", "etc/hostname").unwrap();
        let bytes = c.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        assert_eq!(&bytes[..6], b"070701");
        let out = t.join("out");
        std::fs::create_dir(&out).unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "--quiet", "--no-absolute-filenames"])
            .current_dir(&out)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read(out.join("etc/hostname")).unwrap(),
            b"vessel\n"
        );
        assert_eq!(std::fs::read(out.join("big")).unwrap(), vec![7u8; 70_001]);
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            Path::new("etc/hostname")
        );
    }

    #[test]
    fn agent_initramfs_has_init_and_console() {
        let t = vessel_testkit::TempRoot::new("vmm-cpio");
        let agent = t.join("agent");
        std::fs::write(&agent, b"\x7fELF fake").unwrap();
        let out = t.join("initramfs.cpio");
        write_agent_initramfs(&agent, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("dev/console"));
        assert!(text.contains("init\0"));
        assert!(text.contains("TRAILER!!!"));
    }
}
