//! The embeddable HTTP server: configuration in, a running server handle
//! out.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vessel_registry::{config::Config, server::Server};
//! let mut cfg = Config::default();
//! cfg.server.addr = "127.0.0.1:0".parse()?;
//! cfg.storage.root = "/tmp/reg".into();
//! let handle = Server::start(cfg).await?;
//! println!("listening on {}", handle.local_addr());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Owns listening (TCP, optional TLS via rustls, HTTP/1.1 and h2), graceful
//! shutdown, the periodic GC task and wiring the parts together. Request
//! handling lives in [`http`]; protocol rules in [`crate::registry`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{self, Authenticator};
use crate::config::{self, Config};
use crate::gc::{self, GcOptions};
use crate::metrics::Metrics;
use crate::registry::{Limits, Registry};
use crate::storage::fs::{FsDriver, FsOptions};
use crate::storage::{self, StorageDriver};

pub mod http;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration is invalid.
    #[error("configuration")]
    Config(#[from] config::Error),
    /// Storage could not be opened.
    #[error("open storage")]
    Storage(#[from] storage::Error),
    /// Authentication files could not be loaded.
    #[error("set up authentication")]
    Auth(#[from] auth::Error),
    /// TLS material could not be loaded.
    #[error("tls: {what} {path}")]
    Tls {
        /// What failed.
        what: &'static str,
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The listener could not be bound.
    #[error("listen on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Shared state of a running server.
pub struct State {
    /// Protocol core.
    pub registry: Arc<Registry>,
    /// Authentication.
    pub auth: Authenticator,
    /// Metrics.
    pub metrics: Metrics,
    /// Whether `/metrics` is served.
    pub metrics_enabled: bool,
    /// Whether one log line per request is written.
    pub access_log: bool,
    /// Whether the listener is TLS (for URLs the server hands out).
    pub tls: bool,
    /// Page size cap for tag and catalog listings.
    pub max_page_size: usize,
}

/// Entry point for starting servers.
pub struct Server;

/// A running server. Dropping it does not stop it; call
/// [`ServerHandle::shutdown`].
pub struct ServerHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    gc: Option<JoinHandle<()>>,
    state: Arc<State>,
    store_lock: Option<crate::storage::fs::StoreLock>,
}

fn load_tls(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let tls_err = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |e: Box<dyn std::error::Error + Send + Sync>| Error::Tls {
            what,
            path,
            source: e,
        }
    };
    let cert_pem = std::fs::read(cert).map_err(|e| tls_err("read certificate", cert)(e.into()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_err("parse certificate", cert)(e.into()))?;
    if certs.is_empty() {
        return Err(tls_err("no certificate in", cert)("empty".into()));
    }
    let key_pem = std::fs::read(key).map_err(|e| tls_err("read key", key)(e.into()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| tls_err("parse key", key)(e.into()))?
        .ok_or_else(|| tls_err("no private key in", key)("empty".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("configure", cert)(e.into()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| tls_err("use certificate and key", cert)(e.into()))?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(sc)))
}

impl Server {
    /// Open the configured storage and start serving.
    pub async fn start(cfg: Config) -> Result<ServerHandle> {
        cfg.validate()?;
        let driver = FsDriver::open(
            &cfg.storage.root,
            FsOptions {
                fsync: cfg.storage.fsync,
            },
        )?;
        let lock = driver.process_lock(false)?;
        let mut handle = Self::start_with_storage(cfg, Arc::new(driver)).await?;
        handle.store_lock = Some(lock);
        Ok(handle)
    }

    /// Start serving over a storage driver chosen by the embedder.
    pub async fn start_with_storage(
        cfg: Config,
        storage: Arc<dyn StorageDriver>,
    ) -> Result<ServerHandle> {
        cfg.validate()?;
        let registry = Arc::new(Registry::new(
            storage,
            Limits {
                max_manifest_bytes: cfg.server.max_manifest_bytes,
            },
            cfg.server.read_only,
        ));
        let auth = Authenticator::from_config(&cfg.auth)?;
        let tls = match &cfg.server.tls {
            Some(t) => Some(load_tls(&t.certificate, &t.key)?),
            None => None,
        };
        let listener = TcpListener::bind(cfg.server.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: cfg.server.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: cfg.server.addr,
            source,
        })?;
        let state = Arc::new(State {
            registry,
            auth,
            metrics: Metrics::default(),
            metrics_enabled: cfg.metrics.enabled,
            access_log: cfg.server.access_log,
            tls: tls.is_some(),
            max_page_size: cfg.server.max_page_size,
        });
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, tls, state.clone(), stop_rx.clone()));
        let gc = (!cfg.gc.interval.is_zero()).then(|| {
            let opts = GcOptions {
                grace: cfg.gc.grace,
                upload_grace: cfg.gc.upload_grace,
                delete_untagged: cfg.gc.delete_untagged,
                dry_run: false,
            };
            tokio::spawn(gc_loop(state.clone(), cfg.gc.interval, opts, stop_rx))
        });
        tracing::info!(%addr, tls = state.tls, storage = state.registry.storage().name(), "registry listening");
        Ok(ServerHandle {
            addr,
            stop,
            accept,
            gc,
            state,
            store_lock: None,
        })
    }
}

async fn gc_loop(
    state: Arc<State>,
    every: Duration,
    opts: GcOptions,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match gc::collect(&state.registry, &opts).await {
            Ok(r) => state.metrics.gc_run(
                r.deleted_blobs.len() as u64,
                r.freed_bytes(),
                r.deleted_uploads.len() as u64,
            ),
            Err(e) => tracing::error!(error = %crate::error_chain(&e), "garbage collection failed"),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (sock, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = sock.set_nodelay(true);
        let state = state.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(http::handle(state, req, remote).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let res = match tls {
                Some(acc) => match acc.accept(sock).await {
                    Ok(s) => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(s), svc).into_owned())
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "tls handshake failed");
                        return;
                    }
                },
                None => {
                    watcher
                        .watch(
                            builder
                                .serve_connection(TokioIo::new(sock), svc)
                                .into_owned(),
                        )
                        .await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Let in-flight requests finish, but not forever.
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30s; closing them");
    }
}

impl ServerHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (registry core, metrics).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stop accepting, finish in-flight requests (up to 30 s), stop GC.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        if let Some(gc) = self.gc {
            let _ = gc.await;
        }
        drop(self.store_lock);
        tracing::info!(addr = %self.addr, "registry stopped");
    }

    /// Run until `signal` completes, then shut down gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}
