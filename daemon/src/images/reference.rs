//! Image references (`busybox`, `registry.local:5000/team/app:1.2`,
//! `name@sha256:...`) with Docker's normalisation: no domain means
//! `docker.io`, a single Docker Hub component gets `library/`, and a name
//! without tag or digest gets `latest`.

use std::fmt;

use super::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reference {0:?}: invalid format")]
    Invalid(String),
    #[error("reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    #[error("reference {0:?}: invalid tag")]
    Tag(String),
    #[error("reference {reference:?}: invalid digest")]
    Digest {
        reference: String,
        #[source]
        source: super::digest::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const DEFAULT_DOMAIN: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parse and normalise. A name with neither tag nor digest gets `latest`.
    pub fn parse(s: &str) -> Result<Reference> {
        let mut r = Reference::parse_name(s)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some("latest".to_string());
        }
        Ok(r)
    }

    /// Parse without adding a default tag.
    pub fn parse_name(s: &str) -> Result<Reference> {
        let invalid = || Error::Invalid(s.to_string());
        if s.is_empty() || s.len() > 4096 {
            return Err(invalid());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((a, d)) => (
                a,
                Some(d.parse::<Digest>().map_err(|source| Error::Digest {
                    reference: s.to_string(),
                    source,
                })?),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(Error::Tag(s.to_string()));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if domain.is_empty()
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(invalid());
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        for comp in path.split('/') {
            if comp.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(Error::Uppercase(s.to_string()));
            }
            let ok = !comp.is_empty()
                && comp.starts_with(|c: char| c.is_ascii_alphanumeric())
                && comp.ends_with(|c: char| c.is_ascii_alphanumeric())
                && comp.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                });
            if !ok {
                return Err(invalid());
            }
        }
        Ok(Reference {
            domain,
            path,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The name as Docker shows it: `busybox`, `team/app`, `host:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix("library/")
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.name()
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `busybox:latest` (or `busybox@sha256:...`), as in Docker's RepoTags.
    pub fn familiar(&self) -> String {
        self.render(&self.familiar_name())
    }

    fn render(&self, name: &str) -> String {
        let mut s = name.to_string();
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
}

impl fmt::Display for Reference {
    /// The fully qualified form, the key under which tags are stored.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&self.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar(), "busybox:latest");
        let r = Reference::parse("team/app:1.0").unwrap();
        assert_eq!(r.to_string(), "docker.io/team/app:1.0");
        let r = Reference::parse("localhost:5000/app").unwrap();
        assert_eq!(r.to_string(), "localhost:5000/app:latest");
        assert_eq!(r.familiar(), "localhost:5000/app:latest");
        let d = Digest::sha256_of(b"x");
        let r = Reference::parse(&format!("debian@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(&d));
        assert!(Reference::parse("Busybox").is_err());
        assert!(Reference::parse("busybox:").is_err());
        assert!(Reference::parse("a//b").is_err());
        assert!(Reference::parse("busybox:-x").is_err());
    }
}
