//! Running the daemon: directories, the pid file, listeners (a unix socket,
//! and TCP only with TLS unless explicitly allowed), and graceful shutdown.
//! Containers keep running across a daemon restart (their shims stay).

use std::io::{Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::engine::{self, Engine};

/// Daemon settings (from flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub exec_root: PathBuf,
    /// `unix:///path` or `tcp://addr:port`.
    pub hosts: Vec<String>,
    pub pidfile: Option<PathBuf>,
    /// Serve plain TCP without TLS (explicit opt-in).
    pub insecure_tcp: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA.
    pub tls_ca: Option<PathBuf>,
    pub group: String,
    pub shim_binary: Option<PathBuf>,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Serve an embedded registry on this address (storage under ROOT/registry);
    /// port 0 picks a free port, and the log line "embedded registry
    /// listening" gives the address bound.
    pub registry: Option<std::net::SocketAddr>,
    /// Prefix of host-global network names (nftables table, bridges);
    /// derived from the root when absent.
    pub network_prefix: Option<String>,
    /// The default bridge's device name (default: the prefix and `0`).
    pub bridge_name: Option<String>,
    /// Guest kernel and agent initramfs for `--runtime vm`.
    pub vm_kernel: PathBuf,
    pub vm_initrd: PathBuf,
}

/// Holds the pid file (with an exclusive lock) for the daemon's life.
struct PidFile {
    path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn pidfile(path: &Path) -> Result<PidFile> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open pid file {}", path.display()))?;
    let mut lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| {
            anyhow::anyhow!(
                "pid file {} is locked ({e}): is another vesseld running with this root?",
                path.display()
            )
        })?;
    lock.set_len(0)?;
    lock.seek(std::io::SeekFrom::Start(0))?;
    write!(lock, "{}", std::process::id())?;
    Ok(PidFile {
        path: path.to_path_buf(),
        _lock: lock,
    })
}

fn tls_acceptor(o: &Options) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&o.tls_cert, &o.tls_key) else {
        return Ok(None);
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("open {}", cert.display()))?,
    ))
    .collect::<std::result::Result<Vec<_>, _>>()
    .with_context(|| format!("read {}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("open {}", key.display()))?,
    ))
    .with_context(|| format!("read {}", key.display()))?
    .with_context(|| format!("no private key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match &o.tls_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut std::io::BufReader::new(
                std::fs::File::open(ca).with_context(|| format!("open {}", ca.display()))?,
            )) {
                roots.add(c?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)?
        }
        None => builder.with_no_client_auth().with_single_cert(certs, key)?,
    };
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

fn socket_group(name: &str) -> Option<nix::unistd::Gid> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid)
}

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(o: Options) -> Result<()> {
    std::fs::create_dir_all(&o.root).with_context(|| format!("create {}", o.root.display()))?;
    std::fs::create_dir_all(&o.exec_root)
        .with_context(|| format!("create {}", o.exec_root.display()))?;
    let _pid = pidfile(
        &o.pidfile
            .clone()
            .unwrap_or_else(|| o.exec_root.join("vesseld.pid")),
    )?;
    // The embedded registry first, so the engine knows its bound address.
    let registry = match o.registry {
        Some(addr) => {
            let mut cfg = vessel_registry::config::Config::default();
            cfg.server.addr = addr;
            cfg.storage.root = o.root.join("registry");
            let h = vessel_registry::server::Server::start(cfg)
                .await
                .with_context(|| format!("start the embedded registry on {addr}"))?;
            tracing::info!(addr = %h.local_addr(), "embedded registry listening");
            Some(h)
        }
        None => None,
    };
    let engine = Engine::open(engine::Config {
        root: o.root.clone(),
        exec_root: o.exec_root.clone(),
        shim_binary: o
            .shim_binary
            .clone()
            .unwrap_or_else(engine::shim::find_binary),
        registry: engine::distribution::RegistryOptions {
            insecure: o.insecure_registries.clone(),
            embedded: registry
                .as_ref()
                .map(vessel_registry::server::ServerHandle::local_addr),
        },
        network: {
            let (prefix, bridge) = crate::network::Config::names_for(&o.root);
            let prefix = o.network_prefix.clone().unwrap_or(prefix);
            crate::network::Config {
                dir: o.root.join("network"),
                netns_dir: o.exec_root.join("netns"),
                default_bridge: o.bridge_name.clone().unwrap_or_else(|| {
                    if o.network_prefix.is_some() {
                        format!("{prefix}0")
                    } else {
                        bridge
                    }
                }),
                prefix,
            }
        },
        vm_kernel: o.vm_kernel.clone(),
        vm_initrd: o.vm_initrd.clone(),
    })
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tls = tls_acceptor(&o)?;
    let mut tasks = Vec::new();
    let hosts = if o.hosts.is_empty() {
        vec!["unix:///run/vessel/vessel.sock".to_string()]
    } else {
        o.hosts.clone()
    };
    for h in &hosts {
        if let Some(path) = h.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("listen on {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
            if let Some(gid) = socket_group(&o.group) {
                let _ = nix::unistd::chown(&path, None, Some(gid));
            }
            tracing::info!(socket = %path.display(), "API listening");
            tasks.push(tokio::spawn(crate::api::serve_unix(
                engine.clone(),
                listener,
                stop_rx.clone(),
            )));
        } else if let Some(addr) = h.strip_prefix("tcp://") {
            if tls.is_none() && !o.insecure_tcp {
                bail!(
                    "refusing to serve {h} without TLS: give --tlscert and --tlskey (and --tlscacert to verify clients), or --insecure-tcp to accept unauthenticated root access over the network"
                );
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            tracing::info!(%addr, tls = tls.is_some(), "API listening");
            tasks.push(tokio::spawn(crate::api::serve_tcp(
                engine.clone(),
                listener,
                tls.clone(),
                stop_rx.clone(),
            )));
        } else {
            bail!("unsupported --host {h:?}: use unix:///path or tcp://addr:port");
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down; containers keep running");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    if let Some(h) = registry {
        h.shutdown().await;
    }
    engine.shutdown().await;
    for h in &hosts {
        if let Some(path) = h.strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}
