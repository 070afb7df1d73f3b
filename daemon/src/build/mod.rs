//! Vessel's image builder.
//!
//! - [`dockerfile`]: the frontend (parsing, variable expansion, stage
//!   graph, `.dockerignore`); a pure library.
//! - [`exec`]: the executor that turns a Dockerfile and a context
//!   directory into an image in the store, with stages in parallel.
//! - `cache`: the persistent step cache; `run`: RUN steps as containers;
//!   `fetch`: `ADD <url>` downloads; `fsops`: file operations confined to
//!   their roots (context unpacking, COPY, ADD archives).
//!
//! The HTTP side (`POST /build`, the context upload and the JSON stream)
//! lives in the API module; this module gets an unpacked context.

mod cache;
pub mod dockerfile;
pub mod exec;
mod fetch;
pub mod fsops;
mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use exec::{BuildOptions, Builder, Error, Outcome, Output, Puller, Result};
pub use run::Limits;

use crate::images::ImageStore;

/// The builder of the daemon whose state lives under `root`, opened on
/// first use and shared by every build of that daemon.
pub fn builder_for(store: &Arc<ImageStore>, root: &Path, exec_root: &Path) -> Result<Arc<Builder>> {
    static BUILDERS: Mutex<Option<HashMap<PathBuf, Arc<Builder>>>> = Mutex::new(None);
    let mut g = BUILDERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let map = g.get_or_insert_with(HashMap::new);
    if let Some(b) = map.get(root) {
        return Ok(b.clone());
    }
    let b = Arc::new(Builder::open(store.clone(), root, exec_root)?);
    map.insert(root.to_path_buf(), b.clone());
    Ok(b)
}
