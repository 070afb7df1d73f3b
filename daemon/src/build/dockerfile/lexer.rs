//! Physical lines to logical instruction lines: comments, leading
//! whitespace, line continuations with the escape character, and the raw
//! line cursor here-document bodies are read from.

use super::Warning;

/// The physical lines of a Dockerfile, with a cursor.
pub(crate) struct Lines<'a> {
    lines: Vec<&'a str>,
    next: usize,
}

impl<'a> Lines<'a> {
    pub fn new(text: &'a str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Lines {
            lines: text.lines().collect(),
            next: 0,
        }
    }

    /// The next line and its 1-based number, without consuming it.
    pub fn peek(&self) -> Option<(usize, &'a str)> {
        self.lines.get(self.next).map(|l| (self.next + 1, *l))
    }

    /// Consumes and returns the next line and its 1-based number.
    pub fn next_line(&mut self) -> Option<(usize, &'a str)> {
        let r = self.peek();
        if r.is_some() {
            self.next += 1;
        }
        r
    }
}

/// One instruction's text after comments and continuations are removed.
#[derive(Debug)]
pub(crate) struct Logical {
    pub line: usize,
    pub end_line: usize,
    pub text: String,
}

/// If `line` ends with the escape character (trailing blanks allowed),
/// returns the line without it.
fn strip_continuation(line: &str, escape: char) -> Option<&str> {
    line.trim_end_matches([' ', '\t']).strip_suffix(escape)
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Reads the next instruction's logical line, skipping blank lines and
/// comments. Inside a continuation, comment lines are dropped and blank
/// lines are skipped (with a warning); a continuation at the end of the
/// file ends the instruction.
pub(crate) fn next_logical(
    lines: &mut Lines<'_>,
    escape: char,
    warnings: &mut Vec<Warning>,
) -> Option<Logical> {
    let (line, first) = loop {
        let (n, l) = lines.next_line()?;
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        break (n, t);
    };
    let mut end_line = line;
    let Some(head) = strip_continuation(first, escape) else {
        return Some(Logical {
            line,
            end_line,
            text: first.trim_end().to_string(),
        });
    };
    let mut text = head.to_string();
    while let Some((n, l)) = lines.next_line() {
        end_line = n;
        if is_comment(l) {
            continue;
        }
        if l.trim().is_empty() {
            warnings.push(Warning {
                line: n,
                message: "empty continuation line".to_string(),
            });
            continue;
        }
        if let Some(part) = strip_continuation(l, escape) {
            text.push_str(part);
        } else {
            text.push_str(l);
            break;
        }
    }
    Some(Logical {
        line,
        end_line,
        text: text.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str, escape: char) -> Vec<(usize, usize, String)> {
        let mut lines = Lines::new(text);
        let mut w = Vec::new();
        let mut out = Vec::new();
        while let Some(l) = next_logical(&mut lines, escape, &mut w) {
            out.push((l.line, l.end_line, l.text));
        }
        out
    }

    #[test]
    fn continuations_and_comments() {
        let got = all(
            "FROM a\n  # c\nRUN echo hello \\\n# comment\nworld\n\n\tRUN x\n",
            '\\',
        );
        assert_eq!(
            got,
            [
                (1, 1, "FROM a".to_string()),
                (3, 5, "RUN echo hello world".to_string()),
                (7, 7, "RUN x".to_string())
            ]
        );
    }

    #[test]
    fn whitespace_in_continuation_is_kept() {
        let got = all("RUN echo \"\\\n     hello\\\n     world\"\n", '\\');
        assert_eq!(got[0].2, "RUN echo \"     hello     world\"");
    }

    #[test]
    fn blank_continuation_lines_warn() {
        let mut lines = Lines::new("RUN a \\\n\n   \nb\n");
        let mut w = Vec::new();
        let l = next_logical(&mut lines, '\\', &mut w).unwrap();
        assert_eq!(l.text, "RUN a b");
        assert_eq!(l.end_line, 4);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn backtick_and_trailing_blanks() {
        assert_eq!(all("RUN a`  \nb", '`')[0].2, "RUN ab");
        assert_eq!(all("COPY a c:\\\nRUN x", '`').len(), 2);
        assert_eq!(
            all("COPY a c:\\\\\nRUN dir c:\\", '\\')[0].2,
            "COPY a c:\\RUN dir c:"
        );
        assert_eq!(all("RUN a \\", '\\')[0].2, "RUN a");
        assert_eq!(all("\u{feff}FROM a\r\nRUN b\r\n", '\\')[1].2, "RUN b");
    }
}
