//! `.dockerignore` matching, also used for `COPY --exclude` and `ADD
//! --exclude` patterns.
//!
//! Rules (from the Docker build-context documentation):
//! - One pattern per line. A line whose first character is `#` is a
//!   comment; blank lines are ignored.
//! - Each pattern is trimmed, then cleaned like Go's `filepath.Clean`
//!   (`.` and `..` elements removed, repeated and trailing `/` dropped);
//!   a leading `/` is ignored, since the context root is both the working
//!   and the root directory.
//! - Matching follows Go's `filepath.Match` (`*` and `?` never match `/`,
//!   `[...]` classes with `^` negation and ranges, `\` escapes), plus `**`,
//!   which matches any number of directories, including none.
//! - A pattern that matches a directory matches everything below it.
//! - A line starting with `!` is an exception that re-includes what it
//!   matches. The last pattern that matches a path decides.
//!
//! [`IgnoreMatcher::can_skip_dir`] tells a walker when a whole directory
//! can be left out without looking inside; [`walk`] is such a walker.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `.dockerignore` and build-context errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}pattern {pattern:?}: {reason}", line_prefix(*.line))]
    BadPattern {
        line: Option<usize>,
        pattern: String,
        reason: String,
    },
    #[error("build context {path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn line_prefix(line: Option<usize>) -> String {
    line.map(|n| format!(".dockerignore line {n}: "))
        .unwrap_or_default()
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`: one character other than `/`.
    Any,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` not followed by `/`: any run of characters.
    DoubleStar,
    /// `**/`: nothing, or any run of characters ending in `/`.
    DoubleStarSlash,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Compiles a pattern. `double_star` enables `**`; without it `**` is two
/// `*`s, as in Go's `filepath.Match`.
fn compile(pattern: &str, double_star: bool) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                if double_star && chars.get(i) == Some(&'*') {
                    i += 1;
                    while chars.get(i) == Some(&'*') {
                        i += 1;
                    }
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                        toks.push(Tok::DoubleStarSlash);
                    } else {
                        toks.push(Tok::DoubleStar);
                    }
                } else if toks.last() != Some(&Tok::Star) {
                    toks.push(Tok::Star);
                }
            }
            '?' => toks.push(Tok::Any),
            '\\' => match chars.get(i) {
                Some(&n) => {
                    i += 1;
                    toks.push(Tok::Lit(n));
                }
                None => return Err("ends with an unescaped '\\'".to_string()),
            },
            '[' => {
                let mut negated = false;
                if chars.get(i) == Some(&'^') {
                    negated = true;
                    i += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated character class".to_string()),
                        Some(']') if !ranges.is_empty() => {
                            i += 1;
                            break;
                        }
                        _ => {}
                    }
                    let lo = class_char(&chars, &mut i)?;
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') {
                        i += 1;
                        hi = class_char(&chars, &mut i)?;
                        if hi < lo {
                            return Err(format!("character range {lo}-{hi} is reversed"));
                        }
                    }
                    ranges.push((lo, hi));
                }
                toks.push(Tok::Class { negated, ranges });
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    Ok(toks)
}

fn class_char(chars: &[char], i: &mut usize) -> Result<char, String> {
    match chars.get(*i) {
        None => Err("unterminated character class".to_string()),
        Some('-' | ']') => Err("'-' or ']' where a character belongs in a class".to_string()),
        Some('\\') => {
            *i += 1;
            let c = chars
                .get(*i)
                .copied()
                .ok_or("unterminated character class")?;
            *i += 1;
            Ok(c)
        }
        Some(&c) => {
            *i += 1;
            Ok(c)
        }
    }
}

/// The set of pattern positions reachable after reading some text. State
/// `k` (0..=n) means "before token k"; `n + 1 + k` is the inside of a
/// `**/` token at `k` that has read something and waits for its `/`.
struct States {
    on: Vec<bool>,
}

fn closure(toks: &[Tok], s: &mut States) {
    // Tokens that can match nothing let the state move on.
    for (k, tok) in toks.iter().enumerate() {
        if s.on[k] && matches!(tok, Tok::Star | Tok::DoubleStar | Tok::DoubleStarSlash) {
            s.on[k + 1] = true;
        }
    }
}

fn start(toks: &[Tok]) -> States {
    let mut s = States {
        on: vec![false; 2 * toks.len() + 2],
    };
    s.on[0] = true;
    closure(toks, &mut s);
    s
}

fn step(toks: &[Tok], s: &States, c: char) -> States {
    let n = toks.len();
    let mut next = States {
        on: vec![false; s.on.len()],
    };
    for (k, tok) in toks.iter().enumerate() {
        if s.on[k] {
            match tok {
                Tok::Lit(l) if *l == c => next.on[k + 1] = true,
                Tok::Any if c != '/' => next.on[k + 1] = true,
                Tok::Star if c != '/' => next.on[k] = true,
                Tok::DoubleStar => next.on[k] = true,
                Tok::DoubleStarSlash => {
                    next.on[n + 1 + k] = true;
                    if c == '/' {
                        next.on[k + 1] = true;
                    }
                }
                Tok::Class { negated, ranges }
                    if ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated =>
                {
                    next.on[k + 1] = true;
                }
                _ => {}
            }
        }
        if s.on[n + 1 + k] {
            next.on[n + 1 + k] = true;
            if c == '/' {
                next.on[k + 1] = true;
            }
        }
    }
    closure(toks, &mut next);
    next
}

fn run(toks: &[Tok], text: &str) -> States {
    let mut s = start(toks);
    for c in text.chars() {
        s = step(toks, &s, c);
        if !s.on.iter().any(|&b| b) {
            break;
        }
    }
    s
}

fn full_match(toks: &[Tok], text: &str) -> bool {
    run(toks, text).on[toks.len()]
}

/// Go's `filepath.Match` (on `/`-separated paths): whether `name` matches
/// `pattern` as a whole. `**` has no special meaning here.
pub fn path_match(pattern: &str, name: &str) -> Result<bool> {
    let toks = compile(pattern, false).map_err(|reason| Error::BadPattern {
        line: None,
        pattern: pattern.to_string(),
        reason,
    })?;
    Ok(full_match(&toks, name))
}

/// Checks that `pattern` is a valid ignore/exclude pattern.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    compile(&clean_pattern(pattern), true).map(|_| ())
}

/// Go's `filepath.Clean` for `/`-separated paths.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

fn clean_pattern(p: &str) -> String {
    let c = clean(p);
    match c.strip_prefix('/') {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => c,
    }
}

#[derive(Clone, Debug)]
struct Pattern {
    text: String,
    exception: bool,
    toks: Vec<Tok>,
}

/// A compiled list of ignore patterns.
#[derive(Clone, Debug, Default)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
}

impl IgnoreMatcher {
    /// Parses the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> Result<IgnoreMatcher> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut m = IgnoreMatcher::default();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            m.push(line, Some(i + 1))?;
        }
        Ok(m)
    }

    /// Builds a matcher from individual patterns (`COPY --exclude` values),
    /// with the same syntax as `.dockerignore` lines.
    pub fn from_patterns<I, S>(patterns: I) -> Result<IgnoreMatcher>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut m = IgnoreMatcher::default();
        for p in patterns {
            m.push(p.as_ref(), None)?;
        }
        Ok(m)
    }

    fn push(&mut self, line: &str, number: Option<usize>) -> Result<()> {
        let mut p = line.trim();
        if p.is_empty() {
            return Ok(());
        }
        let exception = p.starts_with('!');
        if exception {
            p = p[1..].trim();
        }
        if p.is_empty() {
            return Ok(());
        }
        let text = clean_pattern(p);
        let toks = compile(&text, true).map_err(|reason| Error::BadPattern {
            line: number,
            pattern: line.trim().to_string(),
            reason,
        })?;
        self.patterns.push(Pattern {
            text,
            exception,
            toks,
        });
        Ok(())
    }

    /// Reads the ignore file for a build: `<dockerfile>.dockerignore` next
    /// to the Dockerfile if that exists (`dockerfile` relative to the
    /// context), else `.dockerignore` at the context root. A missing file
    /// means nothing is ignored.
    pub fn load(context: &Path, dockerfile: Option<&Path>) -> Result<IgnoreMatcher> {
        let mut candidates = Vec::new();
        if let Some(df) = dockerfile {
            let mut name = df.as_os_str().to_owned();
            name.push(".dockerignore");
            candidates.push(context.join(PathBuf::from(name)));
        }
        candidates.push(context.join(".dockerignore"));
        for path in candidates {
            match fs::read(&path) {
                Ok(bytes) => return IgnoreMatcher::parse(&String::from_utf8_lossy(&bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        op: "reading the ignore file",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(IgnoreMatcher::default())
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The cleaned patterns, each with whether it is a `!` exception.
    pub fn patterns(&self) -> impl Iterator<Item = (&str, bool)> {
        self.patterns.iter().map(|p| (p.text.as_str(), p.exception))
    }

    /// The index of the last pattern that matches `path` or one of its
    /// parent directories.
    fn decisive(&self, path: &str) -> Option<usize> {
        self.patterns.iter().rposition(|p| {
            full_match(&p.toks, path)
                || path
                    .char_indices()
                    .filter(|&(_, c)| c == '/')
                    .any(|(i, _)| full_match(&p.toks, &path[..i]))
        })
    }

    /// Whether `path` (relative to the context root, `/`-separated) is
    /// excluded from the build context.
    pub fn is_excluded(&self, path: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let path = clean_pattern(path);
        self.decisive(&path)
            .is_some_and(|i| !self.patterns[i].exception)
    }

    /// Whether the directory `dir` is excluded and no exception can
    /// re-include anything below it, so a walker may skip it entirely.
    pub fn can_skip_dir(&self, dir: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let dir = clean_pattern(dir);
        let Some(k) = self.decisive(&dir) else {
            return false;
        };
        if self.patterns[k].exception {
            return false;
        }
        let prefix = format!("{dir}/");
        // A later exception that can still match after reading "dir/" may
        // match something below it.
        !self.patterns[k + 1..]
            .iter()
            .filter(|p| p.exception)
            .any(|p| {
                let s = run(&p.toks, &prefix);
                s.on.iter()
                    .enumerate()
                    .any(|(i, &on)| on && i != p.toks.len())
            })
    }
}

/// The kind of a build-context entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// An entry of the build context that is not excluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextEntry {
    /// Path relative to the context root.
    pub path: PathBuf,
    pub kind: EntryKind,
}

/// Lists the build context under `root` that `matcher` does not exclude,
/// depth first in name order, directories before their contents. Symlinks
/// are listed, never followed. An excluded directory is left out but still
/// searched when an exception may re-include something below it.
pub fn walk(root: &Path, matcher: &IgnoreMatcher) -> Result<Vec<ContextEntry>> {
    let mut out = Vec::new();
    walk_dir(root, Path::new(""), matcher, &mut out)?;
    Ok(out)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

fn walk_dir(
    root: &Path,
    rel: &Path,
    matcher: &IgnoreMatcher,
    out: &mut Vec<ContextEntry>,
) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(io_err("reading directory", &dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("reading directory", &dir))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for e in entries {
        let rel_path = rel.join(e.file_name());
        let meta = fs::symlink_metadata(e.path()).map_err(io_err("reading metadata", &e.path()))?;
        let name = rel_path.to_string_lossy();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        };
        if kind == EntryKind::Dir {
            if matcher.can_skip_dir(&name) {
                continue;
            }
            if !matcher.is_excluded(&name) {
                out.push(ContextEntry {
                    path: rel_path.clone(),
                    kind,
                });
            }
            walk_dir(root, &rel_path, matcher, out)?;
        } else if !matcher.is_excluded(&name) {
            out.push(ContextEntry {
                path: rel_path,
                kind,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_match() {
        let m = |p: &str, n: &str| path_match(p, n).unwrap();
        assert!(m("abc", "abc"));
        assert!(m("*", "abc"));
        assert!(m("*c", "abc"));
        assert!(!m("a*", "ab/c"));
        assert!(m("a*/b", "abc/b"));
        assert!(!m("a*/b", "a/c/b"));
        assert!(m("a*b*c*d*e*/f", "axbxcxdxe/f"));
        assert!(!m("a*b*c*d*e*/f", "axbxcxdxexxx/fff"));
        assert!(m("ab[c]", "abc"));
        assert!(m("ab[b-d]", "abc"));
        assert!(!m("ab[e-g]", "abc"));
        assert!(!m("ab[^c]", "abc"));
        assert!(m("ab[^e-g]", "abc"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "ab"));
        assert!(m("a?b", "a☺b"));
        assert!(!m("a?b", "a/b"));
        assert!(m("[\\]a]", "]"));
        assert!(m("[\\-]", "-"));
        assert!(m("[x\\-]", "x"));
        assert!(m("**", "abc"));
        assert!(!m("**", "a/b"));
        for bad in [
            "[]a]", "[-]", "[x-]", "[a-b-c]", "[", "[^", "[^bc", "a[", "\\", "[z-a]",
        ] {
            assert!(path_match(bad, "a").is_err(), "{bad}");
        }
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean("a/./b/../c//d/"), "a/c/d");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("../a"), "../a");
        assert_eq!(clean("./"), ".");
        assert_eq!(clean(""), ".");
        assert_eq!(clean_pattern("/foo/bar"), "foo/bar");
        assert_eq!(clean_pattern("/"), "/");
    }

    fn matcher(text: &str) -> IgnoreMatcher {
        IgnoreMatcher::parse(text).unwrap()
    }

    #[test]
    fn dockerignore_rules() {
        let m = matcher("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(m.is_excluded("somedir/temporary.txt"));
        assert!(m.is_excluded("somedir/temp"));
        assert!(m.is_excluded("somedir/subdir/temporary.txt"));
        assert!(m.is_excluded("tempa"));
        assert!(m.is_excluded("tempb/file"));
        assert!(!m.is_excluded("temp"));
        assert!(!m.is_excluded("a/b/c/temp"));

        let m = matcher("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(m.is_excluded("CHANGES.md"));
        assert!(!m.is_excluded("README.md"));
        assert!(m.is_excluded("README-secret.md"));

        let m = matcher("**/*.go\n");
        assert!(m.is_excluded("a.go"));
        assert!(m.is_excluded("x/y/z.go"));
        assert!(!m.is_excluded("x/y/z.rs"));

        let m = matcher("/foo/bar\n  spaced  \n./dot/./x\n");
        assert!(m.is_excluded("foo/bar"));
        assert!(m.is_excluded("foo/bar/baz"));
        assert!(m.is_excluded("spaced"));
        assert!(m.is_excluded("dot/x"));
        assert!(!m.is_excluded("foo"));
    }

    #[test]
    fn skipping_directories() {
        let m = matcher("node_modules\n");
        assert!(m.can_skip_dir("node_modules"));
        assert!(!m.can_skip_dir("src"));
        let m = matcher("docs\n!docs/keep.md\n");
        assert!(!m.can_skip_dir("docs"));
        assert!(m.is_excluded("docs/other.md"));
        assert!(!m.is_excluded("docs/keep.md"));
        let m = matcher("docs\n!**/keep.md\n");
        assert!(!m.can_skip_dir("docs"));
        let m = matcher("docs\n!src/keep.md\n");
        assert!(m.can_skip_dir("docs"));
        let m = matcher("!docs/keep.md\ndocs\n");
        assert!(m.can_skip_dir("docs"));
        let m = matcher("foo/**\n");
        assert!(!m.is_excluded("foo"));
        assert!(!m.can_skip_dir("foo"));
        assert!(m.is_excluded("foo/a"));
        assert!(m.can_skip_dir("foo/a"));
    }

    #[test]
    fn bad_patterns_name_the_line() {
        let e = IgnoreMatcher::parse("ok\n[abc\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with(".dockerignore line 2: pattern \"[abc\""),
            "{e}"
        );
    }
}
