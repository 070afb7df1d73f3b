//! Image manifests, indexes and configs: OCI image manifest and index,
//! Docker schema2 manifest and manifest list, platform selection, and the
//! image config with its history and rootfs diff IDs.
//!
//! Manifests are stored byte-exact and addressed by the digest of their raw
//! bytes; these types only read them (and write the ones we create). Unknown
//! fields are kept where we re-serialise (configs we modify) and ignored
//! elsewhere. Nothing here touches the disk.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: invalid JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("manifest: unsupported media type {0:?}")]
    MediaType(String),
    #[error("manifest: schema version {0} is not 2")]
    SchemaVersion(u32),
    #[error("index has no manifest for platform {0}")]
    NoPlatform(String),
    #[error("layer media type {0:?} is not supported")]
    LayerType(String),
    #[error("config: rootfs has {diff_ids} diff IDs but the manifest lists {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
    #[error("config: rootfs type {0:?} is not \"layers\"")]
    RootfsType(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn json<T: for<'de> Deserialize<'de>>(what: &'static str, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|source| Error::Json { what, source })
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A platform as in OCI index entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in OCI terms.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.to_string(),
            os: std::env::consts::OS.to_string(),
            variant: variant.map(str::to_string),
            ..Platform::default()
        }
    }

    /// Whether an image for `self` runs on `want`: same OS and architecture,
    /// and the variant matches when both name one (arm64's default is v8).
    pub fn satisfies(&self, want: &Platform) -> bool {
        if self.os != want.os || self.architecture != want.architecture {
            return false;
        }
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        match (norm(self), norm(want)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An OCI image manifest or Docker schema2 manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An OCI image index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What a manifest-like document turned out to be.
#[derive(Debug, Clone)]
pub enum Parsed {
    Manifest(Box<Manifest>),
    Index(Index),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<serde_json::Value>,
    manifests: Option<serde_json::Value>,
}

/// Parse a manifest or index. `declared` is the media type from the
/// descriptor that pointed at it, when there was one.
pub fn parse(data: &[u8], declared: Option<&str>) -> Result<Parsed> {
    let probe: Probe = json("manifest", data)?;
    if let Some(v) = probe.schema_version {
        if v != 2 {
            return Err(Error::SchemaVersion(v));
        }
    }
    let mt = probe.media_type.as_deref().or(declared);
    let is_index = match mt {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(Error::MediaType(other.to_string())),
        None => probe.manifests.is_some() && probe.config.is_none(),
    };
    if is_index {
        Ok(Parsed::Index(json("index", data)?))
    } else {
        let m: Manifest = json("manifest", data)?;
        for l in &m.layers {
            layer_kind(&l.media_type)?;
        }
        Ok(Parsed::Manifest(Box::new(m)))
    }
}

/// Pick the manifest for `want` from an index.
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor> {
    index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST))
        .find(|d| d.platform.as_ref().is_none_or(|p| p.satisfies(want)))
        .ok_or_else(|| Error::NoPlatform(want.to_string()))
}

/// Whether a layer media type is something we unpack; `Ok(false)` for
/// non-distributable layers we refuse.
pub fn layer_kind(media_type: &str) -> Result<()> {
    match media_type {
        OCI_LAYER
        | OCI_LAYER_GZIP
        | OCI_LAYER_ZSTD
        | DOCKER_LAYER
        | DOCKER_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | DOCKER_FOREIGN_LAYER => Ok(()),
        other => Err(Error::LayerType(other.to_string())),
    }
}

/// The runtime part of an image config (`config` in the JSON), with the
/// field names Docker and OCI use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// An image config (OCI image config / Docker image JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ImageConfig {
    pub fn parse(data: &[u8]) -> Result<ImageConfig> {
        let c: ImageConfig = json("config", data)?;
        if c.rootfs.kind != "layers" {
            return Err(Error::RootfsType(c.rootfs.kind));
        }
        Ok(c)
    }

    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            ..Platform::default()
        }
    }
}

/// Serialise a document we create (compact, as registries expect).
pub fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("our manifest types always serialise")
}

/// The current time as RFC 3339 in UTC (for `created` fields).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    rfc3339(secs)
}

/// Format seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn selects_platform() {
        let d = |arch: &str, variant: Option<&str>, n: u8| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::sha256_of(&[n]),
            size: 1,
            urls: None,
            annotations: None,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
                ..Platform::default()
            }),
        };
        let idx = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                d("arm", Some("v6"), 1),
                d("arm", Some("v7"), 2),
                d("amd64", None, 3),
                d("arm64", None, 4),
            ],
            annotations: None,
        };
        let want = |arch: &str, v: Option<&str>| Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: v.map(Into::into),
            ..Platform::default()
        };
        assert_eq!(
            select_platform(&idx, &want("arm", Some("v7")))
                .unwrap()
                .digest,
            Digest::sha256_of(&[2])
        );
        assert_eq!(
            select_platform(&idx, &want("amd64", None)).unwrap().digest,
            Digest::sha256_of(&[3])
        );
        assert_eq!(
            select_platform(&idx, &want("arm64", Some("v8")))
                .unwrap()
                .digest,
            Digest::sha256_of(&[4])
        );
        assert!(select_platform(&idx, &want("s390x", None)).is_err());
    }

    #[test]
    fn parses_manifest_kinds() {
        let cfg = Digest::sha256_of(b"c");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{cfg}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse(m.as_bytes(), None).unwrap(),
            Parsed::Manifest(_)
        ));
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse(i.as_bytes(), None).unwrap(),
            Parsed::Index(_)
        ));
        assert!(parse(br#"{"schemaVersion":1}"#, None).is_err());
    }

    #[test]
    fn config_keeps_unknown_fields() {
        let raw = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Cmd":["sh"],"Healthcheck":{"Test":["NONE"]}},"docker_version":"x"}"#;
        let c = ImageConfig::parse(raw).unwrap();
        let again: serde_json::Value = serde_json::from_slice(&to_bytes(&c)).unwrap();
        assert_eq!(again["docker_version"], "x");
        assert_eq!(again["config"]["Healthcheck"]["Test"][0], "NONE");
    }
}
