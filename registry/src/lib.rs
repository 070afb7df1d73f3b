//! Vessel's OCI distribution registry: server, storage and client.
//!
//! - [`server`]: an embeddable HTTP server for the OCI distribution spec
//!   v1.1 (`Server::start(config) -> ServerHandle`), used by the
//!   `vessel-registry` binary and by `vesseld --registry`.
//! - [`registry`]: the transport-neutral protocol core the server wraps.
//! - [`storage`]: the storage-driver trait, the filesystem driver and a
//!   conformance suite for drivers.
//! - [`gc`]: online mark-and-sweep garbage collection.
//! - [`auth`]: htpasswd basic auth and the built-in token service.
//! - [`client`]: the registry client the daemon uses to pull and push
//!   (reference parsing, auth flow, parallel transfers, progress events).
//!
//! This crate depends on no other workspace crate. See docs/registry.md for
//! the design note and user documentation.

pub mod auth;
pub mod client;
pub mod config;
pub mod digest;
pub mod gc;
pub mod metrics;
pub mod oci;
pub mod registry;
pub mod server;
pub mod storage;

pub use digest::Digest;

/// Render an error and its chain of causes as `outer: inner: root`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
