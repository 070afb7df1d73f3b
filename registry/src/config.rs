//! The registry's configuration: the TOML file format and its defaults.
//!
//! Owns parsing and validating configuration. It does not open files named
//! in the configuration (certificates, htpasswd): the server does that at
//! start so errors name the file that failed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Errors loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener and protocol options.
    pub server: ServerConfig,
    /// Where content lives.
    pub storage: StorageConfig,
    /// Authentication; none when absent.
    pub auth: AuthConfig,
    /// Garbage collection.
    pub gc: GcConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
}

/// Listener and protocol options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Refuse every write with 405.
    pub read_only: bool,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// TLS; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// Log one line per request at info level.
    pub access_log: bool,
    /// Largest page of tags or repositories returned at once; longer
    /// lists continue through a `Link` header.
    pub max_page_size: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 5000)),
            read_only: false,
            max_manifest_bytes: 4 << 20,
            tls: None,
            access_log: true,
            max_page_size: 10_000,
        }
    }
}

/// TLS certificate and key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub certificate: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Storage options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Driver name; only `filesystem` exists.
    pub driver: String,
    /// Root directory of the filesystem driver.
    pub root: PathBuf,
    /// fsync before publishing objects.
    pub fsync: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            driver: "filesystem".to_string(),
            root: PathBuf::from("/var/lib/vessel-registry"),
            fsync: true,
        }
    }
}

/// Authentication options. At most one of `htpasswd` and `token`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HTTP basic authentication against an htpasswd file (bcrypt).
    pub htpasswd: Option<HtpasswdConfig>,
    /// Bearer tokens from the built-in token endpoint.
    pub token: Option<TokenConfig>,
}

/// Basic authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HtpasswdConfig {
    /// Realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// htpasswd file with bcrypt entries (`htpasswd -B`).
    pub path: PathBuf,
}

fn default_realm() -> String {
    "vessel-registry".to_string()
}

/// Token authentication with the built-in token endpoint at `/token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// URL clients fetch tokens from, as it should appear in
    /// `WWW-Authenticate` (e.g. `https://registry.example:5000/token`).
    /// When absent, derived from the request's Host header.
    #[serde(default)]
    pub realm: Option<String>,
    /// Service name (token audience).
    #[serde(default = "default_realm")]
    pub service: String,
    /// Issuer claim.
    #[serde(default = "default_realm")]
    pub issuer: String,
    /// File holding the HMAC-SHA256 signing secret (at least 32 bytes).
    /// When absent, a random secret is made at start (tokens then do not
    /// survive a restart).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// htpasswd file the token endpoint checks credentials against.
    #[serde(default)]
    pub htpasswd: Option<PathBuf>,
    /// Token lifetime.
    #[serde(default = "default_token_ttl", with = "duration")]
    pub expiration: Duration,
    /// Grants; a request gets the intersection of what it asks and what
    /// the first matching rules allow.
    #[serde(default)]
    pub access: Vec<AccessRule>,
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(300)
}

/// One grant rule of the token endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Account name, `*` for any authenticated account, or `anonymous`.
    pub account: String,
    /// Repository pattern: exact name, `prefix/*`, or `*`.
    pub repository: String,
    /// Allowed actions: `pull`, `push`, `delete`, `*`.
    pub actions: Vec<String>,
}

/// Garbage collection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run GC in the server this often (0 disables).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Blobs written or referenced more recently than this are kept even
    /// when unreferenced (protects pushes in flight).
    #[serde(with = "duration")]
    pub grace: Duration,
    /// Uploads idle longer than this are removed.
    #[serde(with = "duration")]
    pub upload_grace: Duration,
    /// Also delete manifests that no tag points at (and nothing references).
    pub delete_untagged: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: Duration::ZERO,
            grace: Duration::from_secs(3600),
            upload_grace: Duration::from_secs(24 * 3600),
            delete_untagged: false,
        }
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` on the main listener.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

/// Durations written as `90s`, `5m`, `1h`, `2d`, `250ms` or plain seconds.
pub mod duration {
    use std::time::Duration;

    use serde::Deserialize;

    /// Parse a duration string.
    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let secs = match unit {
            "ms" => return Some(Duration::from_millis(n)),
            "" | "s" => n,
            "m" => n.checked_mul(60)?,
            "h" => n.checked_mul(3600)?,
            "d" => n.checked_mul(86400)?,
            _ => return None,
        };
        Some(Duration::from_secs(secs))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => {
                parse(&t).ok_or_else(|| serde::de::Error::custom(format!("invalid duration {t:?}")))
            }
        }
    }
}

impl Config {
    /// Load and validate a TOML file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| Error::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check cross-field rules.
    pub fn validate(&self) -> Result<()> {
        if self.storage.driver != "filesystem" {
            return Err(Error::Invalid(format!(
                "storage.driver {:?} is unknown (only \"filesystem\")",
                self.storage.driver
            )));
        }
        if self.auth.htpasswd.is_some() && self.auth.token.is_some() {
            return Err(Error::Invalid(
                "auth.htpasswd and auth.token are mutually exclusive".into(),
            ));
        }
        if self.server.max_page_size == 0 {
            return Err(Error::Invalid(
                "server.max_page_size must be positive".into(),
            ));
        }
        if self.server.max_manifest_bytes == 0 {
            return Err(Error::Invalid(
                "server.max_manifest_bytes must be positive".into(),
            ));
        }
        if let Some(t) = &self.auth.token {
            for r in &t.access {
                for a in &r.actions {
                    if !["pull", "push", "delete", "*"].contains(&a.as_str()) {
                        return Err(Error::Invalid(format!(
                            "auth.token.access: unknown action {a:?}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let cfg: Config = toml::from_str(
            r#"
            [server]
            addr = "127.0.0.1:5001"
            read_only = true
            [server.tls]
            certificate = "/c.pem"
            key = "/k.pem"
            [storage]
            root = "/srv/reg"
            fsync = false
            [auth.token]
            service = "reg"
            expiration = "10m"
            [[auth.token.access]]
            account = "alice"
            repository = "team/*"
            actions = ["pull", "push"]
            [gc]
            interval = "1h"
            grace = 600
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.server.addr.port(), 5001);
        assert_eq!(cfg.gc.interval, Duration::from_secs(3600));
        assert_eq!(cfg.gc.grace, Duration::from_secs(600));
        assert_eq!(cfg.auth.token.unwrap().expiration, Duration::from_secs(600));
    }

    #[test]
    fn rejects_unknown_fields_and_conflicts() {
        assert!(toml::from_str::<Config>("[server]\nport = 1\n").is_err());
        let both: Config =
            toml::from_str("[auth.htpasswd]\npath = \"/h\"\n[auth.token]\nservice = \"s\"\n")
                .unwrap();
        assert!(both.validate().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration::parse("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(duration::parse("5x"), None);
    }
}
