//! `vessel-registry`: flags and a config file in, the library's server out.

use std::io::{BufRead as _, IsTerminal as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use vessel_registry::config::{Config, HtpasswdConfig, TlsConfig, duration};
use vessel_registry::gc::{self, GcOptions};
use vessel_registry::registry::{Limits, Registry};
use vessel_registry::server::Server;
use vessel_registry::storage::fs::{FsDriver, FsOptions};

#[derive(Parser)]
#[command(
    name = "vessel-registry",
    version,
    about = "An OCI distribution registry"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the registry (the default).
    Serve(ServeArgs),
    /// Run garbage collection over the storage once and exit.
    Gc(GcArgs),
    /// Print an htpasswd line (bcrypt) for USER; the password is read from stdin.
    Htpasswd {
        /// Account name.
        user: String,
        /// bcrypt cost.
        #[arg(long, default_value_t = 10)]
        cost: u32,
    },
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, short = 'c', env = "VESSEL_REGISTRY_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Storage root directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Refuse all writes.
    #[arg(long)]
    read_only: bool,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Enable basic auth with this htpasswd file (bcrypt entries).
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// Do not fsync objects before publishing them (faster, less durable).
    #[arg(long)]
    no_fsync: bool,
    /// Run GC in the server at this interval (e.g. 1h; 0 disables).
    #[arg(long, value_parser = parse_duration)]
    gc_interval: Option<Duration>,
    /// Log level filter (RUST_LOG syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Args)]
struct GcArgs {
    /// TOML configuration file (for storage and gc settings).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Storage root directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep unreferenced blobs younger than this.
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Also delete manifests no tag reaches.
    #[arg(long)]
    delete_untagged: bool,
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    duration::parse(s).ok_or_else(|| format!("invalid duration {s:?} (use 30s, 5m, 1h, 2d)"))
}

fn load(config: Option<&PathBuf>) -> Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn init_logging(filter: &str, json: bool) {
    let f = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(f)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    init_logging(&a.log, a.log_json);
    let mut cfg = load(a.config.as_ref())?;
    if let Some(x) = a.addr {
        cfg.server.addr = x;
    }
    if let Some(x) = a.root {
        cfg.storage.root = x;
    }
    if a.read_only {
        cfg.server.read_only = true;
    }
    if a.no_fsync {
        cfg.storage.fsync = false;
    }
    if let (Some(certificate), Some(key)) = (a.tls_cert, a.tls_key) {
        cfg.server.tls = Some(TlsConfig { certificate, key });
    }
    if let Some(path) = a.htpasswd {
        cfg.auth.htpasswd = Some(HtpasswdConfig {
            realm: "vessel-registry".into(),
            path,
        });
    }
    if let Some(i) = a.gc_interval {
        cfg.gc.interval = i;
    }
    let handle = Server::start(cfg).await?;
    let signal = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail in a fresh process");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    handle.run_until(signal).await;
    Ok(())
}

async fn run_gc(a: GcArgs) -> Result<()> {
    init_logging("warn", false);
    let mut cfg = load(a.config.as_ref())?;
    if let Some(r) = a.root {
        cfg.storage.root = r;
    }
    let driver = FsDriver::open(
        &cfg.storage.root,
        FsOptions {
            fsync: cfg.storage.fsync,
        },
    )
    .with_context(|| format!("open storage {}", cfg.storage.root.display()))?;
    // A sweep beside a server in another process could race its pushes
    // (the lock that orders them lives in the server); a dry run only reads.
    let _lock = if a.dry_run {
        None
    } else {
        Some(driver.process_lock(true).with_context(|| {
            format!(
                "storage {} is in use by a running registry; stop it, or set gc.interval to collect inside it",
                cfg.storage.root.display()
            )
        })?)
    };
    let reg = Registry::new(
        Arc::new(driver),
        Limits {
            max_manifest_bytes: cfg.server.max_manifest_bytes,
        },
        false,
    );
    let opts = GcOptions {
        grace: a.grace.unwrap_or(cfg.gc.grace),
        upload_grace: cfg.gc.upload_grace,
        delete_untagged: a.delete_untagged || cfg.gc.delete_untagged,
        dry_run: a.dry_run,
    };
    let r = gc::collect(&reg, &opts).await?;
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for (repo, d) in &r.deleted_manifests {
        println!("{verb} manifest {repo}@{d}");
    }
    for (d, size) in &r.deleted_blobs {
        println!("{verb} blob {d} ({size} bytes)");
    }
    for u in &r.deleted_uploads {
        println!("{verb} upload {u}");
    }
    println!(
        "{} blobs referenced, {} {verb} ({} bytes), {} unreferenced kept within the grace period, {} uploads {verb}",
        r.marked,
        r.deleted_blobs.len(),
        r.freed_bytes(),
        r.kept_in_grace,
        r.deleted_uploads.len()
    );
    Ok(())
}

fn htpasswd(user: &str, cost: u32) -> Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read password from stdin")?;
    let pw = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!pw.is_empty(), "empty password on stdin");
    anyhow::ensure!(!user.contains(':'), "user name {user:?} contains ':'");
    println!("{user}:{}", bcrypt::hash(pw, cost)?);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vessel-registry: start runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(async move {
        match cli.cmd {
            Some(Cmd::Serve(a)) => serve(a).await,
            Some(Cmd::Gc(a)) => run_gc(a).await,
            Some(Cmd::Htpasswd { user, cost }) => htpasswd(&user, cost),
            None => serve(cli.serve).await,
        }
    });
    if let Err(e) = res {
        eprintln!(
            "vessel-registry: {}",
            vessel_registry::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}
