//! `vessel-vmm`: boot a microVM from the command line.
//!
//! A thin front end over `vessel_vmm::Vm`, for debugging, the end-to-end
//! tests and benchmarks. The host side of the channel is a unix socket the
//! monitor listens on (one connection), like Firecracker's vsock sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use vessel_vmm::{
    BootSource, ChannelConfig, DiskConfig, SeccompMode, SerialOutput, Vm, VmConfig, VmExit,
};

/// Boot a Linux kernel in a Vessel microVM.
#[derive(Parser, Debug)]
#[command(name = "vessel-vmm", version)]
struct Args {
    /// Kernel image: ELF vmlinux (PVH entry if present) or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (cpio).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (the monitor appends its devices).
    #[arg(long, default_value = "reboot=k panic=-1 quiet")]
    append: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// A disk: PATH[,ro][,serial=ID]. Repeat for more; order is the guest's.
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// Listen on this unix socket for the host end of the channel.
    #[arg(long, conflicts_with = "channel_connect")]
    channel_socket: Option<PathBuf>,
    /// Connect to this unix socket for the host end of the channel.
    #[arg(long)]
    channel_connect: Option<PathBuf>,
    /// Name of the channel port inside the guest.
    #[arg(long, default_value = "vessel.agent")]
    channel_name: String,
    /// Give the guest an 8250 serial port printing to standard error.
    #[arg(long)]
    serial: bool,
    /// Provide the debug exit port (0xf4); its value becomes the exit code.
    #[arg(long)]
    debug_exit: bool,
    /// Enter an ELF kernel at its 64-bit entry even if it has a PVH note.
    #[arg(long)]
    no_pvh: bool,
    /// Seccomp on the monitor's threads: enforce, log or off.
    #[arg(long, default_value = "enforce")]
    seccomp: String,
    /// Print the exit reason, wall time and exit counts to standard error.
    #[arg(long)]
    stats: bool,
}

fn parse_disk(spec: &str) -> anyhow::Result<DiskConfig> {
    let mut parts = spec.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .context("disk: empty path")?;
    let mut disk = DiskConfig {
        path: PathBuf::from(path),
        read_only: false,
        serial: String::new(),
    };
    for p in parts {
        match p.split_once('=') {
            None if p == "ro" => disk.read_only = true,
            None if p == "rw" => disk.read_only = false,
            Some(("serial", id)) => disk.serial = id.to_string(),
            _ => bail!("disk {path}: unknown option {p:?} (ro, rw, serial=ID)"),
        }
    }
    Ok(disk)
}

/// Accept one connection on `listener` and copy bytes between it and
/// `vm_end` in both directions.
fn bridge(listener: UnixListener, vm_end: UnixStream) {
    std::thread::spawn(move || {
        let Ok((conn, _)) = listener.accept() else {
            return;
        };
        let (Ok(mut conn_r), Ok(mut vm_w)) = (conn.try_clone(), vm_end.try_clone()) else {
            return;
        };
        let (mut conn_w, mut vm_r) = (conn, vm_end);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut conn_r, &mut vm_w);
            let _ = vm_w.shutdown(std::net::Shutdown::Write);
        });
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match vm_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = conn_w.shutdown(std::net::Shutdown::Write);
    });
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VESSEL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vessel-vmm: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let seccomp = match args.seccomp.as_str() {
        "enforce" => SeccompMode::Enforce,
        "log" => SeccompMode::Log,
        "off" => SeccompMode::Off,
        other => bail!("--seccomp {other:?}: expected enforce, log or off"),
    };
    let mut config = VmConfig::new(BootSource::Linux {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.append,
        pvh: !args.no_pvh,
    });
    config.mem_mib = args.mem;
    config.vcpus = args.cpus;
    config.debug_exit = args.debug_exit;
    config.seccomp = seccomp;
    if args.serial {
        config.serial = SerialOutput::Stderr;
    }
    for d in &args.disks {
        config.disks.push(parse_disk(d)?);
    }
    if let Some(path) = &args.channel_socket {
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        let (vm_end, bridge_end) =
            UnixStream::pair().context("creating the channel socket pair")?;
        bridge(listener, bridge_end);
        config.channel = Some(ChannelConfig {
            name: args.channel_name.clone(),
            stream: vm_end.into(),
        });
    }
    if let Some(path) = &args.channel_connect {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        config.channel = Some(ChannelConfig {
            name: args.channel_name.clone(),
            stream: stream.into(),
        });
    }
    let vm = Vm::start(config).context("starting the VM")?;
    let outcome = vm.wait();
    if args.stats {
        let (total, pio, mmio) = outcome.exits;
        eprintln!(
            "vessel-vmm: {} after {:.3} s; exits: {total} total, {pio} port I/O, {mmio} MMIO",
            outcome.exit,
            outcome.elapsed.as_secs_f64()
        );
    }
    Ok(match outcome.exit {
        VmExit::Reset => ExitCode::SUCCESS,
        VmExit::DebugExit(v) => ExitCode::from(v),
        other => {
            eprintln!("vessel-vmm: {other}");
            ExitCode::from(1)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = parse_disk("/a/b.img,ro,serial=layer-0").unwrap();
        assert_eq!(d.path, PathBuf::from("/a/b.img"));
        assert!(d.read_only);
        assert_eq!(d.serial, "layer-0");
        assert!(!parse_disk("/x").unwrap().read_only);
        assert!(parse_disk("/x,bogus").is_err());
        assert!(parse_disk(",ro").is_err());
    }
}
