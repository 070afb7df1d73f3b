//! Fixtures for the nested end-to-end tests and the benchmark: the guest
//! kernel, an L1 Linux with KVM modules, static monitor and agent binaries,
//! a busybox layer image and the guest initramfs, all cached under
//! `$CARGO_TARGET_DIR/fixtures/microvm`, and a way to boot an L1 guest
//! under QEMU's TCG that runs a shell script and returns its console
//! output.
//!
//! Why nested: this machine's /dev/kvm (PVM) cannot run a stock Linux
//! guest, but QEMU's TCG emulates AMD SVM, so an L1 Linux with kvm-amd
//! gives our monitor a real KVM to boot Linux on.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vessel_vmm::initramfs::{self, Cpio};
use vessel_vmm::layer::{ImageFormat, LayerImages};

/// One case of an L1 script's console output. Scripts print `@@CASE
/// name`, then `@@EXIT code`, `@@TIME start end` (L1 uptimes), sections
/// between `@@OUT`, `@@ERR` and `@@END`, and `@@KEY value` lines.
#[derive(Debug, Default)]
pub struct Case {
    pub exit: Option<i32>,
    pub out: String,
    pub err: String,
    pub values: HashMap<String, String>,
    pub seconds: Option<f64>,
}

/// Split the console output into cases.
pub fn parse(console: &str) -> HashMap<String, Case> {
    let mut cases: HashMap<String, Case> = HashMap::new();
    let mut current: Option<String> = None;
    let mut section: Option<&str> = None;
    for line in console.lines() {
        if let Some(name) = line.strip_prefix("@@CASE ") {
            current = Some(name.trim().to_string());
            cases.entry(name.trim().to_string()).or_default();
            section = None;
            continue;
        }
        let Some(name) = &current else { continue };
        let c = cases.get_mut(name).expect("case entry exists");
        match line {
            "@@OUT" => section = Some("out"),
            "@@ERR" => section = Some("err"),
            "@@END" => section = None,
            l if l.starts_with("@@EXIT ") => c.exit = l[7..].trim().parse().ok(),
            l if l.starts_with("@@TIME ") => {
                let t: Vec<f64> = l[7..]
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                if let [a, b] = t[..] {
                    c.seconds = Some(b - a);
                }
            }
            l if l.starts_with("@@") && section.is_none() => {
                if let Some((k, v)) = l[2..].split_once(' ') {
                    c.values.insert(k.to_string(), v.trim().to_string());
                }
            }
            l => match section {
                Some("out") => {
                    c.out.push_str(l);
                    c.out.push('\n');
                }
                Some("err") => {
                    c.err.push_str(l);
                    c.err.push('\n');
                }
                _ => {}
            },
        }
    }
    cases
}

/// Everything an L1 boot needs.
pub struct Fixtures {
    pub guest_kernel: PathBuf,
    pub guest_bzimage: PathBuf,
    pub scratch: PathBuf,
    pub l1_kernel: PathBuf,
    pub l1_modules: Vec<PathBuf>,
    pub vmm: PathBuf,
    pub agent: PathBuf,
    /// `vessel-shim` and `vessel-runtime` (the integration tests of the
    /// runtime stage them into L1; the monitor's tests do not need them).
    pub shim: PathBuf,
    pub runtime: PathBuf,
    pub guest_initrd: PathBuf,
    pub layer: PathBuf,
    pub busybox: PathBuf,
}

fn dir() -> PathBuf {
    let d = vessel_testkit::fixtures_dir().join("microvm");
    std::fs::create_dir_all(&d).expect("create fixtures dir");
    d
}

fn sh(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The guest kernel, built (once per machine) by guest/build-kernel.sh.
pub fn guest_kernel() -> Result<PathBuf, String> {
    let script = vessel_testkit::workspace_root().join("runtime/vmm/guest/build-kernel.sh");
    let out = sh(
        Command::new(&script).stderr(Stdio::inherit()),
        "guest/build-kernel.sh",
    )?;
    let d = PathBuf::from(out.trim().lines().last().unwrap_or_default());
    let k = d.join("vmlinux");
    if !k.is_file() {
        return Err(format!(
            "guest/build-kernel.sh printed {} without a vmlinux",
            d.display()
        ));
    }
    Ok(k)
}

/// Debian's cloud kernel and its kvm modules, for L1.
pub fn l1_kernel() -> Result<(PathBuf, Vec<PathBuf>), String> {
    let d = dir().join("l1-kernel");
    // overlay.ko: vesseld in L1 mounts container root filesystems.
    let names = [
        "vmlinuz",
        "irqbypass.ko",
        "kvm.ko",
        "kvm-amd.ko",
        "overlay.ko",
    ];
    let paths: Vec<PathBuf> = names.iter().map(|n| d.join(n)).collect();
    vessel_testkit::with_lock(&dir().join("l1-kernel.lock"), || -> Result<(), String> {
        if paths.iter().all(|p| p.is_file()) {
            return Ok(());
        }
        let deps = sh(
            Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
            "apt-cache depends linux-image-cloud-amd64",
        )?;
        let pkg = deps
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
            .map(|v| format!("linux-image-{v}"))
            .ok_or("no linux-image dependency of linux-image-cloud-amd64")?;
        let scratch = dir().join("l1-download");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
        sh(
            Command::new("apt-get")
                .arg("download")
                .arg(&pkg)
                .current_dir(&scratch),
            &format!("apt-get download {pkg}"),
        )?;
        let deb = std::fs::read_dir(&scratch)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or("apt-get download produced no .deb")?;
        let x = scratch.join("x");
        sh(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
            "dpkg-deb -x",
        )?;
        let find = |pat: &str| -> Result<PathBuf, String> {
            let out = sh(Command::new("find").arg(&x).arg("-name").arg(pat), "find")?;
            out.lines()
                .next()
                .map(PathBuf::from)
                .ok_or(format!("{pat} not in {pkg}"))
        };
        let staging = dir().join("l1-kernel.tmp");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
        for (name, pat) in names.iter().zip([
            "vmlinuz-*",
            "irqbypass.ko",
            "kvm.ko",
            "kvm-amd.ko",
            "overlay.ko",
        ]) {
            std::fs::copy(find(pat)?, staging.join(name)).map_err(|e| e.to_string())?;
        }
        let _ = std::fs::remove_dir_all(&d);
        std::fs::rename(&staging, &d).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(())
    })?;
    Ok((paths[0].clone(), paths[1..].to_vec()))
}

/// Static release builds of `vessel-vmm`, `vessel-agent`, `vessel-shim`
/// and `vessel-runtime` (glibc with crt-static, libseccomp linked
/// statically), in their own target directory so this does not wait on the
/// build lock of the test run itself.
pub fn static_binaries() -> Result<[PathBuf; 4], String> {
    let target = dir().join("static-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    vessel_testkit::with_lock(&dir().join("static.lock"), || {
        sh(
            Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--offline",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                    "-p",
                    "vessel-vmm",
                    "-p",
                    "vessel-agent",
                    "-p",
                    "vessel-runtime",
                ])
                .env("LIBSECCOMP_LINK_TYPE", "static")
                .env("LIBSECCOMP_LIB_PATH", "/usr/lib/x86_64-linux-gnu")
                .env("CARGO_TARGET_DIR", &target)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
                .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
                .current_dir(vessel_testkit::workspace_root())
                .stderr(Stdio::inherit()),
            "static build of vessel-vmm, vessel-agent and vessel-runtime",
        )
    })?;
    let bin = target.join("x86_64-unknown-linux-gnu/release");
    Ok([
        "vessel-vmm",
        "vessel-agent",
        "vessel-shim",
        "vessel-runtime",
    ]
    .map(|b| bin.join(b)))
}

/// The busybox-static binary of the host.
pub fn busybox() -> Result<PathBuf, String> {
    let p = PathBuf::from("/bin/busybox");
    if !p.is_file() {
        return Err("needs busybox-static (apt-get install busybox-static)".into());
    }
    let ldd = Command::new("ldd")
        .arg(&p)
        .output()
        .map_err(|e| e.to_string())?;
    if ldd.status.success() {
        return Err("/bin/busybox is dynamically linked; install busybox-static".into());
    }
    Ok(p)
}

/// An EROFS image of the busybox root filesystem.
pub fn busybox_layer() -> Result<PathBuf, String> {
    let images =
        LayerImages::new(&dir().join("layers"), ImageFormat::Erofs).map_err(|e| e.to_string())?;
    // The key names content; the busybox binary's digest stands for the tree.
    let digest = sh(Command::new("sha256sum").arg("/bin/busybox"), "sha256sum")?;
    let key = format!("sha256:{}", &digest[..64]);
    let path = images.path_for(&key).map_err(|e| e.to_string())?;
    if path.exists() {
        return Ok(path);
    }
    let root = vessel_testkit::TempRoot::new("microvm-layer");
    vessel_testkit::busybox_rootfs(&root.join("rootfs"));
    images
        .get_or_build(&key, &root.join("rootfs"))
        .map_err(|e| format!("{e:?}"))
}

/// The guest initramfs with the agent as /init.
pub fn guest_initrd(agent: &Path) -> Result<PathBuf, String> {
    let out = dir().join("agent-initramfs.cpio");
    let fresh = |o: &Path| -> bool {
        let (Ok(a), Ok(b)) = (std::fs::metadata(agent), std::fs::metadata(o)) else {
            return false;
        };
        matches!((a.modified(), b.modified()), (Ok(x), Ok(y)) if y >= x)
    };
    vessel_testkit::with_lock(&dir().join("initrd.lock"), || -> Result<PathBuf, String> {
        if !fresh(&out) {
            initramfs::write_agent_initramfs(agent, &out).map_err(|e| e.to_string())?;
        }
        Ok(out.clone())
    })
}

/// A small empty ext4 scratch disk (copied into each L1, which may write it).
pub fn scratch_disk() -> Result<PathBuf, String> {
    let p = dir().join("scratch-8m.ext4");
    vessel_testkit::with_lock(&dir().join("scratch.lock"), || -> Result<(), String> {
        if !p.exists() {
            let tmp = dir().join("scratch-8m.ext4.tmp");
            vessel_vmm::layer::create_scratch_disk(&tmp, 8 << 20).map_err(|e| format!("{e:?}"))?;
            std::fs::rename(&tmp, &p).map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    Ok(p)
}

/// Everything, or the reason it is not available here.
pub fn fixtures() -> Result<Fixtures, String> {
    if !vessel_testkit::have_command("qemu-system-x86_64") {
        return Err("needs qemu-system-x86_64 (apt-get install qemu-system-x86)".into());
    }
    for tool in ["apt-get", "dpkg-deb", "mkfs.erofs"] {
        if !vessel_testkit::have_command(tool) {
            return Err(format!("needs {tool}"));
        }
    }
    let busybox = busybox()?;
    let guest_kernel = guest_kernel()?;
    let (l1_kernel, l1_modules) = l1_kernel()?;
    let [vmm, agent, shim, runtime] = static_binaries()?;
    let guest_initrd = guest_initrd(&agent)?;
    let layer = busybox_layer()?;
    let scratch = scratch_disk()?;
    Ok(Fixtures {
        guest_bzimage: guest_kernel.with_file_name("bzImage"),
        scratch,
        guest_kernel,
        l1_kernel,
        l1_modules,
        vmm,
        agent,
        shim,
        runtime,
        guest_initrd,
        layer,
        busybox,
    })
}

/// The fixtures, or `None` once the reason they are missing is reported
/// as a skip (a failure under `VESSEL_REQUIRE_PRIVILEGED=1`).
pub fn fixtures_or_skip() -> Option<Fixtures> {
    match fixtures() {
        Ok(f) => Some(f),
        Err(reason) => {
            vessel_testkit::skip(module_path!(), &reason);
            None
        }
    }
}

/// Extra files for the L1 initramfs: (path inside L1, host source).
pub type Extra = Vec<(String, PathBuf)>;

/// A finished L1 script: its console output and its cases.
pub struct Run {
    pub console: String,
    pub cases: HashMap<String, Case>,
}

impl Run {
    /// The case `name`; panics with the console when it is missing.
    pub fn case(&self, name: &str) -> &Case {
        self.cases
            .get(name)
            .unwrap_or_else(|| panic!("case {name} missing:\n{}", self.console))
    }

    /// The value of the first `@@KEY value` line; panics with the console
    /// when there is none.
    pub fn value(&self, key: &str) -> String {
        self.console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("@@{key} ")))
            .unwrap_or_else(|| panic!("no @@{key} line:\n{}", self.console))
            .trim()
            .to_string()
    }
}

/// Run `script` in L1 (with the `extra` files, the initramfs under a
/// temporary directory named after `name`), check that it finished
/// without an `@@FATAL` line, and print each case's exit code and time.
pub fn run_l1(fx: &Fixtures, name: &str, script: &str, extra: &Extra) -> Run {
    let tmp = vessel_testkit::TempRoot::new(name);
    let initrd = tmp.join("l1.cpio");
    l1_initramfs(fx, script, extra, &initrd).expect("L1 initramfs");
    let console = boot_l1(fx, &initrd, Duration::from_secs(900)).expect("L1 boot");
    assert!(!console.contains("@@FATAL"), "{console}");
    assert!(
        console.contains("@@DONE"),
        "L1 script did not finish:\n{console}"
    );
    let cases = parse(&console);
    for (name, c) in &cases {
        eprintln!(
            "case {name}: exit {:?} in {:.2} s",
            c.exit,
            c.seconds.unwrap_or(f64::NAN)
        );
    }
    Run { console, cases }
}

/// Write the L1 initramfs: busybox with its applets, the KVM modules, our
/// binaries under /bin, the guest kernel, initramfs and layer under /vm,
/// `extra` files, and `script` as /init (after the common preamble that
/// mounts the kernel filesystems and loads kvm-amd).
pub fn l1_initramfs(fx: &Fixtures, script: &str, extra: &Extra, out: &Path) -> Result<(), String> {
    let e = |e: initramfs::Error| e.to_string();
    let file = std::fs::File::create(out).map_err(|e| e.to_string())?;
    let mut c = Cpio::new(std::io::BufWriter::new(file));
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "vm",
        "modules", "etc",
    ] {
        c.dir(d, 0o755).map_err(e)?;
    }
    c.file_from("bin/busybox", 0o755, &fx.busybox).map_err(e)?;
    let list = sh(
        Command::new(&fx.busybox).arg("--list-full"),
        "busybox --list-full",
    )?;
    for applet in list.lines() {
        if applet == "bin/busybox" || applet.is_empty() {
            continue;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        c.symlink(applet, &target).map_err(e)?;
    }
    c.file_from("bin/vessel-vmm", 0o755, &fx.vmm).map_err(e)?;
    c.file_from("bin/vessel-agent", 0o755, &fx.agent)
        .map_err(e)?;
    c.file_from("bin/vessel-shim", 0o755, &fx.shim).map_err(e)?;
    c.file_from("bin/vessel-runtime", 0o755, &fx.runtime)
        .map_err(e)?;
    for m in &fx.l1_modules {
        let name = m.file_name().expect("module file name").to_string_lossy();
        c.file_from(&format!("modules/{name}"), 0o644, m)
            .map_err(e)?;
    }
    c.file_from("vm/vmlinux", 0o644, &fx.guest_kernel)
        .map_err(e)?;
    c.file_from("vm/initrd", 0o644, &fx.guest_initrd)
        .map_err(e)?;
    c.file_from("vm/layer.img", 0o644, &fx.layer).map_err(e)?;
    c.file_from("vm/bzImage", 0o644, &fx.guest_bzimage)
        .map_err(e)?;
    c.file_from("vm/scratch.img", 0o644, &fx.scratch)
        .map_err(e)?;
    let mut made: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for (name, src) in extra {
        let name = name.trim_start_matches('/');
        // Parents must come before their entries in the archive.
        let mut parent = String::new();
        for part in name
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            parent = if parent.is_empty() {
                (*part).to_string()
            } else {
                format!("{parent}/{part}")
            };
            if made.insert(parent.clone()) {
                c.dir(&parent, 0o755).map_err(e)?;
            }
        }
        c.file_from(name, 0o755, src).map_err(e)?;
    }
    let init = format!("{PREAMBLE}\n{script}\necho @@DONE\npoweroff -f\n");
    c.file("init", 0o755, init.as_bytes()).map_err(e)?;
    c.finish().map_err(e)?;
    Ok(())
}

const PREAMBLE: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd; do insmod /modules/$m.ko || echo "@@FATAL insmod $m"; done
[ -c /dev/kvm ] || { echo "@@FATAL no /dev/kvm in L1"; poweroff -f; }
# An NMI (sent by the test's watchdog to a silent L1) panics with the
# stack of whatever L1 was doing, even with interrupts off.
echo 1 > /proc/sys/kernel/unknown_nmi_panic
echo "@@L1UP $(cut -d' ' -f1 /proc/uptime)"
now() { cut -d' ' -f1 /proc/uptime; }
"#;

/// The host's TSC rate in kHz (L1 needs it or marks its TSC unstable).
fn tsc_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split(':').nth(1)))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// How long L1 may print nothing before it counts as hung. Every script
/// prints at least once every 30 s in a healthy run, even on a loaded
/// machine.
const L1_IDLE_LIMIT: Duration = Duration::from_secs(180);

/// How many times an L1 boot is tried when QEMU wedged it (see
/// [`wedged`]).
const L1_ATTEMPTS: u32 = 3;

/// Whether a silent L1 was wedged by the emulator rather than by anything
/// in the script: L1's local APIC holds an interrupt that QEMU never
/// delivered, and the NMI (when its trace got out) found L1's only CPU
/// inside `svm_vcpu_run`, still running a nested guest. QEMU's TCG lets a physical
/// interrupt leave a nested guest only when L1's interrupt flag was set
/// at VMRUN, and KVM 6.1 enters its guests with interrupts off; so a
/// nested guest that spins without exits (a spinlock whose holder's vCPU
/// thread waits for L1's CPU, a calibration loop waiting for the PIT)
/// keeps L1 from ever running again. Hardware delivers that interrupt; a
/// hang of our own leaves L1 answering interrupts, and fails as before.
fn wedged(monitor_answers: &str, console: &str) -> bool {
    let pending_irq = monitor_answers
        .lines()
        .any(|l| l.starts_with("IRR") && !l.contains("(none)"));
    // The NMI's panic trace does not always make it out before QEMU is
    // killed; when it does, it must show the nested guest.
    let traced = console.contains("NMI: Not continuing");
    pending_irq && (!traced || console.contains("svm_vcpu_run"))
}

/// Boot L1 with `initrd` under TCG and return its console output, trying
/// again (up to [`L1_ATTEMPTS`] boots, each reported on stderr) when the
/// emulator wedged L1; see [`boot_l1_once`].
pub fn boot_l1(fx: &Fixtures, initrd: &Path, limit: Duration) -> Result<String, String> {
    let mut attempt = 1;
    loop {
        match boot_l1_once(fx, initrd, limit) {
            Ok(out) => return Ok(out),
            Err(L1Failure::Wedged(report)) if attempt < L1_ATTEMPTS => {
                // Written to the process's stderr directly, not through
                // eprintln!, so that the test harness does not swallow it
                // when the next boot passes: a retry must show in CI logs.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "L1 boot {attempt} of {L1_ATTEMPTS} was wedged by the emulator (a nested \
                     guest spinning without exits; see support::wedged), booting again:\n{report}"
                );
                attempt += 1;
            }
            Err(L1Failure::Wedged(report) | L1Failure::Other(report)) => return Err(report),
        }
    }
}

/// Why one L1 boot failed.
enum L1Failure {
    /// The emulator wedged L1 ([`wedged`]): the report says where.
    Wedged(String),
    /// Anything else.
    Other(String),
}

/// Boot L1 once with `initrd` under TCG and return its console output. A
/// watchdog ends QEMU after `limit`, or after `L1_IDLE_LIMIT` without a
/// byte of console output, so a hung guest cannot hang CI. Before it does,
/// it records where L1 is: the vCPU registers from QEMU's monitor, then an
/// NMI, which L1 turns into a panic with the stack of whatever it was
/// doing (`unknown_nmi_panic`), so even a hang with interrupts off is
/// explained in the console.
fn boot_l1_once(fx: &Fixtures, initrd: &Path, limit: Duration) -> Result<String, L1Failure> {
    // VESSEL_L1_CONSOLE=1 shows the console live and, with it, every
    // kernel message (debugging a hung L1).
    let live = std::env::var_os("VESSEL_L1_CONSOLE").is_some();
    let append = format!(
        "console=ttyS0 tsc_early_khz={} lpj=8000000 panic=-1 {}",
        tsc_khz(),
        if live {
            "loglevel=7"
        } else {
            "quiet loglevel=1"
        }
    );
    let monitor = initrd.with_extension("monitor.sock");
    let _ = std::fs::remove_file(&monitor);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-M",
            "q35",
            "-cpu",
            "max,la57=off",
            "-m",
            "2048",
            // One L1 CPU: with two, L1's KVM (Debian 6.1 under MTTCG)
            // intermittently livelocks delivering the in-kernel PIT's
            // interrupt to a two-vCPU L2 (soft lockup in
            // __apic_accept_irq from kvm-pit while irqfd_inject spins on
            // the IOAPIC lock), freezing L1 for good. With one L1 CPU, 36
            // two-vCPU L2 boots in a row passed; with two or four, 3 of 6
            // L1 boots froze.
            "-smp",
            "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .arg("-kernel")
        .arg(&fx.l1_kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| L1Failure::Other(format!("starting qemu: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    // The reader sends one message per chunk of output, and `None` at the
    // end, so the watchdog below sees both progress and the end.
    let (tx, rx) = mpsc::channel::<Option<()>>();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if live {
                        use std::io::Write as _;
                        let _ = std::io::stderr().write_all(&buf[..n]);
                    }
                    s.extend_from_slice(&buf[..n]);
                    let _ = tx.send(Some(()));
                }
            }
        }
        let _ = tx.send(None);
        s
    });
    let deadline = std::time::Instant::now() + limit;
    let mut hang: Option<(String, String)> = None;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left.min(L1_IDLE_LIMIT)) {
            Ok(Some(())) => {}
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let why = if left <= L1_IDLE_LIMIT {
                    format!("L1 did not finish within {limit:?}")
                } else {
                    format!("L1 printed nothing for {L1_IDLE_LIMIT:?}")
                };
                hang = Some((why, where_is_l1(&monitor, &rx)));
                break;
            }
        }
    }
    if hang.is_some() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| L1Failure::Other(e.to_string()))?;
    let _ = std::fs::remove_file(&monitor);
    let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).replace('\r', "");
    if let Some((why, answers)) = hang {
        let report = format!("{why}\n{answers}\nconsole:\n{out}");
        return Err(if wedged(&answers, &out) {
            L1Failure::Wedged(report)
        } else {
            L1Failure::Other(report)
        });
    }
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(L1Failure::Other(format!(
            "qemu exited with {status}: {err}\nconsole:\n{out}"
        )));
    }
    Ok(out)
}

/// Ask QEMU's monitor where a silent L1 is: its registers, then an NMI
/// (L1 panics on it and prints its stack); waits up to a minute for the
/// console to settle after the NMI. Returns the monitor's answers.
fn where_is_l1(monitor: &Path, output: &mpsc::Receiver<Option<()>>) -> String {
    use std::io::Write as _;
    use std::os::unix::net::UnixStream;
    let ask = |commands: &[&str]| -> String {
        let Ok(mut s) = UnixStream::connect(monitor) else {
            return format!("(no QEMU monitor at {})", monitor.display());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answer = Vec::new();
        for c in commands {
            let _ = s.write_all(format!("{c}\n").as_bytes());
            let mut buf = [0u8; 4096];
            // The monitor answers, then prompts again; read until it goes
            // quiet for the read timeout.
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
                if answer.ends_with(b"(qemu) ") {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&answer).replace('\r', "")
    };
    // Registers twice, to tell a spinning CPU from a stopped one, and the
    // local APIC (is a timer interrupt pending, or none armed?).
    let registers = ask(&["info registers", "info lapic", "info registers"]);
    let _ = ask(&["nmi"]);
    // Let L1 print its panic: up to a minute for it to start, then until
    // the console is quiet for 10 s.
    if let Ok(Some(())) = output.recv_timeout(Duration::from_secs(60)) {
        while let Ok(Some(())) = output.recv_timeout(Duration::from_secs(10)) {}
    }
    // The monitor echoes each typed character with terminal escapes.
    let registers: String = registers
        .lines()
        .filter(|l| !l.starts_with("(qemu) "))
        .collect::<Vec<_>>()
        .join("\n");
    format!("QEMU monitor (sent an NMI after this):\n{registers}")
}
