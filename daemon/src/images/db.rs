//! The image store's metadata in `db.redb`: images, tags, snapshots by
//! chain ID with reference counts, leases of operations in progress, and
//! holds that containers place on images.
//!
//! Every change is one redb write transaction, durable when it commits, so
//! a crash leaves either the old or the new state. This module only knows
//! the schema and record types; the store decides what to write when.

use std::path::Path;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::manifest::Descriptor;

const IMAGES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("images");
const TAGS: TableDefinition<'_, &str, &str> = TableDefinition::new("tags");
const SNAPSHOTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshots");
const LEASES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("leases");
const HOLDS: TableDefinition<'_, &str, &str> = TableDefinition::new("holds");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metadata database")]
    Redb(#[source] Box<redb::Error>),
    #[error("metadata record {key:?} is corrupt")]
    Record {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Redb(Box::new(e.into()))
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer blob as the manifest describes it.
    pub blob: Descriptor,
    pub diff_id: Digest,
    pub chain_id: Digest,
}

/// An image: its manifest, config and layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image ID: the digest of the config blob.
    pub id: Digest,
    /// The manifest blob (stored byte-exact in the content store).
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<LayerRecord>,
    /// Seconds since the epoch when the store first recorded the image.
    pub added: i64,
    /// Sum of the uncompressed layer sizes.
    pub size: u64,
    /// `name@digest` references of manifests this image was loaded from.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Indexes (multi-platform) this image's manifest was pulled through,
    /// stored byte-exact in the content store, the latest last. A push of
    /// the image sends the index back when it can.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<Descriptor>,
}

/// An unpacked layer directory shared by every image with this chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub parent: Option<Digest>,
    pub diff_id: Digest,
    /// Uncompressed tar size of the layer.
    pub size: u64,
    /// Number of images whose chain includes this snapshot.
    pub refs: u64,
}

/// An operation in progress that may have written unreferenced content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub operation: String,
    pub pid: u32,
    pub started: i64,
}

pub struct Db {
    db: redb::Database,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let db = redb::Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(IMAGES).map_err(db_err)?;
            txn.open_table(TAGS).map_err(db_err)?;
            txn.open_table(SNAPSHOTS).map_err(db_err)?;
            txn.open_table(LEASES).map_err(db_err)?;
            txn.open_table(HOLDS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Db { db })
    }

    /// Run `f` in a write transaction and commit (durably) if it succeeds.
    pub fn write<T, E: From<Error>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let out = f(&Tx { txn: &txn })?;
        txn.commit().map_err(db_err)?;
        Ok(out)
    }

    /// Run `f` against a consistent snapshot of the database.
    pub fn read<T, E: From<Error>>(&self, f: impl FnOnce(&Rx) -> Result<T, E>) -> Result<T, E> {
        let txn = self.db.begin_read().map_err(db_err)?;
        f(&Rx { txn })
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Record {
        key: key.to_string(),
        source,
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("metadata records always serialise")
}

macro_rules! readers {
    () => {
        pub fn image(&self, id: &Digest) -> Result<Option<ImageRecord>> {
            let t = self.txn.open_table(IMAGES).map_err(db_err)?;
            let key = id.to_string();
            let v = t.get(key.as_str()).map_err(db_err)?;
            v.map(|v| decode(&key, v.value())).transpose()
        }

        pub fn images(&self) -> Result<Vec<ImageRecord>> {
            let t = self.txn.open_table(IMAGES).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        }

        pub fn tag(&self, reference: &str) -> Result<Option<Digest>> {
            let t = self.txn.open_table(TAGS).map_err(db_err)?;
            let v = t.get(reference).map_err(db_err)?;
            v.map(|v| {
                v.value()
                    .parse()
                    .map_err(|e: super::digest::Error| Error::Record {
                        key: reference.to_string(),
                        source: serde::de::Error::custom(e),
                    })
            })
            .transpose()
        }

        /// Every (reference, image) pair.
        pub fn tags(&self) -> Result<Vec<(String, Digest)>> {
            let t = self.txn.open_table(TAGS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let d = v
                    .value()
                    .parse()
                    .map_err(|e: super::digest::Error| Error::Record {
                        key: k.value().to_string(),
                        source: serde::de::Error::custom(e),
                    })?;
                out.push((k.value().to_string(), d));
            }
            Ok(out)
        }

        pub fn snapshot(&self, chain: &Digest) -> Result<Option<SnapshotRecord>> {
            let t = self.txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let key = chain.to_string();
            let v = t.get(key.as_str()).map_err(db_err)?;
            v.map(|v| decode(&key, v.value())).transpose()
        }

        pub fn snapshots(&self) -> Result<Vec<(Digest, SnapshotRecord)>> {
            let t = self.txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let key = k.value();
                let d = key
                    .parse()
                    .map_err(|e: super::digest::Error| Error::Record {
                        key: key.to_string(),
                        source: serde::de::Error::custom(e),
                    })?;
                out.push((d, decode(key, v.value())?));
            }
            Ok(out)
        }

        pub fn leases(&self) -> Result<Vec<(String, Lease)>> {
            let t = self.txn.open_table(LEASES).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                out.push((k.value().to_string(), decode(k.value(), v.value())?));
            }
            Ok(out)
        }

        /// Every (holder, image) pair.
        pub fn holds(&self) -> Result<Vec<(String, Digest)>> {
            let t = self.txn.open_table(HOLDS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let d = v
                    .value()
                    .parse()
                    .map_err(|e: super::digest::Error| Error::Record {
                        key: k.value().to_string(),
                        source: serde::de::Error::custom(e),
                    })?;
                out.push((k.value().to_string(), d));
            }
            Ok(out)
        }
    };
}

/// A read transaction.
pub struct Rx {
    txn: redb::ReadTransaction,
}

impl Rx {
    readers!();
}

/// A write transaction.
pub struct Tx<'a> {
    txn: &'a redb::WriteTransaction,
}

impl Tx<'_> {
    readers!();

    pub fn put_image(&self, rec: &ImageRecord) -> Result<()> {
        let mut t = self.txn.open_table(IMAGES).map_err(db_err)?;
        t.insert(rec.id.to_string().as_str(), encode(rec).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    pub fn delete_image(&self, id: &Digest) -> Result<()> {
        let mut t = self.txn.open_table(IMAGES).map_err(db_err)?;
        t.remove(id.to_string().as_str()).map_err(db_err)?;
        Ok(())
    }

    pub fn put_tag(&self, reference: &str, id: &Digest) -> Result<()> {
        let mut t = self.txn.open_table(TAGS).map_err(db_err)?;
        t.insert(reference, id.to_string().as_str())
            .map_err(db_err)?;
        Ok(())
    }

    pub fn delete_tag(&self, reference: &str) -> Result<()> {
        let mut t = self.txn.open_table(TAGS).map_err(db_err)?;
        t.remove(reference).map_err(db_err)?;
        Ok(())
    }

    pub fn put_snapshot(&self, chain: &Digest, rec: &SnapshotRecord) -> Result<()> {
        let mut t = self.txn.open_table(SNAPSHOTS).map_err(db_err)?;
        t.insert(chain.to_string().as_str(), encode(rec).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    pub fn delete_snapshot(&self, chain: &Digest) -> Result<()> {
        let mut t = self.txn.open_table(SNAPSHOTS).map_err(db_err)?;
        t.remove(chain.to_string().as_str()).map_err(db_err)?;
        Ok(())
    }

    pub fn put_lease(&self, id: &str, lease: &Lease) -> Result<()> {
        let mut t = self.txn.open_table(LEASES).map_err(db_err)?;
        t.insert(id, encode(lease).as_slice()).map_err(db_err)?;
        Ok(())
    }

    pub fn delete_lease(&self, id: &str) -> Result<()> {
        let mut t = self.txn.open_table(LEASES).map_err(db_err)?;
        t.remove(id).map_err(db_err)?;
        Ok(())
    }

    pub fn put_hold(&self, holder: &str, id: &Digest) -> Result<()> {
        let mut t = self.txn.open_table(HOLDS).map_err(db_err)?;
        t.insert(holder, id.to_string().as_str()).map_err(db_err)?;
        Ok(())
    }

    pub fn delete_hold(&self, holder: &str) -> Result<bool> {
        let mut t = self.txn.open_table(HOLDS).map_err(db_err)?;
        Ok(t.remove(holder).map_err(db_err)?.is_some())
    }
}
