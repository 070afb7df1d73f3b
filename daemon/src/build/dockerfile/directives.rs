//! Parser directives: `# syntax=...`, `# escape=...`, `# check=...`.
//!
//! Directives are only recognised at the very top of the file. The first
//! line that is not a known directive (an instruction, a blank line, a
//! plain comment or an unknown directive) ends directive parsing; later
//! lines that look like directives are ordinary comments. Names are
//! case-insensitive, blanks around the name, `=` and value are allowed,
//! continuations are not, and each directive may appear once.

use super::lexer::Lines;
use super::{Error, ErrorKind};

/// The parser directives at the top of a Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directives {
    /// `# syntax=`: the frontend the author asked for. Vessel always uses
    /// its built-in frontend; the value is kept for reporting.
    pub syntax: Option<String>,
    /// `# escape=`: the escape and line-continuation character, `\` by
    /// default or `` ` ``.
    pub escape: char,
    /// `# check=`: build-check configuration.
    pub check: Option<Check>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// The `check` directive: `skip=<names|all>` and `error=<bool>`, separated
/// by `;`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Names of the checks to skip (`all` skips every check).
    pub skip: Vec<String>,
    /// Whether failed checks fail the build.
    pub error: bool,
}

impl Check {
    fn parse(value: &str) -> Result<Check, String> {
        let mut check = Check::default();
        for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, val)) = part.split_once('=') else {
                return Err(format!("{part:?} is not key=value"));
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "skip" => {
                    check.skip = val
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect();
                }
                "error" => {
                    check.error = super::values::parse_bool(val.trim())
                        .ok_or_else(|| format!("error={val:?} is not a boolean"))?;
                }
                other => return Err(format!("unknown option {other:?}; use skip= or error=")),
            }
        }
        Ok(check)
    }

    /// Whether the check named `name` is skipped.
    pub fn skips(&self, name: &str) -> bool {
        self.skip.iter().any(|s| s == "all" || s == name)
    }
}

/// Splits `# name = value` into name and value, or None if the line does
/// not have that shape.
fn directive_shape(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let name_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[name_len..]
        .trim_start_matches([' ', '\t'])
        .strip_prefix('=')?;
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return None;
    }
    Some((name, value))
}

/// Consumes the directive lines at the top of the file.
pub(crate) fn parse(lines: &mut Lines<'_>) -> Result<Directives, Error> {
    let mut d = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    while let Some((n, line)) = lines.peek() {
        let Some((name, value)) = directive_shape(line) else {
            break;
        };
        let key = name.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            break;
        }
        let err = |kind| Error {
            line: n,
            text: line.trim().to_string(),
            kind,
        };
        if seen.contains(&key) {
            return Err(err(ErrorKind::Directive(format!(
                "{key} may only be used once"
            ))));
        }
        match key.as_str() {
            "syntax" => d.syntax = Some(value.to_string()),
            "escape" => {
                d.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(err(ErrorKind::Directive(format!(
                            "escape character {value:?} is invalid: use \\ or `"
                        ))));
                    }
                };
            }
            _ => {
                d.check = Some(
                    Check::parse(value)
                        .map_err(|r| err(ErrorKind::Directive(format!("check: {r}"))))?,
                );
            }
        }
        seen.push(key);
        lines.next_line();
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<(Directives, Option<usize>), Error> {
        let mut lines = Lines::new(text);
        let d = parse(&mut lines)?;
        Ok((d, lines.peek().map(|(n, _)| n)))
    }

    #[test]
    fn shapes() {
        for l in [
            "#directive=value",
            "# directive =value",
            "#\tdirective= value",
            "# directive = value",
            "#\t  dIrEcTiVe=value",
        ] {
            let (name, value) = directive_shape(l).unwrap();
            assert_eq!(
                (name.to_ascii_lowercase().as_str(), value),
                ("directive", "value"),
                "{l}"
            );
        }
        assert!(directive_shape("# direc \\").is_none());
        assert!(directive_shape("# just a comment").is_none());
        assert!(directive_shape("# a=").is_none());
    }

    #[test]
    fn directives_stop_at_first_other_line() {
        let (d, next) =
            parse_text("# escape=`\n# syntax=docker/dockerfile:1\n\n# check=error=true\nFROM a")
                .unwrap();
        assert_eq!(d.escape, '`');
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert!(d.check.is_none());
        assert_eq!(next, Some(3));
        let (d, _) = parse_text("# unknowndirective=value\n# escape=`\n").unwrap();
        assert_eq!(d.escape, '\\');
        let (d, _) = parse_text("FROM a\n# escape=`\n").unwrap();
        assert_eq!(d.escape, '\\');
    }

    #[test]
    fn errors() {
        assert!(parse_text("# escape=\\\n# ESCAPE=`\n").is_err());
        assert!(parse_text("# escape=x\n").is_err());
        assert!(parse_text("# check=bogus=1\n").is_err());
        let (d, _) =
            parse_text("# check=skip=JSONArgsRecommended,StageNameCasing;error=true\n").unwrap();
        let c = d.check.unwrap();
        assert!(c.error && c.skips("StageNameCasing") && !c.skips("Other"));
    }
}
