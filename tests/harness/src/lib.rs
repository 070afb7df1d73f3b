//! The test harness shared by Vessel's privileged tests.
//!
//! It owns three things: deciding whether a test may run here (and turning a
//! skip into a failure when `VESSEL_REQUIRE_PRIVILEGED=1`), temporary roots that
//! unmount and delete everything below them when dropped, and fixtures such
//! as the offline busybox root filesystem. It knows nothing about Vessel's
//! crates, so every crate can use it as a dev-dependency.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether skips are failures (CI sets `VESSEL_REQUIRE_PRIVILEGED=1`).
pub fn privileged_required() -> bool {
    std::env::var("VESSEL_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Report that a test cannot run here. Prints the reason and returns, or
/// panics with it when skips are not allowed.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !privileged_required(),
        "{test}: prerequisite missing and VESSEL_REQUIRE_PRIVILEGED=1: {reason}"
    );
    eprintln!("SKIP {test}: {reason}");
}

/// Skip the calling test (return from it) unless `cond` holds.
///
/// ```ignore
/// vessel_testkit::require!(vessel_testkit::is_root(), "needs root");
/// ```
#[macro_export]
macro_rules! require {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            $crate::skip(module_path!(), &format!($($reason)+));
            return;
        }
    };
}

/// Whether the test process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a command is on PATH.
pub fn have_command(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(name);
            p.is_file()
                && std::fs::metadata(&p).is_ok_and(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
        })
    })
}

/// The workspace's top directory.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .nth(2)
        .expect("tests/harness lives two levels below the workspace root")
        .to_path_buf()
}

/// A name unique to this process and call, safe for container IDs, cgroup
/// names and interface-name prefixes (short, lowercase, no slashes).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff)
}

/// A temporary directory that, when dropped, lazily unmounts every mount
/// below it (deepest first) and deletes it.
pub struct TempRoot {
    path: PathBuf,
    keep: bool,
}

impl TempRoot {
    /// Make a new empty directory under `$VESSEL_TEST_TMP` (default `/tmp`).
    pub fn new(prefix: &str) -> TempRoot {
        let base = std::env::var_os("VESSEL_TEST_TMP")
            .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        let path = base.join(unique_name(&format!("vessel-test-{prefix}")));
        std::fs::create_dir_all(&path).expect("create temporary root");
        TempRoot {
            path,
            keep: std::env::var_os("VESSEL_TEST_KEEP").is_some(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        unmount_below(&self.path);
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// The names of the network links in this network namespace.
pub fn net_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .expect("read /sys/class/net")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Later entries were mounted on top of earlier ones: undo in reverse.
    found.reverse();
    found
}

/// Lazily unmount everything at or below `dir`.
pub fn unmount_below(dir: &Path) {
    for mnt in mounts_below(dir) {
        let Ok(c) = CString::new(mnt.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Copy the offline busybox root filesystem into `dest` (which must not
/// exist). The root is built once per workspace by
/// `scripts/busybox-rootfs.sh` and cached under `target/fixtures`.
pub fn busybox_rootfs(dest: &Path) {
    let cache = fixtures_dir().join("busybox-rootfs");
    with_lock(&fixtures_dir().join("busybox.lock"), || {
        if !cache.join("bin/busybox").exists() {
            let tmp = fixtures_dir().join(format!("busybox-rootfs.tmp.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let script = workspace_root().join("scripts/busybox-rootfs.sh");
            let st = Command::new(&script)
                .arg(&tmp)
                .status()
                .expect("run scripts/busybox-rootfs.sh");
            assert!(st.success(), "scripts/busybox-rootfs.sh failed");
            std::fs::rename(&tmp, &cache).expect("publish busybox rootfs fixture");
        }
    });
    let st = Command::new("cp")
        .arg("-a")
        .arg(&cache)
        .arg(dest)
        .status()
        .expect("run cp");
    assert!(st.success(), "copying the busybox rootfs failed");
}

/// `target/fixtures` of this workspace (or `$CARGO_TARGET_DIR/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let dir = target.join("fixtures");
    std::fs::create_dir_all(&dir).expect("create fixtures dir");
    dir
}

/// Run `f` while holding an exclusive `flock` on `lock_path`, so parallel
/// test processes build a shared fixture once.
pub fn with_lock<T>(lock_path: &Path, f: impl FnOnce() -> T) -> T {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .expect("open lock file");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: `fd` is an open descriptor owned by `file`, alive for the call.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", lock_path.display());
    let out = f();
    drop(file);
    out
}

/// A binary of this workspace, built next to the running test (in
/// `target/<profile>/`). Panics with a hint when it has not been built.
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

/// The Python of a virtual environment with `requirement` installed from
/// PyPI (for example `docker==7.1.0`), made once per target directory under
/// the fixtures, or `None` when it cannot be installed.
pub fn python_venv(name: &str, requirement: &str) -> Option<PathBuf> {
    let dir = fixtures_dir().join(format!("{name}-venv"));
    let ready = dir.join(".ready");
    with_lock(&fixtures_dir().join(format!("{name}.lock")), || {
        if ready.exists() {
            return;
        }
        let _ = std::fs::remove_dir_all(&dir);
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet", requirement])
                .stdin(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if ok {
            std::fs::write(&ready, b"").expect("mark the venv ready");
        }
    });
    ready.exists().then(|| dir.join("bin/python3"))
}

/// Drive a program on a new pseudo-terminal (its controlling terminal and
/// standard streams): write `input` once `prompt` shows, collect everything
/// it writes until it exits. Returns the output and the exit code.
pub fn run_on_pty(mut cmd: Command, prompt: &[u8], input: &[u8]) -> (String, i32) {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master_fd, mut slave_fd) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the given integers; the
    // name, termios and window-size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &raw mut master_fd,
            &raw mut slave_fd,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened for us and are owned here.
    let (master, slave) = unsafe {
        (
            OwnedFd::from_raw_fd(master_fd),
            OwnedFd::from_raw_fd(slave_fd),
        )
    };
    let slave = std::fs::File::from(slave);
    cmd.stdin(slave.try_clone().expect("dup pty"))
        .stdout(slave.try_clone().expect("dup pty"))
        .stderr(slave);
    // SAFETY: setsid and TIOCSCTTY between fork and exec are
    // async-signal-safe; they make the pty the child's controlling terminal.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn on the pty");
    // Our copies of the slave must close, or the master never sees the end.
    drop(cmd);
    let mut master = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent = false;
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if !sent && out.windows(prompt.len()).any(|w| w == prompt) {
            master.write_all(input).expect("write to the pty");
            sent = true;
        }
    }
    let status = child.wait().expect("wait for the program on the pty");
    (
        String::from_utf8_lossy(&out).into_owned(),
        status.code().unwrap_or(-1),
    )
}

/// Processes whose command line mentions `needle`, for leak checks.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_in_mountinfo() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
    }

    #[test]
    fn temp_root_is_removed_on_drop() {
        let path = {
            let t = TempRoot::new("harness");
            std::fs::write(t.join("f"), b"x").unwrap();
            t.path().to_path_buf()
        };
        assert!(!path.exists());
    }
}
