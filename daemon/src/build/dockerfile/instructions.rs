//! The typed instructions and their parsers: flags, argument forms (JSON
//! exec form with fallback to the shell form, key=value lists, word lists),
//! here-documents, and validation of every constant value. Values the
//! builder expands are kept raw as [`Word`]s and checked again after
//! expansion (see [`super::scope`]).

use std::time::Duration;

use super::expand::unquote;
use super::heredoc::{self, Heredoc, Marker};
use super::lexer::{Lines, Logical};
use super::values::{self, Chmod, PortSpec};
use super::words::{parse_json_array, split_key_value, split_words, take_flags, word_spans};
use super::{Error, ErrorKind, Warning, Word};

/// One instruction inside a stage (or an ARG before the first FROM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// First Dockerfile line of the instruction (1-based).
    pub line: usize,
    /// Last line, including continuation lines and here-document bodies.
    pub end_line: usize,
    /// The instruction as written, continuations joined and comments
    /// removed (here-document bodies not included), e.g. `RUN make all`.
    pub original: String,
    pub kind: Kind,
}

/// The instructions, with their arguments parsed and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Run(Run),
    Cmd(Command),
    Entrypoint(Command),
    Label(Vec<KeyValue>),
    /// MAINTAINER's text as written (not expanded).
    Maintainer(String),
    /// EXPOSE's port words; each may expand to several ports.
    Expose(Vec<Word>),
    Env(Vec<KeyValue>),
    Add(Add),
    Copy(Copy),
    Volume(Vec<Word>),
    User(Word),
    Workdir(Word),
    Arg(Vec<ArgDecl>),
    Onbuild(Onbuild),
    StopSignal(Word),
    Healthcheck(Healthcheck),
    /// SHELL's JSON array.
    Shell(Vec<String>),
}

impl Kind {
    /// The instruction name in upper case, as Docker prints it.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Run(_) => "RUN",
            Kind::Cmd(_) => "CMD",
            Kind::Entrypoint(_) => "ENTRYPOINT",
            Kind::Label(_) => "LABEL",
            Kind::Maintainer(_) => "MAINTAINER",
            Kind::Expose(_) => "EXPOSE",
            Kind::Env(_) => "ENV",
            Kind::Add(_) => "ADD",
            Kind::Copy(_) => "COPY",
            Kind::Volume(_) => "VOLUME",
            Kind::User(_) => "USER",
            Kind::Workdir(_) => "WORKDIR",
            Kind::Arg(_) => "ARG",
            Kind::Onbuild(_) => "ONBUILD",
            Kind::StopSignal(_) => "STOPSIGNAL",
            Kind::Healthcheck(_) => "HEALTHCHECK",
            Kind::Shell(_) => "SHELL",
        }
    }
}

/// The exec (JSON) or shell form of RUN, CMD, ENTRYPOINT and HEALTHCHECK
/// CMD. The shell form is the text as written, escapes included: the
/// builder does not process it, the shell does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

/// The FROM line that starts a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct From {
    /// The base: an image reference, `scratch`, or an earlier stage's name;
    /// expanded with the global ARGs.
    pub image: Word,
    /// `--platform`, expanded with the global ARGs.
    pub platform: Option<Word>,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub command: Command,
    /// Here-documents referenced by the shell form, in order.
    pub heredocs: Vec<Heredoc>,
    pub mounts: Vec<RunMount>,
    pub network: Network,
    pub security: Security,
}

/// `RUN --network=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    #[default]
    Default,
    None,
    Host,
}

/// `RUN --security=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Security {
    #[default]
    Sandbox,
    Insecure,
}

/// One `RUN --mount=` value as written: its comma-separated options,
/// option names lower-cased, values raw (expanded when the RUN executes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunMount {
    pub text: String,
    pub options: Vec<(String, Option<String>)>,
}

impl RunMount {
    /// The raw `from=` option, which names a stage or an image.
    pub fn from_option(&self) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == "from")
            .and_then(|(_, v)| v.as_deref())
    }
}

/// `key=value` of ENV and LABEL, both raw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Word,
    pub value: Word,
}

/// One `name[=default]` of an ARG instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<Word>,
}

/// A COPY or ADD source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Path(Word),
    Heredoc(Heredoc),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub sources: Vec<Source>,
    pub dest: Word,
    pub from: Option<Word>,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<Word>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Add {
    pub sources: Vec<Source>,
    pub dest: Word,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub checksum: Option<Word>,
    pub keep_git_dir: bool,
    pub link: bool,
    /// `--unpack`; None leaves the default (unpack local archives only).
    pub unpack: Option<bool>,
    pub excludes: Vec<Word>,
}

/// ONBUILD: the trigger, parsed and validated, and its text as it is
/// stored in the image config (here-document bodies included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Onbuild {
    pub trigger: Box<Instruction>,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    Check(HealthConfig),
}

/// `HEALTHCHECK [options] CMD ...`; unset options keep their defaults
/// (interval 30s, timeout 30s, start period 0s, start interval 5s,
/// retries 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub command: Command,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

impl HealthConfig {
    /// The `Test` array of the image config: `["CMD", args...]` for the
    /// exec form, `["CMD-SHELL", command]` for the shell form.
    pub fn test(&self) -> Vec<String> {
        match &self.command {
            Command::Exec(v) => std::iter::once("CMD".to_string())
                .chain(v.iter().cloned())
                .collect(),
            Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
        }
    }
}

/// What [`parse`] produced: the FROM of a new stage or another instruction.
pub(crate) enum Parsed {
    From {
        line: usize,
        end_line: usize,
        original: String,
        from: From,
    },
    Instruction(Instruction),
}

struct Ctx<'a, 'b> {
    lines: &'a mut Lines<'b>,
    escape: char,
    warnings: &'a mut Vec<Warning>,
    name: String,
    line: usize,
    end_line: usize,
    original: String,
}

impl Ctx<'_, '_> {
    fn err(&self, kind: ErrorKind) -> Error {
        Error {
            line: self.line,
            text: self.original.clone(),
            kind,
        }
    }
    fn args(&self, msg: impl Into<String>) -> Error {
        self.err(ErrorKind::Arguments(msg.into()))
    }
    fn value(&self, msg: impl Into<String>) -> Error {
        self.err(ErrorKind::Value(msg.into()))
    }
    fn warn(&mut self, message: String) {
        self.warnings.push(Warning {
            line: self.line,
            message,
        });
    }
    fn unquote(&self, raw: &str) -> Result<String, Error> {
        unquote(raw, self.escape)
            .map_err(|r| self.err(ErrorKind::Expansion(format!("{raw:?}: {r}"))))
    }

    /// Reads the bodies of `markers` from the following lines.
    fn read_bodies(&mut self, markers: Vec<Marker>) -> Result<Vec<Heredoc>, Error> {
        let mut out = Vec::with_capacity(markers.len());
        for m in markers {
            let mut body = String::new();
            let mut first = None;
            loop {
                let Some((n, l)) = self.lines.next_line() else {
                    return Err(self.err(ErrorKind::Heredoc(format!(
                        "here-document <<{} is not terminated: no line {:?} before the end of the file",
                        m.name, m.name
                    ))));
                };
                first.get_or_insert(n);
                self.end_line = n;
                if m.terminates(l) {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            out.push(Heredoc {
                name: m.name,
                body,
                strip_tabs: m.strip_tabs,
                expand: !m.quoted,
                line: first.unwrap_or(self.end_line),
            });
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Str,
    Bool,
    Multi,
}

struct Flags {
    values: Vec<(&'static str, String)>,
}

impl Flags {
    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
    fn word(&self, name: &str) -> Option<Word> {
        self.get(name).map(|v| Word(v.to_string()))
    }
    fn all(&self, name: &str) -> Vec<Word> {
        self.values
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| Word(v.clone()))
            .collect()
    }
    fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).map(|v| v == "true")
    }
    fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

fn parse_flags(
    ctx: &Ctx<'_, '_>,
    raw: Vec<String>,
    spec: &[(&'static str, FlagKind)],
) -> Result<Flags, Error> {
    let mut values: Vec<(&'static str, String)> = Vec::new();
    let flag_err = |msg: String| ctx.err(ErrorKind::Flag(msg));
    for f in raw {
        let (name, value) = match f.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (f.as_str(), None),
        };
        if name.is_empty() {
            return Err(flag_err("empty flag name \"--\"".to_string()));
        }
        let Some(&(sname, kind)) = spec.iter().find(|(n, _)| *n == name) else {
            let known: Vec<String> = spec.iter().map(|(n, _)| format!("--{n}")).collect();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            return Err(flag_err(format!(
                "unknown flag --{name} for {} (supported: {known})",
                ctx.name
            )));
        };
        match kind {
            FlagKind::Bool => {
                let v = match value {
                    None => true,
                    Some(v) => {
                        let v = ctx.unquote(v)?;
                        values::parse_bool(&v).ok_or_else(|| {
                            flag_err(format!("--{name} expects true or false, not {v:?}"))
                        })?
                    }
                };
                if values.iter().any(|(n, _)| *n == sname) {
                    return Err(flag_err(format!("--{name} given more than once")));
                }
                values.push((sname, v.to_string()));
            }
            FlagKind::Str | FlagKind::Multi => {
                let Some(v) = value else {
                    return Err(flag_err(format!(
                        "--{name} needs a value: --{name}=<value>"
                    )));
                };
                if v.is_empty() {
                    return Err(flag_err(format!("--{name} has an empty value")));
                }
                if kind == FlagKind::Str && values.iter().any(|(n, _)| *n == sname) {
                    return Err(flag_err(format!("--{name} given more than once")));
                }
                values.push((sname, v.to_string()));
            }
        }
    }
    Ok(Flags { values })
}

/// Splits the instruction name from its arguments.
pub(crate) fn split_name(text: &str) -> (&str, &str) {
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim()),
        None => (text, ""),
    }
}

/// Parses one logical line, reading here-document bodies from `lines`.
pub(crate) fn parse(
    logical: Logical,
    lines: &mut Lines<'_>,
    escape: char,
    warnings: &mut Vec<Warning>,
) -> Result<Parsed, Error> {
    let (name, rest) = split_name(&logical.text);
    let (name, rest) = (name.to_string(), rest.to_string());
    let lower = name.to_ascii_lowercase();
    let mut ctx = Ctx {
        lines,
        escape,
        warnings,
        name: name.to_ascii_uppercase(),
        line: logical.line,
        end_line: logical.end_line,
        original: logical.text,
    };
    let kind = match lower.as_str() {
        "from" => {
            let from = parse_from(&mut ctx, &rest)?;
            return Ok(Parsed::From {
                line: ctx.line,
                end_line: ctx.end_line,
                original: ctx.original,
                from,
            });
        }
        "run" => Kind::Run(parse_run(&mut ctx, &rest)?),
        "cmd" => Kind::Cmd(parse_command(&ctx, &rest)?),
        "entrypoint" => Kind::Entrypoint(parse_command(&ctx, &rest)?),
        "label" => Kind::Label(parse_key_values(&mut ctx, &rest)?),
        "env" => Kind::Env(parse_key_values(&mut ctx, &rest)?),
        "maintainer" => {
            if rest.is_empty() {
                return Err(ctx.args("MAINTAINER requires a name"));
            }
            ctx.warn(
                "MAINTAINER is deprecated: use LABEL org.opencontainers.image.authors=..."
                    .to_string(),
            );
            Kind::Maintainer(rest)
        }
        "expose" => Kind::Expose(parse_expose(&ctx, &rest)?),
        "add" => Kind::Add(parse_add(&mut ctx, &rest)?),
        "copy" => Kind::Copy(parse_copy(&mut ctx, &rest)?),
        "volume" => Kind::Volume(parse_volume(&ctx, &rest)?),
        "user" => Kind::User(parse_single(&ctx, &rest, "USER <user>[:<group>]")?),
        "workdir" => {
            if rest.is_empty() {
                return Err(ctx.args("WORKDIR requires a path"));
            }
            Kind::Workdir(Word(rest))
        }
        "arg" => Kind::Arg(parse_arg(&ctx, &rest)?),
        "onbuild" => Kind::Onbuild(parse_onbuild(&mut ctx, &rest)?),
        "stopsignal" => {
            let w = parse_single(&ctx, &rest, "STOPSIGNAL <signal>")?;
            if !w.has_variables() {
                values::parse_signal(&ctx.unquote(w.raw())?).map_err(|r| ctx.value(r))?;
            }
            Kind::StopSignal(w)
        }
        "healthcheck" => Kind::Healthcheck(parse_healthcheck(&ctx, &rest)?),
        "shell" => {
            let Some(v) = parse_json_array(&rest).filter(|v| !v.is_empty()) else {
                return Err(ctx.err(ErrorKind::Json(
                    "SHELL requires a non-empty JSON array of strings, such as SHELL [\"/bin/bash\", \"-c\"]"
                        .to_string(),
                )));
            };
            Kind::Shell(v)
        }
        _ => return Err(ctx.err(ErrorKind::UnknownInstruction(name))),
    };
    Ok(Parsed::Instruction(Instruction {
        line: ctx.line,
        end_line: ctx.end_line,
        original: ctx.original,
        kind,
    }))
}

/// Whether `s` is a valid stage name (already lower-cased).
pub(crate) fn valid_stage_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn parse_from(ctx: &mut Ctx<'_, '_>, rest: &str) -> Result<From, Error> {
    let (raw_flags, args) = take_flags(rest, ctx.escape);
    let flags = parse_flags(ctx, raw_flags, &[("platform", FlagKind::Str)])?;
    let words = split_words(args, ctx.escape);
    let (image, name) = match words.as_slice() {
        [] => return Err(ctx.args("FROM requires a base image: FROM <image> [AS <name>]")),
        [image] => (image.clone(), None),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => (image.clone(), Some(name.clone())),
        _ => return Err(ctx.args("FROM takes one or three arguments: FROM <image> [AS <name>]")),
    };
    let name = match name {
        None => None,
        Some(n) => {
            let lower = n.to_ascii_lowercase();
            if !valid_stage_name(&lower) {
                return Err(ctx.err(ErrorKind::Stage(format!(
                    "invalid stage name {n:?}: it must start with a letter and contain only letters, digits, '-', '_' and '.'"
                ))));
            }
            if lower != n {
                ctx.warn(format!("stage name {n:?} should be lower case"));
            }
            Some(lower)
        }
    };
    Ok(From {
        image: Word(image),
        platform: flags.word("platform"),
        name,
    })
}

fn parse_command(ctx: &Ctx<'_, '_>, rest: &str) -> Result<Command, Error> {
    if rest.is_empty() {
        return Err(ctx.args(format!("{} requires a command", ctx.name)));
    }
    Ok(match parse_json_array(rest) {
        Some(v) => Command::Exec(v),
        None => Command::Shell(rest.to_string()),
    })
}

fn parse_run(ctx: &mut Ctx<'_, '_>, rest: &str) -> Result<Run, Error> {
    let (raw_flags, cmd) = take_flags(rest, ctx.escape);
    let flags = parse_flags(
        ctx,
        raw_flags,
        &[
            ("mount", FlagKind::Multi),
            ("network", FlagKind::Str),
            ("security", FlagKind::Str),
        ],
    )?;
    let network = match flags
        .get("network")
        .map(|v| ctx.unquote(v))
        .transpose()?
        .as_deref()
    {
        None | Some("default") => Network::Default,
        Some("none") => Network::None,
        Some("host") => Network::Host,
        Some(other) => {
            return Err(ctx.err(ErrorKind::Flag(format!(
                "--network={other:?}: use default, none or host"
            ))));
        }
    };
    let security = match flags
        .get("security")
        .map(|v| ctx.unquote(v))
        .transpose()?
        .as_deref()
    {
        None | Some("sandbox") => Security::Sandbox,
        Some("insecure") => Security::Insecure,
        Some(other) => {
            return Err(ctx.err(ErrorKind::Flag(format!(
                "--security={other:?}: use sandbox or insecure"
            ))));
        }
    };
    let mut mounts = Vec::new();
    for raw in flags.all("mount") {
        // `--mount="type=bind,target=/x"`: quotes around the whole value.
        let text = if raw.raw().starts_with(['"', '\'']) {
            ctx.unquote(raw.raw())?
        } else {
            raw.0
        };
        let options = split_mount_options(&text)
            .map_err(|r| ctx.err(ErrorKind::Flag(format!("--mount: {r}"))))?;
        let mount = RunMount { text, options };
        super::scope::check_mount(&mount, ctx.escape)
            .map_err(|r| ctx.err(ErrorKind::Flag(format!("--mount: {r}"))))?;
        mounts.push(mount);
    }
    if cmd.is_empty() {
        return Err(ctx.args("RUN requires a command"));
    }
    let (command, heredocs) = if let Some(v) = parse_json_array(cmd) {
        (Command::Exec(v), Vec::new())
    } else {
        let markers =
            heredoc::find_markers(cmd, ctx.escape).map_err(|r| ctx.err(ErrorKind::Heredoc(r)))?;
        (Command::Shell(cmd.to_string()), ctx.read_bodies(markers)?)
    };
    Ok(Run {
        command,
        heredocs,
        mounts,
        network,
        security,
    })
}

/// Splits a mount value into options at commas; a field that starts with
/// `"` runs to the matching quote (`""` is a literal quote), as in CSV.
fn split_mount_options(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quote in {text:?}")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            if !matches!(chars.peek(), None | Some(',')) {
                return Err(format!("text after a quoted field in {text:?}"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        let field = field.trim();
        if !field.is_empty() {
            let (k, v) = match field.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
                None => (field.to_ascii_lowercase(), None),
            };
            fields.push((k, v));
        }
        if chars.next().is_none() {
            break;
        }
    }
    Ok(fields)
}

fn parse_key_values(ctx: &mut Ctx<'_, '_>, rest: &str) -> Result<Vec<KeyValue>, Error> {
    let spans = word_spans(rest, ctx.escape);
    let Some(&(a, b)) = spans.first() else {
        return Err(ctx.args(format!("{} requires at least one <key>=<value>", ctx.name)));
    };
    let first = &rest[a..b];
    if !first.contains('=') {
        // Legacy form: NAME value with spaces.
        let value = rest[b..].trim_start();
        if value.is_empty() {
            return Err(ctx.args(format!(
                "{} {first} needs a value: use {} {first}=<value>",
                ctx.name, ctx.name
            )));
        }
        ctx.warn(format!(
            "legacy \"{} key value\" form: use {} key=value",
            ctx.name, ctx.name
        ));
        return Ok(vec![KeyValue {
            key: Word(first.to_string()),
            value: Word(value.to_string()),
        }]);
    }
    let mut out = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        let word = &rest[a..b];
        let Some((key, value)) = split_key_value(word) else {
            return Err(ctx.args(format!("{word:?} is not of the form <key>=<value>")));
        };
        if key.is_empty() {
            return Err(ctx.args(format!("{word:?} has an empty key")));
        }
        out.push(KeyValue {
            key: Word(key.to_string()),
            value: Word(value.to_string()),
        });
    }
    Ok(out)
}

fn parse_expose(ctx: &Ctx<'_, '_>, rest: &str) -> Result<Vec<Word>, Error> {
    let words = split_words(rest, ctx.escape);
    if words.is_empty() {
        return Err(ctx.args("EXPOSE requires at least one port"));
    }
    for w in &words {
        if !w.contains('$') {
            for p in ctx.unquote(w)?.split_whitespace() {
                PortSpec::parse(p).map_err(|r| ctx.value(r))?;
            }
        }
    }
    Ok(words.into_iter().map(Word).collect())
}

fn parse_volume(ctx: &Ctx<'_, '_>, rest: &str) -> Result<Vec<Word>, Error> {
    let words = match parse_json_array(rest) {
        Some(v) => v,
        None => split_words(rest, ctx.escape),
    };
    if words.is_empty() {
        return Err(ctx.args("VOLUME requires at least one path"));
    }
    if words.iter().any(String::is_empty) {
        return Err(ctx.args("VOLUME paths cannot be empty strings"));
    }
    Ok(words.into_iter().map(Word).collect())
}

fn parse_single(ctx: &Ctx<'_, '_>, rest: &str, usage: &str) -> Result<Word, Error> {
    let words = split_words(rest, ctx.escape);
    match words.len() {
        1 => Ok(Word(words.into_iter().next().unwrap_or_default())),
        0 => Err(ctx.args(format!("{} requires an argument: {usage}", ctx.name))),
        _ => Err(ctx.args(format!("{} takes exactly one argument: {usage}", ctx.name))),
    }
}

fn parse_arg(ctx: &Ctx<'_, '_>, rest: &str) -> Result<Vec<ArgDecl>, Error> {
    let words = split_words(rest, ctx.escape);
    if words.is_empty() {
        return Err(ctx.args("ARG requires a name: ARG <name>[=<default>]"));
    }
    let mut out = Vec::with_capacity(words.len());
    for w in words {
        let (name, default) = match split_key_value(&w) {
            Some((n, v)) => (n.to_string(), Some(Word(v.to_string()))),
            None => (w.clone(), None),
        };
        if name.is_empty() {
            return Err(ctx.args(format!("ARG {w:?} has an empty name")));
        }
        if name.contains(['$', '\'', '"']) || name.contains(ctx.escape) {
            return Err(ctx.args(format!("ARG name {name:?} contains quotes, escapes or $")));
        }
        out.push(ArgDecl { name, default });
    }
    Ok(out)
}

fn check_chmod_chown(ctx: &Ctx<'_, '_>, flags: &Flags) -> Result<(), Error> {
    if let Some(raw) = flags.get("chmod").filter(|r| !r.contains('$')) {
        Chmod::parse(&ctx.unquote(raw)?)
            .map_err(|r| ctx.err(ErrorKind::Flag(format!("--chmod: {r}"))))?;
    }
    if let Some(raw) = flags.get("chown").filter(|r| !r.contains('$')) {
        super::scope::parse_user_group(&ctx.unquote(raw)?)
            .map_err(|r| ctx.err(ErrorKind::Flag(format!("--chown: {r}"))))?;
    }
    for raw in flags.all("exclude") {
        if !raw.has_variables() {
            super::ignore::check_pattern(&ctx.unquote(raw.raw())?)
                .map_err(|r| ctx.err(ErrorKind::Flag(format!("--exclude: {r}"))))?;
        }
    }
    Ok(())
}

/// Parses the sources and destination of COPY and ADD, reading
/// here-document bodies.
fn parse_sources(ctx: &mut Ctx<'_, '_>, args: &str) -> Result<(Vec<Source>, Word), Error> {
    let usage = || {
        format!(
            "{} requires at least one source and a destination: {} <src>... <dest>",
            ctx.name, ctx.name
        )
    };
    if let Some(mut v) = parse_json_array(args) {
        if v.len() < 2 {
            return Err(ctx.args(usage()));
        }
        let dest = Word(v.pop().unwrap_or_default());
        return Ok((v.into_iter().map(|s| Source::Path(Word(s))).collect(), dest));
    }
    let mut words = split_words(args, ctx.escape);
    let Some(dest) = words.pop() else {
        return Err(ctx.args(usage()));
    };
    if words.is_empty() {
        return Err(ctx.args(usage()));
    }
    if dest.starts_with("<<") {
        return Err(ctx.args(format!(
            "{} destination {dest:?} cannot be a here-document",
            ctx.name
        )));
    }
    let mut sources = Vec::with_capacity(words.len());
    let mut markers = Vec::new();
    for w in words {
        match heredoc::parse_source_marker(&w, ctx.escape)
            .map_err(|r| ctx.err(ErrorKind::Heredoc(r)))?
        {
            Some(m) => {
                markers.push(m);
                sources.push(None);
            }
            None => sources.push(Some(Source::Path(Word(w)))),
        }
    }
    let mut bodies = ctx.read_bodies(markers)?.into_iter();
    let sources = sources
        .into_iter()
        .map(|s| s.or_else(|| bodies.next().map(Source::Heredoc)))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    Ok((sources, Word(dest)))
}

fn parse_copy(ctx: &mut Ctx<'_, '_>, rest: &str) -> Result<Copy, Error> {
    let (raw_flags, args) = take_flags(rest, ctx.escape);
    let flags = parse_flags(
        ctx,
        raw_flags,
        &[
            ("from", FlagKind::Str),
            ("chown", FlagKind::Str),
            ("chmod", FlagKind::Str),
            ("link", FlagKind::Bool),
            ("parents", FlagKind::Bool),
            ("exclude", FlagKind::Multi),
        ],
    )?;
    check_chmod_chown(ctx, &flags)?;
    let (sources, dest) = parse_sources(ctx, args)?;
    Ok(Copy {
        sources,
        dest,
        from: flags.word("from"),
        chown: flags.word("chown"),
        chmod: flags.word("chmod"),
        link: flags.bool("link").unwrap_or(false),
        parents: flags.bool("parents").unwrap_or(false),
        excludes: flags.all("exclude"),
    })
}

fn parse_add(ctx: &mut Ctx<'_, '_>, rest: &str) -> Result<Add, Error> {
    let (raw_flags, args) = take_flags(rest, ctx.escape);
    let flags = parse_flags(
        ctx,
        raw_flags,
        &[
            ("chown", FlagKind::Str),
            ("chmod", FlagKind::Str),
            ("checksum", FlagKind::Str),
            ("keep-git-dir", FlagKind::Bool),
            ("link", FlagKind::Bool),
            ("unpack", FlagKind::Bool),
            ("exclude", FlagKind::Multi),
        ],
    )?;
    check_chmod_chown(ctx, &flags)?;
    if let Some(raw) = flags.get("checksum").filter(|r| !r.contains('$')) {
        super::scope::check_checksum(&ctx.unquote(raw)?)
            .map_err(|r| ctx.err(ErrorKind::Flag(format!("--checksum: {r}"))))?;
    }
    let (sources, dest) = parse_sources(ctx, args)?;
    Ok(Add {
        sources,
        dest,
        chown: flags.word("chown"),
        chmod: flags.word("chmod"),
        checksum: flags.word("checksum"),
        keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
        link: flags.bool("link").unwrap_or(false),
        unpack: flags.bool("unpack"),
        excludes: flags.all("exclude"),
    })
}

fn parse_onbuild(ctx: &mut Ctx<'_, '_>, rest: &str) -> Result<Onbuild, Error> {
    if rest.is_empty() {
        return Err(ctx.args("ONBUILD requires an instruction: ONBUILD <INSTRUCTION>"));
    }
    let (inner, _) = split_name(rest);
    match inner.to_ascii_lowercase().as_str() {
        "onbuild" => {
            return Err(ctx.err(ErrorKind::Onbuild(
                "chaining ONBUILD ONBUILD is not allowed".to_string(),
            )));
        }
        "from" | "maintainer" => {
            return Err(ctx.err(ErrorKind::Onbuild(format!(
                "{} is not allowed as an ONBUILD trigger",
                inner.to_ascii_uppercase()
            ))));
        }
        _ => {}
    }
    let logical = Logical {
        line: ctx.line,
        end_line: ctx.end_line,
        text: rest.to_string(),
    };
    let parsed =
        parse(logical, &mut *ctx.lines, ctx.escape, &mut *ctx.warnings).map_err(|mut e| {
            e.text.clone_from(&ctx.original);
            e
        })?;
    let Parsed::Instruction(trigger) = parsed else {
        return Err(ctx.err(ErrorKind::Onbuild(
            "FROM is not allowed as an ONBUILD trigger".to_string(),
        )));
    };
    ctx.end_line = trigger.end_line;
    let mut text = rest.to_string();
    for h in trigger_heredocs(&trigger.kind) {
        text.push('\n');
        text.push_str(&h.body);
        text.push_str(&h.name);
    }
    Ok(Onbuild {
        trigger: Box::new(trigger),
        text,
    })
}

fn trigger_heredocs(kind: &Kind) -> Vec<&Heredoc> {
    match kind {
        Kind::Run(r) => r.heredocs.iter().collect(),
        Kind::Copy(Copy { sources, .. }) | Kind::Add(Add { sources, .. }) => sources
            .iter()
            .filter_map(|s| match s {
                Source::Heredoc(h) => Some(h),
                Source::Path(_) => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_healthcheck(ctx: &Ctx<'_, '_>, rest: &str) -> Result<Healthcheck, Error> {
    let (raw_flags, args) = take_flags(rest, ctx.escape);
    let flags = parse_flags(
        ctx,
        raw_flags,
        &[
            ("interval", FlagKind::Str),
            ("timeout", FlagKind::Str),
            ("start-period", FlagKind::Str),
            ("start-interval", FlagKind::Str),
            ("retries", FlagKind::Str),
        ],
    )?;
    let (kind, cmd) = split_name(args);
    match kind.to_ascii_lowercase().as_str() {
        "none" => {
            if !cmd.is_empty() || !flags.is_empty() {
                return Err(ctx.args("HEALTHCHECK NONE takes no other arguments or flags"));
            }
            Ok(Healthcheck::None)
        }
        "cmd" => {
            if cmd.is_empty() {
                return Err(ctx.args("HEALTHCHECK CMD requires a command"));
            }
            let command = match parse_json_array(cmd) {
                Some(v) => Command::Exec(v),
                None => Command::Shell(cmd.to_string()),
            };
            let duration = |name: &str| -> Result<Option<Duration>, Error> {
                let Some(raw) = flags.get(name) else {
                    return Ok(None);
                };
                let d = values::parse_duration(&ctx.unquote(raw)?)
                    .map_err(|r| ctx.err(ErrorKind::Flag(format!("--{name}: {r}"))))?;
                if !d.is_zero() && d < Duration::from_millis(1) {
                    return Err(
                        ctx.err(ErrorKind::Flag(format!("--{name} cannot be less than 1ms")))
                    );
                }
                Ok(Some(d))
            };
            let retries = match flags.get("retries") {
                None => None,
                Some(raw) => {
                    let v = ctx.unquote(raw)?;
                    let n: i64 = v.parse().map_err(|_| {
                        ctx.err(ErrorKind::Flag(format!("--retries: {v:?} is not a number")))
                    })?;
                    if n < 0 {
                        return Err(ctx.err(ErrorKind::Flag(format!(
                            "--retries cannot be negative ({n})"
                        ))));
                    }
                    Some(u32::try_from(n).map_err(|_| {
                        ctx.err(ErrorKind::Flag(format!("--retries {n} is too large")))
                    })?)
                }
            };
            Ok(Healthcheck::Check(HealthConfig {
                command,
                interval: duration("interval")?,
                timeout: duration("timeout")?,
                start_period: duration("start-period")?,
                start_interval: duration("start-interval")?,
                retries,
            }))
        }
        "" => Err(ctx.args("HEALTHCHECK requires CMD <command> or NONE")),
        other => Err(ctx.args(format!(
            "unknown HEALTHCHECK type {other:?}: use CMD or NONE"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_like_csv() {
        let f = split_mount_options("type=cache,target=/root/.cache,ro").unwrap();
        assert_eq!(
            f,
            [
                ("type".to_string(), Some("cache".to_string())),
                ("target".to_string(), Some("/root/.cache".to_string())),
                ("ro".to_string(), None)
            ]
        );
        let f = split_mount_options("\"target=/a,b\",type=bind").unwrap();
        assert_eq!(f[0], ("target".to_string(), Some("/a,b".to_string())));
        assert!(split_mount_options("\"target=/a").is_err());
    }

    #[test]
    fn healthcheck_test_arrays() {
        let h = |command| HealthConfig {
            command,
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
        };
        assert_eq!(
            h(Command::Shell("curl -f x".into())).test(),
            ["CMD-SHELL", "curl -f x"]
        );
        assert_eq!(
            h(Command::Exec(vec!["/check".into(), "-v".into()])).test(),
            ["CMD", "/check", "-v"]
        );
    }

    #[test]
    fn stage_names() {
        assert!(valid_stage_name("build-1.x_y"));
        assert!(!valid_stage_name("1build"));
        assert!(!valid_stage_name("bu$ild"));
        assert!(!valid_stage_name(""));
    }
}
