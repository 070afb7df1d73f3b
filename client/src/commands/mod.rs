//! The commands: each verb turns parsed flags into API calls and prints
//! what docker prints. Shared here: the command context (client and
//! configuration), the error type with docker's exit codes, filters, image
//! references, registry auth and pulling.

pub mod container;
pub mod image;
pub mod resources;
pub mod system;

use std::path::PathBuf;

use http::HeaderMap;
use serde_json::{Map, Value, json};

use crate::api::{self, Client, JsonStream, enc};
use crate::config::{self, ConfigFile};
use crate::{archive, format, ignore, opts, progress, stream, units};

/// Command errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] api::Error),
    #[error(transparent)]
    Opts(#[from] opts::Error),
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Format(#[from] format::Error),
    #[error(transparent)]
    Progress(#[from] progress::Error),
    #[error(transparent)]
    Stream(#[from] stream::Error),
    #[error(transparent)]
    Archive(#[from] archive::Error),
    #[error(transparent)]
    Ignore(#[from] ignore::Error),
    #[error(transparent)]
    Units(#[from] units::Error),
    #[error("{path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A failure with a specific exit status; an empty message prints
    /// nothing.
    #[error("{message}")]
    Status { code: i32, message: String },
    #[error("{0}")]
    Msg(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The exit status docker would use.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Status { code, .. } => *code,
            _ => 1,
        }
    }

    /// A `run`/`create` failure: status 125 and docker's `docker: ` style
    /// prefix.
    #[must_use]
    pub fn run_failure(self) -> Error {
        match self {
            Error::Status { .. } => self,
            other => Error::Status {
                code: 125,
                message: format!("vessel: {}", error_chain(&other)),
            },
        }
    }

    /// Wrap with an exit status (keeps the message).
    #[must_use]
    pub fn with_code(self, code: i32) -> Error {
        match self {
            Error::Status { .. } => self,
            other => Error::Status {
                code,
                message: error_chain(&other),
            },
        }
    }
}

/// An error and its causes, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

pub(crate) fn msg(s: impl Into<String>) -> Error {
    Error::Msg(s.into())
}

/// What every command gets.
pub struct Ctx {
    pub client: std::sync::Arc<Client>,
    pub config: ConfigFile,
    pub config_dir: PathBuf,
    pub host_flags: config::HostFlags,
}

impl Ctx {
    /// A default `--format` from config.json (`psFormat`, ...).
    pub fn default_format(&self, key: &str, flag: Option<&String>) -> String {
        flag.cloned()
            .or_else(|| self.config.format_for(key))
            .unwrap_or_default()
    }

    /// The `X-Registry-Auth` header for an image's registry.
    pub fn auth_headers(&self, image: &str) -> Result<HeaderMap> {
        let server = config::registry_of_image(image);
        let creds = self.config.credentials(&server)?;
        let auth = creds.map_or_else(|| json!({}), |c| c.to_auth_config());
        let mut h = HeaderMap::new();
        h.insert("x-registry-auth", api::registry_auth_header(&auth));
        Ok(h)
    }
}

/// `--filter key=value` flags to the API's `filters` JSON
/// (`{"key":{"value":true}}`).
pub fn filters_json(filters: &[String]) -> Result<Option<String>> {
    if filters.is_empty() {
        return Ok(None);
    }
    let mut m: Map<String, Value> = Map::new();
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| msg("bad format of filter (expected name=value)"))?;
        let entry = m
            .entry(k.trim().to_lowercase())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(inner) = entry {
            inner.insert(v.to_string(), json!(true));
        }
    }
    Ok(Some(Value::Object(m).to_string()))
}

/// An image reference split for `/images/create`: (name, tag or digest).
pub fn split_ref(image: &str) -> (String, String) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name.to_string(), digest.to_string());
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_string(),
            image[slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// The reference with `:latest` added when it has no tag or digest.
pub fn with_default_tag(image: &str) -> String {
    let (name, tag) = split_ref(image);
    if tag.starts_with("sha256:") {
        format!("{name}@{tag}")
    } else {
        format!("{name}:{tag}")
    }
}

/// Pull an image, showing progress on stdout (`pull`).
pub async fn pull_image(
    ctx: &Ctx,
    image: &str,
    platform: Option<&str>,
    mode: progress::Mode,
    all_tags: bool,
) -> Result<()> {
    pull_image_on(ctx, image, platform, mode, all_tags, false).await
}

/// Pull an image, showing progress on stdout or on stderr (`run` and
/// `create` keep stdout for the container).
pub async fn pull_image_on(
    ctx: &Ctx,
    image: &str,
    platform: Option<&str>,
    mode: progress::Mode,
    all_tags: bool,
    to_stderr: bool,
) -> Result<()> {
    let (name, tag) = split_ref(image);
    let mut q = vec![("fromImage", name)];
    if !all_tags {
        q.push(("tag", tag));
    }
    if let Some(p) = platform {
        q.push(("platform", p.to_string()));
    }
    let path = format!("/images/create{}", api::query(&q));
    let resp = ctx
        .client
        .send(
            http::Method::POST,
            &path,
            ctx.auth_headers(image)?,
            api::empty(),
        )
        .await?;
    let mut s = JsonStream::new(resp);
    progress::show_on(&mut s, mode, to_stderr).await?;
    Ok(())
}

/// Ask a yes/no question on the terminal (prune commands).
pub fn confirm(question: &str) -> bool {
    use std::io::{BufRead, Write};
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_lowercase().as_str(), "y" | "yes")
}

/// `/containers/{id}` path piece.
pub fn cpath(id: &str) -> String {
    format!("/containers/{}", enc(id))
}

/// Print rendered text to stdout.
pub fn out(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

/// Report a per-item error like docker does (to stderr) and remember that
/// one failed.
pub fn report(failed: &mut bool, e: &Error) {
    eprintln!("{}", error_chain(e));
    *failed = true;
}

/// Finish a multi-item command: exit status 1 if any item failed.
pub fn finish(failed: bool) -> Result<i32> {
    if failed {
        Err(Error::Status {
            code: 1,
            message: String::new(),
        })
    } else {
        Ok(0)
    }
}

/// Human-readable "Total reclaimed space" value.
pub fn reclaimed(v: &Value) -> String {
    units::human_size(v.as_f64().unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_split() {
        assert_eq!(split_ref("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(
            split_ref("localhost:5000/a/b:1"),
            ("localhost:5000/a/b".into(), "1".into())
        );
        assert_eq!(
            split_ref("localhost:5000/a"),
            ("localhost:5000/a".into(), "latest".into())
        );
        assert_eq!(split_ref("a@sha256:00"), ("a".into(), "sha256:00".into()));
        assert_eq!(with_default_tag("busybox"), "busybox:latest");
    }

    #[test]
    fn filters_encode_as_maps() {
        assert_eq!(
            filters_json(&["status=exited".into(), "label=a=b".into()])
                .unwrap()
                .unwrap(),
            r#"{"label":{"a=b":true},"status":{"exited":true}}"#
        );
        assert!(filters_json(&["bad".into()]).is_err());
    }
}
