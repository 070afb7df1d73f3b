//! Variable expansion and quote removal for the instructions the builder
//! expands (ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME,
//! WORKDIR, ARG defaults and RUN mount options).
//!
//! Word mode follows the reference's "Environment replacement" rules with
//! shell-like quoting:
//! - `$name` and `${name}` expand to the variable's value, or to nothing
//!   when it is unset; `$` followed by anything else is a literal `$`.
//! - `${name:-word}`, `${name-word}`, `${name:+word}`, `${name+word}`,
//!   `${name:?word}`, `${name?word}`, and the pattern forms `${name#pat}`,
//!   `${name##pat}`, `${name%pat}`, `${name%%pat}`, `${name/pat/repl}`,
//!   `${name//pat/repl}`. The words are expanded themselves.
//! - The escape character (`\` or the one set by the `escape` directive)
//!   makes the next character literal and is removed.
//! - Single quotes make everything up to the next single quote literal.
//! - Double quotes group text; inside them `$` still expands and the escape
//!   character only escapes `"`, `$` and itself.
//!
//! Heredoc mode is the POSIX here-document rule: variables expand, quotes
//! are ordinary characters, and the escape character only escapes `$` and
//! itself.

/// Where the expander reads variable values from.
pub(crate) trait Vars {
    fn var(&self, name: &str) -> Option<&str>;
}

/// No variables: used to remove quotes and escapes from text the builder
/// does not expand.
pub(crate) struct NoVars;

impl Vars for NoVars {
    fn var(&self, _: &str) -> Option<&str> {
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Quotes and escapes processed, variables expanded.
    Word,
    /// Quotes and escapes processed, `$` is literal.
    Literal,
    /// Here-document body: variables expanded, quotes literal.
    Heredoc,
}

/// Expands `text`. Errors are short lowercase reasons.
pub(crate) fn expand(
    text: &str,
    escape: char,
    vars: &dyn Vars,
    mode: Mode,
) -> Result<String, String> {
    // Fast path: nothing to process.
    let special =
        |c: char| c == escape || c == '$' || (mode != Mode::Heredoc && (c == '\'' || c == '"'));
    if !text.chars().any(special) {
        return Ok(text.to_string());
    }
    let mut p = Proc {
        chars: text.chars().collect(),
        pos: 0,
        escape,
        vars,
        mode,
        keep_escapes: false,
    };
    let out = p.text(&[], true)?;
    debug_assert_eq!(p.pos, p.chars.len());
    Ok(out)
}

/// Removes quotes and escapes without expanding variables.
pub(crate) fn unquote(text: &str, escape: char) -> Result<String, String> {
    expand(text, escape, &NoVars, Mode::Literal)
}

struct Proc<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    vars: &'a dyn Vars,
    mode: Mode,
    /// Inside a `#`, `%` or `/` pattern: keep escapes so that the pattern
    /// compiler can tell a literal `*` from a wildcard.
    keep_escapes: bool,
}

impl Proc<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn lookup(&self, name: &str, eval: bool) -> Option<String> {
        if eval {
            self.vars.var(name).map(str::to_string)
        } else {
            None
        }
    }

    /// Processes text up to (not including) one of `stops` at this nesting
    /// level, or to the end when `stops` is empty. `eval` false parses
    /// without reporting `${x:?}` errors (a branch that is not taken).
    fn text(&mut self, stops: &[char], eval: bool) -> Result<String, String> {
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                if stops.is_empty() {
                    return Ok(out);
                }
                return Err("missing '}' in variable substitution".to_string());
            };
            if stops.contains(&c) {
                return Ok(out);
            }
            self.pos += 1;
            if c == self.escape {
                match self.peek() {
                    None => out.push(c),
                    Some(n) if self.mode == Mode::Heredoc && n != '$' && n != self.escape => {
                        out.push(c);
                    }
                    Some(n) => {
                        self.pos += 1;
                        if self.keep_escapes {
                            out.push(c);
                        }
                        out.push(n);
                    }
                }
                continue;
            }
            match (self.mode, c) {
                (Mode::Word | Mode::Literal, '\'') => self.single_quoted(&mut out)?,
                (Mode::Word | Mode::Literal, '"') => self.double_quoted(&mut out, eval)?,
                (Mode::Word | Mode::Heredoc, '$') => self.dollar(&mut out, eval)?,
                _ => out.push(c),
            }
        }
    }

    fn single_quoted(&mut self, out: &mut String) -> Result<(), String> {
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated single quote".to_string());
            };
            self.pos += 1;
            if c == '\'' {
                return Ok(());
            }
            if self.keep_escapes && (matches!(c, '*' | '?') || c == self.escape) {
                out.push(self.escape);
            }
            out.push(c);
        }
    }

    fn double_quoted(&mut self, out: &mut String, eval: bool) -> Result<(), String> {
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated double quote".to_string());
            };
            self.pos += 1;
            if c == '"' {
                return Ok(());
            }
            if c == self.escape {
                match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.pos += 1;
                        if self.keep_escapes {
                            out.push(c);
                        }
                        out.push(n);
                    }
                    _ => out.push(c),
                }
                continue;
            }
            if c == '$' && self.mode == Mode::Word {
                self.dollar(out, eval)?;
                continue;
            }
            if self.keep_escapes && matches!(c, '*' | '?') {
                out.push(self.escape);
            }
            out.push(c);
        }
    }

    fn read_name(&mut self) -> String {
        let mut name = String::new();
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                name.push(d);
                self.pos += 1;
            }
            return name;
        }
        while let Some(c) = self
            .peek()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    /// Called after a `$`.
    fn dollar(&mut self, out: &mut String, eval: bool) -> Result<(), String> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced(out, eval)
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let name = self.read_name();
                if let Some(v) = self.lookup(&name, eval) {
                    out.push_str(&v);
                }
                Ok(())
            }
            _ => {
                out.push('$');
                Ok(())
            }
        }
    }

    fn expect_close(&mut self) -> Result<(), String> {
        if self.peek() == Some('}') {
            self.pos += 1;
            Ok(())
        } else {
            Err("missing '}' in variable substitution".to_string())
        }
    }

    fn pattern(&mut self, stops: &[char], eval: bool) -> Result<String, String> {
        let saved = self.keep_escapes;
        self.keep_escapes = true;
        let r = self.text(stops, eval);
        self.keep_escapes = saved;
        r
    }

    /// Called after `${`.
    fn braced(&mut self, out: &mut String, eval: bool) -> Result<(), String> {
        let name = self.read_name();
        if name.is_empty() {
            return Err(match self.peek() {
                None => "missing '}' in variable substitution".to_string(),
                Some(c) => format!("bad substitution: {c:?} where a variable name belongs"),
            });
        }
        let value = self.lookup(&name, eval);
        let Some(op) = self.peek() else {
            return Err("missing '}' in variable substitution".to_string());
        };
        self.pos += 1;
        match op {
            '}' => {
                out.push_str(value.as_deref().unwrap_or(""));
                Ok(())
            }
            ':' | '-' | '+' | '?' => {
                let (colon, op) = if op == ':' {
                    let Some(next) = self.peek().filter(|c| matches!(c, '-' | '+' | '?')) else {
                        return Err(format!(
                            "unsupported modifier in ${{{name}:...}}: only :-, :+ and :? are supported"
                        ));
                    };
                    self.pos += 1;
                    (true, next)
                } else {
                    (false, op)
                };
                let present = if colon {
                    value.as_deref().is_some_and(|v| !v.is_empty())
                } else {
                    value.is_some()
                };
                match op {
                    '-' => {
                        let word = self.text(&['}'], eval && !present)?;
                        self.expect_close()?;
                        out.push_str(&if present {
                            value.unwrap_or_default()
                        } else {
                            word
                        });
                    }
                    '+' => {
                        let word = self.text(&['}'], eval && present)?;
                        self.expect_close()?;
                        if present {
                            out.push_str(&word);
                        }
                    }
                    _ => {
                        let word = self.text(&['}'], eval && !present)?;
                        self.expect_close()?;
                        if !present && eval {
                            let msg = if word.is_empty() {
                                "parameter null or not set".to_string()
                            } else {
                                word
                            };
                            return Err(format!("{name}: {msg}"));
                        }
                        out.push_str(value.as_deref().unwrap_or(""));
                    }
                }
                Ok(())
            }
            '#' | '%' => {
                let longest = self.peek() == Some(op);
                if longest {
                    self.pos += 1;
                }
                let pat = self.pattern(&['}'], eval)?;
                self.expect_close()?;
                let v: Vec<char> = value.unwrap_or_default().chars().collect();
                let glob = compile_glob(&pat, self.escape);
                out.extend(if op == '#' {
                    trim_prefix(&v, &glob, longest)
                } else {
                    trim_suffix(&v, &glob, longest)
                });
                Ok(())
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let pat = self.pattern(&['/', '}'], eval)?;
                let repl = if self.peek() == Some('/') {
                    self.pos += 1;
                    self.text(&['}'], eval)?
                } else {
                    String::new()
                };
                self.expect_close()?;
                let v: Vec<char> = value.unwrap_or_default().chars().collect();
                out.push_str(&replace(&v, &compile_glob(&pat, self.escape), &repl, all));
                Ok(())
            }
            c => Err(format!("unsupported modifier {c:?} in ${{{name}...}}")),
        }
    }
}

#[derive(Debug)]
enum G {
    Lit(char),
    Any,
    Star,
}

fn compile_glob(pat: &str, escape: char) -> Vec<G> {
    let mut out = Vec::new();
    let mut chars = pat.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' => G::Star,
            '?' => G::Any,
            c if c == escape => chars.next().map_or(G::Lit(c), G::Lit),
            c => G::Lit(c),
        });
    }
    out
}

/// Whole-string glob match of `s` against `g` (`*` and `?` match any
/// character, including `/`).
fn glob_matches(g: &[G], s: &[char]) -> bool {
    // Classic two-pointer wildcard matching with backtracking to the last star.
    let (mut gi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match g.get(gi) {
            Some(G::Lit(c)) if *c == s[si] => {
                gi += 1;
                si += 1;
            }
            Some(G::Any) => {
                gi += 1;
                si += 1;
            }
            Some(G::Star) => {
                star = Some((gi, si));
                gi += 1;
            }
            _ => match star {
                Some((sg, ss)) => {
                    gi = sg + 1;
                    si = ss + 1;
                    star = Some((sg, ss + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|t| matches!(t, G::Star))
}

fn trim_prefix(v: &[char], g: &[G], longest: bool) -> Vec<char> {
    let n = v.len();
    let mut lens: Box<dyn Iterator<Item = usize>> = if longest {
        Box::new((0..=n).rev())
    } else {
        Box::new(0..=n)
    };
    match lens.find(|&i| glob_matches(g, &v[..i])) {
        Some(i) => v[i..].to_vec(),
        None => v.to_vec(),
    }
}

fn trim_suffix(v: &[char], g: &[G], longest: bool) -> Vec<char> {
    let n = v.len();
    let mut starts: Box<dyn Iterator<Item = usize>> = if longest {
        Box::new(0..=n)
    } else {
        Box::new((0..=n).rev())
    };
    match starts.find(|&i| glob_matches(g, &v[i..])) {
        Some(i) => v[..i].to_vec(),
        None => v.to_vec(),
    }
}

fn replace(v: &[char], g: &[G], repl: &str, all: bool) -> String {
    if g.is_empty() {
        return v.iter().collect();
    }
    let mut out = String::new();
    let mut i = 0;
    let mut replaced = false;
    while i < v.len() {
        let found = if !replaced || all {
            (i + 1..=v.len()).rev().find(|&e| glob_matches(g, &v[i..e]))
        } else {
            None
        };
        if let Some(end) = found {
            out.push_str(repl);
            i = end;
            replaced = true;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);
    impl Vars for Map {
        fn var(&self, name: &str) -> Option<&str> {
            self.0.get(name).copied()
        }
    }

    fn vars() -> Map {
        Map(HashMap::from([
            ("foo", "/bar"),
            ("empty", ""),
            ("str", "foobarbaz"),
            ("sp", "a b"),
        ]))
    }

    fn w(s: &str) -> String {
        expand(s, '\\', &vars(), Mode::Word).unwrap()
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(w("$foo"), "/bar");
        assert_eq!(w("${foo}_x"), "/bar_x");
        assert_eq!(w("$foo_x"), "");
        assert_eq!(w("a$unset-b"), "a-b");
        assert_eq!(w("cost $ 5"), "cost $ 5");
        assert_eq!(w("$"), "$");
        assert_eq!(w("x$1y"), "xy");
    }

    #[test]
    fn modifiers() {
        assert_eq!(w("${unset:-def}"), "def");
        assert_eq!(w("${empty:-def}"), "def");
        assert_eq!(w("${empty-def}"), "");
        assert_eq!(w("${unset-def}"), "def");
        assert_eq!(w("${foo:+alt}"), "alt");
        assert_eq!(w("${empty:+alt}"), "");
        assert_eq!(w("${empty+alt}"), "alt");
        assert_eq!(w("${unset+alt}"), "");
        assert_eq!(w("${unset:-${foo}/x}"), "/bar/x");
        assert_eq!(w("${foo:?boom}"), "/bar");
        assert_eq!(w("${foo:-${x:?not evaluated}}"), "/bar");
        assert_eq!(w("${unset:+${x:?not evaluated}}"), "");
        let e = expand("${unset:?need it}", '\\', &vars(), Mode::Word).unwrap_err();
        assert_eq!(e, "unset: need it");
        assert!(expand("${empty:?}", '\\', &vars(), Mode::Word).is_err());
        assert_eq!(w("${empty?}"), "");
    }

    #[test]
    fn patterns() {
        assert_eq!(w("${str#f*b}"), "arbaz");
        assert_eq!(w("${str##f*b}"), "az");
        assert_eq!(w("${str%b*}"), "foobar");
        assert_eq!(w("${str%%b*}"), "foo");
        assert_eq!(w("${str/ba/fo}"), "fooforbaz");
        assert_eq!(w("${str//ba/fo}"), "fooforfoz");
        assert_eq!(w("${str/o}"), "fobarbaz");
        assert_eq!(w(r"${str#\*}"), "foobarbaz");
        assert_eq!(w("${str#'f*'}"), "foobarbaz");
        assert_eq!(w("${str#?}"), "oobarbaz");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w(r"\$foo"), "$foo");
        assert_eq!(w(r"\${foo}"), "${foo}");
        assert_eq!(w("'$foo'"), "$foo");
        assert_eq!(w("\"$foo\""), "/bar");
        assert_eq!(w(r#""a \" \$ \\ \n""#), r#"a " $ \ \n"#);
        assert_eq!(w(r"Rex\ The\ Dog"), "Rex The Dog");
        assert_eq!(w(r#""John Doe""#), "John Doe");
        assert_eq!(w("\"${unset:-\"x y\"}\""), "x y");
        assert_eq!(w(r"a\"), r"a\");
        assert!(expand("'abc", '\\', &vars(), Mode::Word).is_err());
        assert!(expand("\"abc", '\\', &vars(), Mode::Word).is_err());
        assert!(expand("${foo", '\\', &vars(), Mode::Word).is_err());
        assert!(expand("${}", '\\', &vars(), Mode::Word).is_err());
        assert!(expand("${foo:1}", '\\', &vars(), Mode::Word).is_err());
    }

    #[test]
    fn backtick_escape() {
        let e = |s: &str| expand(s, '`', &vars(), Mode::Word).unwrap();
        assert_eq!(e("`$foo"), "$foo");
        assert_eq!(e(r"c:\windows\$foo"), r"c:\windows\/bar");
        assert_eq!(e("a` b"), "a b");
    }

    #[test]
    fn heredoc_mode() {
        let h = |s: &str| expand(s, '\\', &vars(), Mode::Heredoc).unwrap();
        assert_eq!(
            h("echo \"hello $foo\" '$foo'\n"),
            "echo \"hello /bar\" '/bar'\n"
        );
        assert_eq!(h(r"\$foo \\ \n"), r"$foo \ \n");
        assert_eq!(h("${unset:-'d'}"), "'d'");
    }

    #[test]
    fn literal_mode_keeps_dollars() {
        assert_eq!(unquote("\"$a b\"", '\\').unwrap(), "$a b");
        assert_eq!(unquote(r"x\ y", '\\').unwrap(), "x y");
    }
}
