//! `.dockerignore` for build contexts, with the builder's semantics:
//!
//! - one pattern per line; lines starting with `#` are comments, blank
//!   lines are skipped, patterns are trimmed and cleaned like Go's
//!   `filepath.Clean`, a leading `/` is dropped;
//! - Go `filepath.Match` syntax (`*` and `?` stop at `/`, `[a-z]`/`[^a]`
//!   classes, `\` escapes) plus `**`, which crosses directories (`**/x`
//!   also matches `x` at the top);
//! - a pattern matching a directory matches everything below it;
//! - `!pattern` re-includes; the last matching pattern decides.
//!
//! The walker that uses it to build the context tar is
//! [`crate::archive::context_tar`].

/// Pattern errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(".dockerignore line {line}: pattern {pattern:?}: {reason}")]
    Bad {
        line: usize,
        pattern: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Char(char),
    One,
    Star,
    /// `**` at the end of a pattern: anything at all.
    Rest,
    /// `**` elsewhere (with its following `/` eaten): nothing, or anything
    /// ending in `/`.
    Dirs,
    Set {
        negate: bool,
        ranges: Vec<(char, char)>,
    },
}

/// One compiled pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    text: String,
    exclusion: bool,
    pieces: Vec<Piece>,
}

impl Pattern {
    /// The cleaned pattern text (without `!`).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether this is an exception (`!pattern`).
    pub fn is_exception(&self) -> bool {
        self.exclusion
    }

    fn matches(&self, path: &str) -> bool {
        let chars: Vec<char> = path.chars().collect();
        glob(&self.pieces, &chars)
    }
}

fn glob(p: &[Piece], s: &[char]) -> bool {
    let Some((first, rest)) = p.split_first() else {
        return s.is_empty();
    };
    match first {
        Piece::Char(c) => s.first() == Some(c) && glob(rest, &s[1..]),
        Piece::One => s.first().is_some_and(|&c| c != '/') && glob(rest, &s[1..]),
        Piece::Star => {
            for i in 0..=s.len() {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == '/' {
                    return false;
                }
            }
            false
        }
        Piece::Rest => true,
        Piece::Dirs => {
            if glob(rest, s) {
                return true;
            }
            (0..s.len()).any(|i| s[i] == '/' && glob(rest, &s[i + 1..]))
        }
        Piece::Set { negate, ranges } => match s.first() {
            Some(&c) if c != '/' => {
                let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                inside != *negate && glob(rest, &s[1..])
            }
            _ => false,
        },
    }
}

fn compile(pat: &str) -> Result<Vec<Piece>, String> {
    let cs: Vec<char> = pat.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        i += 1;
        match c {
            '*' if cs.get(i) == Some(&'*') => {
                i += 1;
                if cs.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= cs.len() {
                    out.push(Piece::Rest);
                } else {
                    out.push(Piece::Dirs);
                }
            }
            '*' => out.push(Piece::Star),
            '?' => out.push(Piece::One),
            '\\' => {
                let n = *cs.get(i).ok_or("trailing backslash")?;
                i += 1;
                out.push(Piece::Char(n));
            }
            '[' => {
                let mut negate = false;
                if matches!(cs.get(i), Some('^' | '!')) {
                    negate = true;
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&c) = cs.get(i) else {
                        return Err("unterminated character class".to_string());
                    };
                    if c == ']' && !first {
                        i += 1;
                        break;
                    }
                    first = false;
                    let lo = class_char(&cs, &mut i)?;
                    let hi = if cs.get(i) == Some(&'-') && cs.get(i + 1) != Some(&']') {
                        i += 1;
                        class_char(&cs, &mut i)?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return Err(format!("invalid range {lo}-{hi}"));
                    }
                    ranges.push((lo, hi));
                }
                out.push(Piece::Set { negate, ranges });
            }
            other => out.push(Piece::Char(other)),
        }
    }
    Ok(out)
}

fn class_char(cs: &[char], i: &mut usize) -> Result<char, String> {
    let c = *cs.get(*i).ok_or("unterminated character class")?;
    *i += 1;
    if c == '\\' {
        let n = *cs.get(*i).ok_or("unterminated character class")?;
        *i += 1;
        return Ok(n);
    }
    Ok(c)
}

/// Go's `filepath.Clean` on a slash path.
pub fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// A set of patterns.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Parse `.dockerignore` text.
    pub fn parse(text: &str) -> Result<Matcher> {
        let mut lines = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            if raw.starts_with('#') {
                continue;
            }
            let t = raw.trim();
            if t.is_empty() {
                continue;
            }
            lines.push((n + 1, t.to_string()));
        }
        Matcher::from_lines(&lines)
    }

    /// Build from patterns given as (line, text) pairs.
    pub fn from_lines(lines: &[(usize, String)]) -> Result<Matcher> {
        let mut patterns = Vec::new();
        for (line, raw) in lines {
            let (exclusion, body) = match raw.strip_prefix('!') {
                Some(b) => (true, b.trim()),
                None => (false, raw.as_str()),
            };
            if body.is_empty() {
                return Err(Error::Bad {
                    line: *line,
                    pattern: raw.clone(),
                    reason: "illegal exclusion pattern: \"!\"".to_string(),
                });
            }
            let mut text = clean(body);
            if text.len() > 1 && text.starts_with('/') {
                text.remove(0);
            }
            let pieces = compile(&text).map_err(|reason| Error::Bad {
                line: *line,
                pattern: raw.clone(),
                reason,
            })?;
            patterns.push(Pattern {
                text,
                exclusion,
                pieces,
            });
        }
        Ok(Matcher { patterns })
    }

    /// Append a pattern (e.g. `!Dockerfile` so the Dockerfile is always
    /// sent).
    pub fn push(&mut self, line: &str) -> Result<()> {
        let m = Matcher::from_lines(&[(0, line.to_string())])?;
        self.patterns.extend(m.patterns);
        Ok(())
    }

    /// The patterns.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is an exception.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `path` (relative to the context, `/`-separated) is excluded.
    pub fn excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let parents: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for p in &self.patterns {
            // A pattern can only change the outcome in one direction.
            if p.exclusion != excluded {
                continue;
            }
            let mut hit = p.matches(&path);
            if !hit {
                for i in 1..parents.len() {
                    if p.matches(&parents[..i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                excluded = !p.exclusion;
            }
        }
        excluded
    }

    /// Whether a whole excluded directory can be skipped without looking
    /// inside: true unless some exception could re-include a path below it.
    pub fn can_skip_dir(&self, dir: &str) -> bool {
        if !self.excluded(dir) {
            return false;
        }
        let dir = clean(dir);
        !self.patterns.iter().any(|p| {
            p.exclusion && {
                // An exception may match below `dir` if its literal prefix
                // (up to the first wildcard) is compatible with `dir/`.
                let lit: String = p
                    .text
                    .chars()
                    .take_while(|c| !matches!(c, '*' | '?' | '[' | '\\'))
                    .collect();
                let d = format!("{dir}/");
                lit.starts_with(&d) || d.starts_with(&lit)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Matcher {
        Matcher::parse(s).unwrap()
    }

    #[test]
    fn basic_globs() {
        let x = m("*.log\n# comment\n/tmp\n");
        assert!(x.excluded("a.log"));
        assert!(!x.excluded("d/a.log"), "* does not cross /");
        assert!(x.excluded("tmp"));
        assert!(
            x.excluded("tmp/deep/file"),
            "directory match covers children"
        );
        assert!(!x.excluded("src/tmp"));
    }

    #[test]
    fn double_star() {
        let x = m("**/*.o\nbuild/**\n");
        assert!(x.excluded("a.o"));
        assert!(x.excluded("x/y/z.o"));
        assert!(x.excluded("build/a/b"));
        assert!(!x.excluded("build"));
        let y = m("a/**/b");
        assert!(y.excluded("a/b"));
        assert!(y.excluded("a/x/y/b"));
        assert!(!y.excluded("a/xb"));
    }

    #[test]
    fn exceptions_last_match_wins() {
        let x = m("*.md\n!README.md\nREADME*.md\n");
        assert!(x.excluded("A.md"));
        assert!(x.excluded("README.md"));
        let y = m("docs\n!docs/keep.txt\n");
        assert!(y.excluded("docs/other"));
        assert!(!y.excluded("docs/keep.txt"));
        assert!(!y.can_skip_dir("docs"));
        assert!(m("docs").can_skip_dir("docs"));
    }

    #[test]
    fn classes_escapes_and_cleaning() {
        let x = m("file[0-9].txt\n[^a]x\nq\\*\n./sub/../top/\n");
        assert!(x.excluded("file3.txt"));
        assert!(!x.excluded("filea.txt"));
        assert!(x.excluded("bx"));
        assert!(!x.excluded("ax"));
        assert!(x.excluded("q*"));
        assert!(!x.excluded("qq"));
        assert!(x.excluded("top/f"));
        assert!(Matcher::parse("[a-").is_err());
        assert!(Matcher::parse("!").is_err());
        assert_eq!(clean("a//b/./c/.."), "a/b");
        assert_eq!(clean("../x"), "../x");
    }
}
