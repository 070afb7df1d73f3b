//! Conformance suite for the Dockerfile frontend. Every case under
//! `tests/dockerfile/cases` is a Dockerfile plus the expected result,
//! written from the Dockerfile reference; every case under
//! `tests/dockerfile/ignore` is a `.dockerignore` plus expected matches.
//! The format is described in `tests/dockerfile/README.md`. The cases run
//! through the public API only, the way the executor drives it.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use vesseld::build::dockerfile::ignore::{self, EntryKind, IgnoreMatcher};
use vesseld::build::dockerfile::{
    Base, BuildArgs, Command, DepKind, DepTarget, Dockerfile, Healthcheck, MountSpec, RunProgram,
    SourceSpec, StageScope, Step, UserGroup,
};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfile")
}

/// The inputs and expected output of a case's `.expected` file.
struct Expected {
    args: BuildArgs,
    target: Option<String>,
    env: Vec<(String, String)>,
    output: String,
}

fn parse_expected(text: &str) -> Expected {
    let mut args = BuildArgs::new();
    let mut target = None;
    let mut env = Vec::new();
    let (head, output) = match text.split_once("\n---\n") {
        Some((h, o)) => (h, o),
        None => ("", text.strip_prefix("---\n").unwrap_or(text)),
    };
    for line in head.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "build-arg" => {
                let (k, v) = value.split_once('=').expect("build-arg NAME=VALUE");
                args.set(k, v);
            }
            "target" => target = Some(value.to_string()),
            "env" => {
                let (k, v) = value.split_once('=').expect("env NAME=VALUE");
                env.push((k.to_string(), v.to_string()));
            }
            "platform" => {
                let (b, t) = value.split_once(' ').expect("platform BUILD TARGET");
                args.set_platforms(b, t);
            }
            other => panic!("unknown input {other:?}"),
        }
    }
    let output = output
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    Expected {
        args,
        target,
        env,
        output: output.trim().to_string(),
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

fn pairs(v: &[(String, String)]) -> String {
    v.iter()
        .map(|(k, v)| format!("{k}={}", q(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn command(c: &Command) -> String {
    match c {
        Command::Exec(v) => format!("exec {}", list(v)),
        Command::Shell(s) => format!("shell {}", q(s)),
    }
}

fn user(u: &UserGroup) -> String {
    match &u.group {
        Some(g) => format!("{}:{g}", u.user),
        None => u.user.clone(),
    }
}

fn sources(v: &[SourceSpec]) -> String {
    v.iter()
        .map(|s| match s {
            SourceSpec::Path(p) => q(p),
            SourceSpec::Inline { name, content } => format!("<<{name} {}", q(content)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mount(m: &MountSpec) -> String {
    let opt = |k: &str, v: &Option<String>| {
        v.as_ref()
            .map(|v| format!(" {k}={}", q(v)))
            .unwrap_or_default()
    };
    match m {
        MountSpec::Bind {
            target,
            source,
            from,
            readwrite,
        } => {
            format!(
                "bind target={}{}{}{}",
                q(target),
                opt("source", source),
                opt("from", from),
                if *readwrite { " rw" } else { "" }
            )
        }
        MountSpec::Cache {
            target,
            id,
            readonly,
            sharing,
            from,
            source,
            mode,
            uid,
            gid,
        } => format!(
            "cache target={}{}{} sharing={sharing:?}{}{} mode={mode:o} uid={uid} gid={gid}",
            q(target),
            opt("id", id),
            if *readonly { " ro" } else { "" },
            opt("from", from),
            opt("source", source)
        ),
        MountSpec::Tmpfs { target, size } => {
            format!(
                "tmpfs target={}{}",
                q(target),
                size.map(|s| format!(" size={s}")).unwrap_or_default()
            )
        }
        MountSpec::Secret {
            id,
            target,
            env,
            required,
            mode,
            uid,
            gid,
        } => format!(
            "secret id={}{}{}{} mode={mode:o} uid={uid} gid={gid}",
            q(id),
            opt("target", target),
            opt("env", env),
            if *required { " required" } else { "" }
        ),
        MountSpec::Ssh {
            id,
            target,
            required,
            mode,
            uid,
            gid,
        } => format!(
            "ssh id={}{}{} mode={mode:o} uid={uid} gid={gid}",
            q(id),
            opt("target", target),
            if *required { " required" } else { "" }
        ),
    }
}

fn step(s: &Step) -> String {
    match s {
        Step::Run(r) => {
            let mut out = match &r.program {
                RunProgram::Exec(v) => format!("RUN exec {}", list(v)),
                RunProgram::Shell(s) => format!("RUN shell {}", q(s)),
                RunProgram::File { name, content } => {
                    format!("RUN file {} {}", q(name), q(content))
                }
            };
            for m in &r.mounts {
                let _ = write!(out, " mount=[{}]", mount(m));
            }
            let _ = write!(
                out,
                "{}",
                match r.network {
                    vesseld::build::dockerfile::Network::Default => "",
                    vesseld::build::dockerfile::Network::None => " network=none",
                    vesseld::build::dockerfile::Network::Host => " network=host",
                }
            );
            if r.security == vesseld::build::dockerfile::Security::Insecure {
                out.push_str(" security=insecure");
            }
            out
        }
        Step::Cmd(c) => format!("CMD {}", command(c)),
        Step::Entrypoint(c) => format!("ENTRYPOINT {}", command(c)),
        Step::Label(l) => format!("LABEL {}", pairs(l)),
        Step::Maintainer(m) => format!("MAINTAINER {}", q(m)),
        Step::Expose(p) => format!(
            "EXPOSE {}",
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Step::Env(e) => format!("ENV {}", pairs(e)),
        Step::Add(a) => {
            let mut out = "ADD".to_string();
            if let Some(c) = &a.chown {
                let _ = write!(out, " chown={}", user(c));
            }
            if let Some(c) = &a.chmod {
                let _ = write!(out, " chmod={c}");
            }
            if let Some(c) = &a.checksum {
                let _ = write!(out, " checksum={c}");
            }
            if a.keep_git_dir {
                out.push_str(" keep-git-dir");
            }
            if a.link {
                out.push_str(" link");
            }
            if let Some(u) = a.unpack {
                let _ = write!(out, " unpack={u}");
            }
            for e in &a.excludes {
                let _ = write!(out, " exclude={}", q(e));
            }
            let _ = write!(out, " {} -> {}", sources(&a.sources), q(&a.dest));
            out
        }
        Step::Copy(c) => {
            let mut out = "COPY".to_string();
            if let Some(f) = &c.from {
                let _ = write!(out, " from={}", q(f));
            }
            if let Some(u) = &c.chown {
                let _ = write!(out, " chown={}", user(u));
            }
            if let Some(m) = &c.chmod {
                let _ = write!(out, " chmod={m}");
            }
            if c.link {
                out.push_str(" link");
            }
            if c.parents {
                out.push_str(" parents");
            }
            for e in &c.excludes {
                let _ = write!(out, " exclude={}", q(e));
            }
            let _ = write!(out, " {} -> {}", sources(&c.sources), q(&c.dest));
            out
        }
        Step::Volume(v) => format!("VOLUME {}", list(v)),
        Step::User(u) => format!("USER {}", user(u)),
        Step::Workdir(w) => format!("WORKDIR {}", q(w)),
        Step::Arg(a) => format!(
            "ARG {}",
            a.iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={}", q(v)),
                    None => format!("{k} (unset)"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Step::Onbuild(t) => format!("ONBUILD {}", q(t)),
        Step::StopSignal(s) => format!("STOPSIGNAL {s}"),
        Step::Healthcheck(Healthcheck::None) => "HEALTHCHECK NONE".to_string(),
        Step::Healthcheck(Healthcheck::Check(h)) => {
            let mut out = "HEALTHCHECK".to_string();
            for (name, d) in [
                ("interval", h.interval),
                ("timeout", h.timeout),
                ("start-period", h.start_period),
                ("start-interval", h.start_interval),
            ] {
                if let Some(d) = d {
                    let _ = write!(out, " {name}={d:?}");
                }
            }
            if let Some(r) = h.retries {
                let _ = write!(out, " retries={r}");
            }
            let _ = write!(out, " {}", command(&h.command));
            out
        }
        Step::Shell(s) => format!("SHELL {}", list(s)),
    }
}

/// Runs a Dockerfile through the API as an executor would and renders
/// what it saw, or the error as `error line N: message`.
fn render(text: &str, exp: &Expected) -> String {
    match render_inner(text, exp) {
        Ok(s) => s,
        Err(e) => format!("error line {}: {e}", e.line),
    }
}

fn render_inner(text: &str, exp: &Expected) -> Result<String, vesseld::build::dockerfile::Error> {
    let df = Dockerfile::parse(text)?;
    let mut out = String::new();
    let d = &df.directives;
    if d.escape != '\\' {
        let _ = writeln!(out, "directive escape={}", d.escape);
    }
    if let Some(s) = &d.syntax {
        let _ = writeln!(out, "directive syntax={s}");
    }
    if let Some(c) = &d.check {
        let _ = writeln!(
            out,
            "directive check skip={} error={}",
            c.skip.join(","),
            c.error
        );
    }
    let global = df.global_scope(&exp.args)?;
    for (name, value) in global.declared() {
        match value {
            Some(v) => writeln!(out, "global {name}={}", q(v)),
            None => writeln!(out, "global {name} (unset)"),
        }
        .expect("write to a String");
    }
    let graph = df.graph(&global)?;
    let target = graph.target(exp.target.as_deref())?;
    let order = graph.required(target);
    let mut finished: Vec<Option<StageScope>> = vec![None; df.stages.len()];
    for &i in &order {
        let node = graph.stage(i);
        let base = match &node.base {
            Base::Scratch => "scratch".to_string(),
            Base::Image(r) => format!("image {}", q(r)),
            Base::Stage(p) => format!("stage {p}"),
        };
        let platform = node
            .platform
            .as_ref()
            .map(|p| format!(" platform={}", q(p)))
            .unwrap_or_default();
        let name = node.name.as_deref().unwrap_or("-");
        let _ = writeln!(out, "stage {i} {name} from {base}{platform}");
        for dep in node.deps.iter().filter(|d| d.kind != DepKind::From) {
            let kind = if dep.kind == DepKind::CopyFrom {
                "copy-from"
            } else {
                "mount-from"
            };
            let target = match &dep.target {
                DepTarget::Stage(s) => format!("stage {s}"),
                DepTarget::Image(r) => format!("image {}", q(r)),
            };
            let _ = writeln!(out, "  needs {target} ({kind}, line {})", dep.line);
        }
        let mut scope = match &node.base {
            Base::Stage(p) => finished[*p]
                .as_ref()
                .expect("dependencies come first")
                .child(),
            _ => global.stage_scope(exp.env.clone()),
        };
        for ins in &df.stages[i].instructions {
            let s = scope.step(ins)?;
            let _ = writeln!(out, "  {}: {}", ins.line, step(&s));
            if matches!(s, Step::Run(_)) {
                let env: Vec<(String, String)> = scope
                    .run_env()
                    .into_iter()
                    .filter(|(k, _)| !exp.env.iter().any(|(e, _)| e == k))
                    .collect();
                if !env.is_empty() {
                    let _ = writeln!(out, "     env {}", pairs(&env));
                }
            }
        }
        finished[i] = Some(scope);
    }
    let skipped: Vec<String> = (0..df.stages.len())
        .filter(|i| !order.contains(i))
        .map(|i| i.to_string())
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(out, "skipped {}", skipped.join(" "));
    }
    for w in &df.warnings {
        let _ = writeln!(out, "warning {w}");
    }
    Ok(out.trim().to_string())
}

fn check_error(got: &str, expected: &str) -> bool {
    // "error line N: substring": same line, message contains substring.
    let (Some(g), Some(e)) = (
        got.strip_prefix("error line "),
        expected.strip_prefix("error line "),
    ) else {
        return false;
    };
    let (gl, gm) = g.split_once(": ").unwrap_or((g, ""));
    let (el, em) = e.split_once(": ").unwrap_or((e, ""));
    gl == el && gm.contains(em)
}

fn cases(sub: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(data_dir().join(sub))
        .expect("case directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn dockerfile_cases() {
    let files = cases("cases", "Dockerfile");
    assert!(files.len() >= 60, "only {} cases", files.len());
    let mut failures = Vec::new();
    for df_path in &files {
        let text = fs::read_to_string(df_path).expect("read case");
        let exp_path = df_path.with_extension("expected");
        let exp = parse_expected(&fs::read_to_string(&exp_path).expect("read expected"));
        let got = render(&text, &exp);
        let ok = if exp.output.starts_with("error line ") {
            check_error(&got, &exp.output)
        } else {
            got == exp.output
        };
        if !ok {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- got\n{}\n",
                df_path.file_name().unwrap_or_default().to_string_lossy(),
                exp.output,
                got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    println!("{} Dockerfile cases passed", files.len());
}

#[test]
fn dockerignore_cases() {
    let files = cases("ignore", "dockerignore");
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    let mut checks = 0;
    for path in &files {
        let m = IgnoreMatcher::parse(&fs::read_to_string(path).expect("read case"))
            .expect("valid patterns");
        let exp = fs::read_to_string(path.with_extension("expected")).expect("read expected");
        for line in exp
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let (what, p) = line.split_once(' ').expect("<check> <path>");
            let ok = match what {
                "excluded" => m.is_excluded(p),
                "included" => !m.is_excluded(p),
                "skip" => m.can_skip_dir(p),
                "descend" => !m.can_skip_dir(p),
                other => panic!("unknown check {other:?}"),
            };
            checks += 1;
            if !ok {
                failures.push(format!(
                    "{}: {line}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "failed:\n{}", failures.join("\n"));
    println!("{checks} .dockerignore checks passed");
}

#[test]
fn bad_dockerignore_patterns_are_reported() {
    let e = IgnoreMatcher::parse("*.o\n\n[a-\n").expect_err("bad class");
    assert_eq!(
        e.to_string(),
        ".dockerignore line 3: pattern \"[a-\": unterminated character class"
    );
    assert!(IgnoreMatcher::from_patterns(["ok", "x\\"]).is_err());
}

#[test]
fn walk_honours_dockerignore_on_a_real_tree() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    for f in [
        "Dockerfile",
        "main.go",
        "README.md",
        "CHANGES.md",
        "node_modules/a/index.js",
        "node_modules/b/index.js",
        "docs/guide.md",
        "docs/keep/me.txt",
        "build/out.o",
        "src/lib.rs",
        "src/gen/big.o",
    ] {
        let p = root.join(f);
        fs::create_dir_all(p.parent().expect("has a parent"))?;
        fs::write(&p, f)?;
    }
    std::os::unix::fs::symlink("/etc/passwd", root.join("src/link"))?;
    fs::write(
        root.join(".dockerignore"),
        "node_modules\n*.md\n!README.md\ndocs\n!docs/keep\n**/*.o\nbuild\n",
    )?;
    let m = IgnoreMatcher::load(root, Some(Path::new("Dockerfile")))?;
    let got: Vec<(String, EntryKind)> = ignore::walk(root, &m)?
        .into_iter()
        .map(|e| (e.path.to_string_lossy().into_owned(), e.kind))
        .collect();
    let want = vec![
        (".dockerignore".to_string(), EntryKind::File),
        ("Dockerfile".to_string(), EntryKind::File),
        ("README.md".to_string(), EntryKind::File),
        ("docs/keep".to_string(), EntryKind::Dir),
        ("docs/keep/me.txt".to_string(), EntryKind::File),
        ("main.go".to_string(), EntryKind::File),
        ("src".to_string(), EntryKind::Dir),
        ("src/gen".to_string(), EntryKind::Dir),
        ("src/lib.rs".to_string(), EntryKind::File),
        ("src/link".to_string(), EntryKind::Symlink),
    ];
    assert_eq!(got, want);

    // A Dockerfile-specific ignore file takes precedence.
    fs::write(root.join("Dockerfile.dockerignore"), "src\n")?;
    let m = IgnoreMatcher::load(root, Some(Path::new("Dockerfile")))?;
    assert!(m.is_excluded("src/lib.rs"));
    assert!(!m.is_excluded("main.go"));
    // Without any ignore file nothing is excluded.
    let empty = tempfile::tempdir()?;
    assert!(IgnoreMatcher::load(empty.path(), None)?.is_empty());
    Ok(())
}

#[test]
fn a_thousand_line_dockerfile_parses_with_exact_line_numbers() {
    let mut text =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=alpine\nFROM $BASE AS base\n");
    for i in 0..330 {
        let _ = write!(
            text,
            "ENV V{i}=value{i} \\\n    W{i}=\"quoted $V{i}\"\nRUN echo {i} && \\\n  true\n"
        );
    }
    let _ = writeln!(text, "COPY --from=base /a /b");
    let df = Dockerfile::parse(&text).expect("parses");
    assert_eq!(df.stages[0].instructions.len(), 661);
    let last = df.stages[0].instructions.last().expect("instructions");
    assert_eq!(last.line, text.lines().count());
    assert_eq!(last.original, "COPY --from=base /a /b");
    let global = df.global_scope(&BuildArgs::new()).expect("global scope");
    let mut scope = global.stage_scope(Vec::<(String, String)>::new());
    for ins in &df.stages[0].instructions[..2] {
        scope.step(ins).expect("step");
    }
    // One instruction sees the values from before it.
    assert_eq!(scope.get("V0"), Some("value0"));
    assert_eq!(scope.get("W0"), Some("quoted "));
}

#[test]
fn onbuild_triggers_round_trip_through_the_image_config() {
    let df =
        Dockerfile::parse("FROM a\nONBUILD COPY <<EOF /x\nhello $NAME\nEOF\nONBUILD RUN make\n")
            .expect("parses");
    let texts: Vec<String> = df.stages[0]
        .instructions
        .iter()
        .map(|i| match &i.kind {
            vesseld::build::dockerfile::Kind::Onbuild(o) => o.text.clone(),
            _ => panic!("not ONBUILD"),
        })
        .collect();
    assert_eq!(texts, ["COPY <<EOF /x\nhello $NAME\nEOF", "RUN make"]);
    // A child build parses the stored text and runs it after its FROM.
    let trigger = vesseld::build::dockerfile::parse_trigger(&texts[0]).expect("trigger parses");
    let global = Dockerfile::parse("FROM x")
        .expect("parses")
        .global_scope(&BuildArgs::new())
        .expect("scope");
    let scope = global.stage_scope([("NAME", "world")]);
    match scope.resolve(&trigger).expect("resolves") {
        Step::Copy(c) => assert_eq!(sources(&c.sources), "<<EOF \"hello world\\n\""),
        other => panic!("unexpected {other:?}"),
    }
    assert!(vesseld::build::dockerfile::parse_trigger("FROM x").is_err());
    assert!(vesseld::build::dockerfile::parse_trigger("ONBUILD RUN x").is_err());
}
