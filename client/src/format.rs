//! Output formatting shared by the listing commands: `--format` handling
//! (`table ...`, `json`, plain templates), docker's tab-aligned tables,
//! inspect-style indented JSON that keeps the daemon's key order, and
//! small string helpers (ID truncation, ellipsis).
//!
//! What each command's rows contain lives with the command; this module
//! only turns rows into text.

use serde_json::Value;

use crate::template::{self, Template};

/// Formatting errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Template(#[from] template::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Align tab-separated cells as Go's `tabwriter.NewWriter(out, 10, 1, 3, ' ',
/// 0)` does for docker's tables: a column is as wide as its widest
/// tab-terminated cell plus 3, and at least 10; the last cell of a line is
/// not padded.
pub fn tabwrite(text: &str) -> String {
    tabwrite_min(text, 10)
}

/// [`tabwrite`] with another minimum column width (`top` uses 20).
pub fn tabwrite_min(text: &str, min: usize) -> String {
    const PAD: usize = 3;
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut out = String::with_capacity(text.len() * 2);
    // Column blocks: consecutive lines that have a terminated cell in a
    // column share that column's width, as in Go's tabwriter.
    let mut widths: Vec<Vec<usize>> = vec![Vec::new(); lines.len()];
    let max_cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    for col in 0..max_cols {
        let mut i = 0;
        while i < lines.len() {
            if lines[i].len() > col + 1 {
                let start = i;
                let mut w = min;
                while i < lines.len() && lines[i].len() > col + 1 {
                    w = w.max(lines[i][col].chars().count() + PAD);
                    i += 1;
                }
                for row in &mut widths[start..i] {
                    row.push(w);
                }
            } else {
                i += 1;
            }
        }
    }
    for (li, cells) in lines.iter().enumerate() {
        for (ci, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if ci + 1 < cells.len() {
                let w = widths[li].get(ci).copied().unwrap_or(min);
                let n = cell.chars().count();
                out.push_str(&" ".repeat(w.saturating_sub(n)));
            }
        }
        if li + 1 < lines.len() {
            out.push('\n');
        }
    }
    out
}

/// Replace the escapes docker accepts in `--format` (`\t`, `\n`).
pub fn unescape_format(f: &str) -> String {
    f.replace("\\t", "\t").replace("\\n", "\n")
}

/// Render `rows` with `format` (empty: `default_table`). `header` maps each
/// field to its column title.
pub fn render_rows(
    format: &str,
    default_table: &str,
    header: &Value,
    rows: &[Value],
) -> Result<String> {
    let f = if format.is_empty() || format == "table" {
        default_table.to_string()
    } else if format == "json" {
        "{{json .}}".to_string()
    } else {
        unescape_format(format)
    };
    if let Some(body) = f.strip_prefix("table") {
        let body = body.trim_start();
        let t = Template::parse(body)?;
        let mut buf = String::new();
        let head = t.render(header)?;
        buf.push_str(&head);
        buf.push('\n');
        for r in rows {
            buf.push_str(&t.render(r)?);
            buf.push('\n');
        }
        let mut out = tabwrite(&buf);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        return Ok(out);
    }
    let t = Template::parse(&f)?;
    let mut out = String::new();
    for r in rows {
        out.push_str(&t.render(r)?);
        out.push('\n');
    }
    Ok(out)
}

/// Render one value with a template (for `inspect --format`), adding a
/// newline.
pub fn render_one(format: &str, v: &Value) -> Result<String> {
    let f = if format == "json" {
        "{{json .}}".to_string()
    } else {
        unescape_format(format)
    };
    let mut s = Template::parse(&f)?.render(v)?;
    s.push('\n');
    Ok(s)
}

/// Indent JSON text as Go's `json.Indent(dst, src, "", "    ")`, keeping
/// key order and number spelling exactly as the daemon sent them.
pub fn indent_json(src: &[u8], indent: &str) -> String {
    let mut out = String::with_capacity(src.len() * 2);
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let mut need_indent = false;
    let text = String::from_utf8_lossy(src);
    let chars: Vec<char> = text.chars().collect();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        if need_indent && c != ']' && c != '}' {
            need_indent = false;
            depth += 1;
            newline(&mut out, depth);
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                need_indent = true;
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            '}' | ']' => {
                if need_indent {
                    need_indent = false;
                } else {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, depth);
                }
                out.push(c);
            }
            other => out.push(other),
        }
    }
    out
}

/// The first 12 hex digits of an ID, without a `sha256:` prefix.
pub fn short_id(id: &str) -> String {
    let s = id.strip_prefix("sha256:").unwrap_or(id);
    s.chars().take(12).collect()
}

/// Cut `s` to `max` characters, ending in `…` when cut (docker's
/// `Ellipsis`).
pub fn ellipsis(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Quote a string as Go's `strconv.Quote` does for printable text.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Labels as docker prints them in listings: `k=v` pairs joined by commas,
/// sorted by key.
pub fn labels_string(labels: Option<&Value>) -> String {
    let Some(Value::Object(m)) = labels else {
        return String::new();
    };
    let mut pairs: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_like_tabwriter() {
        let t = tabwrite("CONTAINER ID\tIMAGE\tNAMES\nabc\tbusybox:latest\tweb\n");
        assert_eq!(
            t,
            "CONTAINER ID   IMAGE            NAMES\nabc            busybox:latest   web\n"
        );
        // Minimum width 10.
        assert_eq!(tabwrite("A\tB\nc\td"), "A         B\nc         d");
    }

    #[test]
    fn rows_render_as_table_json_or_template() {
        let header = json!({"ID": "ID", "Name": "NAME"});
        let rows = vec![
            json!({"ID": "1", "Name": "a"}),
            json!({"ID": "2", "Name": "b"}),
        ];
        let table = "table {{.ID}}\t{{.Name}}";
        assert_eq!(
            render_rows("", table, &header, &rows).unwrap(),
            "ID        NAME\n1         a\n2         b\n"
        );
        assert_eq!(
            render_rows("{{.Name}}", table, &header, &rows).unwrap(),
            "a\nb\n"
        );
        assert_eq!(
            render_rows("json", table, &header, &rows).unwrap(),
            "{\"ID\":\"1\",\"Name\":\"a\"}\n{\"ID\":\"2\",\"Name\":\"b\"}\n"
        );
        assert_eq!(
            render_rows("table {{.Name}}\\t{{.ID}}", table, &header, &rows).unwrap(),
            "NAME      ID\na         1\nb         2\n"
        );
    }

    #[test]
    fn json_indent_keeps_order() {
        let s = indent_json(br#"[{"b":1,"a":[],"c":{"x":"y,z"},"d":[1,2]}]"#, "    ");
        assert_eq!(
            s,
            "[\n    {\n        \"b\": 1,\n        \"a\": [],\n        \"c\": {\n            \"x\": \"y,z\"\n        },\n        \"d\": [\n            1,\n            2\n        ]\n    }\n]"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(
            ellipsis("sh -c 'while true; do sleep 1; done'", 20),
            "sh -c 'while true; …"
        );
        assert_eq!(go_quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(labels_string(Some(&json!({"b": "2", "a": "1"}))), "a=1,b=2");
    }
}
