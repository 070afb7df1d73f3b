//! System verbs: version, info, events, system df, system prune, login,
//! logout, and the context store (`context ls/use/show/create/rm/inspect`).

use std::io::Read as _;

use http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::{Ctx, Error, Result, filters_json, msg, out};
use crate::api::{self, JsonStream, MAX_API_VERSION, enc, query};
use crate::config::{self, Credentials};
use crate::format::{self, render_rows, tabwrite};
use crate::{term, units};

/// `version`.
#[derive(clap::Args, Debug, Clone)]
pub struct VersionArgs {
    /// Format output using a custom template
    #[arg(short = 'f', long)]
    pub format: Option<String>,
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `version`.
pub async fn version(ctx: &Ctx, a: &VersionArgs) -> Result<i32> {
    let api_version = ctx.client.version().await;
    let context = config::current_context_name(&ctx.host_flags, &ctx.config);
    let client = json!({
        "Platform": {"Name": ""},
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": api_version,
        "DefaultAPIVersion": MAX_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch(),
        "Context": context,
    });
    let server = ctx.client.get_json::<Value>("/version").await;
    if let Some(f) = &a.format {
        let v = json!({"Client": client, "Server": server.as_ref().ok()});
        out(&format::render_one(f, &v)?);
        return server.map(|_| 0).map_err(Error::from);
    }
    let mut s = String::new();
    s.push_str("Client:\n");
    s.push_str(&format!(
        " Version:           {}\n",
        env!("CARGO_PKG_VERSION")
    ));
    s.push_str(&format!(" API version:       {api_version}\n"));
    s.push_str(&format!(" OS/Arch:           linux/{}\n", arch()));
    s.push_str(&format!(" Context:           {context}\n"));
    out(&s);
    let v = server?;
    let mut s = String::new();
    let platform = v["Platform"]["Name"].as_str().unwrap_or("");
    s.push_str(&format!(
        "\nServer:{}\n",
        if platform.is_empty() {
            String::new()
        } else {
            format!(" {platform}")
        }
    ));
    s.push_str(" Engine:\n");
    let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
    s.push_str(&format!("  Version:          {}\n", field("Version")));
    s.push_str(&format!(
        "  API version:      {} (minimum version {})\n",
        field("ApiVersion"),
        field("MinAPIVersion")
    ));
    if !field("GoVersion").is_empty() {
        s.push_str(&format!("  Go version:       {}\n", field("GoVersion")));
    }
    s.push_str(&format!("  Git commit:       {}\n", field("GitCommit")));
    s.push_str(&format!("  Built:            {}\n", field("BuildTime")));
    s.push_str(&format!(
        "  OS/Arch:          {}/{}\n",
        field("Os"),
        field("Arch")
    ));
    s.push_str(&format!(
        "  Experimental:     {}\n",
        v["Experimental"].as_bool().unwrap_or(false)
    ));
    for c in v["Components"].as_array().into_iter().flatten() {
        let name = c["Name"].as_str().unwrap_or("");
        if name == "Engine" {
            continue;
        }
        s.push_str(&format!(" {name}:\n"));
        s.push_str(&format!(
            "  Version:          {}\n",
            c["Version"].as_str().unwrap_or("")
        ));
        if let Some(g) = c["Details"]["GitCommit"].as_str() {
            s.push_str(&format!("  GitCommit:        {g}\n"));
        }
    }
    out(&s);
    Ok(0)
}

/// `info`.
#[derive(clap::Args, Debug, Clone)]
pub struct InfoArgs {
    /// Format output using a custom template
    #[arg(short = 'f', long)]
    pub format: Option<String>,
}

/// `info`.
pub async fn info(ctx: &Ctx, a: &InfoArgs) -> Result<i32> {
    let context = config::current_context_name(&ctx.host_flags, &ctx.config);
    let v: Value = ctx.client.get_json("/info").await?;
    if let Some(f) = &a.format {
        let mut data = v.clone();
        data["ClientInfo"] =
            json!({"Version": env!("CARGO_PKG_VERSION"), "Context": context, "Debug": false});
        out(&format::render_one(f, &data)?);
        return Ok(0);
    }
    let mut s = String::new();
    s.push_str("Client:\n");
    s.push_str(&format!(" Version:    {}\n", env!("CARGO_PKG_VERSION")));
    s.push_str(&format!(" Context:    {context}\n"));
    s.push_str(" Debug Mode: false\n\nServer:\n");
    let n = |k: &str| v[k].as_i64().unwrap_or(0);
    let t = |k: &str| v[k].as_str().unwrap_or("").to_string();
    s.push_str(&format!(" Containers: {}\n", n("Containers")));
    s.push_str(&format!("  Running: {}\n", n("ContainersRunning")));
    s.push_str(&format!("  Paused: {}\n", n("ContainersPaused")));
    s.push_str(&format!("  Stopped: {}\n", n("ContainersStopped")));
    s.push_str(&format!(" Images: {}\n", n("Images")));
    s.push_str(&format!(" Server Version: {}\n", t("ServerVersion")));
    s.push_str(&format!(" Storage Driver: {}\n", t("Driver")));
    for pair in v["DriverStatus"].as_array().into_iter().flatten() {
        if let Some([k, val]) = pair.as_array().map(Vec::as_slice) {
            s.push_str(&format!(
                "  {}: {}\n",
                k.as_str().unwrap_or(""),
                val.as_str().unwrap_or("")
            ));
        }
    }
    s.push_str(&format!(" Logging Driver: {}\n", t("LoggingDriver")));
    s.push_str(&format!(" Cgroup Driver: {}\n", t("CgroupDriver")));
    s.push_str(&format!(" Cgroup Version: {}\n", t("CgroupVersion")));
    let mut runtimes: Vec<String> = v["Runtimes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    runtimes.sort();
    s.push_str(&format!(" Runtimes: {}\n", runtimes.join(" ")));
    s.push_str(&format!(" Default Runtime: {}\n", t("DefaultRuntime")));
    s.push_str(&format!(" Kernel Version: {}\n", t("KernelVersion")));
    s.push_str(&format!(" Operating System: {}\n", t("OperatingSystem")));
    s.push_str(&format!(" OSType: {}\n", t("OSType")));
    s.push_str(&format!(" Architecture: {}\n", t("Architecture")));
    s.push_str(&format!(" CPUs: {}\n", n("NCPU")));
    s.push_str(&format!(
        " Total Memory: {}\n",
        units::bytes_size(v["MemTotal"].as_f64().unwrap_or(0.0))
    ));
    s.push_str(&format!(" Name: {}\n", t("Name")));
    s.push_str(&format!(" ID: {}\n", t("ID")));
    s.push_str(&format!(" Docker Root Dir: {}\n", t("DockerRootDir")));
    s.push_str(&format!(
        " Debug Mode: {}\n",
        v["Debug"].as_bool().unwrap_or(false)
    ));
    s.push_str(&format!(
        " Experimental: {}\n",
        v["ExperimentalBuild"].as_bool().unwrap_or(false)
    ));
    s.push_str(&format!(
        " Live Restore Enabled: {}\n",
        v["LiveRestoreEnabled"].as_bool().unwrap_or(false)
    ));
    out(&s);
    for w in v["Warnings"].as_array().into_iter().flatten() {
        eprintln!("{}", w.as_str().unwrap_or(""));
    }
    Ok(0)
}

/// `events`.
#[derive(clap::Args, Debug, Clone)]
pub struct EventsArgs {
    /// Filter output based on conditions provided
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// Format output using a custom template
    #[arg(long)]
    pub format: Option<String>,
    /// Show all events created since timestamp
    #[arg(long)]
    pub since: Option<String>,
    /// Stream events until this timestamp
    #[arg(long)]
    pub until: Option<String>,
}

/// One event line as docker prints it.
pub fn event_line(e: &Value) -> String {
    let nanos = e["timeNano"].as_i64().map_or_else(
        || i128::from(e["time"].as_i64().unwrap_or(0)) * 1_000_000_000,
        i128::from,
    );
    let ty = e["Type"].as_str().unwrap_or("");
    let action = e["Action"]
        .as_str()
        .or_else(|| e["status"].as_str())
        .unwrap_or("");
    let id = e["Actor"]["ID"]
        .as_str()
        .or_else(|| e["id"].as_str())
        .unwrap_or("");
    let mut attrs: Vec<(String, String)> = e["Actor"]["Attributes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    attrs.sort();
    let mut s = format!("{} {ty} {action} {id}", units::rfc3339_nano(nanos));
    if !attrs.is_empty() {
        let parts: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!(" ({})", parts.join(", ")));
    }
    s
}

/// `events`.
pub async fn events(ctx: &Ctx, a: &EventsArgs) -> Result<i32> {
    let mut q = Vec::new();
    if let Some(s) = &a.since {
        q.push(("since", units::timestamp_arg(s)?));
    }
    if let Some(u) = &a.until {
        q.push(("until", units::timestamp_arg(u)?));
    }
    if let Some(f) = filters_json(&a.filter)? {
        q.push(("filters", f));
    }
    let resp = ctx
        .client
        .send(
            Method::GET,
            &format!("/events{}", query(&q)),
            HeaderMap::new(),
            api::empty(),
        )
        .await?;
    let mut s = JsonStream::new(resp);
    let tmpl = match a.format.as_deref() {
        None | Some("") => None,
        Some("json") => {
            Some(crate::template::Template::parse("{{json .}}").map_err(format::Error::from)?)
        }
        Some(f) => Some(
            crate::template::Template::parse(&format::unescape_format(f))
                .map_err(format::Error::from)?,
        ),
    };
    while let Some(e) = s.next().await? {
        let line = match &tmpl {
            Some(t) => t.render(&e).map_err(format::Error::from)?,
            None => event_line(&e),
        };
        out(&format!("{line}\n"));
    }
    Ok(0)
}

/// `system df`.
#[derive(clap::Args, Debug, Clone)]
pub struct DfArgs {
    /// Format output using a custom template
    #[arg(long)]
    pub format: Option<String>,
    /// Show detailed information on space usage
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

fn reclaim_text(reclaimable: f64, total: f64) -> String {
    if total > 0.0 {
        format!(
            "{} ({}%)",
            units::human_size(reclaimable),
            ((reclaimable * 100.0) / total) as i64
        )
    } else {
        units::human_size(reclaimable)
    }
}

/// The four `system df` summary rows, computed as docker does.
pub fn df_rows(v: &Value) -> Vec<Value> {
    let f = |x: &Value| x.as_f64().unwrap_or(0.0);
    let images = v["Images"].as_array().cloned().unwrap_or_default();
    let layers = f(&v["LayersSize"]);
    let mut used = 0.0;
    let mut active_images = 0;
    for i in &images {
        if i["Containers"].as_i64().unwrap_or(0) > 0 {
            active_images += 1;
            let (size, shared) = (f(&i["Size"]), i["SharedSize"].as_f64().unwrap_or(-1.0));
            if size >= 0.0 && shared >= 0.0 {
                used += size - shared;
            }
        }
    }
    let containers = v["Containers"].as_array().cloned().unwrap_or_default();
    let (mut c_size, mut c_reclaim, mut c_active) = (0.0, 0.0, 0);
    for c in &containers {
        let state = c["State"].as_str().unwrap_or("");
        let rw = f(&c["SizeRw"]);
        c_size += rw;
        if state.contains("running") || state == "paused" || state == "restarting" {
            c_active += 1;
        } else {
            c_reclaim += rw;
        }
    }
    let volumes = v["Volumes"].as_array().cloned().unwrap_or_default();
    let (mut v_size, mut v_reclaim, mut v_active) = (0.0, 0.0, 0);
    for vol in &volumes {
        let size = f(&vol["UsageData"]["Size"]);
        let refs = vol["UsageData"]["RefCount"].as_i64().unwrap_or(0);
        if size >= 0.0 {
            v_size += size;
        }
        if refs > 0 {
            v_active += 1;
        } else if size >= 0.0 {
            v_reclaim += size;
        }
    }
    let cache = v["BuildCache"].as_array().cloned().unwrap_or_default();
    let (mut b_size, mut b_reclaim, mut b_active) = (0.0, 0.0, 0);
    for b in &cache {
        let size = f(&b["Size"]);
        let shared = b["Shared"].as_bool().unwrap_or(false);
        if !shared {
            b_size += size;
        }
        if b["InUse"].as_bool().unwrap_or(false) {
            b_active += 1;
        } else if !shared {
            b_reclaim += size;
        }
    }
    let row = |ty: &str, total: usize, active: usize, size: f64, reclaim: String| {
        json!({"Type": ty, "TotalCount": total.to_string(), "Active": active.to_string(),
               "Size": units::human_size(size), "Reclaimable": reclaim})
    };
    vec![
        row(
            "Images",
            images.len(),
            active_images,
            layers,
            reclaim_text(layers - used, layers),
        ),
        row(
            "Containers",
            containers.len(),
            c_active,
            c_size,
            reclaim_text(c_reclaim, c_size),
        ),
        row(
            "Local Volumes",
            volumes.len(),
            v_active,
            v_size,
            reclaim_text(v_reclaim, v_size),
        ),
        row(
            "Build Cache",
            cache.len(),
            b_active,
            b_size,
            units::human_size(b_reclaim),
        ),
    ]
}

/// `system df`.
pub async fn df(ctx: &Ctx, a: &DfArgs) -> Result<i32> {
    let v: Value = ctx.client.get_json("/system/df").await?;
    let header = json!({"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE"});
    let table = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}";
    out(&render_rows(
        a.format.as_deref().unwrap_or(""),
        table,
        &header,
        &df_rows(&v),
    )?);
    if a.verbose {
        let mut s = String::from("\nImages space usage:\n\n");
        let mut t = String::from(
            "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE\tSHARED SIZE\tUNIQUE SIZE\tCONTAINERS\n",
        );
        for i in v["Images"].as_array().into_iter().flatten() {
            for r in super::image::image_rows(i, true) {
                let size = i["Size"].as_f64().unwrap_or(0.0);
                let shared = i["SharedSize"].as_f64().unwrap_or(0.0);
                t.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    r["Repository"].as_str().unwrap_or(""),
                    r["Tag"].as_str().unwrap_or(""),
                    r["ID"].as_str().unwrap_or(""),
                    r["CreatedSince"].as_str().unwrap_or(""),
                    units::human_size(size),
                    units::human_size(shared.max(0.0)),
                    units::human_size((size - shared.max(0.0)).max(0.0)),
                    i["Containers"].as_i64().unwrap_or(0)
                ));
            }
        }
        s.push_str(&tabwrite(&t));
        s.push_str("\nLocal Volumes space usage:\n\n");
        let mut t = String::from("VOLUME NAME\tLINKS\tSIZE\n");
        for vol in v["Volumes"].as_array().into_iter().flatten() {
            t.push_str(&format!(
                "{}\t{}\t{}\n",
                vol["Name"].as_str().unwrap_or(""),
                vol["UsageData"]["RefCount"].as_i64().unwrap_or(0),
                units::human_size(vol["UsageData"]["Size"].as_f64().unwrap_or(0.0))
            ));
        }
        s.push_str(&tabwrite(&t));
        out(&s);
    }
    Ok(0)
}

/// `system prune`.
#[derive(clap::Args, Debug, Clone)]
pub struct SystemPruneArgs {
    /// Remove all unused images not just dangling ones
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Provide filter values (e.g. "label=<key>=<value>")
    #[arg(long = "filter")]
    pub filter: Vec<String>,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Prune anonymous volumes
    #[arg(long)]
    pub volumes: bool,
}

/// `system prune`.
pub async fn system_prune(ctx: &Ctx, a: &SystemPruneArgs) -> Result<i32> {
    if !a.force {
        let mut w = String::from(
            "WARNING! This will remove:\n  - all stopped containers\n  - all networks not used by at least one container\n",
        );
        if a.volumes {
            w.push_str("  - all anonymous volumes not used by at least one container\n");
        }
        w.push_str(if a.all {
            "  - all images without at least one container associated to them\n"
        } else {
            "  - all dangling images\n"
        });
        w.push_str("  - unused build cache\n\nAre you sure you want to continue?");
        if !super::confirm(&w) {
            return Ok(0);
        }
    }
    let fq = |extra: Option<String>| -> Result<String> {
        let mut f = a.filter.clone();
        f.extend(extra);
        Ok(filters_json(&f)?
            .map(|f| format!("?filters={}", enc(&f)))
            .unwrap_or_default())
    };
    let mut total = 0.0;
    let mut s = String::new();
    let post = |path: String| async move {
        let resp = ctx
            .client
            .post_json(&path, &json!(null), HeaderMap::new())
            .await?;
        ctx.client.json_of::<Value>("prune", resp).await
    };
    let c = post(format!("/containers/prune{}", fq(None)?)).await?;
    let list: Vec<&str> = c["ContainersDeleted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !list.is_empty() {
        s.push_str("Deleted Containers:\n");
        for x in list {
            s.push_str(&format!("{x}\n"));
        }
        s.push('\n');
    }
    total += c["SpaceReclaimed"].as_f64().unwrap_or(0.0);
    let n = post(format!("/networks/prune{}", fq(None)?)).await?;
    let list: Vec<&str> = n["NetworksDeleted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !list.is_empty() {
        s.push_str("Deleted Networks:\n");
        for x in list {
            s.push_str(&format!("{x}\n"));
        }
        s.push('\n');
    }
    if a.volumes {
        let v = post(format!("/volumes/prune{}", fq(None)?)).await?;
        let list: Vec<&str> = v["VolumesDeleted"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !list.is_empty() {
            s.push_str("Deleted Volumes:\n");
            for x in list {
                s.push_str(&format!("{x}\n"));
            }
            s.push('\n');
        }
        total += v["SpaceReclaimed"].as_f64().unwrap_or(0.0);
    }
    let i = post(format!(
        "/images/prune{}",
        fq(Some(format!("dangling={}", !a.all)))?
    ))
    .await?;
    let text = super::image::prune_images_text(&i);
    if let Some(body) = text.split("Total reclaimed space").next() {
        s.push_str(body);
    }
    total += i["SpaceReclaimed"].as_f64().unwrap_or(0.0);
    match ctx
        .client
        .post_json(
            &format!("/build/prune{}", if a.all { "?all=1" } else { "" }),
            &json!(null),
            HeaderMap::new(),
        )
        .await
    {
        Ok(resp) => {
            let b: Value = ctx
                .client
                .json_of("build prune", resp)
                .await
                .unwrap_or(Value::Null);
            total += b["SpaceReclaimed"].as_f64().unwrap_or(0.0);
        }
        Err(e) if e.is_not_found() || e.status() == Some(501) => {}
        Err(e) => return Err(e.into()),
    }
    s.push_str(&format!(
        "Total reclaimed space: {}\n",
        units::human_size(total)
    ));
    out(&s);
    Ok(0)
}

/// `login`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoginArgs {
    /// Password
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Take the password from stdin
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    /// Username
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// SERVER
    pub server: Option<String>,
}

/// `login`.
pub async fn login(ctx: &mut Ctx, a: &LoginArgs) -> Result<i32> {
    let server = config::normalize_login_server(a.server.as_deref().unwrap_or(""));
    if a.password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
    }
    if a.password_stdin && a.password.is_some() {
        return Err(msg(
            "--password and --password-stdin are mutually exclusive",
        ));
    }
    if a.password_stdin && a.username.is_none() {
        return Err(msg("Must provide --username with --password-stdin"));
    }
    let stored = ctx.config.credentials(&server).ok().flatten();
    let username = match &a.username {
        Some(u) => u.clone(),
        None => {
            use std::io::{BufRead, Write};
            let default = stored
                .as_ref()
                .map(|c| c.username.clone())
                .unwrap_or_default();
            if default.is_empty() {
                eprint!("Username: ");
            } else {
                eprint!("Username ({default}): ");
            }
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|source| Error::Io {
                    op: "read",
                    path: "-".into(),
                    source,
                })?;
            let u = line.trim().to_string();
            if u.is_empty() { default } else { u }
        }
    };
    if username.is_empty() {
        return Err(msg("Error: Non-null Username Required"));
    }
    let password = if a.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_to_string(&mut p)
            .map_err(|source| Error::Io {
                op: "read",
                path: "-".into(),
                source,
            })?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = &a.password {
        p.clone()
    } else {
        term::read_password("Password: ").map_err(|source| Error::Io {
            op: "read password",
            path: "-".into(),
            source,
        })?
    };
    if password.is_empty() {
        return Err(msg("Error: Password Required"));
    }
    let mut creds = Credentials {
        username,
        password,
        identity_token: String::new(),
        server: server.clone(),
    };
    let resp = ctx
        .client
        .post_json("/auth", &creds.to_auth_config(), HeaderMap::new())
        .await?;
    let v: Value = ctx.client.json_of("auth", resp).await?;
    if let Some(t) = v["IdentityToken"].as_str().filter(|t| !t.is_empty()) {
        creds.identity_token = t.to_string();
        creds.password.clear();
    }
    ctx.config.store_credentials(&creds)?;
    ctx.config.save()?;
    if ctx.config.helper_for(&server).is_none() {
        eprintln!(
            "WARNING! Your password will be stored unencrypted in {}.\nConfigure a credential helper to remove this warning.\n",
            ctx.config.path().display()
        );
    }
    println!("{}", v["Status"].as_str().unwrap_or("Login Succeeded"));
    Ok(0)
}

/// `logout`.
pub fn logout(ctx: &mut Ctx, server: Option<&str>) -> Result<i32> {
    let server = config::normalize_login_server(server.unwrap_or(""));
    if ctx.config.erase_credentials(&server)? {
        println!(
            "Removing login credentials for {}",
            config::registry_host(&server)
        );
        ctx.config.save()?;
    } else {
        println!("Not logged in to {}", config::registry_host(&server));
    }
    Ok(0)
}

/// `context` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ContextCmd {
    /// List contexts
    #[command(alias = "list")]
    Ls {
        /// Format output using a custom template
        #[arg(long)]
        format: Option<String>,
        /// Only show context names
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Set the current context
    Use { name: String },
    /// Print the name of the current context
    Show,
    /// Display detailed information on one or more contexts
    Inspect {
        /// Format output using a custom template
        #[arg(short = 'f', long)]
        format: Option<String>,
        names: Vec<String>,
    },
    /// Create a context
    Create {
        /// Description of the context
        #[arg(long, default_value = "")]
        description: String,
        /// set the docker endpoint (host=URL)
        #[arg(long)]
        docker: String,
        name: String,
    },
    /// Remove one or more contexts
    #[command(alias = "remove")]
    Rm {
        /// Force the removal of a context in use
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `context ...`.
pub fn context(ctx: &mut Ctx, c: &ContextCmd) -> Result<i32> {
    let current = config::current_context_name(&ctx.host_flags, &ctx.config);
    match c {
        ContextCmd::Ls { format, quiet } => {
            let default_host =
                config::env_host().unwrap_or_else(|| crate::endpoint::DEFAULT_HOST.to_string());
            let mut rows = vec![json!({"Name": "default", "Current": current == "default",
                "Description": "Current DOCKER_HOST based configuration", "DockerEndpoint": default_host, "Error": ""})];
            for x in config::list_contexts(&ctx.config_dir)? {
                rows.push(json!({"Name": x.name, "Current": current == x.name, "Description": x.description,
                    "DockerEndpoint": x.host, "Error": ""}));
            }
            if *quiet {
                for r in &rows {
                    println!("{}", r["Name"].as_str().unwrap_or(""));
                }
                return Ok(0);
            }
            let table_rows: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if r["Current"].as_bool() == Some(true) && format.is_none() {
                        r["Name"] = json!(format!("{} *", r["Name"].as_str().unwrap_or("")));
                    }
                    r
                })
                .collect();
            let header = json!({"Name": "NAME", "Description": "DESCRIPTION", "DockerEndpoint": "DOCKER ENDPOINT", "Error": "ERROR", "Current": "CURRENT"});
            out(&render_rows(
                format.as_deref().unwrap_or(""),
                "table {{.Name}}\t{{.Description}}\t{{.DockerEndpoint}}\t{{.Error}}",
                &header,
                &table_rows,
            )?);
            Ok(0)
        }
        ContextCmd::Use { name } => {
            if name != "default" {
                config::load_context(&ctx.config_dir, name)?;
            }
            ctx.config.set_current_context(name);
            ctx.config.save()?;
            println!("{name}");
            eprintln!("Current context is now \"{name}\"");
            Ok(0)
        }
        ContextCmd::Show => {
            println!("{current}");
            Ok(0)
        }
        ContextCmd::Inspect { format, names } => {
            let names = if names.is_empty() {
                vec![current]
            } else {
                names.clone()
            };
            let mut objs = Vec::new();
            for n in &names {
                let path = ctx
                    .config_dir
                    .join("contexts/meta")
                    .join(config::context_dir_name(n))
                    .join("meta.json");
                match std::fs::read(&path) {
                    Ok(b) => objs.push(bytes::Bytes::from(b)),
                    Err(_) if n == "default" => {
                        let host = config::env_host()
                            .unwrap_or_else(|| crate::endpoint::DEFAULT_HOST.to_string());
                        objs.push(bytes::Bytes::from(
                            json!({"Name": "default", "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": false}}}).to_string(),
                        ));
                    }
                    Err(_) => return Err(config::Error::NoContext(n.clone()).into()),
                }
            }
            super::container::print_inspect(&objs, format.as_deref())?;
            Ok(0)
        }
        ContextCmd::Create {
            description,
            docker,
            name,
        } => {
            let mut host = None;
            for part in docker.split(',') {
                if let Some(h) = part.strip_prefix("host=") {
                    host = Some(h.to_string());
                }
            }
            let host = host.ok_or_else(|| msg("--docker: expected host=URL"))?;
            crate::endpoint::Endpoint::parse(&host, None).map_err(config::Error::from)?;
            if name == "default" || config::load_context(&ctx.config_dir, name).is_ok() {
                return Err(msg(format!("context {name:?} already exists")));
            }
            config::create_context(&ctx.config_dir, name, description, &host)?;
            println!("{name}");
            eprintln!("Successfully created context \"{name}\"");
            Ok(0)
        }
        ContextCmd::Rm { force, names } => {
            for n in names {
                if *n == current && !force {
                    return Err(msg(format!(
                        "context {n:?} is in use, set -f flag to force remove"
                    )));
                }
                config::remove_context(&ctx.config_dir, n)?;
                if ctx.config.current_context().as_deref() == Some(n.as_str()) {
                    ctx.config.set_current_context("default");
                    ctx.config.save()?;
                }
                println!("{n}");
            }
            Ok(0)
        }
    }
}
