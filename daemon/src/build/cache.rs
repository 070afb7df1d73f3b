//! The build cache: a content-based key per step mapped to the state the
//! step produced (image config and layers), in its own redb file next to
//! the image store, shared by every build of the daemon.
//!
//! The layers a cached step refers to belong to intermediate images in the
//! image store; a hit is only used when their blobs and snapshots are still
//! there, so removing images never makes the cache lie. This module stores
//! and finds entries; the executor computes the keys.
//!
//! A second table holds the layers of `COPY --link` and `ADD --link`
//! steps under a key without the parent: such a layer does not depend on
//! the layers below it, so it is found again when only they changed.

use std::path::Path;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::images::manifest::Descriptor;
use crate::images::{Digest, ImageConfig, LayerRecord};

const STEPS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("build-steps");
const LINKED: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("build-linked-layers");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("build cache database")]
    Redb(#[source] Box<redb::Error>),
    #[error("build cache entry {0} is corrupt")]
    Corrupt(String, #[source] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Redb(Box::new(e.into()))
}

/// What a step produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub config: ImageConfig,
    pub layers: Vec<LayerRecord>,
    /// The intermediate image holding the layers, when the step made one.
    #[serde(default)]
    pub image: Option<Digest>,
}

/// A layer made by a `--link` step, reusable on any parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Linked {
    pub blob: Descriptor,
    pub diff_id: Digest,
    /// The history entry's `created_by`.
    pub created_by: String,
    /// The intermediate image holding the blob.
    pub image: Option<Digest>,
}

pub struct Cache {
    db: redb::Database,
}

impl Cache {
    pub fn open(path: &Path) -> Result<Cache> {
        let db = redb::Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(STEPS).map_err(db_err)?;
        txn.open_table(LINKED).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Cache { db })
    }

    /// The intermediate images the cached steps hold.
    pub fn images(&self) -> Result<std::collections::HashSet<Digest>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(STEPS).map_err(db_err)?;
        let mut out = std::collections::HashSet::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let e: Entry = serde_json::from_slice(v.value())
                .map_err(|e| Error::Corrupt(k.value().to_string(), e))?;
            out.extend(e.image);
        }
        let t = txn.open_table(LINKED).map_err(db_err)?;
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let e: Linked = serde_json::from_slice(v.value())
                .map_err(|e| Error::Corrupt(k.value().to_string(), e))?;
            out.extend(e.image);
        }
        Ok(out)
    }

    /// The `--link` layer recorded under `key`.
    pub fn get_linked(&self, key: &str) -> Result<Option<Linked>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(LINKED).map_err(db_err)?;
        let Some(v) = t.get(key).map_err(db_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| Error::Corrupt(key.to_string(), e))
    }

    /// Record a `--link` layer.
    pub fn put_linked(&self, key: &str, e: &Linked) -> Result<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(LINKED).map_err(db_err)?;
            let v = serde_json::to_vec(e).expect("cache entries always serialise");
            t.insert(key, v.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(STEPS).map_err(db_err)?;
        let Some(v) = t.get(key).map_err(db_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| Error::Corrupt(key.to_string(), e))
    }

    /// Record entries (one transaction for a batch: one fsync).
    pub fn put_all(&self, entries: &[(String, Entry)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(STEPS).map_err(db_err)?;
            for (k, e) in entries {
                let v = serde_json::to_vec(e).expect("cache entries always serialise");
                t.insert(k.as_str(), v.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Remove every entry; returns how many there were and the
    /// intermediate images they held.
    pub fn clear(&self) -> Result<(usize, Vec<Digest>)> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut out = Vec::new();
        let mut count = 0;
        {
            let mut t = txn.open_table(STEPS).map_err(db_err)?;
            for item in t.iter().map_err(db_err)? {
                let (_, v) = item.map_err(db_err)?;
                count += 1;
                if let Ok(e) = serde_json::from_slice::<Entry>(v.value()) {
                    out.extend(e.image);
                }
            }
            t.retain(|_, _| false).map_err(db_err)?;
            let mut t = txn.open_table(LINKED).map_err(db_err)?;
            for item in t.iter().map_err(db_err)? {
                let (_, v) = item.map_err(db_err)?;
                count += 1;
                if let Ok(e) = serde_json::from_slice::<Linked>(v.value()) {
                    out.extend(e.image);
                }
            }
            t.retain(|_, _| false).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok((count, out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_survive_reopen_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cache.redb");
        let e = Entry {
            config: ImageConfig::default(),
            layers: Vec::new(),
            image: Some(Digest::sha256_of(b"image")),
        };
        let linked = Linked {
            blob: Descriptor {
                media_type: crate::images::manifest::DOCKER_LAYER_GZIP.into(),
                digest: Digest::sha256_of(b"blob"),
                size: 4,
                urls: None,
                annotations: None,
                platform: None,
            },
            diff_id: Digest::sha256_of(b"tar"),
            created_by: "COPY --link a /".into(),
            image: Some(Digest::sha256_of(b"linked")),
        };
        {
            let c = Cache::open(&p).unwrap();
            c.put_all(&[("k1".into(), e.clone())]).unwrap();
            c.put_linked("l1", &linked).unwrap();
        }
        let c = Cache::open(&p).unwrap();
        assert!(c.get("k1").unwrap().is_some());
        assert!(c.get("k2").unwrap().is_none());
        assert_eq!(c.get_linked("l1").unwrap().unwrap().diff_id, linked.diff_id);
        assert_eq!(c.images().unwrap().len(), 2);
        let (n, images) = c.clear().unwrap();
        assert_eq!((n, images.len()), (2, 2));
        assert!(c.get("k1").unwrap().is_none());
        assert!(c.get_linked("l1").unwrap().is_none());
    }
}
