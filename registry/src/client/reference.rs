//! Image references (`[host[:port]/]path[:tag][@digest]`) and Docker Hub
//! normalization.
//!
//! Owns parsing and the rules Docker applies: no host means `docker.io`,
//! single-component Hub names live under `library/`, no tag and no digest
//! means `latest`, and `docker.io`/`index.docker.io` are served from
//! `registry-1.docker.io`. It does not resolve anything over the network.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::oci;

/// The registry Docker Hub names resolve to.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API is served.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The key Docker Hub credentials use in docker's config.json.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// Errors parsing a reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Empty or with forbidden characters.
    #[error("reference {0:?} is invalid")]
    Invalid(String),
    /// Uppercase in the repository path.
    #[error("reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    /// Bad repository path.
    #[error("reference {0:?}: repository name {1:?} is invalid")]
    Name(String, String),
    /// Bad tag.
    #[error("reference {0:?}: tag {1:?} is invalid")]
    Tag(String, String),
    /// Bad digest.
    #[error("reference {0:?}: digest is invalid")]
    Digest(String, #[source] crate::digest::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A fully normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (with port), normalized (`docker.io` for Hub).
    pub registry: String,
    /// Repository path (`library/busybox`).
    pub repository: String,
    /// Tag, when given or defaulted.
    pub tag: Option<String>,
    /// Digest, when given.
    pub digest: Option<Digest>,
}

fn looks_like_host(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

impl Reference {
    /// Parse and normalize a reference the way `docker pull` does.
    pub fn parse(s: &str) -> Result<Reference> {
        if s.is_empty() || s.len() > 4096 || s.chars().any(char::is_whitespace) {
            return Err(Error::Invalid(s.to_string()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|e| Error::Digest(s.to_string(), e))?,
                ),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !oci::valid_tag(t) {
                return Err(Error::Tag(s.to_string(), t.to_string()));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if looks_like_host(first) => (first.to_string(), path.to_string()),
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_host(&registry) {
            return Err(Error::Invalid(s.to_string()));
        }
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(Error::Uppercase(s.to_string()));
        }
        if !oci::valid_repository(&repository) {
            return Err(Error::Name(s.to_string(), repository));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Host to connect to (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to put after `/manifests/`: the digest if known, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The short form Docker prints (`busybox:latest`, `ghcr.io/a/b:1`).
    pub fn familiar(&self) -> String {
        let mut s = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }

    /// Same repository, other tag, no digest.
    #[must_use]
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// Same repository, pinned to a digest.
    #[must_use]
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Reference> {
        Reference::parse(s)
    }
}

/// Whether `h` is `name[:port]` or `[ipv6][:port]`.
fn valid_host(h: &str) -> bool {
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) => {
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, tail.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match h.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(h), None),
        }
    };
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok
}

/// Whether a registry is insecure by default (loopback), as in Docker.
pub fn is_loopback_registry(host: &str) -> bool {
    let h = host_without_port(host);
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || h.ends_with(".localhost")
}

/// The host part of `host[:port]` (IPv6 in brackets kept without them).
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_normalization() {
        let r = p("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(p("user/app:1").repository, "user/app");
        assert_eq!(p("docker.io/busybox:1.36").repository, "library/busybox");
        assert_eq!(p("index.docker.io/library/busybox").registry, "docker.io");
    }

    #[test]
    fn other_registries() {
        let r = p("localhost:5000/a/b:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "a/b")
        );
        let r = p(
            "ghcr.io/owner/img@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        assert_eq!(r.tag, None);
        assert!(r.digest.is_some());
        assert_eq!(
            r.manifest_reference(),
            r.digest.as_ref().unwrap().to_string()
        );
        let r = p("localhost/app");
        assert_eq!(r.registry, "localhost");
        let r = p("[::1]:5000/app:x");
        assert_eq!(r.registry, "[::1]:5000");
        assert!(is_loopback_registry(&r.registry));
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(!is_loopback_registry("registry.example:5000"));
    }

    #[test]
    fn rejects_bad_references() {
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("Busybox").is_err());
        assert!(Reference::parse("a b").is_err());
        assert!(Reference::parse("busybox:bad/tag").is_err());
        assert!(Reference::parse("busybox@sha256:short").is_err());
        assert!(Reference::parse("host:5000/").is_err());
    }
}
