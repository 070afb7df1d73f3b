//! Here-documents in RUN, COPY and ADD.
//!
//! A marker `<<WORD` or `<<-WORD` in the instruction's (shell-form)
//! arguments makes the following lines, up to a line that is exactly
//! `WORD`, the body of that here-document. Several markers on one line take
//! their bodies in order. With `<<-`, leading tabs are stripped from body
//! lines and from the terminating line. If any part of `WORD` is quoted or
//! escaped, the body is not expanded; otherwise COPY and ADD expand
//! variables in it (RUN leaves that to the shell).

use super::expand::{self, Mode, Vars};

/// A here-document attached to a RUN, COPY or ADD instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter with quotes removed. COPY and ADD use it as the name
    /// of the file they create.
    pub name: String,
    /// The body lines exactly as written, each followed by `\n`.
    pub body: String,
    /// Written as `<<-`: leading tabs are removed from body lines.
    pub strip_tabs: bool,
    /// The delimiter was not quoted, so COPY and ADD expand variables in
    /// the body.
    pub expand: bool,
    /// Dockerfile line of the first body line (of the terminator when the
    /// body is empty).
    pub line: usize,
}

impl Heredoc {
    /// The body with `<<-` tab stripping applied, not expanded.
    pub fn content(&self) -> String {
        if self.strip_tabs {
            strip_leading_tabs(&self.body)
        } else {
            self.body.clone()
        }
    }

    /// The body as COPY and ADD write it: tabs stripped for `<<-`, and
    /// variables expanded when the delimiter was unquoted.
    pub(crate) fn file_content(&self, escape: char, vars: &dyn Vars) -> Result<String, String> {
        let content = self.content();
        if self.expand {
            expand::expand(&content, escape, vars, Mode::Heredoc)
        } else {
            Ok(content)
        }
    }
}

fn strip_leading_tabs(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    for line in body.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}

/// A `<<WORD` marker found in an instruction line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    pub name: String,
    pub strip_tabs: bool,
    pub quoted: bool,
    /// Byte range of the whole marker (`<<-"EOF"`) in the text.
    pub start: usize,
    pub end: usize,
}

impl Marker {
    /// Whether `line` terminates this here-document.
    pub fn terminates(&self, line: &str) -> bool {
        if self.strip_tabs {
            line.trim_start_matches('\t') == self.name
        } else {
            line == self.name
        }
    }
}

fn is_operator(c: char) -> bool {
    matches!(c, ';' | '&' | '|' | '(' | ')' | '<' | '>')
}

/// Finds the here-document markers in a shell-form command line. Quoted
/// and escaped `<<` are not markers, nor are `<<<` (here-strings) and
/// shifts inside `$(( ))`.
pub(crate) fn find_markers(text: &str, escape: char) -> Result<Vec<Marker>, String> {
    if !text.contains("<<") {
        return Ok(Vec::new());
    }
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut markers = Vec::new();
    let mut i = 0;
    let mut quote: Option<char> = None;
    let mut word_start = 0;
    while i < chars.len() {
        let c = chars[i].1;
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else if c == escape && q == '"' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == escape {
            i += 2;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            i += 1;
            continue;
        }
        if c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')') {
            i += 1;
            word_start = i;
            continue;
        }
        if c == '$'
            && chars.get(i + 1).map(|x| x.1) == Some('(')
            && chars.get(i + 2).map(|x| x.1) == Some('(')
        {
            // Arithmetic expansion: skip to the closing "))".
            let mut j = i + 3;
            while j + 1 < chars.len() && !(chars[j].1 == ')' && chars[j + 1].1 == ')') {
                j += 1;
            }
            i = j + 2;
            continue;
        }
        if c == '<' && chars.get(i + 1).map(|x| x.1) == Some('<') {
            if chars.get(i + 2).map(|x| x.1) == Some('<') {
                i += 3;
                continue;
            }
            let prefix: String = chars[word_start..i].iter().map(|x| x.1).collect();
            if !prefix.is_empty() && prefix.chars().all(|d| d.is_ascii_digit()) {
                return Err(format!(
                    "here-document with a file descriptor ({prefix}<<) is not supported"
                ));
            }
            let (marker, next) = parse_marker(text, &chars, i, escape)?;
            markers.push(marker);
            i = next;
            word_start = i;
            continue;
        }
        i += 1;
    }
    Ok(markers)
}

/// Parses the marker starting at `chars[at]` (which is the first `<`).
/// Returns it and the index of the first char after it.
fn parse_marker(
    text: &str,
    chars: &[(usize, char)],
    at: usize,
    escape: char,
) -> Result<(Marker, usize), String> {
    let start = chars[at].0;
    let mut i = at + 2;
    let strip_tabs = chars.get(i).map(|x| x.1) == Some('-');
    if strip_tabs {
        i += 1;
    }
    while chars.get(i).is_some_and(|x| x.1 == ' ' || x.1 == '\t') {
        i += 1;
    }
    let mut name = String::new();
    let mut quoted = false;
    while let Some(&(_, c)) = chars.get(i) {
        if c.is_whitespace() || is_operator(c) {
            break;
        }
        i += 1;
        if c == escape {
            quoted = true;
            if let Some(&(_, n)) = chars.get(i) {
                name.push(n);
                i += 1;
            }
        } else if c == '\'' || c == '"' {
            quoted = true;
            loop {
                let Some(&(_, n)) = chars.get(i) else {
                    return Err(format!(
                        "unterminated quote in here-document delimiter {:?}",
                        &text[start..]
                    ));
                };
                i += 1;
                if n == c {
                    break;
                }
                if c == '"'
                    && n == escape
                    && chars
                        .get(i)
                        .is_some_and(|x| matches!(x.1, '"' | '$') || x.1 == escape)
                {
                    name.push(chars[i].1);
                    i += 1;
                    continue;
                }
                name.push(n);
            }
        } else {
            name.push(c);
        }
    }
    if name.is_empty() {
        return Err("here-document marker << without a delimiter word".to_string());
    }
    let end = chars.get(i).map_or(text.len(), |x| x.0);
    Ok((
        Marker {
            name,
            strip_tabs,
            quoted,
            start,
            end,
        },
        i,
    ))
}

/// Parses a whole word that must be exactly one marker (a COPY or ADD
/// source such as `<<EOF` or `<<-"EOT"`).
pub(crate) fn parse_source_marker(word: &str, escape: char) -> Result<Option<Marker>, String> {
    if !word.starts_with("<<") || word.starts_with("<<<") {
        return Ok(None);
    }
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    let (marker, next) = parse_marker(word, &chars, 0, escape)?;
    if next != chars.len() {
        return Err(format!(
            "unexpected text after here-document marker in {word:?}"
        ));
    }
    Ok(Some(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<(String, bool, bool)> {
        find_markers(text, '\\')
            .unwrap()
            .into_iter()
            .map(|m| (m.name, m.strip_tabs, m.quoted))
            .collect()
    }

    #[test]
    fn markers() {
        assert_eq!(names("<<EOF"), [("EOF".into(), false, false)]);
        assert_eq!(names("<<-EOT bash"), [("EOT".into(), true, false)]);
        assert_eq!(names("<<'EOF' | python"), [("EOF".into(), false, true)]);
        assert_eq!(names(r#"cat <<"E O" >x"#), [("E O".into(), false, true)]);
        assert_eq!(names(r"cat <<\EOF"), [("EOF".into(), false, true)]);
        assert_eq!(
            names("<<FILE1 cat > file1 && <<FILE2 cat > file2"),
            [
                ("FILE1".into(), false, false),
                ("FILE2".into(), false, false)
            ]
        );
        assert_eq!(names("cat <<EOF>/out"), [("EOF".into(), false, false)]);
        assert_eq!(names("cat << EOF"), [("EOF".into(), false, false)]);
        assert_eq!(names("cat<<EOF"), [("EOF".into(), false, false)]);
        assert!(names("echo '<<EOF'").is_empty());
        assert!(names("echo \"<<EOF\"").is_empty());
        assert!(names(r"echo \<<EOF").is_empty());
        assert!(names("cat <<<word").is_empty());
        assert!(names("echo $((1<<4))").is_empty());
        assert!(find_markers("cat 3<<EOF", '\\').is_err());
        assert!(find_markers("cat <<", '\\').is_err());
    }

    #[test]
    fn terminators_and_tabs() {
        let m = find_markers("<<-EOF", '\\').unwrap().remove(0);
        assert!(m.terminates("\t\tEOF"));
        assert!(!m.terminates(" EOF"));
        let m = find_markers("<<EOF", '\\').unwrap().remove(0);
        assert!(!m.terminates("\tEOF"));
        assert!(!m.terminates("EOF "));
        let h = Heredoc {
            name: "EOF".into(),
            body: "\ta\n\t\tb\n c\n".into(),
            strip_tabs: true,
            expand: true,
            line: 2,
        };
        assert_eq!(h.content(), "a\nb\n c\n");
    }

    #[test]
    fn source_markers() {
        let m = parse_source_marker("<<robots.txt", '\\').unwrap().unwrap();
        assert_eq!(m.name, "robots.txt");
        assert!(parse_source_marker("file.txt", '\\').unwrap().is_none());
        assert!(parse_source_marker("<<EOF>x", '\\').is_err());
    }
}
