//! Image verbs: images, pull, push, tag, rmi, save, load, import, history,
//! build and image prune.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Map, Value, json};

use super::container::save_body;
use super::{Ctx, Error, Result, filters_json, finish, msg, out, report, split_ref};
use crate::api::{self, JsonStream, enc, query};
use crate::format::{ellipsis, render_rows, short_id};
use crate::ignore::Matcher;
use crate::{archive, progress, term, units};

/// `images`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ImagesArgs {
    /// Show all images (default hides intermediate images)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Filter output based on conditions provided
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// Format output using a custom template
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Only show image IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// REPOSITORY[:TAG]
    pub reference: Option<String>,
}

fn images_header() -> Value {
    json!({"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID", "Digest": "DIGEST",
           "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE",
           "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE", "VirtualSize": "VIRTUAL SIZE",
           "Containers": "CONTAINERS"})
}

/// The rows `docker images` prints for one image summary: one per tag, or
/// one `<none>` row.
pub fn image_rows(img: &Value, trunc: bool) -> Vec<Value> {
    let id = img["Id"].as_str().unwrap_or("");
    let created = img["Created"].as_i64().unwrap_or(0);
    let size = img["Size"].as_f64().unwrap_or(0.0);
    let digests: Vec<&str> = img["RepoDigests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut tags: Vec<(String, String)> = img["RepoTags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| *t != "<none>:<none>")
        .map(|t| {
            let (r, tag) = split_ref(t);
            (r, tag)
        })
        .collect();
    if tags.is_empty() {
        let repo = digests.first().map_or("<none>".to_string(), |d| {
            d.split('@').next().unwrap_or("<none>").to_string()
        });
        tags.push((repo, "<none>".to_string()));
    }
    tags.into_iter()
        .map(|(repo, tag)| {
            let digest = digests
                .iter()
                .find(|d| d.split('@').next() == Some(repo.as_str()))
                .and_then(|d| d.split('@').nth(1))
                .unwrap_or("<none>");
            json!({
                "Repository": repo,
                "Tag": tag,
                "ID": if trunc { short_id(id) } else { id.to_string() },
                "Digest": digest,
                "CreatedSince": units::ago(created),
                "CreatedAt": units::created_at(created),
                "Size": units::human_size_prec(size, 3),
                "VirtualSize": units::human_size_prec(size, 3),
                "SharedSize": img["SharedSize"].as_f64().filter(|s| *s >= 0.0).map_or("N/A".to_string(), |s| units::human_size_prec(s, 3)),
                "UniqueSize": "N/A",
                "Containers": img["Containers"].as_i64().filter(|c| *c >= 0).map_or("N/A".to_string(), |c| c.to_string()),
            })
        })
        .collect()
}

/// `images`.
pub async fn images(ctx: &Ctx, a: &ImagesArgs) -> Result<i32> {
    let mut filters = a.filter.clone();
    if let Some(r) = &a.reference {
        filters.push(format!("reference={r}"));
    }
    let mut q = Vec::new();
    if a.all {
        q.push(("all", "1".to_string()));
    }
    if let Some(f) = filters_json(&filters)? {
        q.push(("filters", f));
    }
    let list: Vec<Value> = ctx
        .client
        .get_json(&format!("/images/json{}", query(&q)))
        .await?;
    if a.quiet && a.format.is_none() {
        let mut seen = Vec::new();
        for i in &list {
            let id = i["Id"].as_str().unwrap_or("");
            let id = if a.no_trunc {
                id.to_string()
            } else {
                short_id(id)
            };
            if !seen.contains(&id) {
                println!("{id}");
                seen.push(id);
            }
        }
        return Ok(0);
    }
    let rows: Vec<Value> = list
        .iter()
        .flat_map(|i| image_rows(i, !a.no_trunc))
        .collect();
    let table = if a.digests {
        "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    } else {
        "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    };
    let format = ctx.default_format("imagesFormat", a.format.as_ref());
    out(&render_rows(&format, table, &images_header(), &rows)?);
    Ok(0)
}

/// `pull`.
#[derive(clap::Args, Debug, Clone)]
pub struct PullArgs {
    /// Download all tagged images in the repository
    #[arg(short = 'a', long = "all-tags")]
    pub all_tags: bool,
    /// Set platform if server is multi-platform capable
    #[arg(long)]
    pub platform: Option<String>,
    /// Suppress verbose output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Skip image verification (accepted for compatibility)
    #[arg(long = "disable-content-trust", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_content_trust: Option<bool>,
    /// NAME[:TAG|@DIGEST]
    pub image: String,
}

/// `pull`.
pub async fn pull(ctx: &Ctx, a: &PullArgs) -> Result<i32> {
    let image = if a.all_tags {
        a.image.clone()
    } else {
        super::with_default_tag(&a.image)
    };
    if !a.quiet && !a.all_tags && !a.image.contains(':') && !a.image.contains('@') {
        println!("Using default tag: latest");
    }
    super::pull_image(
        ctx,
        &image,
        a.platform.as_deref(),
        progress::Mode::auto(a.quiet),
        a.all_tags,
    )
    .await?;
    let (name, tag) = split_ref(&image);
    let full = if tag.starts_with("sha256:") {
        format!("{name}@{tag}")
    } else {
        format!("{name}:{tag}")
    };
    let shown = if name.contains('/')
        && (name
            .split('/')
            .next()
            .is_some_and(|h| h.contains('.') || h.contains(':') || h == "localhost"))
    {
        full
    } else if name.contains('/') {
        format!("docker.io/{full}")
    } else {
        format!("docker.io/library/{full}")
    };
    println!("{shown}");
    Ok(0)
}

/// `push`.
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// Push all tags of an image to the repository
    #[arg(short = 'a', long = "all-tags")]
    pub all_tags: bool,
    /// Suppress verbose output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Skip image signing (accepted for compatibility)
    #[arg(long = "disable-content-trust", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_content_trust: Option<bool>,
    /// NAME[:TAG]
    pub image: String,
}

/// `push`.
pub async fn push(ctx: &Ctx, a: &PushArgs) -> Result<i32> {
    let (name, tag) = split_ref(&a.image);
    let explicit_tag = a.image.rsplit('/').next().is_some_and(|l| l.contains(':'));
    if !explicit_tag && !a.all_tags && !a.quiet {
        println!("Using default tag: latest");
    }
    let q = if a.all_tags && !explicit_tag {
        String::new()
    } else {
        format!("?tag={}", enc(&tag))
    };
    let path = format!("/images/{}/push{q}", enc(&name));
    let resp = ctx
        .client
        .send(
            Method::POST,
            &path,
            ctx.auth_headers(&a.image)?,
            api::empty(),
        )
        .await?;
    let mut s = JsonStream::new(resp);
    progress::show(&mut s, progress::Mode::auto(a.quiet)).await?;
    if a.quiet {
        println!("{}", super::with_default_tag(&a.image));
    }
    Ok(0)
}

/// `tag`.
#[derive(clap::Args, Debug, Clone)]
pub struct TagArgs {
    /// SOURCE_IMAGE[:TAG]
    pub source: String,
    /// TARGET_IMAGE[:TAG]
    pub target: String,
}

/// `tag`.
pub async fn tag(ctx: &Ctx, a: &TagArgs) -> Result<i32> {
    let (repo, tag) = split_ref(&a.target);
    ctx.client
        .post_empty(&format!(
            "/images/{}/tag?repo={}&tag={}",
            enc(&a.source),
            enc(&repo),
            enc(&tag)
        ))
        .await?;
    Ok(0)
}

/// `rmi`.
#[derive(clap::Args, Debug, Clone)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Do not delete untagged parents
    #[arg(long = "no-prune")]
    pub no_prune: bool,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// `rmi`.
pub async fn rmi(ctx: &Ctx, a: &RmiArgs) -> Result<i32> {
    let mut failed = false;
    for i in &a.images {
        let mut q = Vec::new();
        if a.force {
            q.push(("force", "1".to_string()));
        }
        if a.no_prune {
            q.push(("noprune", "1".to_string()));
        }
        match ctx
            .client
            .delete(&format!("/images/{}{}", enc(i), query(&q)))
            .await
        {
            Ok(body) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                for item in v.as_array().into_iter().flatten() {
                    if let Some(u) = item["Untagged"].as_str() {
                        println!("Untagged: {u}");
                    }
                    if let Some(d) = item["Deleted"].as_str() {
                        println!("Deleted: {d}");
                    }
                }
            }
            Err(e) => report(&mut failed, &e.into()),
        }
    }
    finish(failed)
}

/// `save`.
#[derive(clap::Args, Debug, Clone)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Save only the given platform variant
    #[arg(long)]
    pub platform: Option<String>,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// `save`.
pub async fn save(ctx: &Ctx, a: &SaveArgs) -> Result<i32> {
    if a.output.is_none() && term::stdout_is_tty() {
        return Err(msg(
            "cowardly refusing to save to a terminal. Use the -o flag or redirect",
        ));
    }
    let mut q: Vec<(&str, String)> = a.images.iter().map(|i| ("names", i.clone())).collect();
    if let Some(p) = &a.platform {
        q.push(("platform", p.clone()));
    }
    let resp = ctx
        .client
        .send(
            Method::GET,
            &format!("/images/get{}", query(&q)),
            HeaderMap::new(),
            api::empty(),
        )
        .await?;
    save_body(resp, a.output.as_deref()).await?;
    Ok(0)
}

/// Stream a local file (or stdin) as a request body.
fn file_body(path: Option<&Path>) -> Result<api::Body> {
    let (tx, body) = api::channel_body(8);
    let mut reader: Box<dyn std::io::Read + Send> = match path {
        Some(p) => Box::new(std::fs::File::open(p).map_err(|source| Error::Io {
            op: "open",
            path: p.to_path_buf(),
            source,
        })?),
        None => Box::new(std::io::stdin()),
    };
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    Ok(body)
}

/// `load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short = 'i', long)]
    pub input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Load only the given platform variant
    #[arg(long)]
    pub platform: Option<String>,
}

/// `load`.
pub async fn load(ctx: &Ctx, a: &LoadArgs) -> Result<i32> {
    if a.input.is_none() && term::stdin_is_tty() {
        return Err(msg("requested load from stdin, but stdin is empty"));
    }
    let body = file_body(a.input.as_deref())?;
    let quiet = a.quiet || !term::stdout_is_tty();
    let mut q = vec![("quiet", if quiet { "1" } else { "0" }.to_string())];
    if let Some(p) = &a.platform {
        q.push(("platform", p.clone()));
    }
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    let resp = ctx
        .client
        .send(Method::POST, &format!("/images/load{}", query(&q)), h, body)
        .await?;
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if is_json {
        let mut s = JsonStream::new(resp);
        let mode = if a.quiet {
            progress::Mode::Quiet
        } else {
            progress::Mode::auto(false)
        };
        progress::show(&mut s, mode).await?;
    } else {
        let b = ctx.client.bytes_of(resp).await?;
        if !a.quiet {
            out(&String::from_utf8_lossy(&b));
        }
    }
    Ok(0)
}

/// `import`.
#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// Apply Dockerfile instruction to the created image
    #[arg(short = 'c', long = "change")]
    pub change: Vec<String>,
    /// Set commit message for imported image
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Set platform if server is multi-platform capable
    #[arg(long)]
    pub platform: Option<String>,
    /// file|URL|-
    pub source: String,
    /// REPOSITORY[:TAG]
    pub reference: Option<String>,
}

/// `import`.
pub async fn import(ctx: &Ctx, a: &ImportArgs) -> Result<i32> {
    let is_url = a.source.starts_with("http://") || a.source.starts_with("https://");
    let mut q = vec![(
        "fromSrc",
        if is_url {
            a.source.clone()
        } else {
            "-".to_string()
        },
    )];
    if let Some(r) = &a.reference {
        let (repo, tag) = split_ref(r);
        q.push(("repo", repo));
        q.push(("tag", tag));
    }
    if let Some(m) = &a.message {
        q.push(("message", m.clone()));
    }
    if let Some(p) = &a.platform {
        q.push(("platform", p.clone()));
    }
    for c in &a.change {
        q.push(("changes", c.clone()));
    }
    let body = if is_url {
        api::empty()
    } else if a.source == "-" {
        file_body(None)?
    } else {
        file_body(Some(Path::new(&a.source)))?
    };
    let resp = ctx
        .client
        .send(
            Method::POST,
            &format!("/images/create{}", query(&q)),
            HeaderMap::new(),
            body,
        )
        .await?;
    let mut s = JsonStream::new(resp);
    progress::show(&mut s, progress::Mode::Plain).await?;
    Ok(0)
}

/// `history`.
#[derive(clap::Args, Debug, Clone)]
pub struct HistoryArgs {
    /// Format output using a custom template
    #[arg(long)]
    pub format: Option<String>,
    /// Print sizes and dates in human readable format
    #[arg(short = 'H', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub human: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Only show image IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    pub image: String,
}

/// `history`.
pub async fn history(ctx: &Ctx, a: &HistoryArgs) -> Result<i32> {
    let list: Vec<Value> = ctx
        .client
        .get_json(&format!("/images/{}/history", enc(&a.image)))
        .await?;
    let trunc = !a.no_trunc;
    if a.quiet {
        for h in &list {
            let id = h["Id"].as_str().unwrap_or("");
            println!("{}", if trunc { short_id(id) } else { id.to_string() });
        }
        return Ok(0);
    }
    let rows: Vec<Value> = list
        .iter()
        .map(|h| {
            let id = h["Id"].as_str().unwrap_or("");
            let id = if id == "<missing>" || id.is_empty() {
                "<missing>".to_string()
            } else if trunc {
                short_id(id)
            } else {
                id.to_string()
            };
            let created = h["Created"].as_i64().unwrap_or(0);
            let by = h["CreatedBy"].as_str().unwrap_or("").replace('\t', " ");
            let by = if trunc { ellipsis(&by, 45) } else { by };
            let size = h["Size"].as_f64().unwrap_or(0.0);
            json!({
                "ID": id,
                "CreatedSince": if a.human { units::ago(created) } else { units::created_at(created) },
                "CreatedAt": units::created_at(created),
                "CreatedBy": by,
                "Size": if a.human { units::human_size_prec(size, 3) } else { (size as i64).to_string() },
                "Comment": h["Comment"].as_str().unwrap_or(""),
            })
        })
        .collect();
    let header = json!({"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                        "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"});
    let table = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}";
    out(&render_rows(
        a.format.as_deref().unwrap_or(""),
        table,
        &header,
        &rows,
    )?);
    Ok(0)
}

/// `image prune`.
#[derive(clap::Args, Debug, Clone)]
pub struct ImagePruneArgs {
    /// Remove all unused images, not just dangling ones
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Provide filter values (e.g. "until=<timestamp>")
    #[arg(long = "filter")]
    pub filter: Vec<String>,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `image prune`.
pub async fn prune(ctx: &Ctx, a: &ImagePruneArgs) -> Result<i32> {
    let warning = if a.all {
        "WARNING! This will remove all images without at least one container associated to them."
    } else {
        "WARNING! This will remove all dangling images."
    };
    if !a.force && !super::confirm(&format!("{warning}\nAre you sure you want to continue?")) {
        return Ok(0);
    }
    let mut f = a.filter.clone();
    f.push(format!("dangling={}", !a.all));
    let q = filters_json(&f)?
        .map(|f| format!("?filters={}", enc(&f)))
        .unwrap_or_default();
    let resp = ctx
        .client
        .post_json(&format!("/images/prune{q}"), &json!(null), HeaderMap::new())
        .await?;
    let v: Value = ctx.client.json_of("prune", resp).await?;
    out(&prune_images_text(&v));
    Ok(0)
}

/// The text docker prints for an images prune report.
pub fn prune_images_text(v: &Value) -> String {
    let mut s = String::new();
    let list = v["ImagesDeleted"].as_array().cloned().unwrap_or_default();
    if !list.is_empty() {
        s.push_str("Deleted Images:\n");
        for d in &list {
            if let Some(u) = d["Untagged"].as_str() {
                s.push_str(&format!("untagged: {u}\n"));
            }
            if let Some(x) = d["Deleted"].as_str() {
                s.push_str(&format!("deleted: {x}\n"));
            }
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "Total reclaimed space: {}\n",
        super::reclaimed(&v["SpaceReclaimed"])
    ));
    s
}

/// `build`.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// Add a custom host-to-IP mapping (host:ip)
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// Set build-time variables
    #[arg(long = "build-arg")]
    pub build_arg: Vec<String>,
    /// Images to consider as cache sources
    #[arg(long = "cache-from")]
    pub cache_from: Vec<String>,
    /// CPU shares (relative weight) of RUN steps
    #[arg(short = 'c', long = "cpu-shares")]
    pub cpu_shares: Option<i64>,
    /// Limit the CPU CFS (Completely Fair Scheduler) period of RUN steps
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<i64>,
    /// Limit the CPU CFS (Completely Fair Scheduler) quota of RUN steps
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    /// CPUs in which to allow execution (0-3, 0,1)
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// MEMs in which to allow execution (0-3, 0,1)
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Name of the Dockerfile (default: "PATH/Dockerfile")
    #[arg(short = 'f', long = "file")]
    pub file: Option<String>,
    /// Always remove intermediate containers
    #[arg(long = "force-rm")]
    pub force_rm: bool,
    /// Write the image ID to the file
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Set metadata for an image
    #[arg(long = "label")]
    pub label: Vec<String>,
    /// Memory limit
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Swap limit equal to memory plus swap: -1 to enable unlimited swap
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Set the networking mode for the RUN instructions during build
    #[arg(long)]
    pub network: Option<String>,
    /// Do not use cache when building the image
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// Set target platform for build
    #[arg(long)]
    pub platform: Option<String>,
    /// Set type of progress output (accepted for compatibility)
    #[arg(long)]
    pub progress: Option<String>,
    /// Always attempt to pull a newer version of the image
    #[arg(long)]
    pub pull: bool,
    /// Suppress the build output and print image ID on success
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Remove intermediate containers after a successful build
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub rm: bool,
    /// Size of /dev/shm
    #[arg(long = "shm-size")]
    pub shm_size: Option<String>,
    /// Name and optionally a tag in the "name:tag" format
    #[arg(short = 't', long = "tag")]
    pub tag: Vec<String>,
    /// Set the target build stage to build
    #[arg(long)]
    pub target: Option<String>,
    /// Ulimit options
    #[arg(long)]
    pub ulimit: Vec<String>,
    /// PATH | URL | -
    pub context: String,
}

/// Build-arg flags to the API's map (`KEY` alone takes the environment
/// value, or null when unset).
pub fn build_args_json(args: &[String]) -> Value {
    let mut m = Map::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) => {
                m.insert(k.to_string(), json!(v));
            }
            None => {
                m.insert(
                    a.clone(),
                    std::env::var(a).map_or(Value::Null, Value::String),
                );
            }
        }
    }
    Value::Object(m)
}

fn is_tar(data: &[u8]) -> bool {
    data.len() > 262 && &data[257..262] == b"ustar"
}

/// A build context ready to send.
enum Context {
    /// Already a tar in memory (from stdin), with the `dockerfile`
    /// parameter.
    Ready(Vec<u8>, Option<String>),
    /// A directory to stream as a tar.
    Dir {
        dir: PathBuf,
        matcher: Matcher,
        extra: Option<(String, Vec<u8>)>,
        dockerfile: String,
    },
}

/// Writes into a request body channel (from a blocking thread).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    written: u64,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stream a directory context into a request body; the task returns the
/// number of bytes sent.
fn stream_context(
    dir: PathBuf,
    matcher: Matcher,
    extra: Option<(String, Vec<u8>)>,
) -> (api::Body, tokio::task::JoinHandle<Result<u64>>) {
    let (tx, body) = api::channel_body(16);
    let handle = tokio::task::spawn_blocking(move || {
        let err_tx = tx.clone();
        let writer =
            std::io::BufWriter::with_capacity(256 * 1024, ChannelWriter { tx, written: 0 });
        let extra_ref = extra.as_ref().map(|(n, d)| (n.as_str(), d.as_slice()));
        match archive::context_tar(&dir, &matcher, writer, extra_ref) {
            Ok(w) => {
                let w = w.into_inner().map_err(|e| Error::Io {
                    op: "send build context",
                    path: dir.clone(),
                    source: e.into_error(),
                })?;
                Ok(w.written)
            }
            Err(e) => {
                // Abort the upload so the daemon does not build a partial context.
                let _ = err_tx.blocking_send(Err(std::io::Error::other("build context failed")));
                Err(e.into())
            }
        }
    });
    (body, handle)
}

/// Work out the build context and the `dockerfile` parameter.
fn make_context(a: &BuildArgs) -> Result<Context> {
    let random_name = || format!(".dockerfile.{:012x}", rand_u64() & 0xffff_ffff_ffff);
    if a.context == "-" {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|source| Error::Io {
                op: "read",
                path: PathBuf::from("-"),
                source,
            })?;
        if is_tar(&data) {
            return Ok(Context::Ready(data, a.file.clone()));
        }
        // A Dockerfile on stdin with an empty context.
        let name = random_name();
        let tar = archive::single_file_tar(&name, &data, Vec::new())?;
        return Ok(Context::Ready(tar, Some(name)));
    }
    let dir = PathBuf::from(&a.context);
    if !dir.is_dir() {
        return Err(msg(format!(
            "unable to prepare context: path {:?} not found",
            a.context
        )));
    }
    let ignore_path = dir.join(".dockerignore");
    let mut matcher = match std::fs::read_to_string(&ignore_path) {
        Ok(t) => Matcher::parse(&t)?,
        Err(_) => Matcher::default(),
    };
    let (extra, dockerfile_param): (Option<(String, Vec<u8>)>, String) = match a.file.as_deref() {
        Some("-") => {
            let mut data = Vec::new();
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|source| Error::Io {
                    op: "read",
                    path: PathBuf::from("-"),
                    source,
                })?;
            let name = random_name();
            (Some((name.clone(), data)), name)
        }
        Some(f) => {
            let p = PathBuf::from(f);
            let abs_ctx = std::fs::canonicalize(&dir).map_err(|source| Error::Io {
                op: "resolve",
                path: dir.clone(),
                source,
            })?;
            let abs_file = std::fs::canonicalize(&p)
                .or_else(|_| std::fs::canonicalize(dir.join(&p)))
                .map_err(|source| Error::Io {
                    op: "open Dockerfile",
                    path: p.clone(),
                    source,
                })?;
            match abs_file.strip_prefix(&abs_ctx) {
                Ok(rel) => (None, rel.to_string_lossy().into_owned()),
                Err(_) => {
                    let data = std::fs::read(&abs_file).map_err(|source| Error::Io {
                        op: "read",
                        path: abs_file.clone(),
                        source,
                    })?;
                    let name = random_name();
                    (Some((name.clone(), data)), name)
                }
            }
        }
        None => {
            if !dir.join("Dockerfile").exists() && !dir.join("dockerfile").exists() {
                return Err(msg(format!(
                    "unable to prepare context: unable to evaluate symlinks in Dockerfile path: lstat {}: no such file or directory",
                    dir.join("Dockerfile").display()
                )));
            }
            (None, "Dockerfile".to_string())
        }
    };
    // The Dockerfile and .dockerignore are always sent, as docker does.
    if matcher.excluded(&dockerfile_param) {
        matcher.push(&format!("!{dockerfile_param}"))?;
    }
    if matcher.excluded(".dockerignore") {
        matcher.push("!.dockerignore")?;
    }
    Ok(Context::Dir {
        dir,
        matcher,
        extra,
        dockerfile: dockerfile_param,
    })
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b) ^ u64::from(std::process::id())
}

/// `build`.
pub async fn build(ctx: &Ctx, a: &BuildArgs) -> Result<i32> {
    let is_remote = a.context.starts_with("http://")
        || a.context.starts_with("https://")
        || a.context.starts_with("git://")
        || a.context.starts_with("git@");
    let mut q: Vec<(&str, String)> = Vec::new();
    for t in &a.tag {
        q.push(("t", t.clone()));
    }
    let mut upload = None;
    let body = if is_remote {
        q.push(("remote", a.context.clone()));
        if let Some(f) = &a.file {
            q.push(("dockerfile", f.clone()));
        }
        api::empty()
    } else {
        let ctx_args = a.clone();
        let context = tokio::task::spawn_blocking(move || make_context(&ctx_args))
            .await
            .map_err(|e| msg(e.to_string()))??;
        match context {
            Context::Ready(tar, dockerfile) => {
                if let Some(d) = dockerfile {
                    q.push(("dockerfile", d));
                }
                if !a.quiet {
                    println!(
                        "Sending build context to Docker daemon  {}",
                        units::human_size(tar.len() as f64)
                    );
                }
                api::bytes_body(tar)
            }
            Context::Dir {
                dir,
                matcher,
                extra,
                dockerfile,
            } => {
                q.push(("dockerfile", dockerfile));
                let (body, handle) = stream_context(dir, matcher, extra);
                upload = Some(handle);
                body
            }
        }
    };
    if !a.build_arg.is_empty() {
        q.push(("buildargs", build_args_json(&a.build_arg).to_string()));
    }
    if !a.label.is_empty() {
        q.push((
            "labels",
            Value::Object(crate::opts::parse_labels(&[], &a.label)?).to_string(),
        ));
    }
    if let Some(t) = &a.target {
        q.push(("target", t.clone()));
    }
    if a.no_cache {
        q.push(("nocache", "1".to_string()));
    }
    if a.pull {
        q.push(("pull", "1".to_string()));
    }
    if a.quiet {
        q.push(("q", "1".to_string()));
    }
    q.push(("rm", if a.rm { "1" } else { "0" }.to_string()));
    if a.force_rm {
        q.push(("forcerm", "1".to_string()));
    }
    if let Some(p) = &a.platform {
        q.push(("platform", p.clone()));
    }
    if let Some(n) = &a.network {
        q.push(("networkmode", n.clone()));
    }
    if !a.add_host.is_empty() {
        let hosts: std::result::Result<Vec<String>, _> = a
            .add_host
            .iter()
            .map(|h| crate::opts::parse_add_host(h))
            .collect();
        q.push(("extrahosts", hosts?.join(",")));
    }
    if let Some(m) = &a.memory {
        q.push(("memory", units::ram_in_bytes(m)?.to_string()));
    }
    if let Some(m) = &a.memory_swap {
        let v = if m == "-1" {
            "-1".to_string()
        } else {
            units::ram_in_bytes(m)?.to_string()
        };
        q.push(("memswap", v));
    }
    if let Some(s) = &a.shm_size {
        q.push(("shmsize", units::ram_in_bytes(s)?.to_string()));
    }
    for (key, v) in [
        ("cpushares", a.cpu_shares),
        ("cpuperiod", a.cpu_period),
        ("cpuquota", a.cpu_quota),
    ] {
        if let Some(v) = v {
            q.push((key, v.to_string()));
        }
    }
    if let Some(c) = &a.cpuset_cpus {
        q.push(("cpusetcpus", c.clone()));
    }
    if let Some(m) = &a.cpuset_mems {
        q.push(("cpusetmems", m.clone()));
    }
    if !a.cache_from.is_empty() {
        q.push(("cachefrom", json!(a.cache_from).to_string()));
    }
    if !a.ulimit.is_empty() {
        let list: std::result::Result<Vec<Value>, _> = a
            .ulimit
            .iter()
            .map(|u| crate::opts::parse_ulimit(u))
            .collect();
        q.push(("ulimits", Value::Array(list?).to_string()));
    }
    q.push(("version", "1".to_string()));
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    h.insert("x-registry-config", registry_config_header(ctx));
    let sent = ctx
        .client
        .send(Method::POST, &format!("/build{}", query(&q)), h, body)
        .await;
    // The classic builder answers once it has read the whole context.
    if let Some(handle) = upload {
        let size = handle.await.map_err(|e| msg(e.to_string()))??;
        if !a.quiet {
            println!(
                "Sending build context to Docker daemon  {}",
                units::human_size(size as f64)
            );
        }
    }
    let resp = sent?;
    let mut s = JsonStream::new(resp);
    let mode = if a.quiet {
        progress::Mode::Quiet
    } else {
        progress::Mode::Plain
    };
    let outcome = match progress::show(&mut s, mode).await {
        Ok(o) => o,
        Err(progress::Error::Remote { message, code }) => {
            return Err(Error::Status {
                code: code.unwrap_or(1) as i32,
                message,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let id = outcome
        .aux
        .iter()
        .find_map(|a| a.get("ID").and_then(Value::as_str).map(str::to_string))
        .or_else(|| {
            // A daemon without aux: "Successfully built abc123".
            outcome.text.lines().find_map(|l| {
                l.strip_prefix("Successfully built ")
                    .map(|s| s.trim().to_string())
            })
        });
    if a.quiet {
        if let Some(id) = &id {
            println!("{id}");
        } else {
            out(&outcome.text);
        }
    }
    if let (Some(p), Some(id)) = (&a.iidfile, &id) {
        std::fs::write(p, id).map_err(|source| Error::Io {
            op: "write",
            path: p.clone(),
            source,
        })?;
    }
    Ok(0)
}

/// `X-Registry-Config`: every stored credential, base64 JSON.
fn registry_config_header(ctx: &Ctx) -> HeaderValue {
    use base64::Engine as _;
    let mut all = serde_json::Map::new();
    for server in ctx.config.auth_servers() {
        // A helper that cannot answer leaves that registry out, as docker
        // does; the build may not need it.
        if let Ok(Some(c)) = ctx.config.credentials(&server) {
            all.insert(server, c.to_auth_config());
        }
    }
    let b = base64::engine::general_purpose::URL_SAFE.encode(Value::Object(all).to_string());
    HeaderValue::from_str(&b).unwrap_or(HeaderValue::from_static("e30="))
}
