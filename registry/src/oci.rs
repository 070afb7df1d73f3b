//! The OCI vocabulary shared by the server and the client: media types,
//! repository-name and tag grammar, and a tolerant view of manifests.
//!
//! Owns validation of names and the parts of a manifest the registry needs
//! (references to other content, subject, artifact type). It does not own
//! storage or transport, and it never re-serialises a manifest: manifests are
//! kept byte-exact and only read here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI empty descriptor media type (artifacts without config).
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The four manifest media types, in the order clients should prefer them.
pub const MANIFEST_TYPES: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// Errors from validating names and manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A repository name outside the distribution grammar.
    #[error("repository name {0:?} is invalid")]
    Name(String),
    /// A tag outside the distribution grammar.
    #[error("tag {0:?} is invalid")]
    Tag(String),
    /// A manifest that is not valid JSON of a known shape.
    #[error("manifest is invalid")]
    Manifest(#[source] serde_json::Error),
    /// A manifest whose declared media type disagrees with the request.
    #[error("manifest media type {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch {
        /// Type stated in the manifest's own `mediaType`.
        body: String,
        /// Type from the request header.
        header: String,
    },
    /// A manifest without a usable media type.
    #[error("manifest media type {0:?} is not supported")]
    UnknownMediaType(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Whether `name` matches `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
/// and is at most 255 bytes long.
pub fn valid_repository(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `tag` matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Artifact type (referrers responses and artifact manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Alternative locations (foreign layers); never fetched by the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// A platform in an index entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`...).
    pub architecture: String,
    /// Operating system (`linux`...).
    pub os: String,
    /// OS version (Windows).
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// CPU variant (`v8`, `v7`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The parts of any of the four manifest kinds the registry and client use.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `schemaVersion`, 2 for every supported kind.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// Declared media type (optional in OCI, required in Docker's).
    #[serde(default)]
    pub media_type: Option<String>,
    /// Artifact type.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Config descriptor (image manifests).
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Layers (image manifests).
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    /// Child manifests (indexes).
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// Subject for the referrers API.
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What a manifest is, once its media type is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// Image manifest (OCI or Docker): config + layers.
    Image,
    /// Index or manifest list: child manifests.
    Index,
}

impl Manifest {
    /// Parse `bytes` and settle the media type from the body and the request's
    /// Content-Type (`header`, may be empty).
    pub fn parse(bytes: &[u8], header: &str) -> Result<(Manifest, String)> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(Error::Manifest)?;
        let header = header.split(';').next().unwrap_or("").trim();
        let media_type = match (&m.media_type, header) {
            (Some(body), h) if !h.is_empty() && body != h => {
                return Err(Error::MediaTypeMismatch {
                    body: body.clone(),
                    header: h.to_string(),
                });
            }
            (Some(body), _) => body.clone(),
            (None, h) if !h.is_empty() => h.to_string(),
            // No type anywhere: infer the OCI type from the shape.
            (None, _) if m.manifests.is_some() => OCI_INDEX.to_string(),
            (None, _) if m.config.is_some() => OCI_MANIFEST.to_string(),
            (None, _) => return Err(Error::UnknownMediaType(String::new())),
        };
        Ok((m, media_type))
    }

    /// The kind implied by `media_type`, or by the shape for unknown types.
    pub fn kind(&self, media_type: &str) -> ManifestKind {
        match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => ManifestKind::Index,
            OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
            _ if self.manifests.is_some() => ManifestKind::Index,
            _ => ManifestKind::Image,
        }
    }

    /// Blob descriptors this manifest needs present (config and layers),
    /// excluding foreign layers that carry URLs.
    pub fn blob_refs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().flatten())
            .filter(|d| d.urls.as_ref().is_none_or(Vec::is_empty))
    }

    /// Child manifest descriptors (indexes).
    pub fn manifest_refs(&self) -> impl Iterator<Item = &Descriptor> {
        self.manifests.iter().flatten()
    }

    /// The artifact type the referrers API reports: `artifactType`, or
    /// the config's media type for image manifests.
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_grammar() {
        for ok in [
            "a",
            "library/busybox",
            "a.b/c_d/e__f/g--h",
            "0",
            "x-y-z/1.2",
        ] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "a/_b", "a b", "a/../b",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
        assert!(!valid_repository(&"a".repeat(256)));
    }

    #[test]
    fn tag_grammar() {
        assert!(valid_tag("latest"));
        assert!(valid_tag("_x.Y-1"));
        assert!(!valid_tag(".hidden"));
        assert!(!valid_tag("-a"));
        assert!(!valid_tag(&"a".repeat(129)));
        assert!(!valid_tag("a/b"));
    }

    #[test]
    fn media_type_settles() {
        let body = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        let (_, mt) = Manifest::parse(body, "").unwrap();
        assert_eq!(mt, OCI_MANIFEST);
        let (_, mt) = Manifest::parse(body, DOCKER_MANIFEST).unwrap();
        assert_eq!(mt, DOCKER_MANIFEST);
        let with_type = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(matches!(
            Manifest::parse(with_type, OCI_MANIFEST),
            Err(Error::MediaTypeMismatch { .. })
        ));
    }
}
