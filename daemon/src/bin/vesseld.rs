//! `vesseld`: Vessel's daemon, serving the Docker Engine API.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "vesseld",
    version,
    about = "Vessel's container engine daemon (Docker-compatible API)"
)]
struct Cli {
    /// Persistent state (images, containers, volumes).
    #[arg(long, default_value = "/var/lib/vessel", env = "VESSEL_ROOT")]
    root: PathBuf,
    /// Runtime state (shims, runtime state), not kept across reboots.
    #[arg(long, default_value = "/run/vessel", env = "VESSEL_EXEC_ROOT")]
    exec_root: PathBuf,
    /// Where to listen: unix:///path or tcp://addr:port (repeatable).
    #[arg(short = 'H', long = "host")]
    host: Vec<String>,
    /// The pid file (default: EXEC_ROOT/vesseld.pid).
    #[arg(short = 'p', long)]
    pidfile: Option<PathBuf>,
    /// Serve plain TCP without TLS. Anyone who can connect gets root.
    #[arg(long)]
    insecure_tcp: bool,
    /// TLS certificate for TCP listeners.
    #[arg(long)]
    tlscert: Option<PathBuf>,
    /// TLS key for TCP listeners.
    #[arg(long)]
    tlskey: Option<PathBuf>,
    /// Verify clients against this CA (mutual TLS).
    #[arg(long)]
    tlscacert: Option<PathBuf>,
    /// Group that owns the unix socket (if it exists).
    #[arg(short = 'G', long, default_value = "vessel")]
    group: String,
    /// The vessel-shim binary (default: next to vesseld).
    #[arg(long)]
    shim_binary: Option<PathBuf>,
    /// A registry reached over plain HTTP (host[:port]; repeatable).
    /// Loopback registries always are.
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// Also serve an OCI registry on this address (storage under ROOT/registry).
    #[arg(long)]
    registry: Option<std::net::SocketAddr>,
    /// Prefix of the host-wide names this daemon creates (its nftables
    /// table and bridge names); default `vessel` for the default root,
    /// otherwise derived from --root so several daemons can share a host.
    #[arg(long)]
    network_prefix: Option<String>,
    /// Device name of the default bridge network (default: PREFIX0, or
    /// vessel0 for the default root).
    #[arg(long)]
    bridge_name: Option<String>,
    /// Guest kernel for `--runtime vm` (runtime/vmm/guest/build-kernel.sh).
    #[arg(long, default_value = vessel_runtime::vm::DEFAULT_KERNEL)]
    vm_kernel: PathBuf,
    /// Agent initramfs for `--runtime vm` (runtime/vmm/guest/build-initrd.sh).
    #[arg(long, default_value = vessel_runtime::vm::DEFAULT_INITRD)]
    vm_initrd: PathBuf,
    /// Log level (error, warn, info, debug, trace).
    #[arg(short = 'l', long, default_value = "info", env = "VESSEL_LOG")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(vesseld::daemon::run(vesseld::daemon::Options {
        root: cli.root,
        exec_root: cli.exec_root,
        hosts: cli.host,
        pidfile: cli.pidfile,
        insecure_tcp: cli.insecure_tcp,
        tls_cert: cli.tlscert,
        tls_key: cli.tlskey,
        tls_ca: cli.tlscacert,
        group: cli.group,
        shim_binary: cli.shim_binary,
        insecure_registries: cli.insecure_registry,
        registry: cli.registry,
        network_prefix: cli.network_prefix,
        bridge_name: cli.bridge_name,
        vm_kernel: cli.vm_kernel,
        vm_initrd: cli.vm_initrd,
    }))
}
