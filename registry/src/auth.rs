//! Server-side authentication and authorization.
//!
//! Owns: htpasswd files (bcrypt only), HTTP basic credentials, the built-in
//! token service (HS256-signed JWTs with Docker's `access` claim), scope
//! strings, and the decision "may this request do that", including the
//! `WWW-Authenticate` challenge when it may not. It does not own routing:
//! the HTTP layer says which access a route needs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use crate::config::{AccessRule, AuthConfig};
use crate::digest::Digest;

/// Errors setting up authentication.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("read {path}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An htpasswd line we cannot use.
    #[error("htpasswd {path}:{line}: {what}")]
    Htpasswd {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// The token secret is too short.
    #[error("token secret {0} is shorter than 32 bytes")]
    ShortSecret(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One requested or granted access: `repository:name:pull,push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Resource type (`repository`, `registry`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Resource name (repository name, `catalog`).
    pub name: String,
    /// Actions (`pull`, `push`, `delete`, `*`).
    pub actions: Vec<String>,
}

impl Access {
    /// Access to a repository.
    pub fn repository(name: &str, actions: &[&str]) -> Access {
        Access {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(ToString::to_string).collect(),
        }
    }

    /// Access to the catalog.
    pub fn catalog() -> Access {
        Access {
            kind: "registry".into(),
            name: "catalog".into(),
            actions: vec!["*".into()],
        }
    }

    /// The scope string (`repository:name:pull,push`).
    pub fn scope(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }

    /// Parse a scope string. The name may contain colons (a host:port);
    /// the type is before the first colon and the actions after the last.
    pub fn parse_scope(s: &str) -> Option<Access> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Access {
            kind: kind.into(),
            name: name.into(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect(),
        })
    }

    fn allows(&self, other: &Access, action: &str) -> bool {
        self.kind == other.kind
            && self.name == other.name
            && self.actions.iter().any(|a| a == action || a == "*")
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials (auth disabled, or anonymous grants).
    Anonymous,
    /// An authenticated account.
    User(String),
}

impl Identity {
    /// Name for logs.
    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => "-",
            Identity::User(u) => u,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Value of the `WWW-Authenticate` header.
    pub www_authenticate: String,
    /// Credentials were given but do not cover the request.
    pub insufficient_scope: bool,
    /// Message for the error body.
    pub message: String,
}

/// Accounts from an htpasswd file.
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// sha256(user \0 password) of credentials already verified, so bcrypt
    /// runs once per credential, not once per request.
    verified: Mutex<HashMap<String, bool>>,
}

impl Htpasswd {
    /// Load a file of `user:$2y$...` lines.
    pub fn load(path: &Path) -> Result<Htpasswd> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse htpasswd text.
    pub fn parse(text: &str, origin: &str) -> Result<Htpasswd> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: &str| Error::Htpasswd {
                path: origin.to_string(),
                line: i + 1,
                what: what.to_string(),
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected user:hash"))?;
            if !(hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$")) {
                return Err(err("only bcrypt hashes are supported (htpasswd -B)"));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(Htpasswd {
            users,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `user`/`password` is a valid account.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let key = Digest::sha256_of(format!("{user}\0{password}\0{hash}").as_bytes())
            .hex()
            .to_string();
        if let Some(ok) = self
            .verified
            .lock()
            .expect("verify cache lock is not poisoned")
            .get(&key)
        {
            return *ok;
        }
        // bcrypt takes tens of milliseconds by design: on a multi-threaded
        // runtime, let other tasks move off this worker meanwhile.
        let check = || bcrypt::verify(password, hash).unwrap_or(false);
        let ok = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(check)
            }
            _ => check(),
        };
        let mut cache = self
            .verified
            .lock()
            .expect("verify cache lock is not poisoned");
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, ok);
        ok
    }
}

/// Decode `Authorization: Basic ...`.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let rest = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let raw = STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

/// The built-in token service and verifier.
pub struct TokenService {
    key: ring::hmac::Key,
    service: String,
    issuer: String,
    realm: Option<String>,
    ttl: Duration,
    rules: Vec<AccessRule>,
    users: Option<Htpasswd>,
}

/// A token issued by [`TokenService::issue`].
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The JWT.
    pub token: String,
    /// Same JWT (OAuth2 field name).
    pub access_token: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// RFC 3339 issue time.
    pub issued_at: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn repo_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(prefix) => name
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/')),
        None => pattern == name,
    }
}

impl TokenService {
    fn rule_actions(&self, who: &Identity, kind: &str, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.rules {
            let account_ok = match who {
                Identity::Anonymous => r.account == "anonymous",
                Identity::User(u) => r.account == "*" || r.account == *u,
            };
            let name_ok = if kind == "registry" {
                r.repository == "*" && name == "catalog"
            } else {
                repo_matches(&r.repository, name)
            };
            if account_ok && name_ok {
                for a in &r.actions {
                    if !out.contains(a) {
                        out.push(a.clone());
                    }
                }
            }
        }
        out
    }

    /// Authenticate the token request (optional basic credentials) and
    /// issue a token for the granted part of `scopes`. `None` means the
    /// credentials were wrong.
    pub fn issue(
        &self,
        basic: Option<(String, String)>,
        service: Option<&str>,
        scopes: &[Access],
    ) -> Option<TokenResponse> {
        let who = match basic {
            Some((u, p)) => {
                let ok = self.users.as_ref().is_some_and(|h| h.verify(&u, &p));
                if !ok {
                    return None;
                }
                Identity::User(u)
            }
            None => Identity::Anonymous,
        };
        let mut granted = Vec::new();
        for s in scopes {
            let allowed = self.rule_actions(&who, &s.kind, &s.name);
            let actions: Vec<String> = s
                .actions
                .iter()
                .filter(|a| allowed.iter().any(|x| x == *a || x == "*"))
                .cloned()
                .collect();
            if !actions.is_empty() {
                granted.push(Access {
                    kind: s.kind.clone(),
                    name: s.name.clone(),
                    actions,
                });
            }
        }
        let now = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: who.name().trim_start_matches('-').to_string(),
            aud: service.unwrap_or(&self.service).to_string(),
            exp: now + self.ttl.as_secs(),
            nbf: now.saturating_sub(10),
            iat: now,
            jti: format!("{:032x}", rand::random::<u128>()),
            access: granted,
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signing_input = format!("{header}.{payload}");
        let sig = ring::hmac::sign(&self.key, signing_input.as_bytes());
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Some(TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: self.ttl.as_secs(),
            issued_at: httpdate_rfc3339(SystemTime::now()),
        })
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        let (signing_input, sig) = token.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        ring::hmac::verify(&self.key, signing_input.as_bytes(), &sig).ok()?;
        let (header, payload) = signing_input.split_once('.')?;
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let now = now_secs();
        if claims.exp <= now
            || claims.nbf > now + 60
            || claims.aud != self.service
            || claims.iss != self.issuer
        {
            return None;
        }
        Some(claims)
    }
}

fn httpdate_rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// How requests are authenticated.
pub enum Authenticator {
    /// Everyone may do everything.
    None,
    /// HTTP basic against htpasswd; any valid account may do everything.
    Basic {
        /// Realm for the challenge.
        realm: String,
        /// Accounts.
        users: Htpasswd,
    },
    /// Bearer tokens from the token service.
    Token(Box<TokenService>),
}

impl Authenticator {
    /// Build from configuration, reading the files it names.
    pub fn from_config(cfg: &AuthConfig) -> Result<Authenticator> {
        if let Some(h) = &cfg.htpasswd {
            return Ok(Authenticator::Basic {
                realm: h.realm.clone(),
                users: Htpasswd::load(&h.path)?,
            });
        }
        if let Some(t) = &cfg.token {
            let secret = match &t.secret_file {
                Some(p) => {
                    let s = std::fs::read(p).map_err(|source| Error::Read {
                        path: p.display().to_string(),
                        source,
                    })?;
                    if s.len() < 32 {
                        return Err(Error::ShortSecret(p.display().to_string()));
                    }
                    s
                }
                None => rand::random::<[u8; 32]>().to_vec(),
            };
            let users = match &t.htpasswd {
                Some(p) => Some(Htpasswd::load(p)?),
                None => None,
            };
            return Ok(Authenticator::Token(Box::new(TokenService {
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
                service: t.service.clone(),
                issuer: t.issuer.clone(),
                realm: t.realm.clone(),
                ttl: t.expiration,
                rules: t.access.clone(),
                users,
            })));
        }
        Ok(Authenticator::None)
    }

    /// The token service, when token auth is configured.
    pub fn token_service(&self) -> Option<&TokenService> {
        match self {
            Authenticator::Token(t) => Some(t),
            _ => None,
        }
    }

    /// Decide whether a request with `authorization` (header value) may
    /// perform every `(access, action)` in `needed`. `base_url` is this
    /// server's URL as the client sees it (for the token realm).
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        needed: &[(Access, &str)],
        base_url: &str,
    ) -> std::result::Result<Identity, Challenge> {
        match self {
            Authenticator::None => Ok(Identity::Anonymous),
            Authenticator::Basic { realm, users } => {
                let challenge = |msg: &str| Challenge {
                    www_authenticate: format!("Basic realm=\"{realm}\""),
                    insufficient_scope: false,
                    message: msg.to_string(),
                };
                match authorization.and_then(parse_basic) {
                    Some((u, p)) if users.verify(&u, &p) => Ok(Identity::User(u)),
                    Some(_) => Err(challenge("invalid username or password")),
                    None => Err(challenge("authentication required")),
                }
            }
            Authenticator::Token(ts) => {
                let realm = ts
                    .realm
                    .clone()
                    .unwrap_or_else(|| format!("{base_url}/token"));
                let mut scope: Vec<String> = Vec::new();
                for (a, _) in needed {
                    let s = a.scope();
                    if !scope.contains(&s) {
                        scope.push(s);
                    }
                }
                let mut header = format!("Bearer realm=\"{realm}\",service=\"{}\"", ts.service);
                if !scope.is_empty() {
                    header = format!("{header},scope=\"{}\"", scope.join(" "));
                }
                let token = authorization.and_then(|h| {
                    h.strip_prefix("Bearer ")
                        .or_else(|| h.strip_prefix("bearer "))
                });
                let Some(token) = token else {
                    return Err(Challenge {
                        www_authenticate: header,
                        insufficient_scope: false,
                        message: "authentication required".into(),
                    });
                };
                let Some(claims) = ts.verify(token.trim()) else {
                    return Err(Challenge {
                        www_authenticate: format!("{header},error=\"invalid_token\""),
                        insufficient_scope: false,
                        message: "invalid or expired token".into(),
                    });
                };
                for (want, action) in needed {
                    if !claims.access.iter().any(|g| g.allows(want, action)) {
                        return Err(Challenge {
                            www_authenticate: format!("{header},error=\"insufficient_scope\""),
                            insufficient_scope: true,
                            message: format!("token does not grant {action} on {}", want.name),
                        });
                    }
                }
                Ok(if claims.sub.is_empty() {
                    Identity::Anonymous
                } else {
                    Identity::User(claims.sub)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(rules: Vec<AccessRule>) -> TokenService {
        TokenService {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]),
            service: "svc".into(),
            issuer: "iss".into(),
            realm: None,
            ttl: Duration::from_secs(60),
            rules,
            users: Some(
                Htpasswd::parse(
                    &format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap()),
                    "test",
                )
                .unwrap(),
            ),
        }
    }

    #[test]
    fn scopes_round_trip() {
        let a = Access::parse_scope("repository:localhost:5000/app:pull,push").unwrap();
        assert_eq!(a.name, "localhost:5000/app");
        assert_eq!(a.actions, ["pull", "push"]);
        assert_eq!(a.scope(), "repository:localhost:5000/app:pull,push");
        assert!(Access::parse_scope("nonsense").is_none());
    }

    #[test]
    fn tokens_grant_only_the_allowed_part() {
        let ts = service(vec![AccessRule {
            account: "alice".into(),
            repository: "team/*".into(),
            actions: vec!["pull".into()],
        }]);
        let want = Access::repository("team/app", &["pull", "push"]);
        let t = ts
            .issue(Some(("alice".into(), "pw".into())), None, &[want])
            .unwrap();
        let auth = Authenticator::Token(Box::new(ts));
        let hdr = format!("Bearer {}", t.token);
        let pull = [(Access::repository("team/app", &["pull"]), "pull")];
        assert_eq!(
            auth.authorize(Some(&hdr), &pull, "http://x").unwrap(),
            Identity::User("alice".into())
        );
        let push = [(Access::repository("team/app", &["push"]), "push")];
        let c = auth.authorize(Some(&hdr), &push, "http://x").unwrap_err();
        assert!(c.insufficient_scope);
        assert!(
            c.www_authenticate
                .contains("scope=\"repository:team/app:push\""),
            "{c:?}"
        );
        let other = [(Access::repository("other", &["pull"]), "pull")];
        assert!(auth.authorize(Some(&hdr), &other, "http://x").is_err());
        // Tampering breaks the signature.
        let bad = format!("Bearer {}x", t.token);
        assert!(auth.authorize(Some(&bad), &pull, "http://x").is_err());
        let Authenticator::Token(ts) = &auth else {
            unreachable!()
        };
        assert!(
            ts.issue(Some(("alice".into(), "wrong".into())), None, &[])
                .is_none()
        );
    }

    #[test]
    fn htpasswd_rejects_non_bcrypt() {
        assert!(Htpasswd::parse("bob:{SHA}abc\n", "f").is_err());
        let h = Htpasswd::parse(
            &format!("bob:{}\n", bcrypt::hash("s3cret", 4).unwrap()),
            "f",
        )
        .unwrap();
        assert!(h.verify("bob", "s3cret"));
        assert!(h.verify("bob", "s3cret"));
        assert!(!h.verify("bob", "nope"));
        assert!(!h.verify("eve", "s3cret"));
    }

    #[test]
    fn dates() {
        assert_eq!(httpdate_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            httpdate_rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
    }
}
