//! Pull, push and login as the engine offers them: registry credentials
//! from Docker's `X-Registry-Auth` and `/auth` shapes, a registry client per
//! request, the image store's pull and push run off the async threads, and
//! their progress turned into Docker's JSON progress messages (the docker
//! CLI draws its progress bars from them). Errors keep Docker's wording
//! where clients and people match on it.
//!
//! The transfers themselves live in `images::distribution`; HTTP framing
//! lives in the API layer.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use vessel_registry::client::{
    self, Client, ClientConfig, CredentialStore, Credentials, PlatformSpec, ProgressEvent,
};

use super::Engine;
use super::error::{Error, Kind, Result, chain};
use crate::images::distribution::{self as dist, Event};

/// Registry settings of the daemon.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host[:port]` of registries reached over plain HTTP (or TLS without
    /// verification); loopback registries always are, as in Docker.
    pub insecure: Vec<String>,
    /// Address of the registry the daemon serves itself (`--registry`),
    /// as bound (port 0 resolved), for `GET /info`.
    pub embedded: Option<std::net::SocketAddr>,
}

/// Credentials as the docker CLI sends them (`X-Registry-Auth`, `/auth`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AuthConfig {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// base64 of `user:password`.
    #[serde(default)]
    pub auth: String,
    #[serde(default, rename = "serveraddress")]
    pub server_address: String,
    #[serde(default, rename = "identitytoken")]
    pub identity_token: String,
}

/// Decode a docker CLI header: base64url (or standard base64) of JSON,
/// padding optional. Empty means absent.
fn decode_header<T: serde::de::DeserializeOwned>(v: &str, name: &str) -> Result<Option<T>> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let trimmed = v.trim_end_matches('=');
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|_| Error::invalid(format!("{name} is not valid base64")))?;
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|e| Error::invalid(format!("{name} is not valid JSON: {e}")))
}

impl AuthConfig {
    /// Decode an `X-Registry-Auth` header (base64url JSON, padding
    /// optional). Empty or `{}` means anonymous.
    pub fn from_header(v: &str) -> Result<Option<AuthConfig>> {
        decode_header(v, "X-Registry-Auth")
    }

    /// Decode an `X-Registry-Config` header (base64url JSON: registry
    /// server address to credentials, what the docker CLI sends with a
    /// build) and pick the entry for `registry` (a normalized host, as in
    /// a parsed reference).
    pub fn from_config_header(v: &str, registry: &str) -> Result<Option<AuthConfig>> {
        let Some(all): Option<BTreeMap<String, AuthConfig>> =
            decode_header(v, "X-Registry-Config")?
        else {
            return Ok(None);
        };
        let host = |server: &str| -> String {
            let s = server
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let s = s.split('/').next().unwrap_or_default();
            match s {
                "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
                other => other.to_string(),
            }
        };
        let want = host(registry);
        Ok(all
            .into_iter()
            .find(|(k, _)| host(k) == want)
            .map(|(_, a)| a))
    }

    fn credentials(&self) -> Option<Credentials> {
        if !self.identity_token.is_empty() {
            return Some(Credentials::IdentityToken(self.identity_token.clone()));
        }
        if !self.username.is_empty() {
            return Some(Credentials::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            });
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some(Credentials::Basic {
            username: u.to_string(),
            password: p.to_string(),
        })
    }
}

/// A pull request.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// What the client named (`busybox`, `127.0.0.1:5000/x/y:1`, `a@sha256:..`).
    pub reference: String,
    /// `os/arch[/variant]`; the host's when empty.
    pub platform: String,
    pub auth: Option<AuthConfig>,
}

/// The host part of a `serveraddress` (`https://index.docker.io/v1/` ->
/// `docker.io`, `http://h:5000` -> `h:5000`).
fn registry_host(address: &str) -> String {
    let a = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    let host = a.split('/').next().unwrap_or(a);
    match host {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

fn short(d: &str) -> String {
    let hex = d.split_once(':').map_or(d, |(_, h)| h);
    hex.chars().take(12).collect()
}

/// Docker's size units (kB, MB, GB: powers of 1000).
fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}{}", units[i])
            .trim_end_matches(units[i])
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[i]
    }
}

/// The text progress bar Docker puts in `progress`.
fn bar(current: u64, total: u64) -> String {
    const WIDTH: u64 = 50;
    if total == 0 {
        return human(current);
    }
    let filled = (current.min(total) * WIDTH / total) as usize;
    let mut s = String::from("[");
    if filled > 0 {
        s.push_str(&"=".repeat(filled - 1));
        s.push('>');
    }
    s.push_str(&" ".repeat(WIDTH as usize - filled.max(1) + usize::from(filled == 0)));
    s.truncate(WIDTH as usize + 1);
    s.push(']');
    format!("{s} {}/{}", human(current), human(total))
}

fn status(id: &str, status: &str) -> Value {
    json!({"status": status, "progressDetail": {}, "id": id})
}

fn progress_msg(id: &str, what: &str, current: u64, total: u64) -> Value {
    json!({
        "status": what,
        "progressDetail": {"current": current, "total": total},
        "progress": bar(current, total),
        "id": id,
    })
}

/// Translates store events into Docker messages.
struct Translator {
    tx: mpsc::UnboundedSender<Value>,
    push: bool,
    /// The repository path printed in "Pulling from".
    repository: String,
    tag: String,
    /// Layer digests seen (pull: announced by "Waiting").
    layers: Mutex<HashSet<String>>,
}

impl Translator {
    fn send(&self, v: Value) {
        let _ = self.tx.send(v);
    }

    fn event(&self, e: Event) {
        match e {
            Event::Layers(ls) => {
                for d in &ls {
                    self.send(status(&short(d), "Preparing"));
                }
                for d in &ls {
                    self.send(status(&short(d), "Waiting"));
                }
            }
            Event::Extracting { digest, size } => {
                self.send(progress_msg(&short(&digest), "Extracting", size, size));
            }
            Event::Extracted { digest } => self.send(status(&short(&digest), "Pull complete")),
            Event::Notice(text) => self.send(json!({"status": text})),
            Event::Client(ev) => self.client_event(ev),
        }
    }

    fn client_event(&self, ev: ProgressEvent) {
        match ev {
            ProgressEvent::Resolving { .. } | ProgressEvent::ManifestPushed { .. } => {}
            ProgressEvent::Resolved { .. } => {
                if !self.push {
                    self.send(json!({"status": format!("Pulling from {}", self.repository), "id": self.tag}));
                }
            }
            ProgressEvent::Waiting { digest } => {
                let d = digest.to_string();
                self.layers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(d.clone());
                self.send(status(&short(&d), "Pulling fs layer"));
            }
            ProgressEvent::AlreadyExists { digest } => {
                let what = if self.push {
                    "Layer already exists"
                } else {
                    "Already exists"
                };
                self.send(status(&short(&digest.to_string()), what));
            }
            ProgressEvent::Progress {
                digest,
                current,
                total,
                upload,
            } => {
                let d = digest.to_string();
                if !upload
                    && !self
                        .layers
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .contains(&d)
                {
                    return; // the config blob
                }
                let what = if upload { "Pushing" } else { "Downloading" };
                self.send(progress_msg(&short(&d), what, current, total));
            }
            ProgressEvent::Retrying {
                digest, attempt, ..
            } => {
                self.send(status(
                    &short(&digest.to_string()),
                    &format!("Retrying (attempt {attempt})"),
                ));
            }
            ProgressEvent::DownloadComplete { digest } => {
                let d = digest.to_string();
                if self
                    .layers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains(&d)
                {
                    self.send(status(&short(&d), "Download complete"));
                }
            }
            ProgressEvent::Mounted { digest, from } => {
                self.send(status(
                    &short(&digest.to_string()),
                    &format!("Mounted from {from}"),
                ));
            }
            ProgressEvent::Pushed { digest } => {
                self.send(status(&short(&digest.to_string()), "Pushed"));
            }
        }
    }
}

impl Engine {
    fn registry_client(&self, r: &str, auth: Option<&AuthConfig>) -> Result<Client> {
        let mut creds = CredentialStore::new();
        if let Some(c) = auth.and_then(AuthConfig::credentials) {
            creds.insert(r, c);
        }
        let cfg = ClientConfig {
            insecure_registries: self.registry.insecure.clone(),
            ..ClientConfig::default()
        };
        Client::new(cfg, creds).map_err(|e| Error::internal(chain(&e)))
    }

    /// Pull an image. Progress messages go to `tx`; nothing is sent before
    /// the reference resolved, so an early error can still be an HTTP
    /// status.
    pub async fn image_pull(
        &self,
        req: PullRequest,
        tx: mpsc::UnboundedSender<Value>,
    ) -> Result<()> {
        let r = client::Reference::parse(&req.reference)
            .map_err(|e| Error::invalid(format!("invalid reference format: {}", chain(&e))))?;
        let platform = if req.platform.is_empty() {
            PlatformSpec::host()
        } else {
            PlatformSpec::parse(&req.platform).ok_or_else(|| {
                Error::invalid(format!(
                    "invalid platform {:?}: use os/arch[/variant]",
                    req.platform
                ))
            })?
        };
        let client = self.registry_client(&r.registry, req.auth.as_ref())?;
        let tag = r
            .tag
            .clone()
            .or_else(|| r.digest.as_ref().map(ToString::to_string))
            .unwrap_or_default();
        let translator = Translator {
            tx: tx.clone(),
            push: false,
            repository: r.repository.clone(),
            tag,
            layers: Mutex::new(HashSet::new()),
        };
        let store = self.images.clone();
        let rt = tokio::runtime::Handle::current();
        let (r2, c2) = (r.clone(), client.clone());
        let res = tokio::task::spawn_blocking(move || {
            store.pull(&rt, &c2, &r2, &platform, &|e| translator.event(e))
        })
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))?;
        let pulled = match res {
            Ok(p) => p,
            Err(e) => return Err(self.pull_error(&client, &r, e).await),
        };
        let _ = tx.send(json!({"status": format!("Digest: {}", pulled.digest)}));
        let what = if pulled.up_to_date {
            "Image is up to date for"
        } else {
            "Downloaded newer image for"
        };
        let _ = tx.send(json!({"status": format!("Status: {what} {}", r.familiar())}));
        let name = r.familiar();
        self.events.emit(
            "image",
            "pull",
            &name,
            BTreeMap::from([("name".to_string(), name.clone())]),
        );
        Ok(())
    }

    /// Docker's wording for pull failures.
    async fn pull_error(&self, client: &Client, r: &client::Reference, e: dist::Error) -> Error {
        let name = r.familiar();
        let repo = {
            let s = name.split('@').next().unwrap_or(&name);
            match (s.rfind(':'), s.rfind('/')) {
                (Some(c), Some(sl)) if c > sl => &s[..c],
                (Some(c), None) => &s[..c],
                _ => s,
            }
            .to_string()
        };
        match &e {
            dist::Error::Registry(client::Error::NotFound(_)) => {
                // A missing tag in an existing repository, or no repository.
                if client.list_tags(r).await.is_ok() {
                    Error::not_found(format!(
                        "manifest for {name} not found: manifest unknown: manifest unknown"
                    ))
                } else {
                    Error::not_found(format!(
                        "pull access denied for {repo}, repository does not exist or may require 'docker login'"
                    ))
                }
            }
            dist::Error::Registry(client::Error::Unauthorized { message, .. }) => {
                Error::not_found(format!(
                    "pull access denied for {repo}, repository does not exist or may require 'docker login': denied: {message}"
                ))
            }
            dist::Error::Registry(client::Error::NoMatchingPlatform { platform, .. }) => {
                Error::not_found(format!(
                    "no matching manifest for {platform} in the manifest list entries"
                ))
            }
            dist::Error::Registry(client::Error::Reference(_)) => {
                Error::invalid(format!("invalid reference format: {}", chain(&e)))
            }
            _ => Error::internal(chain(&e)),
        }
    }

    /// Push `name:tag` (every tag of `name` when `tag` is empty).
    pub async fn image_push(
        &self,
        name: &str,
        tag: &str,
        auth: Option<AuthConfig>,
        tx: mpsc::UnboundedSender<Value>,
    ) -> Result<()> {
        let base = client::Reference::parse(name)
            .map_err(|e| Error::invalid(format!("invalid reference format: {}", chain(&e))))?;
        let familiar_name = {
            let f = base.with_tag("x").familiar();
            f.trim_end_matches(":x").to_string()
        };
        let tags: Vec<String> = if tag.is_empty() {
            let mut t: Vec<String> = self
                .image_list()
                .await?
                .into_iter()
                .flat_map(|row| row.summary.repo_tags)
                .filter_map(|rt| {
                    rt.strip_prefix(&format!("{familiar_name}:"))
                        .map(str::to_string)
                })
                .collect();
            t.sort();
            t
        } else {
            vec![tag.to_string()]
        };
        for t in &tags {
            let store = self.images.clone();
            let local = format!("{familiar_name}:{t}");
            let l2 = local.clone();
            if super::blocking(move || Ok(store.resolve(&l2)?))
                .await
                .is_err()
            {
                return Err(Error::not_found(format!(
                    "An image does not exist locally with the tag: {familiar_name}"
                )));
            }
        }
        if tags.is_empty() {
            return Err(Error::not_found(format!(
                "An image does not exist locally with the tag: {familiar_name}"
            )));
        }
        let client = self.registry_client(&base.registry, auth.as_ref())?;
        let _ =
            tx.send(json!({"status": format!("The push refers to repository [{familiar_name}]")}));
        for t in tags {
            let target = base.with_tag(&t);
            let local = format!("{familiar_name}:{t}");
            let translator = Translator {
                tx: tx.clone(),
                push: true,
                repository: base.repository.clone(),
                tag: t.clone(),
                layers: Mutex::new(HashSet::new()),
            };
            let store = self.images.clone();
            let rt = tokio::runtime::Handle::current();
            let (c2, tg, l2) = (client.clone(), target.clone(), local.clone());
            let pushed = tokio::task::spawn_blocking(move || {
                store.push(&rt, &c2, &l2, &tg, &|e| translator.event(e))
            })
            .await
            .map_err(|e| Error::internal(format!("task failed: {e}")))?
            .map_err(|e| match &e {
                dist::Error::Registry(client::Error::Unauthorized { message, .. }) => {
                    Error::new(Kind::Unauthorized, format!("unauthorized: {message}"))
                }
                _ => Error::internal(chain(&e)),
            })?;
            let _ = tx.send(
                json!({"status": format!("{t}: digest: {} size: {}", pushed.digest, pushed.size)}),
            );
            let _ = tx.send(json!({
                "progressDetail": {},
                "aux": {"Tag": t, "Digest": pushed.digest.to_string(), "Size": pushed.size},
            }));
            self.events.emit(
                "image",
                "push",
                &local,
                BTreeMap::from([("name".to_string(), local.clone())]),
            );
        }
        Ok(())
    }

    /// Check credentials against a registry (`POST /auth`).
    pub async fn registry_login(&self, auth: AuthConfig) -> Result<()> {
        let host = registry_host(&auth.server_address);
        let client = self.registry_client(&host, Some(&auth))?;
        match client.login(&host).await {
            Ok(()) => Ok(()),
            Err(client::Error::Unauthorized { .. }) => {
                let scheme = if client::reference::is_loopback_registry(&host)
                    || self.registry.insecure.contains(&host)
                {
                    "http"
                } else {
                    "https"
                };
                let api = if host == "docker.io" {
                    "registry-1.docker.io"
                } else {
                    &host
                };
                Err(Error::new(
                    Kind::Unauthorized,
                    format!(
                        "login attempt to {scheme}://{api}/v2/ failed with status: 401 Unauthorized"
                    ),
                ))
            }
            Err(e) => Err(Error::internal(chain(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_header_decodes() {
        let raw = r#"{"username":"u","password":"p?>","serveraddress":"127.0.0.1:5000"}"#;
        let enc = base64::engine::general_purpose::URL_SAFE.encode(raw);
        let a = AuthConfig::from_header(&enc).unwrap().unwrap();
        assert_eq!(a.username, "u");
        assert!(
            matches!(a.credentials(), Some(Credentials::Basic { password, .. }) if password == "p?>")
        );
        assert!(
            AuthConfig::from_header("e30=")
                .unwrap()
                .unwrap()
                .credentials()
                .is_none()
        );
        assert!(AuthConfig::from_header("").unwrap().is_none());
        assert!(AuthConfig::from_header("!!").is_err());
    }

    #[test]
    fn registry_config_picks_the_registry() {
        let raw = r#"{"https://index.docker.io/v1/":{"username":"hub"},"127.0.0.1:5000":{"username":"local"}}"#;
        let enc = base64::engine::general_purpose::URL_SAFE.encode(raw);
        let pick = |r: &str| {
            AuthConfig::from_config_header(&enc, r)
                .unwrap()
                .map(|a| a.username)
        };
        assert_eq!(pick("docker.io").as_deref(), Some("hub"));
        assert_eq!(pick("127.0.0.1:5000").as_deref(), Some("local"));
        assert_eq!(pick("127.0.0.1:5001"), None);
        assert!(
            AuthConfig::from_config_header("", "docker.io")
                .unwrap()
                .is_none()
        );
        assert!(AuthConfig::from_config_header("!!", "docker.io").is_err());
    }

    #[test]
    fn hosts_and_bars() {
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(human(1_500_000), "1.5MB");
        assert_eq!(human(999), "999B");
        let b = bar(50, 100);
        assert!(b.starts_with("[========================>"), "{b}");
        assert!(b.ends_with("] 50B/100B"), "{b}");
        assert_eq!(bar(100, 100).matches('=').count(), 49);
    }
}
