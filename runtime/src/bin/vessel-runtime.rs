//! `vessel-runtime`: an OCI runtime with runc's command line, so podman,
//! conmon and containerd can use it in runc's place.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use oci_spec::runtime::{LinuxResources, Process};
use tracing_subscriber::layer::SubscriberExt;
use vessel_runtime::container::{self, CreateOptions, ExecOptions};
use vessel_runtime::{Root, events, foreground, spec};

#[derive(Parser)]
#[command(
    name = "vessel-runtime",
    about = "Vessel's OCI runtime (runc-compatible command line)",
    disable_version_flag = true
)]
struct Cli {
    /// Directory for container state.
    #[arg(
        long,
        global = true,
        default_value = "/run/vessel-runtime",
        env = "VESSEL_RUNTIME_ROOT"
    )]
    root: PathBuf,
    /// Write logs to this file instead of standard error.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log debug messages.
    #[arg(long, global = true)]
    debug: bool,
    /// Use systemd to manage cgroups (not supported: fails if set).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Run without host privileges (true, false or auto).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    /// Ignored (checkpointing is not supported).
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container (its process waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Create and start a container, and wait for it unless detached.
    Run(RunArgs),
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal to a container's init (or all its processes).
    Kill {
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        /// Signal name or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container and everything it holds.
    Delete {
        /// Kill the container first if it is running.
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run a process in a container.
    Exec(ExecArgs),
    /// List a container's processes.
    Ps {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Options passed to ps(1) for the table format.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Print resource statistics and OOM events as JSON lines.
    Events {
        /// Interval between statistics.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        interval: Duration,
        /// Print statistics once and exit.
        #[arg(long)]
        stats: bool,
        id: String,
    },
    /// Freeze all processes of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's resource limits.
    Update(UpdateArgs),
    /// Print the features this runtime supports as JSON.
    Features,
    /// List containers.
    #[command(alias = "ls")]
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Print only IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json into a bundle.
    Spec {
        /// The bundle directory.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// The bundle directory.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Unix socket that receives the terminal's master side.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// File to write the container's init PID to.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Do not use pivot_root (for roots on ramfs).
    #[arg(long)]
    no_pivot: bool,
    /// Keep the caller's session keyring.
    #[arg(long)]
    no_new_keyring: bool,
    /// Pass this many extra descriptors (from 3) to the container.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    create: CreateArgs,
    /// Do not wait for the container.
    #[arg(short, long)]
    detach: bool,
    /// Keep the container after it exits.
    #[arg(long)]
    keep: bool,
    /// Accepted for compatibility.
    #[arg(long, hide = true)]
    no_subreaper: bool,
}

#[derive(Args)]
struct ExecArgs {
    /// Unix socket that receives the terminal's master side.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Working directory.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Environment variables (KEY=VALUE).
    #[arg(short, long)]
    env: Vec<String>,
    /// Allocate a terminal.
    #[arg(short, long)]
    tty: bool,
    /// User as UID[:GID].
    #[arg(short, long)]
    user: Option<String>,
    /// Additional group IDs.
    #[arg(short = 'g', long)]
    additional_gids: Vec<u32>,
    /// A process.json describing the process.
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Do not wait for the process.
    #[arg(short, long)]
    detach: bool,
    /// File to write the process's PID to.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Accepted for compatibility (SELinux is not supported).
    #[arg(long)]
    process_label: Option<String>,
    /// Accepted for compatibility (AppArmor is not supported).
    #[arg(long)]
    apparmor: Option<String>,
    /// Set no_new_privs.
    #[arg(long)]
    no_new_privs: bool,
    /// Add a capability.
    #[arg(short, long)]
    cap: Vec<String>,
    /// Pass this many extra descriptors (from 3) to the process.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for compatibility.
    #[arg(long, hide = true)]
    ignore_paused: bool,
    id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct UpdateArgs {
    /// A JSON LinuxResources document ("-" for standard input).
    #[arg(short, long)]
    resources: Option<PathBuf>,
    #[arg(long)]
    blkio_weight: Option<u16>,
    #[arg(long)]
    cpu_period: Option<u64>,
    #[arg(long)]
    cpu_quota: Option<i64>,
    #[arg(long)]
    cpu_share: Option<u64>,
    #[arg(long)]
    cpu_rt_period: Option<u64>,
    #[arg(long)]
    cpu_rt_runtime: Option<i64>,
    #[arg(long)]
    cpuset_cpus: Option<String>,
    #[arg(long)]
    cpuset_mems: Option<String>,
    /// Memory limit (bytes, or with a k/m/g suffix).
    #[arg(long, value_parser = parse_bytes)]
    memory: Option<i64>,
    #[arg(long, value_parser = parse_bytes)]
    memory_reservation: Option<i64>,
    #[arg(long, value_parser = parse_bytes)]
    memory_swap: Option<i64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    id: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?}")),
    };
    if secs <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_bytes(s: &str) -> Result<i64, String> {
    if s == "-1" {
        return Ok(-1);
    }
    let lower = s.to_ascii_lowercase();
    let lower = lower.trim_end_matches('b');
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('t') => (&lower[..lower.len() - 1], 1 << 40),
        _ => (lower, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    #[allow(clippy::cast_precision_loss)]
    let bytes = n * mult as f64;
    Ok(bytes as i64)
}

/// A tracing layer that writes runc-style log lines: JSON objects with
/// `level`, `msg` and `time`, or logrus-like text.
struct LogLayer {
    out: std::sync::Mutex<Box<dyn Write + Send>>,
    json: bool,
}

struct MsgVisitor(String, Vec<(String, String)>);

impl tracing::field::Visit for MsgVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        } else {
            self.1
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        } else {
            self.1.push((field.name().to_string(), value.to_string()));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut v = MsgVisitor(String::new(), Vec::new());
        event.record(&mut v);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let time = vessel_runtime::state::now_rfc3339();
        let mut msg = v.0;
        for (k, val) in &v.1 {
            let _ = write!(msg, " {k}={val}");
        }
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!("time={time:?} level={level} msg={msg:?}")
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
        }
    }
}

fn init_logging(cli: &Cli) -> Result<()> {
    let out: Box<dyn Write + Send> = match &cli.log {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("open log file {}", p.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let level = if cli.debug {
        tracing::level_filters::LevelFilter::DEBUG
    } else {
        tracing::level_filters::LevelFilter::WARN
    };
    let layer = LogLayer {
        out: std::sync::Mutex::new(out),
        json: matches!(cli.log_format, LogFormat::Json),
    };
    let subscriber = tracing_subscriber::registry().with(level).with(layer);
    tracing::subscriber::set_global_default(subscriber).context("install logger")?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("vessel-runtime version {}", vessel_runtime::VERSION);
        println!("spec: {}", spec::OCI_VERSION);
        println!(
            "libseccomp: {}",
            vessel_runtime::seccomp::libseccomp_version()
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging(&cli) {
        eprintln!("vessel-runtime: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = match e.downcast_ref::<vessel_runtime::Error>() {
                Some(err) => err.chain(),
                None => format!("{e:#}"),
            };
            tracing::error!("{msg}");
            eprintln!("vessel-runtime: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn rootless(cli: &Cli) -> bool {
    match cli.rootless.as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => !nix::unistd::geteuid().is_root(),
    }
}

fn create_options(a: &CreateArgs, rootless: bool) -> CreateOptions {
    CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        console_fd: None,
        stdio: None,
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
        rootless,
    }
}

fn run(cli: Cli) -> Result<u8> {
    if cli.systemd_cgroup {
        bail!("the systemd cgroup driver is not supported; use cgroupfs (drop --systemd-cgroup)");
    }
    let rootless = rootless(&cli);
    let rootless_spec = cli.rootless.as_deref() == Some("true");
    let Some(command) = cli.command else {
        bail!("no command given; see --help");
    };
    let root = Root::open(&cli.root)?;
    match command {
        Command::Create(a) => {
            container::create(&root, &create_options(&a, rootless))?;
        }
        Command::Start { id } => container::start(&root, &id)?,
        Command::Run(a) => return run_container(&root, &a, rootless),
        Command::State { id } => {
            let state = container::state(&root, &id)?;
            println!("{}", serde_json::to_string_pretty(&state.report(&root))?);
        }
        Command::Kill { all, id, signal } => {
            let sig = vessel_runtime::parse_signal(&signal)?;
            container::kill(&root, &id, sig, all)?;
        }
        Command::Delete { force, id } => container::delete(&root, &id, force)?,
        Command::Exec(a) => return exec(&root, &a),
        Command::Ps {
            format,
            id,
            ps_args,
        } => ps(&root, &id, &format, &ps_args)?,
        Command::Events {
            interval,
            stats,
            id,
        } => {
            let mut out = std::io::stdout();
            if stats {
                events::stats_once(&root, &id, &mut out)?;
            } else {
                events::stream(&root, &id, interval, &mut out)?;
            }
        }
        Command::Pause { id } => container::pause(&root, &id)?,
        Command::Resume { id } => container::resume(&root, &id)?,
        Command::Update(a) => update(&root, &a)?,
        Command::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&vessel_runtime::features::document())?
            );
        }
        Command::List { format, quiet } => list(&root, &format, quiet)?,
        Command::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} already exists; remove it first", path.display());
            }
            let doc = serde_json::to_string_pretty(&spec::default_spec(rootless_spec))?;
            std::fs::write(&path, doc).with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(0)
}

fn run_container(root: &Root, a: &RunArgs, rootless: bool) -> Result<u8> {
    let mut opts = create_options(&a.create, rootless);
    let bundle = spec::load_bundle(&opts.bundle)?;
    if vessel_runtime::vm::wants_vm(&bundle.spec) {
        if a.detach {
            bail!(
                "a microVM container runs in the foreground here; detached, it needs a shim (vessel-shim)"
            );
        }
        return run_vm(&bundle, &opts.id);
    }
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(Process::terminal)
        .unwrap_or(false);
    if a.detach {
        if terminal && opts.console_socket.is_none() {
            bail!("a terminal needs --console-socket when running detached");
        }
        container::create_loaded(root, &opts, bundle)?;
        container::start(root, &opts.id)?;
        return Ok(0);
    }
    let sigfd = foreground::signal_fd()?;
    let listener = if terminal && opts.console_socket.is_none() {
        let l = foreground::ConsoleListener::new()?;
        opts.console_socket = Some(l.path());
        Some(l)
    } else {
        None
    };
    let state = container::create_loaded(root, &opts, bundle)?;
    let master = listener
        .as_ref()
        .map(foreground::ConsoleListener::receive)
        .transpose()?;
    let started = container::start(root, &opts.id);
    let code = match started {
        Ok(()) => foreground::wait(state.pid, &sigfd, master.as_ref()),
        Err(e) => Err(e),
    };
    if !a.keep {
        if let Err(e) = container::delete(root, &opts.id, true) {
            tracing::warn!(error = %e.chain(), "delete after run");
        }
    }
    Ok(code?.clamp(0, 255) as u8)
}

/// `run` for a bundle that asks for a microVM: boot it, run the process
/// with our stdio, power it off, exit with the process's code.
fn run_vm(bundle: &spec::Bundle, id: &str) -> Result<u8> {
    use vessel_runtime::vm;
    let plan = vm::plan(bundle, id)?;
    let work = std::env::temp_dir().join(format!("vessel-vm-{id}-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let booted = vm::boot(&plan, &work);
    let result = booted.map_err(anyhow::Error::from).and_then(|b| {
        // `boot` already read the agent's Ready.
        let mut client = vessel_agent::host::Client::after_ready(b.channel, b.ready)?;
        let stdin: Box<dyn std::io::Read + Send> = Box::new(std::io::stdin());
        let exit = client.run(
            b.start,
            Some(stdin),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        );
        drop(client);
        let outcome = b.sandbox.wait();
        tracing::debug!(exit = ?outcome.exit, "vm ended");
        Ok(exit?)
    });
    let _ = std::fs::remove_dir_all(&work);
    Ok(result?.code.clamp(0, 255) as u8)
}

fn exec_process(root: &Root, a: &ExecArgs) -> Result<Process> {
    if let Some(p) = &a.process {
        let text = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
        let process: Process =
            serde_json::from_slice(&text).with_context(|| format!("parse {}", p.display()))?;
        return Ok(process);
    }
    if a.command.is_empty() {
        bail!("exec needs a command or --process");
    }
    let state = container::state(root, &a.id)?;
    let mut p = state.config.process().clone().unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &a.env {
        let key = kv.split('=').next().unwrap_or(kv);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(u) = &a.user {
        let (uid, gid) = u
            .split_once(':')
            .map_or((u.as_str(), None), |(x, y)| (x, Some(y)));
        let user = p.user_mut();
        user.set_uid(
            uid.parse()
                .map_err(|_| anyhow!("invalid user {u:?}: use UID[:GID]"))?,
        );
        if let Some(g) = gid {
            user.set_gid(g.parse().map_err(|_| anyhow!("invalid group in {u:?}"))?);
        }
    }
    if !a.additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(a.additional_gids.clone()));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !a.cap.is_empty() {
        let mut wanted = oci_spec::runtime::Capabilities::new();
        for name in &a.cap {
            let cap: oci_spec::runtime::Capability =
                serde_json::from_value(serde_json::Value::String(name.clone()))
                    .map_err(|_| anyhow!("unknown capability {name:?}"))?;
            wanted.insert(cap);
        }
        let with = |set: &Option<oci_spec::runtime::Capabilities>| {
            let mut s = set.clone().unwrap_or_default();
            s.extend(wanted.iter().copied());
            Some(s)
        };
        let mut caps = p.capabilities().clone().unwrap_or_default();
        caps.set_bounding(with(caps.bounding()));
        caps.set_effective(with(caps.effective()));
        caps.set_permitted(with(caps.permitted()));
        caps.set_inheritable(with(caps.inheritable()));
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

fn exec(root: &Root, a: &ExecArgs) -> Result<u8> {
    let process = exec_process(root, a)?;
    let terminal = process.terminal().unwrap_or(false);
    let mut opts = ExecOptions {
        id: a.id.clone(),
        process,
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        console_fd: None,
        stdio: None,
        preserve_fds: a.preserve_fds,
    };
    if a.detach {
        if terminal && opts.console_socket.is_none() {
            bail!("a terminal needs --console-socket when running detached");
        }
        container::exec(root, &opts)?;
        return Ok(0);
    }
    let sigfd = foreground::signal_fd()?;
    let listener = if terminal && opts.console_socket.is_none() {
        let l = foreground::ConsoleListener::new()?;
        opts.console_socket = Some(l.path());
        Some(l)
    } else {
        None
    };
    let pid = container::exec(root, &opts)?;
    let master = listener
        .as_ref()
        .map(foreground::ConsoleListener::receive)
        .transpose()?;
    let code = foreground::wait(pid, &sigfd, master.as_ref())?;
    Ok(code.clamp(0, 255) as u8)
}

fn ps(root: &Root, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let pids = container::pids(root, id)?;
    match format {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("run ps")?;
            if !out.status.success() {
                bail!(
                    "ps {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let pid_col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .ok_or_else(|| anyhow!("ps output has no PID column"))?;
            println!("{header}");
            for line in lines {
                let pid = line
                    .split_whitespace()
                    .nth(pid_col)
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    println!("{line}");
                }
            }
        }
        other => bail!("invalid format {other:?}: use table or json"),
    }
    Ok(())
}

fn update(root: &Root, a: &UpdateArgs) -> Result<()> {
    let mut res: LinuxResources = match &a.resources {
        Some(p) if p == Path::new("-") => serde_json::from_reader(std::io::stdin())
            .context("parse resources from standard input")?,
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
            serde_json::from_slice(&text).with_context(|| format!("parse {}", p.display()))?
        }
        None => LinuxResources::default(),
    };
    if a.blkio_weight.is_some() {
        let mut b = res.block_io().clone().unwrap_or_default();
        b.set_weight(a.blkio_weight);
        res.set_block_io(Some(b));
    }
    if a.cpu_period.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_share.is_some()
        || a.cpu_rt_period.is_some()
        || a.cpu_rt_runtime.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
    {
        let mut c = res.cpu().clone().unwrap_or_default();
        if a.cpu_period.is_some() {
            c.set_period(a.cpu_period);
        }
        if a.cpu_quota.is_some() {
            c.set_quota(a.cpu_quota);
        }
        if a.cpu_share.is_some() {
            c.set_shares(a.cpu_share);
        }
        if a.cpu_rt_period.is_some() {
            c.set_realtime_period(a.cpu_rt_period);
        }
        if a.cpu_rt_runtime.is_some() {
            c.set_realtime_runtime(a.cpu_rt_runtime);
        }
        if a.cpuset_cpus.is_some() {
            c.set_cpus(a.cpuset_cpus.clone());
        }
        if a.cpuset_mems.is_some() {
            c.set_mems(a.cpuset_mems.clone());
        }
        res.set_cpu(Some(c));
    }
    if a.memory.is_some() || a.memory_reservation.is_some() || a.memory_swap.is_some() {
        let mut m = res.memory().unwrap_or_default();
        if a.memory.is_some() {
            m.set_limit(a.memory);
        }
        if a.memory_reservation.is_some() {
            m.set_reservation(a.memory_reservation);
        }
        if a.memory_swap.is_some() {
            m.set_swap(a.memory_swap);
        }
        res.set_memory(Some(m));
    }
    if let Some(limit) = a.pids_limit {
        let mut p = oci_spec::runtime::LinuxPids::default();
        p.set_limit(limit);
        res.set_pids(Some(p));
    }
    container::update(root, &a.id, &res)?;
    Ok(())
}

fn list(root: &Root, format: &str, quiet: bool) -> Result<()> {
    let states = container::list(root)?;
    if quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(());
    }
    let hier = vessel_runtime::cgroups::Hierarchies::detect();
    match format {
        "json" => {
            let reports: Vec<_> = states.iter().map(|s| s.report_in(root, &hier)).collect();
            println!("{}", serde_json::to_string(&reports)?);
        }
        "table" => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<24} {:<8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            )?;
            for s in &states {
                let r = s.report_in(root, &hier);
                writeln!(
                    out,
                    "{:<24} {:<8} {:<10} {:<40} {:<32} {}",
                    r.id,
                    r.pid,
                    r.status,
                    r.bundle.display(),
                    r.created,
                    if r.owner.is_empty() { "root" } else { &r.owner }
                )?;
            }
        }
        other => bail!("invalid format {other:?}: use table or json"),
    }
    Ok(())
}
