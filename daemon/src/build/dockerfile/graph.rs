//! The stage graph: what each stage is based on and which other stages and
//! images it reads (`FROM <stage>`, `COPY --from`, `RUN --mount from=`),
//! which stages a target needs, and in what order they can be built.
//!
//! FROM may only name an earlier stage (a later stage's name is taken as
//! an image reference, as the reference says names are for "subsequent"
//! instructions). `--from` and `from=` may name any other stage, earlier or
//! later, or an earlier stage by index; cycles are errors. Anything that
//! is not a stage is an image reference.

use super::instructions::Kind;
use super::scope::{GlobalScope, StageScope};
use super::{Dockerfile, Error, ErrorKind, Result};

/// What a stage starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An image reference, as written after expansion.
    Image(String),
    /// An earlier stage, by index.
    Stage(usize),
}

/// How a stage reads another stage or an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepKind {
    From,
    CopyFrom,
    MountFrom,
}

/// What a dependency points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DepTarget {
    Stage(usize),
    Image(String),
}

/// One use of another stage or an image by a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    /// Line of the instruction that creates the dependency.
    pub line: usize,
    pub kind: DepKind,
    pub target: DepTarget,
}

/// A stage with its resolved base and dependencies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageNode {
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    /// `--platform` after expansion, if given and not empty.
    pub platform: Option<String>,
    /// Every dependency in instruction order, the base included.
    pub deps: Vec<Dependency>,
}

/// The stages of a Dockerfile and the dependencies between them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageGraph {
    nodes: Vec<StageNode>,
}

impl StageGraph {
    /// All stages, in Dockerfile order.
    pub fn stages(&self) -> &[StageNode] {
        &self.nodes
    }

    /// The stage with index `i` (panics if there is no such stage).
    pub fn stage(&self, i: usize) -> &StageNode {
        &self.nodes[i]
    }

    /// The stage `--target` names (case-insensitive), or the last stage.
    pub fn target(&self, name: Option<&str>) -> Result<usize> {
        let Some(name) = name else {
            // A parsed Dockerfile always has at least one stage.
            return Ok(self.nodes.len().saturating_sub(1));
        };
        let lower = name.to_ascii_lowercase();
        self.nodes
            .iter()
            .position(|n| n.name.as_deref() == Some(lower.as_str()))
            .ok_or_else(|| Error {
                line: 0,
                text: String::new(),
                kind: ErrorKind::Stage(format!("target stage {name:?} could not be found")),
            })
    }

    /// The stages stage `i` reads directly, without duplicates, ascending.
    pub fn stage_deps(&self, i: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self.nodes[i]
            .deps
            .iter()
            .filter_map(|d| match d.target {
                DepTarget::Stage(s) => Some(s),
                DepTarget::Image(_) => None,
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The stages building `target` needs, `target` included, ordered so
    /// that every stage comes after the stages it depends on. Stages not in
    /// the list are not needed and are skipped. Stages whose dependencies
    /// are all built can run in parallel.
    pub fn required(&self, target: usize) -> Vec<usize> {
        let mut order = Vec::new();
        let mut seen = vec![false; self.nodes.len()];
        // Iterative depth-first search, post-order.
        let mut stack = vec![(target, false)];
        while let Some((i, expanded)) = stack.pop() {
            if expanded {
                order.push(i);
                continue;
            }
            if seen[i] {
                continue;
            }
            seen[i] = true;
            stack.push((i, true));
            for d in self.stage_deps(i).into_iter().rev() {
                if !seen[d] {
                    stack.push((d, false));
                }
            }
        }
        order
    }

    /// The external images the given stages use (bases, `--from` and
    /// `from=` images), without duplicates, in first-use order.
    pub fn images(&self, stages: &[usize]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for &i in stages {
            for d in &self.nodes[i].deps {
                match &d.target {
                    DepTarget::Image(r) if !out.contains(r) => out.push(r.clone()),
                    _ => {}
                }
            }
        }
        out
    }

    fn check_cycles(&self) -> Result<()> {
        // 0 = unvisited, 1 = on the current path, 2 = done.
        let mut state = vec![0u8; self.nodes.len()];
        for start in 0..self.nodes.len() {
            if state[start] != 0 {
                continue;
            }
            let mut path: Vec<(usize, Vec<usize>)> = vec![(start, self.stage_deps(start))];
            state[start] = 1;
            while let Some((node, pending)) = path.last_mut() {
                let node = *node;
                let Some(next) = pending.pop() else {
                    state[node] = 2;
                    path.pop();
                    continue;
                };
                match state[next] {
                    0 => {
                        state[next] = 1;
                        path.push((next, self.stage_deps(next)));
                    }
                    1 => {
                        let pos = path.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut names: Vec<String> =
                            path[pos..].iter().map(|(n, _)| self.label(*n)).collect();
                        names.push(self.label(next));
                        let line = self.nodes[node]
                            .deps
                            .iter()
                            .find(|d| d.target == DepTarget::Stage(next))
                            .map_or(0, |d| d.line);
                        return Err(Error {
                            line,
                            text: String::new(),
                            kind: ErrorKind::Stage(format!(
                                "circular dependency between stages: {}",
                                names.join(" -> ")
                            )),
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn label(&self, i: usize) -> String {
        self.nodes[i].name.clone().unwrap_or_else(|| i.to_string())
    }
}

impl Dockerfile {
    /// Resolves every stage's base and dependencies with the global scope
    /// (for FROM) and each stage's own ARG/ENV (for `--from` and `from=`).
    /// Values a base image's ENV would supply are not known here, so a
    /// `--from` that depends on one resolves as if it were unset.
    pub fn graph(&self, global: &GlobalScope) -> Result<StageGraph> {
        let mut nodes: Vec<StageNode> = Vec::with_capacity(self.stages.len());
        let mut scopes: Vec<StageScope> = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let at = |kind: ErrorKind| Error {
                line: stage.line,
                text: stage.original.clone(),
                kind,
            };
            let image = global
                .expand(&stage.from.image)
                .map_err(|r| at(ErrorKind::Expansion(r)))?;
            if image.is_empty() {
                return Err(at(ErrorKind::Value(format!(
                    "base image {:?} expands to an empty string",
                    stage.from.image.raw()
                ))));
            }
            let platform = match &stage.from.platform {
                Some(p) => Some(global.expand(p).map_err(|r| at(ErrorKind::Expansion(r)))?)
                    .filter(|p| !p.is_empty()),
                None => None,
            };
            let base = if image.eq_ignore_ascii_case("scratch") {
                Base::Scratch
            } else {
                let lower = image.to_ascii_lowercase();
                match self.stages[..stage.index]
                    .iter()
                    .position(|s| s.name.as_deref() == Some(lower.as_str()))
                {
                    Some(p) => Base::Stage(p),
                    None => Base::Image(image),
                }
            };
            let mut scope = match base {
                Base::Stage(p) => scopes[p].child(),
                _ => global.stage_scope(Vec::<(String, String)>::new()),
            };
            let mut deps = Vec::new();
            match &base {
                Base::Stage(p) => deps.push(Dependency {
                    line: stage.line,
                    kind: DepKind::From,
                    target: DepTarget::Stage(*p),
                }),
                Base::Image(r) => {
                    deps.push(Dependency {
                        line: stage.line,
                        kind: DepKind::From,
                        target: DepTarget::Image(r.clone()),
                    });
                }
                Base::Scratch => {}
            }
            for ins in &stage.instructions {
                let fail = |kind: ErrorKind| Error {
                    line: ins.line,
                    text: ins.original.clone(),
                    kind,
                };
                match &ins.kind {
                    Kind::Copy(c) => {
                        if let Some(from) = &c.from {
                            let v = scope
                                .expand(from)
                                .map_err(|r| fail(ErrorKind::Expansion(r)))?;
                            let target = self
                                .reference(&v, stage.index)
                                .map_err(|r| fail(ErrorKind::Stage(r)))?;
                            deps.push(Dependency {
                                line: ins.line,
                                kind: DepKind::CopyFrom,
                                target,
                            });
                        }
                    }
                    Kind::Run(r) => {
                        for m in &r.mounts {
                            if let Some(raw) = m.from_option() {
                                let v = scope
                                    .expand(&super::Word::new(raw))
                                    .map_err(|r| fail(ErrorKind::Expansion(r)))?;
                                if v.is_empty() {
                                    continue;
                                }
                                let target = self
                                    .reference(&v, stage.index)
                                    .map_err(|r| fail(ErrorKind::Stage(r)))?;
                                deps.push(Dependency {
                                    line: ins.line,
                                    kind: DepKind::MountFrom,
                                    target,
                                });
                            }
                        }
                    }
                    Kind::Arg(_) | Kind::Env(_) => {
                        scope.step(ins)?;
                    }
                    _ => {}
                }
            }
            scopes.push(scope);
            nodes.push(StageNode {
                index: stage.index,
                name: stage.name.clone(),
                base,
                platform,
                deps,
            });
        }
        let graph = StageGraph { nodes };
        graph.check_cycles()?;
        Ok(graph)
    }

    /// Resolves a `--from` / `from=` value used in stage `current`.
    fn reference(&self, value: &str, current: usize) -> Result<DepTarget, String> {
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            let n: usize = value
                .parse()
                .map_err(|_| format!("stage index {value} is out of range"))?;
            return if n < current {
                Ok(DepTarget::Stage(n))
            } else {
                Err(format!(
                    "stage index {n} must refer to an earlier stage (this is stage {current})"
                ))
            };
        }
        let lower = value.to_ascii_lowercase();
        match self
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            Some(i) if i == current => {
                Err(format!("stage {value:?} cannot copy or mount from itself"))
            }
            Some(i) => Ok(DepTarget::Stage(i)),
            None => Ok(DepTarget::Image(value.to_string())),
        }
    }
}
