//! Where the daemon is and how to reach it.
//!
//! Owns parsing of host strings (`unix:///path`, `tcp://host:port`, a bare
//! `/path`) and the TLS settings that go with a TCP endpoint. It does not
//! decide *which* host to use (that is [`crate::config::resolve_endpoint`])
//! and does not open connections (that is [`crate::api`]).

use std::path::PathBuf;

/// The default daemon socket.
pub const DEFAULT_HOST: &str = "unix:///run/vessel/vessel.sock";

/// Endpoint errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid host {0:?}: expected unix:///path or tcp://host:port")]
    BadHost(String),
    #[error("invalid host {host:?}: bad port {port:?}")]
    BadPort { host: String, port: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// TLS settings for a TCP endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// Verify the server's certificate (against `ca` or the system roots).
    pub verify: bool,
    /// CA bundle (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
}

/// A daemon address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address, with TLS when `tls` is set.
    Tcp {
        host: String,
        port: u16,
        tls: Option<Tls>,
    },
}

impl Endpoint {
    /// Parse a host string as docker accepts it: `unix:///path`, a bare
    /// absolute path, `tcp://host[:port]` (port 2375, or 2376 with TLS),
    /// `http://` and `https://` as TCP aliases.
    pub fn parse(s: &str, tls: Option<Tls>) -> Result<Endpoint> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Ok(Endpoint::Unix(PathBuf::from("/run/vessel/vessel.sock")));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let (rest, tls) = if let Some(r) = s.strip_prefix("tcp://") {
            (r, tls)
        } else if let Some(r) = s.strip_prefix("http://") {
            (r, tls)
        } else if let Some(r) = s.strip_prefix("https://") {
            (r, Some(tls.unwrap_or_default()))
        } else {
            return Err(Error::BadHost(s.to_string()));
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Err(Error::BadHost(s.to_string()));
        }
        let default_port = if tls.is_some() { 2376 } else { 2375 };
        let (host, port) = split_host_port(rest).ok_or_else(|| Error::BadHost(s.to_string()))?;
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().map_err(|_| Error::BadPort {
                host: s.to_string(),
                port: p.to_string(),
            })?,
        };
        let host = if host.is_empty() {
            "127.0.0.1".to_string()
        } else {
            host.to_string()
        };
        Ok(Endpoint::Tcp { host, port, tls })
    }

    /// The host string, as docker prints it in messages.
    pub fn display(&self) -> String {
        match self {
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
            Endpoint::Tcp { host, port, .. } => {
                if host.contains(':') {
                    format!("tcp://[{host}]:{port}")
                } else {
                    format!("tcp://{host}:{port}")
                }
            }
        }
    }
}

/// `host:port`, `[v6]:port`, `host`.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts() {
        assert_eq!(
            Endpoint::parse("unix:///var/run/docker.sock", None).unwrap(),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://10.0.0.1", None).unwrap(),
            Endpoint::Tcp {
                host: "10.0.0.1".into(),
                port: 2375,
                tls: None
            }
        );
        let t = Endpoint::parse("tcp://[::1]:4000", Some(Tls::default())).unwrap();
        assert_eq!(t.display(), "tcp://[::1]:4000");
        assert!(Endpoint::parse("ftp://x", None).is_err());
        assert!(Endpoint::parse("tcp://x:99999", None).is_err());
    }
}
