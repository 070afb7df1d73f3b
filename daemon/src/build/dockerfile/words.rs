//! Splitting instruction arguments into words, the way the Dockerfile
//! reference describes command-line-like parsing: whitespace separates
//! words unless it is quoted or escaped. Quotes and escape characters stay
//! in the words; removing them is part of expansion ([`super::expand`]).

/// Byte ranges of the words of `text`.
/// Whitespace inside `${...}` does not split words either, so
/// `${name:-a default}` stays one word.
pub(crate) fn word_spans(text: &str, escape: char) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some((a, b)) = next_word(text, from, escape) {
        spans.push((a, b));
        from = b;
    }
    spans
}

/// The byte range of the first word at or after byte `from`.
pub(crate) fn next_word(text: &str, from: usize, escape: char) -> Option<(usize, usize)> {
    let mut start: Option<usize> = None;
    let mut quote: Option<char> = None;
    let mut braces = 0usize;
    let mut chars = text[from..]
        .char_indices()
        .map(|(i, c)| (i + from, c))
        .peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            None => {
                if c.is_whitespace() && braces == 0 {
                    if let Some(s) = start {
                        return Some((s, i));
                    }
                    continue;
                }
                if start.is_none() {
                    start = Some(i);
                }
                if c == escape {
                    chars.next();
                } else if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == '$' && chars.peek().is_some_and(|&(_, n)| n == '{') {
                    chars.next();
                    braces += 1;
                } else if c == '}' && braces > 0 {
                    braces -= 1;
                }
            }
            Some(q) => {
                if c == q {
                    quote = None;
                } else if c == escape && q == '"' {
                    chars.next();
                }
            }
        }
    }
    start.map(|s| (s, text.len()))
}

/// The words of `text`, quotes and escapes kept.
pub(crate) fn split_words(text: &str, escape: char) -> Vec<String> {
    word_spans(text, escape)
        .into_iter()
        .map(|(a, b)| text[a..b].to_string())
        .collect()
}

/// Splits leading `--flag[=value]` words off `text`. Returns the raw flag
/// words (without the leading `--`) and the remaining text.
pub(crate) fn take_flags(text: &str, escape: char) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut from = 0;
    while let Some((a, b)) = next_word(text, from, escape) {
        match text[a..b].strip_prefix("--") {
            Some(flag) => flags.push(flag.to_string()),
            None => return (flags, &text[a..]),
        }
        from = b;
    }
    (flags, "")
}

/// Parses the exec (JSON) form: a JSON array of strings and nothing else.
/// Anything else, including invalid JSON, is not the exec form and the
/// caller falls back to the shell form.
pub(crate) fn parse_json_array(text: &str) -> Option<Vec<String>> {
    if !text.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(text).ok()
}

/// Splits text at the first unquoted, unescaped `=`.
pub(crate) fn split_key_value(word: &str) -> Option<(&str, &str)> {
    let i = word.find('=')?;
    Some((&word[..i], &word[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(split_words("a  b\tc", '\\'), ["a", "b", "c"]);
        assert_eq!(split_words(r#"k="a b" x"#, '\\'), [r#"k="a b""#, "x"]);
        assert_eq!(split_words(r"a\ b c", '\\'), [r"a\ b", "c"]);
        assert_eq!(split_words("a` b c", '`'), ["a` b", "c"]);
        assert_eq!(
            split_words(r#"'a " b' "c \" d""#, '\\'),
            [r#"'a " b'"#, r#""c \" d""#]
        );
        assert!(split_words("   ", '\\').is_empty());
        assert_eq!(
            split_words("A=${B:-x y} C=${D:+\"}\"} E", '\\'),
            ["A=${B:-x y}", "C=${D:+\"}\"}", "E"]
        );
    }

    #[test]
    fn flags_come_first() {
        let (flags, rest) = take_flags("--from=build --chown=1:1 a b", '\\');
        assert_eq!(flags, ["from=build", "chown=1:1"]);
        assert_eq!(rest, "a b");
        let (flags, rest) = take_flags("a --b", '\\');
        assert!(flags.is_empty());
        assert_eq!(rest, "a --b");
        let (flags, rest) = take_flags("--link", '\\');
        assert_eq!(flags, ["link"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn json_form() {
        assert_eq!(parse_json_array(r#"["a", "b c"]"#).unwrap(), ["a", "b c"]);
        assert_eq!(parse_json_array("[]").unwrap(), Vec::<String>::new());
        assert!(parse_json_array(r#"["a", 1]"#).is_none());
        assert!(parse_json_array("['a']").is_none());
        assert!(parse_json_array(r#"["a"] b"#).is_none());
        assert!(parse_json_array(r#"["c:\windows"]"#).is_none());
        assert_eq!(
            parse_json_array(r#"["c:\\windows"]"#).unwrap(),
            [r"c:\windows"]
        );
    }
}
