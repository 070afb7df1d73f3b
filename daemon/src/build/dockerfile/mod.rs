//! The Dockerfile frontend: text to a typed, validated description of a
//! build, plus the rules for turning each instruction into a concrete step
//! with the build arguments and environment in effect at that point.
//!
//! It owns: parser directives, line continuations and comments,
//! instruction parsing and validation (flags, exec and shell forms,
//! here-documents), variable expansion and ARG/ENV scoping, the stage
//! graph (which stages a target needs and what each depends on) and
//! `.dockerignore` matching ([`ignore`]).
//!
//! It does not own: running steps, pulling or reading images, the build
//! cache, or the API. It performs no I/O except reading a build context in
//! [`ignore`].
//!
//! How an executor drives it:
//!
//! ```ignore
//! let df = Dockerfile::parse(&text)?;
//! let mut args = BuildArgs::new();
//! args.set("VERSION", "1.2").set_platforms("linux/amd64", "linux/amd64");
//! let global = df.global_scope(&args)?;
//! let graph = df.graph(&global)?;
//! for &i in &graph.required(graph.target(Some("prod"))?) {
//!     let node = graph.stage(i);
//!     let mut scope = match &node.base {
//!         Base::Stage(parent) => finished[*parent].child(),
//!         Base::Image(reference) => global.stage_scope(env_of(reference)),
//!         Base::Scratch => global.stage_scope(Vec::<(String, String)>::new()),
//!     };
//!     for ins in &df.stages[i].instructions {
//!         match scope.step(ins)? {
//!             Step::Run(run) => { /* run.program with scope.run_env() */ }
//!             Step::Copy(copy) => { /* ... */ }
//!             _ => {}
//!         }
//!     }
//!     finished.insert(i, scope);
//! }
//! ```

mod directives;
mod expand;
mod graph;
mod heredoc;
pub mod ignore;
mod instructions;
mod lexer;
mod scope;
mod values;
mod words;

use std::fmt;

pub use directives::{Check, Directives};
pub use graph::{Base, DepKind, DepTarget, Dependency, StageGraph, StageNode};
pub use heredoc::Heredoc;
pub use instructions::{
    Add, ArgDecl, Command, Copy, From, HealthConfig, Healthcheck, Instruction, KeyValue, Kind,
    Network, Onbuild, Run, RunMount, Security, Source,
};
pub use scope::{
    AddSourceKind, AddStep, BuildArgs, CopyStep, GlobalScope, MountSpec, PREDEFINED_ARGS,
    RunProgram, RunStep, Sharing, SourceSpec, StageScope, Step, UserGroup, add_source_kind,
    is_predefined_arg, run_program,
};
pub use values::{Chmod, PortSpec, Protocol, parse_duration, parse_signal};

use instructions::Parsed;
use lexer::Lines;

/// A Dockerfile error: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("dockerfile{}: {kind}", location(*.line, .text))]
pub struct Error {
    /// The 1-based line where the offending instruction starts (0 when the
    /// problem is not at one line, such as a missing FROM).
    pub line: usize,
    /// The offending text (the instruction as written).
    pub text: String,
    pub kind: ErrorKind,
}

fn location(line: usize, text: &str) -> String {
    match (line, text.is_empty()) {
        (0, _) => String::new(),
        (n, true) => format!(" line {n}"),
        (n, false) => {
            let short: String = text.chars().take(80).collect();
            let ellipsis = if short.len() < text.len() { "..." } else { "" };
            format!(" line {n} ({short:?}{ellipsis})")
        }
    }
}

/// What is wrong, by category.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("parser directive: {0}")]
    Directive(String),
    #[error("unknown instruction {0:?}")]
    UnknownInstruction(String),
    #[error("{0}")]
    Arguments(String),
    #[error("{0}")]
    Flag(String),
    #[error("{0}")]
    Json(String),
    #[error("{0}")]
    Heredoc(String),
    #[error("{0}")]
    Stage(String),
    #[error("{0}")]
    Onbuild(String),
    #[error("variable expansion: {0}")]
    Expansion(String),
    #[error("{0}")]
    Value(String),
    #[error("the Dockerfile has no instructions")]
    Empty,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something allowed but discouraged (a deprecated form, an empty
/// continuation line), for the executor to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dockerfile line {}: {}", self.line, self.message)
    }
}

/// Text from the Dockerfile that the builder expands (variables, quotes,
/// escape characters) with the values in scope at its instruction. Use
/// [`StageScope::expand`] or [`GlobalScope::expand`]; the raw text is
/// what was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Word(String);

impl Word {
    /// Wraps raw Dockerfile text.
    pub fn new(raw: impl Into<String>) -> Self {
        Word(raw.into())
    }

    /// The text as written.
    pub fn raw(&self) -> &str {
        &self.0
    }

    /// Whether expansion may substitute variables in it.
    pub fn has_variables(&self) -> bool {
        self.0.contains('$')
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A build stage: a FROM line and the instructions up to the next FROM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// Position among the stages, from 0; `COPY --from=<index>` uses it.
    pub index: usize,
    /// The `AS` name, lower-cased.
    pub name: Option<String>,
    pub from: From,
    /// Lines of the FROM instruction.
    pub line: usize,
    pub end_line: usize,
    /// The FROM line as written.
    pub original: String,
    pub instructions: Vec<Instruction>,
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Directives,
    /// ARG instructions before the first FROM.
    pub global_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
    pub warnings: Vec<Warning>,
}

impl Dockerfile {
    /// Parses and validates a Dockerfile.
    pub fn parse(text: &str) -> Result<Dockerfile> {
        let mut lines = Lines::new(text);
        let directives = directives::parse(&mut lines)?;
        let escape = directives.escape;
        let mut warnings = Vec::new();
        let mut global_args = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        while let Some(logical) = lexer::next_logical(&mut lines, escape, &mut warnings) {
            match instructions::parse(logical, &mut lines, escape, &mut warnings)? {
                Parsed::From {
                    line,
                    end_line,
                    original,
                    from,
                } => {
                    let duplicate = from.name.as_ref().and_then(|name| {
                        stages
                            .iter()
                            .find(|s| s.name.as_ref() == Some(name))
                            .map(|prev| (name, prev.line))
                    });
                    if let Some((name, prev_line)) = duplicate {
                        return Err(Error {
                            line,
                            text: original,
                            kind: ErrorKind::Stage(format!(
                                "duplicate stage name {name:?}: already used on line {prev_line}"
                            )),
                        });
                    }
                    stages.push(Stage {
                        index: stages.len(),
                        name: from.name.clone(),
                        from,
                        line,
                        end_line,
                        original,
                        instructions: Vec::new(),
                    });
                }
                Parsed::Instruction(ins) => match stages.last_mut() {
                    Some(stage) => stage.instructions.push(ins),
                    None if matches!(ins.kind, Kind::Arg(_)) => global_args.push(ins),
                    None => {
                        return Err(Error {
                            line: ins.line,
                            kind: ErrorKind::Stage(format!(
                                "{} before the first FROM: only ARG may come before FROM",
                                ins.kind.name()
                            )),
                            text: ins.original,
                        });
                    }
                },
            }
        }
        if stages.is_empty() {
            let kind = if global_args.is_empty() {
                ErrorKind::Empty
            } else {
                ErrorKind::Stage(
                    "no FROM instruction: a Dockerfile needs at least one build stage".to_string(),
                )
            };
            return Err(Error {
                line: 0,
                text: String::new(),
                kind,
            });
        }
        Ok(Dockerfile {
            directives,
            global_args,
            stages,
            warnings,
        })
    }

    /// The escape character (`\` unless the escape directive says `` ` ``).
    pub fn escape(&self) -> char {
        self.directives.escape
    }

    /// Evaluates the ARGs before the first FROM with the build's arguments.
    pub fn global_scope(&self, args: &BuildArgs) -> Result<GlobalScope> {
        GlobalScope::new(self.directives.escape, args, &self.global_args)
    }

    /// The stage called `name` (case-insensitive).
    pub fn stage_by_name(&self, name: &str) -> Option<&Stage> {
        let lower = name.to_ascii_lowercase();
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    /// `--build-arg` names that no ARG in the global scope or in `stages`
    /// declares (predefined proxy ARGs excepted): Docker warns that these
    /// were not consumed.
    pub fn unused_build_args(&self, args: &BuildArgs, stages: &[usize]) -> Vec<String> {
        let declared = |name: &str| {
            let in_list = |list: &[Instruction]| {
                list.iter()
                    .any(|i| matches!(&i.kind, Kind::Arg(d) if d.iter().any(|d| d.name == name)))
            };
            in_list(&self.global_args)
                || stages
                    .iter()
                    .filter_map(|&i| self.stages.get(i))
                    .any(|s| in_list(&s.instructions))
        };
        args.iter()
            .map(|(n, _)| n)
            .filter(|n| !is_predefined_arg(n) && !declared(n))
            .map(str::to_string)
            .collect()
    }
}

/// Parses an ONBUILD trigger taken from a base image's config (the text
/// after `ONBUILD`, here-document bodies included), as the child build
/// inserts it after its FROM. Triggers use the default escape character.
pub fn parse_trigger(text: &str) -> Result<Instruction> {
    let mut lines = Lines::new(text);
    let mut warnings = Vec::new();
    let Some(logical) = lexer::next_logical(&mut lines, '\\', &mut warnings) else {
        return Err(Error {
            line: 0,
            text: text.to_string(),
            kind: ErrorKind::Onbuild("empty trigger".to_string()),
        });
    };
    let (name, _) = instructions::split_name(&logical.text);
    if matches!(
        name.to_ascii_lowercase().as_str(),
        "onbuild" | "from" | "maintainer"
    ) {
        return Err(Error {
            line: logical.line,
            text: logical.text.clone(),
            kind: ErrorKind::Onbuild(format!(
                "{} is not allowed as an ONBUILD trigger",
                name.to_ascii_uppercase()
            )),
        });
    }
    match instructions::parse(logical, &mut lines, '\\', &mut warnings)? {
        Parsed::Instruction(ins) => Ok(ins),
        Parsed::From { line, original, .. } => Err(Error {
            line,
            text: original,
            kind: ErrorKind::Onbuild("FROM is not allowed as an ONBUILD trigger".to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Dockerfile {
        Dockerfile::parse(text).unwrap()
    }

    #[test]
    fn errors_name_line_and_text() {
        let e = Dockerfile::parse("FROM a\n\nFOOBAR  x y\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.text, "FOOBAR  x y");
        assert_eq!(
            e.to_string(),
            "dockerfile line 3 (\"FOOBAR  x y\"): unknown instruction \"FOOBAR\""
        );
        let e = Dockerfile::parse("").unwrap_err();
        assert_eq!(
            e.to_string(),
            "dockerfile: the Dockerfile has no instructions"
        );
    }

    #[test]
    fn unused_build_args_are_reported() {
        let df = parse("ARG A\nFROM x AS one\nARG B\nFROM x AS two\nARG C\n");
        let args: BuildArgs = [
            ("A", "1"),
            ("B", "2"),
            ("C", "3"),
            ("D", "4"),
            ("HTTP_PROXY", "p"),
        ]
        .into_iter()
        .collect();
        assert_eq!(df.unused_build_args(&args, &[1]), ["B", "D"]);
        assert_eq!(df.unused_build_args(&args, &[0, 1]), ["D"]);
    }

    #[test]
    fn run_environment_and_history_args() {
        let df = parse("FROM x\nENV E=1\nARG A=2 U\nARG E=3\nARG HTTP_PROXY\nRUN true\n");
        let mut args = BuildArgs::new();
        args.set("https_proxy", "hp").set("HTTP_PROXY", "p");
        let global = df.global_scope(&args).unwrap();
        let mut scope = global.stage_scope([("PATH", "/bin")]);
        for ins in &df.stages[0].instructions {
            scope.step(ins).unwrap();
        }
        let kv = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(scope.env(), kv(&[("PATH", "/bin"), ("E", "1")]));
        // E is declared as an ARG too but ENV wins; U has no value.
        assert_eq!(scope.history_args(), kv(&[("A", "2"), ("HTTP_PROXY", "p")]));
        assert_eq!(
            scope.run_env(),
            kv(&[
                ("PATH", "/bin"),
                ("E", "1"),
                ("A", "2"),
                ("HTTP_PROXY", "p"),
                ("https_proxy", "hp")
            ])
        );
        assert_eq!(scope.get("E"), Some("1"));
        assert_eq!(scope.get("U"), None);
        assert_eq!(scope.get("https_proxy"), Some("hp"));
    }

    #[test]
    fn graph_order_and_images() {
        let df = parse(
            "FROM golang AS build\nFROM alpine AS assets\nCOPY --from=nginx /a /a\nFROM build AS test\n\
             FROM scratch\nCOPY --from=assets /x /x\nCOPY --from=build /y /y\nRUN --mount=from=busybox,target=/b true\n",
        );
        let global = df.global_scope(&BuildArgs::new()).unwrap();
        let graph = df.graph(&global).unwrap();
        let target = graph.target(None).unwrap();
        assert_eq!(target, 3);
        assert_eq!(graph.stage_deps(3), [0, 1]);
        assert_eq!(graph.required(target), [0, 1, 3]);
        assert_eq!(
            graph.images(&graph.required(target)),
            ["golang", "alpine", "nginx", "busybox"]
        );
        assert_eq!(graph.required(graph.target(Some("TEST")).unwrap()), [0, 2]);
        assert_eq!(graph.stage(2).base, Base::Stage(0));
        assert!(df.stage_by_name("Assets").is_some());
    }

    #[test]
    fn run_programs() {
        let df = parse(
            "FROM x\nRUN <<EOF\n#!/bin/sh\necho\nEOF\nRUN <<-EOF cat >/f\n\tx\n\tEOF\nRUN [\"a\"]\n",
        );
        let programs: Vec<RunProgram> = df.stages[0]
            .instructions
            .iter()
            .map(|i| match &i.kind {
                Kind::Run(r) => run_program(r, '\\'),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            programs,
            [
                RunProgram::File {
                    name: "EOF".into(),
                    content: "#!/bin/sh\necho\n".into()
                },
                RunProgram::Shell("<<-EOF cat >/f\n\tx\nEOF".into()),
                RunProgram::Exec(vec!["a".into()]),
            ]
        );
        assert_eq!(df.stages[0].instructions[1].line, 6);
        assert_eq!(df.stages[0].instructions[1].end_line, 8);
        assert_eq!(df.stages[0].instructions[2].line, 9);
    }

    #[test]
    fn quoted_mount_value() {
        let df = parse("FROM x\nRUN --mount=\"type=cache,target=/c\" true\n");
        let global = df.global_scope(&BuildArgs::new()).unwrap();
        let step = global
            .stage_scope(Vec::<(String, String)>::new())
            .resolve(&df.stages[0].instructions[0])
            .unwrap();
        let Step::Run(run) = step else {
            panic!("not RUN")
        };
        assert!(matches!(&run.mounts[0], MountSpec::Cache { target, .. } if target == "/c"));
    }
}
