//! Docker's client configuration, shared with the docker CLI: the
//! `config.json` file (credentials, credential helpers, the current
//! context, extra HTTP headers) and the context store under
//! `~/.docker/contexts`, plus the rules that choose the daemon endpoint.
//!
//! Unknown keys in `config.json` are kept as they are when the file is
//! rewritten, so `vessel login` never loses settings the docker CLI wrote.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::Digest as _;

use crate::endpoint::{self, DEFAULT_HOST, Endpoint, Tls};

/// The registry key docker uses for Docker Hub.
pub const DEFAULT_REGISTRY: &str = "https://index.docker.io/v1/";

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("context {0:?} does not exist")]
    NoContext(String),
    #[error("context {0:?} has no docker endpoint")]
    NoContextEndpoint(String),
    #[error("credential helper docker-credential-{helper}: {message}")]
    Helper { helper: String, message: String },
    #[error("invalid auth entry for {0}")]
    BadAuth(String),
    #[error(transparent)]
    Endpoint(#[from] endpoint::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The docker configuration directory: `--config`, `$DOCKER_CONFIG`, or
/// `~/.docker`.
pub fn config_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    home_dir().join(".docker")
}

/// `$HOME`, or `/root` when unset.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// Registry credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub identity_token: String,
    pub server: String,
}

impl Credentials {
    /// The AuthConfig JSON the API takes (`/auth`, `X-Registry-Auth`).
    pub fn to_auth_config(&self) -> Value {
        let mut m = Map::new();
        if !self.username.is_empty() {
            m.insert("username".into(), json!(self.username));
        }
        if !self.password.is_empty() {
            m.insert("password".into(), json!(self.password));
        }
        if !self.identity_token.is_empty() {
            m.insert("identitytoken".into(), json!(self.identity_token));
        }
        m.insert("serveraddress".into(), json!(self.server));
        Value::Object(m)
    }
}

/// `config.json`, kept as JSON so unknown keys survive a rewrite.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    path: PathBuf,
    data: Map<String, Value>,
}

impl ConfigFile {
    /// Load `DIR/config.json` (an absent file is an empty config).
    pub fn load(dir: &Path) -> Result<ConfigFile> {
        let path = dir.join("config.json");
        let data = match std::fs::read(&path) {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(b) => match serde_json::from_slice::<Value>(&b) {
                Ok(Value::Object(m)) => m,
                Ok(_) => Map::new(),
                Err(source) => return Err(Error::Json { path, source }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        Ok(ConfigFile { path, data })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write the file atomically (temp file, fsync, rename), mode 0600.
    pub fn save(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let tmp = dir.join(format!(".config.json.{}", std::process::id()));
        let mut text =
            serde_json::to_string_pretty(&Value::Object(self.data.clone())).map_err(|source| {
                Error::Json {
                    path: self.path.clone(),
                    source,
                }
            })?;
        // docker indents with tabs; match it so diffs stay small.
        text = retab(&text);
        {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode_0600()
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            f.write_all(text.as_bytes())
                .map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("sync", &tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io_err("rename into place", &self.path))
    }

    /// `currentContext`.
    pub fn current_context(&self) -> Option<String> {
        self.data
            .get("currentContext")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Set (or clear, for "default") `currentContext`.
    pub fn set_current_context(&mut self, name: &str) {
        if name == "default" || name.is_empty() {
            self.data.remove("currentContext");
        } else {
            self.data.insert("currentContext".into(), json!(name));
        }
    }

    /// `HttpHeaders`.
    pub fn http_headers(&self) -> BTreeMap<String, String> {
        self.data
            .get("HttpHeaders")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `psFormat`, `imagesFormat`, ... (a default `--format` per command).
    pub fn format_for(&self, key: &str) -> Option<String> {
        self.data
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// `detachKeys`.
    pub fn detach_keys(&self) -> Option<String> {
        self.format_for("detachKeys")
    }

    /// The credential helper for a registry, if any.
    pub fn helper_for(&self, server: &str) -> Option<String> {
        let host = registry_host(server);
        if let Some(h) = self
            .data
            .get("credHelpers")
            .and_then(Value::as_object)
            .and_then(|m| m.get(&host).or_else(|| m.get(server)))
            .and_then(Value::as_str)
        {
            return Some(h.to_string());
        }
        self.data
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    fn auths(&self) -> Option<&Map<String, Value>> {
        self.data.get("auths").and_then(Value::as_object)
    }

    fn auths_mut(&mut self) -> &mut Map<String, Value> {
        let entry = self
            .data
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        entry
            .as_object_mut()
            .expect("auths was just made an object")
    }

    /// Registries with an entry in `auths` or in `credHelpers`.
    pub fn auth_servers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .auths()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(h) = self.data.get("credHelpers").and_then(Value::as_object) {
            for k in h.keys() {
                if !out.contains(k) {
                    out.push(k.clone());
                }
            }
        }
        out
    }

    /// Credentials for a registry (from its helper or from `auths`).
    pub fn credentials(&self, server: &str) -> Result<Option<Credentials>> {
        if let Some(helper) = self.helper_for(server) {
            return helper_get(&helper, server);
        }
        let Some(auths) = self.auths() else {
            return Ok(None);
        };
        let host = registry_host(server);
        let entry = auths.get(server).or_else(|| {
            auths
                .iter()
                .find(|(k, _)| registry_host(k) == host)
                .map(|(_, v)| v)
        });
        let Some(entry) = entry else { return Ok(None) };
        let mut c = Credentials {
            server: server.to_string(),
            ..Credentials::default()
        };
        if let Some(a) = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| Error::BadAuth(server.to_string()))?;
            let text = String::from_utf8(raw).map_err(|_| Error::BadAuth(server.to_string()))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| Error::BadAuth(server.to_string()))?;
            c.username = u.to_string();
            c.password = p.to_string();
        }
        if let Some(t) = entry.get("identitytoken").and_then(Value::as_str) {
            c.identity_token = t.to_string();
        }
        if c.username.is_empty() && c.identity_token.is_empty() {
            return Ok(None);
        }
        Ok(Some(c))
    }

    /// Store credentials (through the helper when one is configured).
    pub fn store_credentials(&mut self, c: &Credentials) -> Result<()> {
        if let Some(helper) = self.helper_for(&c.server) {
            helper_store(&helper, c)?;
            // docker keeps an empty entry so `docker info` lists the registry.
            self.auths_mut().insert(c.server.clone(), json!({}));
            return Ok(());
        }
        let mut entry = Map::new();
        if c.identity_token.is_empty() {
            let raw = format!("{}:{}", c.username, c.password);
            entry.insert(
                "auth".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(raw)),
            );
        } else {
            entry.insert(
                "auth".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(format!("{}:", c.username))),
            );
            entry.insert("identitytoken".into(), json!(c.identity_token));
        }
        self.auths_mut()
            .insert(c.server.clone(), Value::Object(entry));
        Ok(())
    }

    /// Remove credentials; returns whether any were stored.
    pub fn erase_credentials(&mut self, server: &str) -> Result<bool> {
        let mut found = false;
        if let Some(helper) = self.helper_for(server) {
            found = helper_erase(&helper, server)?;
        }
        let host = registry_host(server);
        let keys: Vec<String> = self
            .auths()
            .map(|a| {
                a.keys()
                    .filter(|k| k.as_str() == server || registry_host(k) == host)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for k in keys {
            self.auths_mut().remove(&k);
            found = true;
        }
        Ok(found)
    }
}

trait OpenOptionsExt0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsExt0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Re-indent serde_json's two-space output with tabs.
fn retab(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.lines() {
        let spaces = line.len() - line.trim_start_matches(' ').len();
        out.push_str(&"\t".repeat(spaces / 2));
        out.push_str(&line[spaces..]);
        out.push('\n');
    }
    out.pop();
    out
}

/// The host part of a registry address (`https://index.docker.io/v1/` ->
/// `index.docker.io`).
pub fn registry_host(server: &str) -> String {
    let s = server
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    s.split('/').next().unwrap_or(s).to_string()
}

/// The registry an image reference lives in, as the key used in
/// `config.json` (`DEFAULT_REGISTRY` for Docker Hub).
pub fn registry_of_image(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            if first == "docker.io" || first == "index.docker.io" || first == "registry-1.docker.io"
            {
                DEFAULT_REGISTRY.to_string()
            } else {
                first.to_string()
            }
        }
        _ => DEFAULT_REGISTRY.to_string(),
    }
}

/// The server address a user types for `login` (`docker.io` and empty mean
/// Docker Hub).
pub fn normalize_login_server(s: &str) -> String {
    let host = registry_host(s);
    if s.is_empty()
        || matches!(
            host.as_str(),
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        )
    {
        DEFAULT_REGISTRY.to_string()
    } else {
        host
    }
}

fn helper_run(helper: &str, verb: &str, input: &[u8]) -> Result<(bool, Vec<u8>)> {
    let prog = format!("docker-credential-{helper}");
    let mut child = Command::new(&prog)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Helper {
            helper: helper.to_string(),
            message: format!("cannot run: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().map_err(|e| Error::Helper {
        helper: helper.to_string(),
        message: e.to_string(),
    })?;
    let mut text = out.stdout;
    if !out.status.success() && text.is_empty() {
        text = out.stderr;
    }
    Ok((out.status.success(), text))
}

fn helper_get(helper: &str, server: &str) -> Result<Option<Credentials>> {
    let (ok, out) = helper_run(helper, "get", server.as_bytes())?;
    if !ok {
        let msg = String::from_utf8_lossy(&out).trim().to_string();
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        return Err(Error::Helper {
            helper: helper.to_string(),
            message: msg,
        });
    }
    let v: Value = serde_json::from_slice(&out).map_err(|e| Error::Helper {
        helper: helper.to_string(),
        message: format!("bad answer: {e}"),
    })?;
    let user = v.get("Username").and_then(Value::as_str).unwrap_or("");
    let secret = v
        .get("Secret")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut c = Credentials {
        server: server.to_string(),
        ..Credentials::default()
    };
    if user == "<token>" {
        c.identity_token = secret;
    } else {
        c.username = user.to_string();
        c.password = secret;
    }
    Ok(Some(c))
}

fn helper_store(helper: &str, c: &Credentials) -> Result<()> {
    let (user, secret) = if c.identity_token.is_empty() {
        (c.username.as_str(), c.password.as_str())
    } else {
        ("<token>", c.identity_token.as_str())
    };
    let input = json!({"ServerURL": c.server, "Username": user, "Secret": secret});
    let (ok, out) = helper_run(helper, "store", input.to_string().as_bytes())?;
    if ok {
        Ok(())
    } else {
        Err(Error::Helper {
            helper: helper.to_string(),
            message: String::from_utf8_lossy(&out).trim().to_string(),
        })
    }
}

fn helper_erase(helper: &str, server: &str) -> Result<bool> {
    let (ok, out) = helper_run(helper, "erase", server.as_bytes())?;
    if ok {
        return Ok(true);
    }
    let msg = String::from_utf8_lossy(&out).trim().to_string();
    if msg.contains("not found") {
        Ok(false)
    } else {
        Err(Error::Helper {
            helper: helper.to_string(),
            message: msg,
        })
    }
}

/// A context from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub name: String,
    pub description: String,
    pub host: String,
    pub skip_tls_verify: bool,
    /// The directory with `ca.pem`, `cert.pem`, `key.pem`, when present.
    pub tls_dir: Option<PathBuf>,
}

/// The directory name docker uses for a context: hex SHA-256 of its name.
pub fn context_dir_name(name: &str) -> String {
    hex::encode(sha2::Sha256::digest(name.as_bytes()))
}

/// Load a named context from `CONFIG_DIR/contexts`.
pub fn load_context(config_dir: &Path, name: &str) -> Result<Context> {
    let id = context_dir_name(name);
    let meta = config_dir.join("contexts/meta").join(&id).join("meta.json");
    let data = match std::fs::read(&meta) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoContext(name.to_string()));
        }
        Err(e) => return Err(io_err("read", &meta)(e)),
    };
    parse_context(config_dir, &meta, &data, &id)
}

fn parse_context(config_dir: &Path, meta: &Path, data: &[u8], id: &str) -> Result<Context> {
    let v: Value = serde_json::from_slice(data).map_err(|source| Error::Json {
        path: meta.to_path_buf(),
        source,
    })?;
    let name = v
        .get("Name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ep = v
        .get("Endpoints")
        .and_then(|e| e.get("docker"))
        .ok_or_else(|| Error::NoContextEndpoint(name.clone()))?;
    let tls_dir = config_dir.join("contexts/tls").join(id).join("docker");
    Ok(Context {
        description: v
            .get("Metadata")
            .and_then(|m| m.get("Description"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        host: ep
            .get("Host")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        skip_tls_verify: ep
            .get("SkipTLSVerify")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        tls_dir: tls_dir.is_dir().then_some(tls_dir),
        name,
    })
}

/// Every context in the store, sorted by name.
pub fn list_contexts(config_dir: &Path) -> Result<Vec<Context>> {
    let dir = config_dir.join("contexts/meta");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("read directory", &dir)(e)),
    };
    for entry in entries.flatten() {
        let meta = entry.path().join("meta.json");
        if let Ok(data) = std::fs::read(&meta) {
            let id = entry.file_name().to_string_lossy().into_owned();
            if let Ok(c) = parse_context(config_dir, &meta, &data, &id) {
                out.push(c);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Create a context in the store, as `docker context create NAME --docker
/// host=...` does.
pub fn create_context(config_dir: &Path, name: &str, description: &str, host: &str) -> Result<()> {
    let dir = config_dir
        .join("contexts/meta")
        .join(context_dir_name(name));
    std::fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
    let meta = json!({
        "Name": name,
        "Metadata": {"Description": description},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": false}},
    });
    let path = dir.join("meta.json");
    std::fs::write(&path, meta.to_string()).map_err(io_err("write", &path))
}

/// Remove a context from the store.
pub fn remove_context(config_dir: &Path, name: &str) -> Result<()> {
    let id = context_dir_name(name);
    let meta = config_dir.join("contexts/meta").join(&id);
    if !meta.exists() {
        return Err(Error::NoContext(name.to_string()));
    }
    std::fs::remove_dir_all(&meta).map_err(io_err("remove", &meta))?;
    let tls = config_dir.join("contexts/tls").join(&id);
    if tls.exists() {
        std::fs::remove_dir_all(&tls).map_err(io_err("remove", &tls))?;
    }
    Ok(())
}

/// Connection flags from the command line.
#[derive(Clone, Debug, Default)]
pub struct HostFlags {
    pub hosts: Vec<String>,
    pub context: Option<String>,
    pub tls: bool,
    pub tlsverify: bool,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
}

/// Which context is in use: `--context`, `$DOCKER_CONTEXT`, or
/// `currentContext`; "default" when none (or when a host is given).
pub fn current_context_name(flags: &HostFlags, cfg: &ConfigFile) -> String {
    if let Some(c) = &flags.context {
        return c.clone();
    }
    if !flags.hosts.is_empty() || env_host().is_some() {
        return "default".to_string();
    }
    if let Some(c) = std::env::var("DOCKER_CONTEXT")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return c;
    }
    cfg.current_context()
        .unwrap_or_else(|| "default".to_string())
}

/// `$VESSEL_HOST`, else `$DOCKER_HOST`.
pub fn env_host() -> Option<String> {
    ["VESSEL_HOST", "DOCKER_HOST"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|s| !s.is_empty()))
}

fn env_flag(k: &str) -> bool {
    std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The endpoint to use, by docker's precedence: `-H`, `--context`,
/// `$VESSEL_HOST`/`$DOCKER_HOST`, `$DOCKER_CONTEXT`, `currentContext`, the
/// default socket.
pub fn resolve_endpoint(
    flags: &HostFlags,
    cfg: &ConfigFile,
    config_dir: &Path,
) -> Result<Endpoint> {
    let cert_dir = std::env::var_os("DOCKER_CERT_PATH")
        .filter(|p| !p.is_empty())
        .map_or_else(|| config_dir.to_path_buf(), PathBuf::from);
    let verify = flags.tlsverify || env_flag("DOCKER_TLS_VERIFY");
    let use_tls = verify || flags.tls;
    let pick = |flag: &Option<PathBuf>, file: &str| -> Option<PathBuf> {
        flag.clone().or_else(|| {
            let p = cert_dir.join(file);
            p.exists().then_some(p)
        })
    };
    let tls_from_flags = || {
        use_tls.then(|| Tls {
            verify,
            ca: pick(&flags.tlscacert, "ca.pem"),
            cert: pick(&flags.tlscert, "cert.pem"),
            key: pick(&flags.tlskey, "key.pem"),
        })
    };
    if let Some(h) = flags.hosts.last() {
        return Ok(Endpoint::parse(h, tls_from_flags())?);
    }
    let ctx = current_context_name(flags, cfg);
    if ctx == "default" {
        let host = env_host().unwrap_or_else(|| DEFAULT_HOST.to_string());
        return Ok(Endpoint::parse(&host, tls_from_flags())?);
    }
    let c = load_context(config_dir, &ctx)?;
    let tls = c.tls_dir.as_ref().map(|d| Tls {
        verify: !c.skip_tls_verify,
        ca: Some(d.join("ca.pem")).filter(|p| p.exists()),
        cert: Some(d.join("cert.pem")).filter(|p| p.exists()),
        key: Some(d.join("key.pem")).filter(|p| p.exists()),
    });
    let host = if c.host.is_empty() {
        DEFAULT_HOST.to_string()
    } else {
        c.host.clone()
    };
    Ok(Endpoint::parse(&host, tls)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_of_image_follows_docker() {
        assert_eq!(registry_of_image("busybox"), DEFAULT_REGISTRY);
        assert_eq!(registry_of_image("library/busybox:1"), DEFAULT_REGISTRY);
        assert_eq!(registry_of_image("localhost/x"), "localhost");
        assert_eq!(registry_of_image("127.0.0.1:5000/x/y:z"), "127.0.0.1:5000");
        assert_eq!(registry_of_image("docker.io/library/x"), DEFAULT_REGISTRY);
    }

    #[test]
    fn credentials_round_trip_and_keep_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"proxies":{"default":{}}}"#,
        )
        .unwrap();
        let mut cfg = ConfigFile::load(dir.path()).unwrap();
        let c = Credentials {
            username: "u".into(),
            password: "p:w".into(),
            server: "127.0.0.1:5000".into(),
            ..Credentials::default()
        };
        cfg.store_credentials(&c).unwrap();
        cfg.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(text.contains("\"proxies\""));
        assert!(text.contains("dTpwOnc="), "{text}");
        let cfg = ConfigFile::load(dir.path()).unwrap();
        assert_eq!(cfg.credentials("127.0.0.1:5000").unwrap(), Some(c));
        let mut cfg = cfg;
        assert!(cfg.erase_credentials("127.0.0.1:5000").unwrap());
        assert_eq!(cfg.credentials("127.0.0.1:5000").unwrap(), None);
    }

    #[test]
    fn context_dir_is_sha256_of_name() {
        assert_eq!(
            context_dir_name("default"),
            "37a8eec1ce19687d132fe29051dca629d164e2c4958ba141d5f4133a33f0688f"
        );
    }
}
