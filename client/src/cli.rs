//! The command line: docker's global flags, verbs and their management
//! forms (`container ls`, `image rm`, ...), and dispatch to [`commands`].
//!
//! [`main`] is what the binary runs: it parses arguments, sets up logging,
//! builds the client from flags, environment and config, runs the command
//! on a single-threaded runtime and turns errors into docker's messages
//! and exit codes.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use crate::api::Client;
use crate::commands::container::{
    AttachArgs, CommitArgs, ContainersArgs, CpArgs, CreateArgs, ExecArgs, ExportArgs, InspectArgs,
    KillArgs, LogsArgs, PortArgs, PruneArgs, PsArgs, RenameArgs, RmArgs, RunArgs, StartArgs,
    StatsArgs, StopArgs, TopArgs, UpdateArgs,
};
use crate::commands::image::{
    BuildArgs, HistoryArgs, ImagePruneArgs, ImagesArgs, ImportArgs, LoadArgs, PullArgs, PushArgs,
    RmiArgs, SaveArgs, TagArgs,
};
use crate::commands::resources::{NetworkCmd, VolumeCmd};
use crate::commands::system::{
    ContextCmd, DfArgs, EventsArgs, InfoArgs, LoginArgs, SystemPruneArgs, VersionArgs,
};
use crate::commands::{self, Ctx, Error, container, image, resources, system};
use crate::config::{self, ConfigFile, HostFlags};

/// `vessel`: docker's command line over the Docker Engine API.
#[derive(Parser, Debug)]
#[command(
    name = "vessel",
    about = "A self-sufficient runtime for containers",
    disable_version_flag = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Location of client config files
    #[arg(long = "config", value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// Name of the context to use to connect to the daemon
    #[arg(short = 'c', long)]
    pub context: Option<String>,
    /// Enable debug mode
    #[arg(short = 'D', long)]
    pub debug: bool,
    /// Daemon socket to connect to
    #[arg(short = 'H', long = "host", value_name = "HOST")]
    pub host: Vec<String>,
    /// Set the logging level ("debug", "info", "warn", "error", "fatal")
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// Use TLS; implied by --tlsverify
    #[arg(long)]
    pub tls: bool,
    /// Trust certs signed only by this CA
    #[arg(long)]
    pub tlscacert: Option<PathBuf>,
    /// Path to TLS certificate file
    #[arg(long)]
    pub tlscert: Option<PathBuf>,
    /// Path to TLS key file
    #[arg(long)]
    pub tlskey: Option<PathBuf>,
    /// Use TLS and verify the remote
    #[arg(long)]
    pub tlsverify: bool,
    /// Print version information and quit
    #[arg(short = 'v', long = "version")]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Top-level verbs.
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Create and run a new container from an image
    Run(RunArgs),
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// List containers
    Ps(PsArgs),
    /// Build an image from a Dockerfile
    Build(BuildArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// List images
    Images(ImagesArgs),
    /// Log in to a registry
    Login(LoginArgs),
    /// Log out from a registry
    Logout { server: Option<String> },
    /// Show the version information
    Version(VersionArgs),
    /// Display system-wide information
    Info(InfoArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach(AttachArgs),
    /// Create a new image from a container's changes
    Commit(CommitArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(CpArgs),
    /// Create a new container
    Create(CreateArgs),
    /// Inspect changes to files or directories on a container's filesystem
    Diff { container: String },
    /// Get real time events from the server
    Events(EventsArgs),
    /// Export a container's filesystem as a tar archive
    Export(ExportArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(ImportArgs),
    /// Return low-level information on Docker objects
    Inspect(InspectArgs),
    /// Kill one or more running containers
    Kill(KillArgs),
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// Pause all processes within one or more containers
    Pause(ContainersArgs),
    /// List port mappings or a specific mapping for the container
    Port(PortArgs),
    /// Rename a container
    Rename(RenameArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Remove one or more containers
    Rm(RmArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(SaveArgs),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(StatsArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// Display the running processes of a container
    Top(TopArgs),
    /// Unpause all processes within one or more containers
    Unpause(ContainersArgs),
    /// Update configuration of one or more containers
    Update(UpdateArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(ContainersArgs),
    /// Manage containers
    Container {
        #[command(subcommand)]
        cmd: ContainerCmd,
    },
    /// Manage images
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Manage volumes
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
    },
    /// Manage networks
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// Manage the daemon
    System {
        #[command(subcommand)]
        cmd: SystemCmd,
    },
    /// Manage contexts
    Context {
        #[command(subcommand)]
        cmd: ContextCmd,
    },
    /// Generate the autocompletion script for the specified shell
    Completion { shell: clap_complete::Shell },
}

/// `container ...`.
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum ContainerCmd {
    /// Attach local standard input, output, and error streams to a running container
    Attach(AttachArgs),
    /// Create a new image from a container's changes
    Commit(CommitArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(CpArgs),
    /// Create a new container
    Create(CreateArgs),
    /// Inspect changes to files or directories on a container's filesystem
    Diff { container: String },
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// Export a container's filesystem as a tar archive
    Export(ExportArgs),
    /// Display detailed information on one or more containers
    Inspect(InspectArgs),
    /// Kill one or more running containers
    Kill(KillArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// List containers
    #[command(aliases = ["ps", "list"])]
    Ls(PsArgs),
    /// Pause all processes within one or more containers
    Pause(ContainersArgs),
    /// List port mappings or a specific mapping for the container
    Port(PortArgs),
    /// Remove all stopped containers
    Prune(PruneArgs),
    /// Rename a container
    Rename(RenameArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Remove one or more containers
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Create and run a new container from an image
    Run(RunArgs),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(StatsArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Display the running processes of a container
    Top(TopArgs),
    /// Unpause all processes within one or more containers
    Unpause(ContainersArgs),
    /// Update configuration of one or more containers
    Update(UpdateArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(ContainersArgs),
}

/// `image ...`.
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum ImageCmd {
    /// Build an image from a Dockerfile
    Build(BuildArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(ImportArgs),
    /// Display detailed information on one or more images
    Inspect(InspectArgs),
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// List images
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Remove unused images
    Prune(ImagePruneArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// Remove one or more images
    #[command(alias = "remove")]
    Rm(RmiArgs),
    /// Save one or more images to a tar archive
    Save(SaveArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
}

/// `system ...`.
#[derive(Subcommand, Debug)]
pub enum SystemCmd {
    /// Show docker disk usage
    Df(DfArgs),
    /// Get real time events from the server
    Events(EventsArgs),
    /// Display system-wide information
    Info(InfoArgs),
    /// Remove unused data
    Prune(SystemPruneArgs),
}

/// Run one command.
pub async fn dispatch(ctx: &mut Ctx, cmd: Command) -> commands::Result<i32> {
    use Command as C;
    match cmd {
        C::Run(a) => container::run(ctx, &a).await,
        C::Create(a) => container::create(ctx, &a).await,
        C::Exec(a) => container::exec(ctx, &a).await,
        C::Ps(a) => container::ps(ctx, &a).await,
        C::Build(a) => image::build(ctx, &a).await,
        C::Pull(a) => image::pull(ctx, &a).await,
        C::Push(a) => image::push(ctx, &a).await,
        C::Images(a) => image::images(ctx, &a).await,
        C::Login(a) => system::login(ctx, &a).await,
        C::Logout { server } => system::logout(ctx, server.as_deref()),
        C::Version(a) => system::version(ctx, &a).await,
        C::Info(a) => system::info(ctx, &a).await,
        C::Attach(a) => container::attach(ctx, &a).await,
        C::Commit(a) => container::commit(ctx, &a).await,
        C::Cp(a) => container::cp(ctx, &a).await,
        C::Diff { container } => container::diff(ctx, &container).await,
        C::Events(a) => system::events(ctx, &a).await,
        C::Export(a) => container::export(ctx, &a).await,
        C::History(a) => image::history(ctx, &a).await,
        C::Import(a) => image::import(ctx, &a).await,
        C::Inspect(a) => container::inspect(ctx, &a, None).await,
        C::Kill(a) => container::kill(ctx, &a).await,
        C::Load(a) => image::load(ctx, &a).await,
        C::Logs(a) => container::logs(ctx, &a).await,
        C::Pause(a) => container::simple_verb(ctx, &a, "pause").await,
        C::Unpause(a) => container::simple_verb(ctx, &a, "unpause").await,
        C::Port(a) => container::port(ctx, &a).await,
        C::Rename(a) => container::rename(ctx, &a).await,
        C::Restart(a) => container::stop_or_restart(ctx, &a, "restart").await,
        C::Stop(a) => container::stop_or_restart(ctx, &a, "stop").await,
        C::Rm(a) => container::rm(ctx, &a).await,
        C::Rmi(a) => image::rmi(ctx, &a).await,
        C::Save(a) => image::save(ctx, &a).await,
        C::Start(a) => container::start(ctx, &a).await,
        C::Stats(a) => container::stats(ctx, &a).await,
        C::Tag(a) => image::tag(ctx, &a).await,
        C::Top(a) => container::top(ctx, &a).await,
        C::Update(a) => container::update(ctx, &a).await,
        C::Wait(a) => container::wait(ctx, &a).await,
        C::Container { cmd } => dispatch_container(ctx, cmd).await,
        C::Image { cmd } => dispatch_image(ctx, cmd).await,
        C::Volume { cmd } => resources::volume(ctx, &cmd).await,
        C::Network { cmd } => resources::network(ctx, &cmd).await,
        C::System { cmd } => match cmd {
            SystemCmd::Df(a) => system::df(ctx, &a).await,
            SystemCmd::Events(a) => system::events(ctx, &a).await,
            SystemCmd::Info(a) => system::info(ctx, &a).await,
            SystemCmd::Prune(a) => system::system_prune(ctx, &a).await,
        },
        C::Context { cmd } => system::context(ctx, &cmd),
        C::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vessel", &mut std::io::stdout());
            Ok(0)
        }
    }
}

async fn dispatch_container(ctx: &mut Ctx, cmd: ContainerCmd) -> commands::Result<i32> {
    use ContainerCmd as C;
    match cmd {
        C::Attach(a) => container::attach(ctx, &a).await,
        C::Commit(a) => container::commit(ctx, &a).await,
        C::Cp(a) => container::cp(ctx, &a).await,
        C::Create(a) => container::create(ctx, &a).await,
        C::Diff { container } => container::diff(ctx, &container).await,
        C::Exec(a) => container::exec(ctx, &a).await,
        C::Export(a) => container::export(ctx, &a).await,
        C::Inspect(a) => container::inspect(ctx, &a, Some("container")).await,
        C::Kill(a) => container::kill(ctx, &a).await,
        C::Logs(a) => container::logs(ctx, &a).await,
        C::Ls(a) => container::ps(ctx, &a).await,
        C::Pause(a) => container::simple_verb(ctx, &a, "pause").await,
        C::Port(a) => container::port(ctx, &a).await,
        C::Prune(a) => container::prune(ctx, &a).await,
        C::Rename(a) => container::rename(ctx, &a).await,
        C::Restart(a) => container::stop_or_restart(ctx, &a, "restart").await,
        C::Rm(a) => container::rm(ctx, &a).await,
        C::Run(a) => container::run(ctx, &a).await,
        C::Start(a) => container::start(ctx, &a).await,
        C::Stats(a) => container::stats(ctx, &a).await,
        C::Stop(a) => container::stop_or_restart(ctx, &a, "stop").await,
        C::Top(a) => container::top(ctx, &a).await,
        C::Unpause(a) => container::simple_verb(ctx, &a, "unpause").await,
        C::Update(a) => container::update(ctx, &a).await,
        C::Wait(a) => container::wait(ctx, &a).await,
    }
}

async fn dispatch_image(ctx: &mut Ctx, cmd: ImageCmd) -> commands::Result<i32> {
    use ImageCmd as I;
    match cmd {
        I::Build(a) => image::build(ctx, &a).await,
        I::History(a) => image::history(ctx, &a).await,
        I::Import(a) => image::import(ctx, &a).await,
        I::Inspect(a) => container::inspect(ctx, &a, Some("image")).await,
        I::Load(a) => image::load(ctx, &a).await,
        I::Ls(a) => image::images(ctx, &a).await,
        I::Prune(a) => image::prune(ctx, &a).await,
        I::Pull(a) => image::pull(ctx, &a).await,
        I::Push(a) => image::push(ctx, &a).await,
        I::Rm(a) => image::rmi(ctx, &a).await,
        I::Save(a) => image::save(ctx, &a).await,
        I::Tag(a) => image::tag(ctx, &a).await,
    }
}

fn init_logging(cli: &Cli) {
    let level = if cli.debug {
        "debug".to_string()
    } else {
        match cli.log_level.as_str() {
            "fatal" => "error".to_string(),
            l => l.to_string(),
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(format!("vessel_cli={level}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("vessel_cli=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}

fn build_ctx(cli: &Cli) -> commands::Result<Ctx> {
    let config_dir = config::config_dir(cli.config.as_deref());
    let config = ConfigFile::load(&config_dir)?;
    let host_flags = HostFlags {
        hosts: cli.host.clone(),
        context: cli.context.clone(),
        tls: cli.tls,
        tlsverify: cli.tlsverify,
        tlscacert: cli.tlscacert.clone(),
        tlscert: cli.tlscert.clone(),
        tlskey: cli.tlskey.clone(),
    };
    let endpoint = config::resolve_endpoint(&host_flags, &config, &config_dir)?;
    let version = std::env::var("DOCKER_API_VERSION")
        .ok()
        .filter(|v| !v.is_empty());
    let mut client = Client::new(endpoint, version)?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in config.http_headers() {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(&v),
        ) {
            headers.insert(k, v);
        }
    }
    client.set_extra_headers(headers);
    Ok(Ctx {
        client: Arc::new(client),
        config,
        config_dir,
        host_flags,
    })
}

/// Parse arguments, run, and return the process exit status.
pub fn main() -> i32 {
    // Behave like a normal Unix tool when the reader of a pipe goes away.
    // SAFETY: restoring the default disposition of SIGPIPE has no
    // preconditions; no other thread exists yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let mut cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => 125,
            };
            let _ = e.print();
            return code;
        }
    };
    if cli.version {
        println!("Vessel version {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    init_logging(&cli);
    let Some(cmd) = cli.command.take() else {
        let _ = Cli::command().print_help();
        println!();
        return 0;
    };
    let mut ctx = match build_ctx(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}", commands::error_chain(&e));
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(dispatch(&mut ctx, cmd));
    // Blocking readers of stdin may still be parked; do not wait for them.
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            let code = e.exit_code();
            let text = match &e {
                Error::Status { message, .. } => message.clone(),
                other => commands::error_chain(other),
            };
            if !text.is_empty() {
                eprintln!("{text}");
            }
            code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_stops_at_the_image() {
        let cli = Cli::try_parse_from([
            "vessel",
            "run",
            "--rm",
            "-it",
            "-e",
            "A=1",
            "busybox",
            "sh",
            "-c",
            "echo -n hi",
        ])
        .unwrap();
        let Some(Command::Run(r)) = cli.command else {
            panic!("not run")
        };
        assert!(r.opts.tty && r.opts.interactive);
        assert_eq!(r.opts.rm, Some(true));
        assert_eq!(r.image_and_args, vec!["busybox", "sh", "-c", "echo -n hi"]);
        let cli = Cli::try_parse_from(["vessel", "run", "busybox", "-it"]).unwrap();
        let Some(Command::Run(r)) = cli.command else {
            panic!("not run")
        };
        assert!(!r.opts.tty);
        assert_eq!(r.image_and_args, vec!["busybox", "-it"]);
    }

    #[test]
    fn bool_flags_take_false() {
        let cli = Cli::try_parse_from(["vessel", "run", "--sig-proxy=false", "--init", "busybox"])
            .unwrap();
        let Some(Command::Run(r)) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.opts.sig_proxy, Some(false));
        assert_eq!(r.opts.init, Some(true));
    }

    #[test]
    fn exec_and_management_forms() {
        let cli = Cli::try_parse_from(["vessel", "exec", "-it", "c1", "ls", "-l"]).unwrap();
        let Some(Command::Exec(e)) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(e.container_and_cmd, vec!["c1", "ls", "-l"]);
        assert!(Cli::try_parse_from(["vessel", "container", "ls", "-a"]).is_ok());
        assert!(Cli::try_parse_from(["vessel", "container", "ps"]).is_ok());
        assert!(Cli::try_parse_from(["vessel", "image", "rm", "x"]).is_ok());
        assert!(
            Cli::try_parse_from(["vessel", "-H", "unix:///x", "--log-level", "debug", "ps"])
                .is_ok()
        );
    }
}
