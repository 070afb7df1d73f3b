//! Build arguments, ENV/ARG scoping and the expansion of instructions into
//! [`Step`]s, the resolved form the executor runs.
//!
//! Scoping rules (from the Dockerfile reference):
//! - ARGs before the first FROM form the global scope. They are visible in
//!   FROM lines (image and `--platform`) and nowhere else, unless a stage
//!   declares the same ARG again (with or without a default).
//! - An ARG inside a stage is visible from the next instruction to the end
//!   of the stage and in stages based on it (`FROM <stage>`).
//! - Its value is the `--build-arg` value if one was given, else its
//!   default, else the global ARG's value (or an automatic platform ARG),
//!   else the value it already has; without any of these it is declared
//!   but unset.
//! - ENV always wins over an ARG of the same name; the base image's ENV is
//!   in scope from the start of the stage.
//! - Each instruction sees the values from before it: `ENV a=1 b=$a` sets
//!   `b` from the previous `a`.
//! - The predefined proxy ARGs (`HTTP_PROXY`, `no_proxy`, ...) are usable
//!   without an ARG line when given with `--build-arg`; they reach RUN's
//!   environment but stay out of the image history unless declared.

use std::collections::BTreeMap;

use super::expand::{self, Mode, Vars};
use super::heredoc;
use super::instructions::{
    ArgDecl, Command, Healthcheck, Instruction, Kind, Network, Run, RunMount, Security, Source,
};
use super::values::{self, Chmod, PortSpec};
use super::{Error, ErrorKind, Word};

/// Build arguments whose names Docker predefines: usable without an ARG
/// instruction and kept out of the image history.
pub const PREDEFINED_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Whether `name` is one of [`PREDEFINED_ARGS`].
pub fn is_predefined_arg(name: &str) -> bool {
    PREDEFINED_ARGS.contains(&name)
}

/// The values a build starts with: `--build-arg`s, and the automatic
/// platform ARGs of the global scope (`TARGETPLATFORM`, `BUILDARCH`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildArgs {
    values: BTreeMap<String, String>,
    automatic: BTreeMap<String, String>,
}

impl BuildArgs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a `--build-arg NAME=VALUE`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.values.insert(name.into(), value.into());
        self
    }

    /// The `--build-arg` value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// All `--build-arg`s, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Sets an automatic global-scope ARG.
    pub fn set_automatic(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> &mut Self {
        self.automatic.insert(name.into(), value.into());
        self
    }

    /// Sets the eight automatic platform ARGs from `os/arch[/variant]`
    /// strings for the build and target platforms.
    pub fn set_platforms(&mut self, build: &str, target: &str) -> &mut Self {
        for (prefix, platform) in [("BUILD", build), ("TARGET", target)] {
            let mut parts = platform.splitn(3, '/');
            let os = parts.next().unwrap_or_default();
            let arch = parts.next().unwrap_or_default();
            let variant = parts.next().unwrap_or_default();
            self.set_automatic(format!("{prefix}PLATFORM"), platform);
            self.set_automatic(format!("{prefix}OS"), os);
            self.set_automatic(format!("{prefix}ARCH"), arch);
            self.set_automatic(format!("{prefix}VARIANT"), variant);
        }
        self
    }

    fn automatic(&self, name: &str) -> Option<&str> {
        self.automatic.get(name).map(String::as_str)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for BuildArgs {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut a = BuildArgs::new();
        for (k, v) in iter {
            a.set(k, v);
        }
        a
    }
}

fn upsert(list: &mut Vec<(String, Option<String>)>, name: &str, value: Option<String>) {
    match list.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => list.push((name.to_string(), value)),
    }
}

fn err_at(ins_line: usize, text: &str, kind: ErrorKind) -> Error {
    Error {
        line: ins_line,
        text: text.to_string(),
        kind,
    }
}

/// The global scope: the ARGs declared before the first FROM, evaluated
/// in order with the build's arguments. FROM lines expand in it.
#[derive(Clone, Debug)]
pub struct GlobalScope {
    escape: char,
    args: BuildArgs,
    declared: Vec<(String, Option<String>)>,
}

impl GlobalScope {
    pub(crate) fn new(
        escape: char,
        args: &BuildArgs,
        global_args: &[Instruction],
    ) -> Result<GlobalScope, Error> {
        let mut g = GlobalScope {
            escape,
            args: args.clone(),
            declared: Vec::new(),
        };
        for ins in global_args {
            let Kind::Arg(decls) = &ins.kind else {
                continue;
            };
            let mut values = Vec::with_capacity(decls.len());
            for d in decls {
                let value =
                    match (g.args.get(&d.name), &d.default) {
                        (Some(v), _) => Some(v.to_string()),
                        (None, Some(def)) => Some(g.expand(def).map_err(|r| {
                            err_at(ins.line, &ins.original, ErrorKind::Expansion(r))
                        })?),
                        (None, None) => None,
                    };
                values.push((d.name.clone(), value));
            }
            for (n, v) in values {
                upsert(&mut g.declared, &n, v);
            }
        }
        Ok(g)
    }

    /// The value of a global ARG (or automatic platform ARG).
    pub fn get(&self, name: &str) -> Option<&str> {
        match self.declared.iter().find(|(n, _)| n == name) {
            Some((_, Some(v))) => Some(v),
            _ => self.args.automatic(name),
        }
    }

    /// The global ARGs in declaration order with their values.
    pub fn declared(&self) -> &[(String, Option<String>)] {
        &self.declared
    }

    /// The build's arguments.
    pub fn build_args(&self) -> &BuildArgs {
        &self.args
    }

    /// The escape character of the Dockerfile.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expands `word` with the global ARGs, as FROM does.
    pub fn expand(&self, word: &Word) -> Result<String, String> {
        expand::expand(word.raw(), self.escape, self, Mode::Word)
    }

    /// A scope for a stage whose base is an image (or scratch) with the
    /// given config environment (`KEY=VALUE` pairs, in order).
    pub fn stage_scope<I, K, V>(&self, image_env: I) -> StageScope
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut env: Vec<(String, String)> = Vec::new();
        for (k, v) in image_env {
            let (k, v) = (k.into(), v.into());
            match env.iter_mut().find(|(n, _)| *n == k) {
                Some(slot) => slot.1 = v,
                None => env.push((k, v)),
            }
        }
        StageScope {
            global: self.clone(),
            env,
            args: Vec::new(),
        }
    }
}

impl Vars for GlobalScope {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// The variables in scope at one point of a stage. The executor creates
/// one per stage, calls [`StageScope::step`] for each instruction in order
/// and reads [`StageScope::env`] and [`StageScope::run_env`] as it goes.
#[derive(Clone, Debug)]
pub struct StageScope {
    global: GlobalScope,
    env: Vec<(String, String)>,
    args: Vec<(String, Option<String>)>,
}

/// A user and optional group (`USER`, `--chown`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserGroup {
    pub user: String,
    pub group: Option<String>,
}

/// Parses `user[:group]`.
pub(crate) fn parse_user_group(s: &str) -> Result<UserGroup, String> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if user.is_empty() {
        return Err(format!("{s:?} has an empty user"));
    }
    if group.is_some_and(str::is_empty) {
        return Err(format!("{s:?} has an empty group"));
    }
    Ok(UserGroup {
        user: user.to_string(),
        group: group.map(str::to_string),
    })
}

/// Checks an `ADD --checksum` value: `sha256:<hex>` (or sha384/sha512)
/// for URLs, or a hex commit (prefix) for Git sources.
pub(crate) fn check_checksum(s: &str) -> Result<(), String> {
    let hex = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match s.split_once(':') {
        Some((alg, h)) => {
            let len = match alg {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => return Err(format!("unsupported digest algorithm {alg:?} in {s:?}")),
            };
            if h.len() != len || !hex(h) {
                return Err(format!("{s:?} is not a valid {alg} digest"));
            }
        }
        None => {
            if s.len() > 64 || !hex(s) {
                return Err(format!(
                    "{s:?} is neither algorithm:digest nor a Git commit"
                ));
            }
        }
    }
    Ok(())
}

/// A resolved `RUN --mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSpec {
    Bind {
        target: String,
        source: Option<String>,
        from: Option<String>,
        readwrite: bool,
    },
    Cache {
        target: String,
        id: Option<String>,
        readonly: bool,
        sharing: Sharing,
        from: Option<String>,
        source: Option<String>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Ssh {
        id: String,
        target: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// `sharing=` of a cache mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    #[default]
    Shared,
    Private,
    Locked,
}

fn mount_type(m: &RunMount, escape: char) -> Result<String, String> {
    match m.options.iter().find(|(k, _)| k == "type") {
        None => Ok("bind".to_string()),
        Some((_, None)) => Err("type needs a value".to_string()),
        Some((_, Some(v))) => {
            let t = expand::unquote(v, escape)?;
            if matches!(t.as_str(), "bind" | "cache" | "tmpfs" | "secret" | "ssh") {
                Ok(t)
            } else {
                Err(format!(
                    "unknown mount type {t:?}: use bind, cache, tmpfs, secret or ssh"
                ))
            }
        }
    }
}

fn allowed_options(ty: &str) -> &'static [&'static str] {
    match ty {
        "bind" => &[
            "type",
            "target",
            "dst",
            "destination",
            "source",
            "src",
            "from",
            "ro",
            "readonly",
            "rw",
            "readwrite",
        ],
        "cache" => &[
            "type",
            "target",
            "dst",
            "destination",
            "source",
            "src",
            "from",
            "id",
            "ro",
            "readonly",
            "rw",
            "readwrite",
            "sharing",
            "mode",
            "uid",
            "gid",
        ],
        "tmpfs" => &["type", "target", "dst", "destination", "size"],
        "secret" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "env",
            "required",
            "mode",
            "uid",
            "gid",
        ],
        _ => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "required",
            "mode",
            "uid",
            "gid",
        ],
    }
}

/// Validates a mount at parse time: option names always, values when they
/// contain no variables.
pub(crate) fn check_mount(m: &RunMount, escape: char) -> Result<(), String> {
    let ty = mount_type(m, escape)?;
    let allowed = allowed_options(&ty);
    if let Some((k, _)) = m
        .options
        .iter()
        .find(|(k, _)| !allowed.contains(&k.as_str()))
    {
        return Err(format!("option {k:?} does not apply to type={ty} mounts"));
    }
    if m.text.contains('$') {
        return Ok(());
    }
    mount_spec(m, escape, &mut |v| expand::unquote(v, escape)).map(|_| ())
}

/// Resolves a mount, expanding each option value with `expand`.
pub(crate) fn mount_spec(
    m: &RunMount,
    escape: char,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<MountSpec, String> {
    let ty = mount_type(m, escape)?;
    let allowed = allowed_options(&ty);
    let mut target = None;
    let mut source = None;
    let mut from = None;
    let mut id = None;
    let mut env = None;
    let mut readonly = None;
    let mut required = false;
    let mut sharing = Sharing::Shared;
    let mut mode = None;
    let mut uid = 0;
    let mut gid = 0;
    let mut size = None;
    for (key, raw) in &m.options {
        if !allowed.contains(&key.as_str()) {
            return Err(format!("option {key:?} does not apply to type={ty} mounts"));
        }
        if key == "type" {
            continue;
        }
        let bool_opt = matches!(
            key.as_str(),
            "ro" | "readonly" | "rw" | "readwrite" | "required"
        );
        let value = match raw {
            Some(v) => Some(expand(v)?),
            None if bool_opt => None,
            None => return Err(format!("option {key:?} needs a value")),
        };
        let flag = |v: &Option<String>| -> Result<bool, String> {
            match v {
                None => Ok(true),
                Some(s) => {
                    values::parse_bool(s).ok_or_else(|| format!("{key}={s:?} is not a boolean"))
                }
            }
        };
        let number = |v: &Option<String>| -> Result<u32, String> {
            let s = v.as_deref().unwrap_or_default();
            s.parse::<u32>()
                .map_err(|_| format!("{key}={s:?} is not a number"))
        };
        match key.as_str() {
            "target" | "dst" | "destination" => target = value,
            "source" | "src" => source = value,
            "from" => from = value,
            "id" => id = value,
            "env" => env = value,
            "ro" | "readonly" => readonly = Some(flag(&value)?),
            "rw" | "readwrite" => readonly = Some(!flag(&value)?),
            "required" => required = flag(&value)?,
            "sharing" => {
                sharing = match value.as_deref().unwrap_or_default() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => {
                        return Err(format!("sharing={other:?}: use shared, private or locked"));
                    }
                };
            }
            "mode" => {
                mode = Some(values::parse_octal_mode(
                    value.as_deref().unwrap_or_default(),
                )?);
            }
            "uid" => uid = number(&value)?,
            "gid" => gid = number(&value)?,
            _ => size = Some(values::parse_size(value.as_deref().unwrap_or_default())?),
        }
    }
    let need_target = |t: Option<String>| {
        t.filter(|t| !t.is_empty())
            .ok_or_else(|| format!("type={ty} mount needs a target"))
    };
    Ok(match ty.as_str() {
        "bind" => MountSpec::Bind {
            target: need_target(target)?,
            source,
            from,
            readwrite: readonly == Some(false),
        },
        "cache" => MountSpec::Cache {
            target: need_target(target)?,
            id,
            readonly: readonly.unwrap_or(false),
            sharing,
            from,
            source,
            mode: mode.unwrap_or(0o755),
            uid,
            gid,
        },
        "tmpfs" => MountSpec::Tmpfs {
            target: need_target(target)?,
            size,
        },
        "secret" => {
            let id = match id {
                Some(id) => id,
                None => target
                    .as_deref()
                    .and_then(|t| t.rsplit('/').find(|s| !s.is_empty()))
                    .map(str::to_string)
                    .ok_or("a secret mount needs an id or a target")?,
            };
            MountSpec::Secret {
                id,
                target,
                env,
                required,
                mode: mode.unwrap_or(0o400),
                uid,
                gid,
            }
        }
        _ => MountSpec::Ssh {
            id: id.unwrap_or_else(|| "default".to_string()),
            target,
            required,
            mode: mode.unwrap_or(0o600),
            uid,
            gid,
        },
    })
}

/// An instruction after expansion: what the executor does for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Run(RunStep),
    Cmd(Command),
    Entrypoint(Command),
    Label(Vec<(String, String)>),
    Maintainer(String),
    Expose(Vec<PortSpec>),
    /// Variables to set, in order; already applied to the scope by
    /// [`StageScope::step`].
    Env(Vec<(String, String)>),
    Add(AddStep),
    Copy(CopyStep),
    Volume(Vec<String>),
    User(UserGroup),
    Workdir(String),
    /// ARGs declared, with the values they got (None: declared, unset).
    Arg(Vec<(String, Option<String>)>),
    /// The trigger text to store in the image config's `OnBuild`.
    Onbuild(String),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
}

/// What a RUN executes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunProgram {
    /// Exec form: run these arguments directly.
    Exec(Vec<String>),
    /// Run this script with the current SHELL (`/bin/sh -c <script>` by
    /// default). With here-documents the script has their bodies appended
    /// so that the shell reads them.
    Shell(String),
    /// `RUN <<EOF` whose body starts with `#!`: write `content` to an
    /// executable file named `name` (outside the layer) and execute it.
    File { name: String, content: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStep {
    pub program: RunProgram,
    pub mounts: Vec<MountSpec>,
    pub network: Network,
    pub security: Security,
}

/// A resolved COPY or ADD source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// A path or glob (for ADD also a URL or Git address), as written after
    /// expansion.
    Path(String),
    /// A here-document: a file named `name` with `content`.
    Inline { name: String, content: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyStep {
    pub sources: Vec<SourceSpec>,
    pub dest: String,
    /// `--from`: a stage name or index, or an image reference.
    pub from: Option<String>,
    pub chown: Option<UserGroup>,
    pub chmod: Option<Chmod>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddStep {
    pub sources: Vec<SourceSpec>,
    pub dest: String,
    pub chown: Option<UserGroup>,
    pub chmod: Option<Chmod>,
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    pub link: bool,
    pub unpack: Option<bool>,
    pub excludes: Vec<String>,
}

/// How the builder treats an ADD source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddSourceKind {
    /// A path in the build context (or the `--from` stage).
    Local,
    /// An `http://` or `https://` URL of a file.
    Url,
    /// A Git repository (`git@host:repo`, `ssh://`, `git://`, or an HTTP
    /// URL ending in `.git`, optionally with a `#ref:subdir` fragment).
    Git,
}

/// Classifies an (expanded) ADD source.
pub fn add_source_kind(src: &str) -> AddSourceKind {
    let lower = src.to_ascii_lowercase();
    if lower.starts_with("git@") || lower.starts_with("git://") || lower.starts_with("ssh://") {
        return AddSourceKind::Git;
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let path = lower
            .split('#')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/');
        // `lower` is already lower-cased.
        #[allow(clippy::case_sensitive_file_extension_comparisons)]
        return if path.ends_with(".git") {
            AddSourceKind::Git
        } else {
            AddSourceKind::Url
        };
    }
    AddSourceKind::Local
}

/// Whether a shell-form command consists of exactly one here-document
/// marker (`RUN <<EOF`), in which case the body is the whole script.
fn is_sole_heredoc(cmd: &str, escape: char) -> bool {
    match heredoc::find_markers(cmd, escape) {
        Ok(m) => m.len() == 1 && m[0].start == 0 && m[0].end == cmd.len(),
        Err(_) => false,
    }
}

/// The program a RUN executes (see [`RunProgram`]).
pub fn run_program(run: &Run, escape: char) -> RunProgram {
    match &run.command {
        Command::Exec(v) => RunProgram::Exec(v.clone()),
        Command::Shell(cmd) if run.heredocs.is_empty() => RunProgram::Shell(cmd.clone()),
        Command::Shell(cmd) => {
            if run.heredocs.len() == 1 && is_sole_heredoc(cmd, escape) {
                let h = &run.heredocs[0];
                let content = h.content();
                if content.starts_with("#!") {
                    return RunProgram::File {
                        name: h.name.clone(),
                        content,
                    };
                }
                return RunProgram::Shell(content);
            }
            let mut script = cmd.clone();
            for h in &run.heredocs {
                script.push('\n');
                script.push_str(&h.body);
                script.push_str(&h.name);
            }
            RunProgram::Shell(script)
        }
    }
}

impl StageScope {
    /// A scope for a stage based on the stage this scope belongs to: it
    /// inherits the ENV (which is in that stage's image config) and the
    /// ARGs declared there.
    #[must_use]
    pub fn child(&self) -> StageScope {
        self.clone()
    }

    /// The value `$name` has here: ENV first, then ARGs declared in the
    /// stage, then predefined proxy ARGs given with `--build-arg`.
    pub fn get(&self, name: &str) -> Option<&str> {
        if let Some((_, v)) = self.env.iter().find(|(n, _)| n == name) {
            return Some(v);
        }
        if let Some((_, v)) = self.args.iter().find(|(n, _)| n == name) {
            return v.as_deref();
        }
        if is_predefined_arg(name) {
            return self.global.args.get(name);
        }
        None
    }

    /// The environment of the image config (base image ENV plus the ENVs
    /// so far), in order.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The ARGs declared in this stage (or inherited), with their values.
    pub fn args(&self) -> &[(String, Option<String>)] {
        &self.args
    }

    /// The environment of a RUN at this point: the ENV, then the ARGs with
    /// a value that no ENV overrides, then predefined proxy ARGs given with
    /// `--build-arg` and not otherwise set.
    pub fn run_env(&self) -> Vec<(String, String)> {
        let mut out = self.env.clone();
        for (name, value) in self.history_args() {
            out.push((name, value));
        }
        for name in PREDEFINED_ARGS {
            let declared =
                out.iter().any(|(n, _)| n == name) || self.args.iter().any(|(n, _)| n == name);
            match self.global.args.get(name) {
                Some(v) if !declared => out.push((name.to_string(), v.to_string())),
                _ => {}
            }
        }
        out
    }

    /// The ARGs with a value that no ENV overrides, in declaration order:
    /// what Docker records in a RUN's history (`|2 A=1 B=2 /bin/sh -c ...`)
    /// and what a RUN's cache key depends on. Undeclared predefined ARGs are
    /// not included.
    pub fn history_args(&self) -> Vec<(String, String)> {
        self.args
            .iter()
            .filter(|(n, _)| !self.env.iter().any(|(e, _)| e == n))
            .filter_map(|(n, v)| v.as_ref().map(|v| (n.clone(), v.clone())))
            .collect()
    }

    /// The escape character of the Dockerfile.
    pub fn escape(&self) -> char {
        self.global.escape
    }

    /// Expands a word with the values in scope.
    pub fn expand(&self, word: &Word) -> Result<String, String> {
        expand::expand(word.raw(), self.global.escape, self, Mode::Word)
    }

    /// Resolves `ins` with the values before it, then applies its effect
    /// (ENV, ARG) to the scope.
    pub fn step(&mut self, ins: &Instruction) -> Result<Step, Error> {
        let step = self.resolve(ins)?;
        self.apply(&step);
        Ok(step)
    }

    /// Applies an ENV or ARG step to the scope; other steps change nothing.
    pub fn apply(&mut self, step: &Step) {
        match step {
            Step::Env(vars) => {
                for (k, v) in vars {
                    match self.env.iter_mut().find(|(n, _)| n == k) {
                        Some(slot) => slot.1.clone_from(v),
                        None => self.env.push((k.clone(), v.clone())),
                    }
                }
            }
            Step::Arg(args) => {
                for (k, v) in args {
                    upsert(&mut self.args, k, v.clone());
                }
            }
            _ => {}
        }
    }

    fn arg_value(&self, d: &ArgDecl) -> Result<Option<String>, String> {
        if let Some(v) = self.global.args.get(&d.name) {
            return Ok(Some(v.to_string()));
        }
        if let Some(def) = &d.default {
            return self.expand(def).map(Some);
        }
        if let Some((_, v)) = self.args.iter().find(|(n, _)| *n == d.name) {
            return Ok(v.clone());
        }
        Ok(self.global.get(&d.name).map(str::to_string))
    }

    /// Resolves `ins` with the values in scope, without changing the scope.
    pub fn resolve(&self, ins: &Instruction) -> Result<Step, Error> {
        let fail = |kind: ErrorKind| err_at(ins.line, &ins.original, kind);
        let ex = |w: &Word| self.expand(w).map_err(|r| fail(ErrorKind::Expansion(r)));
        let nonempty = |w: &Word, what: &str| -> Result<String, Error> {
            let v = ex(w)?;
            if v.is_empty() {
                return Err(fail(ErrorKind::Value(format!(
                    "{what} {:?} expands to an empty string",
                    w.raw()
                ))));
            }
            Ok(v)
        };
        let pairs = |kvs: &[super::KeyValue], what: &str| -> Result<Vec<(String, String)>, Error> {
            kvs.iter()
                .map(|kv| Ok((nonempty(&kv.key, what)?, ex(&kv.value)?)))
                .collect()
        };
        let opt = |w: &Option<Word>| w.as_ref().map(ex).transpose();
        let chown = |w: &Option<Word>| -> Result<Option<UserGroup>, Error> {
            opt(w)?
                .map(|v| {
                    parse_user_group(&v).map_err(|r| fail(ErrorKind::Flag(format!("--chown: {r}"))))
                })
                .transpose()
        };
        let chmod = |w: &Option<Word>| -> Result<Option<Chmod>, Error> {
            opt(w)?
                .map(|v| {
                    Chmod::parse(&v).map_err(|r| fail(ErrorKind::Flag(format!("--chmod: {r}"))))
                })
                .transpose()
        };
        let excludes = |ws: &[Word]| -> Result<Vec<String>, Error> {
            ws.iter()
                .map(|w| {
                    let v = ex(w)?;
                    super::ignore::check_pattern(&v)
                        .map_err(|r| fail(ErrorKind::Flag(format!("--exclude: {r}"))))?;
                    Ok(v)
                })
                .collect()
        };
        let sources = |srcs: &[Source]| -> Result<Vec<SourceSpec>, Error> {
            srcs.iter()
                .map(|s| match s {
                    Source::Path(w) => Ok(SourceSpec::Path(nonempty(w, "source")?)),
                    Source::Heredoc(h) => Ok(SourceSpec::Inline {
                        name: h.name.clone(),
                        content: h.file_content(self.global.escape, self).map_err(|r| {
                            fail(ErrorKind::Expansion(format!(
                                "here-document <<{}: {r}",
                                h.name
                            )))
                        })?,
                    }),
                })
                .collect()
        };
        Ok(match &ins.kind {
            Kind::Run(run) => {
                let mut mounts = Vec::with_capacity(run.mounts.len());
                for m in &run.mounts {
                    let mut exp = |v: &str| expand::expand(v, self.global.escape, self, Mode::Word);
                    mounts.push(
                        mount_spec(m, self.global.escape, &mut exp).map_err(|r| {
                            fail(ErrorKind::Flag(format!("--mount={}: {r}", m.text)))
                        })?,
                    );
                }
                Step::Run(RunStep {
                    program: run_program(run, self.global.escape),
                    mounts,
                    network: run.network,
                    security: run.security,
                })
            }
            Kind::Cmd(c) => Step::Cmd(c.clone()),
            Kind::Entrypoint(c) => Step::Entrypoint(c.clone()),
            Kind::Label(kvs) => Step::Label(pairs(kvs, "LABEL key")?),
            Kind::Maintainer(m) => Step::Maintainer(m.clone()),
            Kind::Expose(words) => {
                let mut ports = Vec::new();
                for w in words {
                    for p in ex(w)?.split_whitespace() {
                        ports.push(PortSpec::parse(p).map_err(|r| fail(ErrorKind::Value(r)))?);
                    }
                }
                Step::Expose(ports)
            }
            Kind::Env(kvs) => Step::Env(pairs(kvs, "ENV name")?),
            Kind::Add(a) => {
                let checksum = opt(&a.checksum)?;
                if let Some(c) = &checksum {
                    check_checksum(c)
                        .map_err(|r| fail(ErrorKind::Flag(format!("--checksum: {r}"))))?;
                }
                let srcs = sources(&a.sources)?;
                if checksum.is_some()
                    && srcs.iter().any(|s| !matches!(s, SourceSpec::Path(p) if add_source_kind(p) != AddSourceKind::Local))
                {
                    return Err(fail(ErrorKind::Flag("--checksum needs URL or Git sources".to_string())));
                }
                Step::Add(AddStep {
                    sources: srcs,
                    dest: nonempty(&a.dest, "destination")?,
                    chown: chown(&a.chown)?,
                    chmod: chmod(&a.chmod)?,
                    checksum,
                    keep_git_dir: a.keep_git_dir,
                    link: a.link,
                    unpack: a.unpack,
                    excludes: excludes(&a.excludes)?,
                })
            }
            Kind::Copy(c) => Step::Copy(CopyStep {
                sources: sources(&c.sources)?,
                dest: nonempty(&c.dest, "destination")?,
                from: c.from.as_ref().map(|w| nonempty(w, "--from")).transpose()?,
                chown: chown(&c.chown)?,
                chmod: chmod(&c.chmod)?,
                link: c.link,
                parents: c.parents,
                excludes: excludes(&c.excludes)?,
            }),
            Kind::Volume(words) => Step::Volume(
                words
                    .iter()
                    .map(|w| nonempty(w, "VOLUME path"))
                    .collect::<Result<_, _>>()?,
            ),
            Kind::User(w) => {
                let v = ex(w)?;
                Step::User(
                    parse_user_group(&v)
                        .map_err(|r| fail(ErrorKind::Value(format!("USER {r}"))))?,
                )
            }
            Kind::Workdir(w) => Step::Workdir(nonempty(w, "WORKDIR")?),
            Kind::Arg(decls) => Step::Arg(
                decls
                    .iter()
                    .map(|d| {
                        Ok((
                            d.name.clone(),
                            self.arg_value(d)
                                .map_err(|r| fail(ErrorKind::Expansion(r)))?,
                        ))
                    })
                    .collect::<Result<_, Error>>()?,
            ),
            Kind::Onbuild(o) => Step::Onbuild(o.text.clone()),
            Kind::StopSignal(w) => {
                let v = ex(w)?;
                values::parse_signal(&v).map_err(|r| fail(ErrorKind::Value(r)))?;
                Step::StopSignal(v)
            }
            Kind::Healthcheck(h) => Step::Healthcheck(h.clone()),
            Kind::Shell(s) => Step::Shell(s.clone()),
        })
    }
}

impl Vars for StageScope {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_group() {
        assert_eq!(
            parse_user_group("app").unwrap(),
            UserGroup {
                user: "app".into(),
                group: None
            }
        );
        assert_eq!(
            parse_user_group("1:2").unwrap(),
            UserGroup {
                user: "1".into(),
                group: Some("2".into())
            }
        );
        assert!(parse_user_group(":g").is_err());
        assert!(parse_user_group("u:").is_err());
    }

    #[test]
    fn checksums() {
        assert!(check_checksum(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_checksum("be1f38e").is_ok());
        assert!(check_checksum("sha256:abc").is_err());
        assert!(check_checksum("md5:abc").is_err());
        assert!(check_checksum("xyz").is_err());
    }

    #[test]
    fn add_sources() {
        assert_eq!(
            add_source_kind("https://example.com/a.tar.gz"),
            AddSourceKind::Url
        );
        assert_eq!(
            add_source_kind("https://github.com/moby/buildkit.git#v0.10.1"),
            AddSourceKind::Git
        );
        assert_eq!(
            add_source_kind("git@github.com:user/repo.git"),
            AddSourceKind::Git
        );
        assert_eq!(add_source_kind("src/"), AddSourceKind::Local);
    }

    #[test]
    fn platforms() {
        let mut a = BuildArgs::new();
        a.set_platforms("linux/amd64", "linux/arm/v7");
        assert_eq!(a.automatic("TARGETARCH"), Some("arm"));
        assert_eq!(a.automatic("TARGETVARIANT"), Some("v7"));
        assert_eq!(a.automatic("BUILDOS"), Some("linux"));
        assert_eq!(a.automatic("BUILDVARIANT"), Some(""));
    }
}
