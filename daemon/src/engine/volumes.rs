//! Named volumes (the `local` driver): a directory per volume under
//! `volumes/<name>/_data` with its metadata beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::container::write_atomic;
use super::error::{Error, Result};

/// A volume in the Docker API's shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub scope: String,
    /// Made for a container (`-v /path`, image VOLUME), removed with it by
    /// `rm -v`.
    #[serde(default, skip_serializing)]
    pub anonymous: bool,
}

/// The volume store.
pub struct Volumes {
    dir: PathBuf,
}

/// Docker's rule for volume names.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Volumes {
    pub fn open(dir: &Path) -> Result<Volumes> {
        std::fs::create_dir_all(dir)?;
        Ok(Volumes {
            dir: dir.to_path_buf(),
        })
    }

    fn meta(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("volume.json")
    }

    /// Create a volume, or return the existing one of that name.
    pub fn create(
        &self,
        name: Option<&str>,
        labels: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<(Volume, bool)> {
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                if !valid_name(n) {
                    return Err(Error::invalid(format!(
                        "create {n}: \"{n}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed"
                    )));
                }
                n.to_string()
            }
            None => super::container::new_id(),
        };
        if let Ok(existing) = self.get(&name) {
            return Ok((existing, false));
        }
        if !options.is_empty() {
            return Err(Error::invalid(
                "the local volume driver here takes no options",
            ));
        }
        let data = self.dir.join(&name).join("_data");
        std::fs::create_dir_all(&data)?;
        let v = Volume {
            mountpoint: data.display().to_string(),
            name: name.clone(),
            driver: "local".into(),
            created_at: vessel_runtime::state::now_rfc3339(),
            labels,
            options,
            scope: "local".into(),
            anonymous,
        };
        let json = serde_json::to_vec_pretty(&v).map_err(|e| Error::internal(e.to_string()))?;
        write_atomic(&self.meta(&name), &json)?;
        Ok((v, true))
    }

    pub fn get(&self, name: &str) -> Result<Volume> {
        if !valid_name(name) {
            return Err(Error::not_found(format!("get {name}: no such volume")));
        }
        let data = std::fs::read(self.meta(name))
            .map_err(|_| Error::not_found(format!("get {name}: no such volume")))?;
        serde_json::from_slice(&data).map_err(|e| Error::internal(format!("volume {name}: {e}")))
    }

    pub fn list(&self) -> Vec<Volume> {
        let mut out: Vec<Volume> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| self.get(n).ok()))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Remove a volume (the caller checks it is not in use).
    pub fn remove(&self, name: &str) -> Result<()> {
        self.get(name)?;
        std::fs::remove_dir_all(self.dir.join(name))?;
        Ok(())
    }

    /// Disk use of a volume in bytes.
    pub fn size(&self, name: &str) -> u64 {
        dir_size(&self.dir.join(name).join("_data"))
    }
}

/// Total size of regular files below a directory (not following symlinks).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let vols = Volumes::open(dir.path()).unwrap();
        let (v, created) = vols
            .create(Some("data"), BTreeMap::new(), BTreeMap::new(), false)
            .unwrap();
        assert!(created && Path::new(&v.mountpoint).is_dir());
        let (_, again) = vols
            .create(Some("data"), BTreeMap::new(), BTreeMap::new(), false)
            .unwrap();
        assert!(!again);
        assert!(
            vols.create(Some("../x"), BTreeMap::new(), BTreeMap::new(), false)
                .is_err()
        );
        assert_eq!(vols.list().len(), 1);
        vols.remove("data").unwrap();
        assert!(vols.get("data").is_err());
    }
}
