//! Image operations as the engine offers them: the image store's calls run
//! off the async threads, with events and Docker's error wording.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::error::{Error, Result};
use super::fs::{ChanReader, ChanWriter};
use super::{Engine, blocking};
use crate::images::{self, ImageStore, Progress, SaveFormat};

/// An image row for `GET /images/json`.
pub struct ImageRow {
    pub summary: images::ImageSummary,
    pub labels: BTreeMap<String, String>,
    pub created_unix: i64,
    pub containers: i64,
}

impl Engine {
    fn store(&self) -> Arc<ImageStore> {
        self.images.clone()
    }

    /// All images.
    pub async fn image_list(&self) -> Result<Vec<ImageRow>> {
        let store = self.store();
        let rows = blocking(move || {
            let mut out = Vec::new();
            for s in store.list()? {
                let details = store.inspect(&s.id.to_string())?;
                let labels = details
                    .config
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.clone())
                    .unwrap_or_default();
                let created_unix = s
                    .created
                    .as_deref()
                    .and_then(super::container::parse_rfc3339)
                    .unwrap_or(0);
                let containers = s.holders.len() as i64;
                out.push(ImageRow {
                    summary: s,
                    labels,
                    created_unix,
                    containers,
                });
            }
            Ok(out)
        })
        .await?;
        Ok(rows)
    }

    /// Inspect an image.
    pub async fn image_inspect(&self, reference: &str) -> Result<images::ImageDetails> {
        let store = self.store();
        let r = reference.to_string();
        blocking(move || Ok(store.inspect(&r)?)).await
    }

    /// An image's history, newest first.
    pub async fn image_history(
        &self,
        reference: &str,
    ) -> Result<(String, Vec<images::HistoryEntry>)> {
        let store = self.store();
        let r = reference.to_string();
        blocking(move || {
            let id = store.resolve(&r)?.id.to_string();
            Ok((id, store.history(&r)?))
        })
        .await
    }

    /// Tag an image.
    pub async fn image_tag(&self, source: &str, repo: &str, tag: &str) -> Result<()> {
        let target = if tag.is_empty() {
            repo.to_string()
        } else {
            format!("{repo}:{tag}")
        };
        let store = self.store();
        let (s, t) = (source.to_string(), target.clone());
        let id = blocking(move || {
            store.tag(&s, &t)?;
            Ok(store.resolve(&t)?.id.to_string())
        })
        .await?;
        self.events.emit(
            "image",
            "tag",
            &id,
            BTreeMap::from([("name".to_string(), target)]),
        );
        Ok(())
    }

    /// Remove an image (or a tag). Returns Docker's `[{"Untagged"}, {"Deleted"}]`.
    pub async fn image_remove(
        &self,
        reference: &str,
        force: bool,
    ) -> Result<Vec<serde_json::Value>> {
        let store = self.store();
        let r = reference.to_string();
        let events = blocking(move || Ok(store.remove(&r, force)?)).await?;
        if events
            .iter()
            .any(|e| matches!(e, images::RemoveEvent::Deleted(_)))
        {
            self.prune_vm_layers().await;
        }
        let mut out = Vec::new();
        for e in events {
            match e {
                images::RemoveEvent::Untagged(t) => {
                    self.events.emit(
                        "image",
                        "untag",
                        &t,
                        BTreeMap::from([("name".to_string(), t.clone())]),
                    );
                    out.push(serde_json::json!({"Untagged": t}));
                }
                images::RemoveEvent::Deleted(d) => {
                    self.events
                        .emit("image", "delete", &d.to_string(), BTreeMap::new());
                    out.push(serde_json::json!({"Deleted": d.to_string()}));
                }
            }
        }
        Ok(out)
    }

    /// Load a `docker save` archive or an OCI layout tar from a stream;
    /// progress messages go to `progress`.
    pub async fn image_load(
        &self,
        body: mpsc::Receiver<Bytes>,
        progress: mpsc::Sender<String>,
    ) -> Result<Vec<String>> {
        let store = self.store();
        let loaded = blocking(move || {
            let mut tags_out = Vec::new();
            let ids = store.load_archive(ChanReader::new(body), &mut |p| {
                if let Progress::Loaded { id, tags } = p {
                    if tags.is_empty() {
                        let _ = progress.blocking_send(format!("Loaded image ID: {id}\n"));
                    }
                    for t in tags {
                        let _ = progress.blocking_send(format!("Loaded image: {t}\n"));
                        tags_out.push(t.clone());
                    }
                }
            })?;
            Ok((ids, tags_out))
        })
        .await?;
        for id in &loaded.0 {
            self.events
                .emit("image", "load", &id.to_string(), BTreeMap::new());
        }
        Ok(loaded.1)
    }

    /// Save images as a docker-archive tar stream.
    pub async fn image_save(&self, names: Vec<String>) -> Result<mpsc::Receiver<Bytes>> {
        if names.is_empty() {
            return Err(Error::invalid("no images to save"));
        }
        let store = self.store();
        // Resolve first so a missing image is a 404, not a broken stream.
        {
            let store = store.clone();
            let n = names.clone();
            blocking(move || {
                for r in &n {
                    store.resolve(r)?;
                }
                Ok(())
            })
            .await?;
        }
        let (tx, rx) = mpsc::channel(16);
        for n in &names {
            self.events.emit("image", "save", n, BTreeMap::new());
        }
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            if let Err(e) = store.save(&refs, SaveFormat::DockerArchive, ChanWriter::new(tx)) {
                tracing::warn!(error = %e, "image save");
            }
        });
        Ok(rx)
    }

    /// Import a root filesystem tarball as a one-layer image.
    pub async fn image_import(
        &self,
        body: mpsc::Receiver<Bytes>,
        options: images::ImportOptions,
    ) -> Result<String> {
        let store = self.store();
        let id = blocking(move || Ok(store.import(ChanReader::new(body), &options)?.to_string()))
            .await?;
        self.events.emit("image", "import", &id, BTreeMap::new());
        Ok(id)
    }

    /// Remove unused images (dangling only unless `all`).
    pub async fn image_prune(&self, all: bool) -> Result<images::PruneReport> {
        let store = self.store();
        let report = blocking(move || Ok(store.prune(all)?)).await?;
        self.prune_vm_layers().await;
        self.events.emit("image", "prune", "", BTreeMap::new());
        Ok(report)
    }

    /// Delete the microVM disk images of layers that no image has any
    /// more. A failure is logged: the files are a cache.
    async fn prune_vm_layers(&self) {
        let store = self.store();
        let dir = self.paths.vm_layers();
        let result = blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Ok(0);
            };
            let keep: std::collections::BTreeSet<String> = store
                .diff_ids_in_use()?
                .into_iter()
                .map(|d| d.to_string().replacen(':', "-", 1))
                .collect();
            let mut removed = 0;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // `sha256-<hex>.erofs`; lock files and partial builds of
                // a layer in use are left to their builder.
                let Some(key) = name.strip_suffix(".erofs") else {
                    continue;
                };
                if !keep.contains(key) && std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "microVM layer images pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning microVM layer images"),
        }
    }
}
