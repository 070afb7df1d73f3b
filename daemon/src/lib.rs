//! `vesseld`: Vessel's engine library and Docker API server.
//!
//! - [`images`]: the image store (content, metadata, snapshots, archives).
//! - [`build`]: the Dockerfile frontend.
//! - [`engine`]: containers and everything around them, transport-neutral.
//! - [`api`]: the Docker Engine API over HTTP, translating to the engine.
//! - [`daemon`]: listeners, TLS, the pid file and shutdown.

#![recursion_limit = "256"]

pub mod api;
pub mod build;
pub mod daemon;
pub mod engine;
pub mod images;
pub mod network;
