//! Client-side authentication: `WWW-Authenticate` challenges, credentials
//! from docker's config.json (inline `auth`, `identitytoken`, credential
//! helpers), and a cache of bearer tokens per registry and scope.
//!
//! Owns what to send in `Authorization`; it does not send requests itself
//! (the transport asks it for headers and tells it about challenges).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::reference::{DOCKER_HUB, DOCKER_HUB_AUTH_KEY};

/// Errors loading credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json could not be read.
    #[error("read docker config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// config.json is not valid.
    #[error("docker config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} for {host}: {message}")]
    Helper {
        /// Helper name.
        helper: String,
        /// Registry.
        host: String,
        /// What it said.
        message: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (or personal access token).
    Basic {
        /// Account.
        username: String,
        /// Secret.
        password: String,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`).
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// `Authorization: Basic ...` value, when these are basic credentials.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{username}:{password}"))
            )),
            Credentials::IdentityToken(_) => None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Where credentials come from.
#[derive(Debug, Default)]
pub struct CredentialStore {
    explicit: HashMap<String, Credentials>,
    config: DockerConfig,
}

/// Normalize a registry name the way config.json keys are matched.
fn config_key(host: &str) -> String {
    if host == DOCKER_HUB {
        return DOCKER_HUB_AUTH_KEY.to_string();
    }
    host.to_string()
}

fn strip_scheme(k: &str) -> &str {
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    k.split('/').next().unwrap_or(k)
}

impl CredentialStore {
    /// An empty store (anonymous everywhere).
    pub fn new() -> CredentialStore {
        CredentialStore::default()
    }

    /// Load docker's config.json (`$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` when `path` is `None`). A missing file is an
    /// empty store.
    pub fn from_docker_config(path: Option<&Path>) -> Result<CredentialStore> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("DOCKER_CONFIG") {
                Some(d) => PathBuf::from(d).join("config.json"),
                None => match std::env::var_os("HOME") {
                    Some(h) => PathBuf::from(h).join(".docker/config.json"),
                    None => return Ok(CredentialStore::default()),
                },
            },
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(CredentialStore::default());
            }
            Err(source) => return Err(Error::Read { path, source }),
        };
        let config: DockerConfig =
            serde_json::from_slice(&text).map_err(|source| Error::Parse { path, source })?;
        Ok(CredentialStore {
            explicit: HashMap::new(),
            config,
        })
    }

    /// Set credentials for `host` (they win over config.json).
    pub fn insert(&mut self, host: &str, creds: Credentials) {
        self.explicit.insert(host.to_string(), creds);
    }

    /// Credentials for `host` (a normalized registry name such as
    /// `docker.io` or `localhost:5000`), if any.
    pub fn get(&self, host: &str) -> Result<Option<Credentials>> {
        if let Some(c) = self.explicit.get(host) {
            return Ok(Some(c.clone()));
        }
        let key = config_key(host);
        let helper = self
            .config
            .cred_helpers
            .get(&key)
            .or_else(|| self.config.cred_helpers.get(host))
            .or(self.config.creds_store.as_ref());
        if let Some(helper) = helper {
            if let Some(c) = run_helper(helper, &key)? {
                return Ok(Some(c));
            }
        }
        let entry = self
            .config
            .auths
            .get(&key)
            .or_else(|| {
                self.config
                    .auths
                    .iter()
                    .find(|(k, _)| strip_scheme(k) == host)
                    .map(|(_, v)| v)
            })
            .or_else(|| {
                (host == DOCKER_HUB)
                    .then(|| {
                        self.config
                            .auths
                            .iter()
                            .find(|(k, _)| strip_scheme(k) == "index.docker.io")
                            .map(|(_, v)| v)
                    })
                    .flatten()
            });
        let Some(e) = entry else { return Ok(None) };
        if let Some(t) = &e.identitytoken {
            if !t.is_empty() {
                return Ok(Some(Credentials::IdentityToken(t.clone())));
            }
        }
        if let Some(a) = &e.auth {
            if let Ok(raw) = STANDARD.decode(a.trim()) {
                if let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':') {
                    return Ok(Some(Credentials::Basic {
                        username: u.to_string(),
                        password: p.to_string(),
                    }));
                }
            }
        }
        if let (Some(u), Some(p)) = (&e.username, &e.password) {
            return Ok(Some(Credentials::Basic {
                username: u.clone(),
                password: p.clone(),
            }));
        }
        Ok(None)
    }
}

#[derive(Deserialize)]
struct HelperOut {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

fn run_helper(helper: &str, key: &str) -> Result<Option<Credentials>> {
    use std::io::Write as _;
    let err = |message: String| Error::Helper {
        helper: helper.to_string(),
        host: key.to_string(),
        message,
    };
    let mut child = match std::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(key.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        return Err(err(msg));
    }
    let h: HelperOut = serde_json::from_slice(&out.stdout).map_err(|e| err(e.to_string()))?;
    Ok(Some(if h.username == "<token>" {
        Credentials::IdentityToken(h.secret)
    } else {
        Credentials::Basic {
            username: h.username,
            password: h.secret,
        }
    }))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer` (lowercased).
    pub scheme: String,
    /// Parameters (`realm`, `service`, `scope`, `error`), keys lowercased.
    pub params: HashMap<String, String>,
}

/// Parse a `WWW-Authenticate` header value (one challenge).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let key = rest[ks..i].trim().to_ascii_lowercase();
        i += 1;
        let val = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = String::new();
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                v.push(b[i] as char);
                i += 1;
            }
            i += 1;
            v
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            rest[vs..i].trim().to_string()
        };
        params.insert(key, val);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    expires: Instant,
}

/// Bearer tokens per (registry, scope), refreshed when they expire.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
    /// The last challenge seen per registry (so later requests can fetch a
    /// token before being refused).
    challenges: Mutex<HashMap<String, Challenge>>,
}

impl TokenCache {
    /// A cached, unexpired token.
    pub fn get(&self, host: &str, scope: &str) -> Option<String> {
        let map = self
            .tokens
            .lock()
            .expect("token cache lock is not poisoned");
        map.get(&(host.to_string(), scope.to_string()))
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.token.clone())
    }

    /// Remember a token for `ttl` (minus a safety margin).
    pub fn put(&self, host: &str, scope: &str, token: String, ttl: Duration) {
        let ttl = ttl
            .saturating_sub(Duration::from_secs(5))
            .max(Duration::from_secs(1));
        self.tokens
            .lock()
            .expect("token cache lock is not poisoned")
            .insert(
                (host.to_string(), scope.to_string()),
                CachedToken {
                    token,
                    expires: Instant::now() + ttl,
                },
            );
    }

    /// Forget a token that the registry refused.
    pub fn invalidate(&self, host: &str, scope: &str) {
        self.tokens
            .lock()
            .expect("token cache lock is not poisoned")
            .remove(&(host.to_string(), scope.to_string()));
    }

    /// Record the registry's challenge.
    pub fn set_challenge(&self, host: &str, c: Challenge) {
        self.challenges
            .lock()
            .expect("challenge lock is not poisoned")
            .insert(host.to_string(), c);
    }

    /// The registry's last challenge.
    pub fn challenge(&self, host: &str) -> Option<Challenge> {
        self.challenges
            .lock()
            .expect("challenge lock is not poisoned")
            .get(host)
            .cloned()
    }
}

/// The token endpoint's answer.
#[derive(Debug, Deserialize)]
pub struct TokenAnswer {
    /// Docker's field.
    #[serde(default)]
    pub token: Option<String>,
    /// OAuth2's field.
    #[serde(default)]
    pub access_token: Option<String>,
    /// Lifetime in seconds (default 60).
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenAnswer {
    /// The token, whichever field carries it.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let ttl = Duration::from_secs(self.expires_in.unwrap_or(60).max(1));
        self.token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
            .map(|t| (t, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["service"], "registry.example");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = parse_challenge(r#"Basic realm="x y""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "x y");
        let c = parse_challenge("Bearer realm=unquoted, error=insufficient_scope").unwrap();
        assert_eq!(c.params["realm"], "unquoted");
        assert_eq!(c.params["error"], "insufficient_scope");
    }

    #[test]
    fn docker_config_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            serde_json::json!({
                "auths": {
                    "https://index.docker.io/v1/": { "auth": STANDARD.encode("hubuser:hubpass") },
                    "localhost:5000": { "auth": STANDARD.encode("alice:pw:with:colons") },
                    "https://ghcr.io": { "identitytoken": "refresh" }
                }
            })
            .to_string(),
        )
        .unwrap();
        let s = CredentialStore::from_docker_config(Some(&p)).unwrap();
        assert_eq!(
            s.get("docker.io").unwrap(),
            Some(Credentials::Basic {
                username: "hubuser".into(),
                password: "hubpass".into()
            })
        );
        assert_eq!(
            s.get("localhost:5000").unwrap(),
            Some(Credentials::Basic {
                username: "alice".into(),
                password: "pw:with:colons".into()
            })
        );
        assert_eq!(
            s.get("ghcr.io").unwrap(),
            Some(Credentials::IdentityToken("refresh".into()))
        );
        assert_eq!(s.get("quay.io").unwrap(), None);
        assert!(CredentialStore::from_docker_config(Some(&dir.path().join("none.json"))).is_ok());
    }

    #[test]
    fn token_cache_expires() {
        let c = TokenCache::default();
        c.put("h", "s", "t".into(), Duration::from_secs(60));
        assert_eq!(c.get("h", "s").as_deref(), Some("t"));
        assert_eq!(c.get("h", "other"), None);
        c.invalidate("h", "s");
        assert_eq!(c.get("h", "s"), None);
    }
}
