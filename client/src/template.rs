//! A Go `text/template` compatible subset for `--format`.
//!
//! Supported: text and `{{ }}` actions with `{{-`/`-}}` trimming and
//! comments; fields (`.A.B`), `.`, `$`, variables (`$x := ...`, `$i, $v :=`
//! in range); string, raw-string, number, bool and `nil` literals;
//! pipelines with `|`; parenthesised pipelines; `if`/`else if`/`else`,
//! `range` (with `else`), `with` (with `else`); Go's builtins `and`, `or`,
//! `not`, `len`, `index`, `slice`, `print`, `printf`, `println`, `eq`, `ne`,
//! `lt`, `le`, `gt`, `ge`; and docker's `json`, `join`, `split`, `lower`,
//! `upper`, `title`, `pad`, `truncate`.
//!
//! Data are `serde_json::Value`s. Values print as Go prints them: maps as
//! `map[k:v]` (sorted keys), lists as `[a b]`, missing values as
//! `<no value>`. A field followed by arguments indexes into a map, so
//! docker's `{{.Label "com.example"}}` works when `Label` is a map.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Template errors, worded like Go's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("template parsing error: template: :{line}: {msg}")]
    Parse { line: usize, msg: String },
    #[error("template: :{line}: executing \"\" at <{at}>: {msg}")]
    Exec {
        line: usize,
        at: String,
        msg: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Field(Vec<String>),
    Var(String, Vec<String>),
    Ident(String),
    Str(String),
    Num(Value),
    Bool(bool),
    Nil,
    Dot,
    Pipe,
    LParen,
    RParen(Vec<String>),
    Declare,
    Assign,
    Comma,
}

#[derive(Clone, Debug)]
enum Arg {
    Field(Vec<String>),
    Var(String, Vec<String>),
    Ident(String),
    Lit(Value),
    Dot,
    Sub(Box<Pipeline>, Vec<String>),
}

#[derive(Clone, Debug)]
struct Cmd {
    args: Vec<Arg>,
}

#[derive(Clone, Debug)]
struct Pipeline {
    decl: Vec<String>,
    assign: bool,
    cmds: Vec<Cmd>,
    line: usize,
    text: String,
}

#[derive(Clone, Debug)]
enum Node {
    Text(String),
    Action(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    Range(Pipeline, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
}

/// A parsed template.
#[derive(Clone, Debug)]
pub struct Template {
    nodes: Vec<Node>,
}

enum Item {
    Text(String),
    Action { body: String, line: usize },
}

fn split_items(src: &str) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut rest = src;
    let mut line = 1;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        let after = &rest[start + 2..];
        let trim_left = after.starts_with("- ")
            || after.starts_with("-\t")
            || after.starts_with("-\n")
            || after.starts_with("-}}");
        let inner_start = usize::from(trim_left);
        // Find the closing braces outside string literals.
        let bytes = after.as_bytes();
        let mut i = inner_start;
        let mut end = None;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        if bytes[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
                b'`' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'`' {
                        i += 1;
                    }
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let Some(end) = end else {
            return Err(Error::Parse {
                line,
                msg: "unclosed action".to_string(),
            });
        };
        let mut inner = &after[inner_start..end];
        let trim_right = inner.ends_with(" -") || inner.ends_with("\t-") || inner.ends_with("\n-");
        if trim_right {
            inner = &inner[..inner.len() - 1];
        }
        if trim_left {
            text = text.trim_end().to_string();
        }
        line += rest[..start].matches('\n').count();
        items.push(Item::Text(text));
        items.push(Item::Action {
            body: inner.to_string(),
            line,
        });
        line += inner.matches('\n').count();
        rest = &after[end + 2..];
        if trim_right {
            rest = rest.trim_start();
        }
    }
    items.push(Item::Text(rest.to_string()));
    Ok(items)
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn lex(body: &str, line: usize) -> Result<Vec<Tok>> {
    let err = |msg: String| Error::Parse { line, msg };
    let chars: Vec<char> = body.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let read_chain = |i: &mut usize| -> Vec<String> {
        let mut chain = Vec::new();
        while *i < chars.len() && chars[*i] == '.' {
            let s = *i + 1;
            let mut e = s;
            while e < chars.len() && is_ident_char(chars[e]) {
                e += 1;
            }
            if e == s {
                break;
            }
            chain.push(chars[s..e].iter().collect());
            *i = e;
        }
        chain
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '|' => {
                toks.push(Tok::Pipe);
                i += 1;
            }
            '(' => {
                toks.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                i += 1;
                let chain = read_chain(&mut i);
                toks.push(Tok::RParen(chain));
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1;
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                toks.push(Tok::Declare);
                i += 2;
            }
            '=' => {
                toks.push(Tok::Assign);
                i += 1;
            }
            '.' => {
                let chain = read_chain(&mut i);
                if chain.is_empty() {
                    toks.push(Tok::Dot);
                    i += 1;
                } else {
                    toks.push(Tok::Field(chain));
                }
            }
            '$' => {
                let s = i + 1;
                let mut e = s;
                while e < chars.len() && is_ident_char(chars[e]) {
                    e += 1;
                }
                let name: String = chars[s..e].iter().collect();
                i = e;
                let chain = read_chain(&mut i);
                toks.push(Tok::Var(format!("${name}"), chain));
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(err("unterminated quoted string".to_string()));
                    };
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            let n = chars.get(i).copied().unwrap_or('\\');
                            i += 1;
                            s.push(match n {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '0' => '\0',
                                other => other,
                            });
                        }
                        c => s.push(c),
                    }
                }
                toks.push(Tok::Str(s));
            }
            '`' => {
                let s = i + 1;
                let e = chars[s..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or_else(|| err("unterminated raw quoted string".to_string()))?;
                toks.push(Tok::Str(chars[s..s + e].iter().collect()));
                i = s + e + 1;
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+')
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                let s = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[s..i].iter().collect();
                let v = if let Ok(n) = text.parse::<i64>() {
                    Value::from(n)
                } else if let Ok(f) = text.parse::<f64>() {
                    Value::from(f)
                } else {
                    return Err(err(format!("bad number syntax: {text:?}")));
                };
                toks.push(Tok::Num(v));
            }
            c if is_ident_char(c) => {
                let s = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[s..i].iter().collect();
                toks.push(match word.as_str() {
                    "true" => Tok::Bool(true),
                    "false" => Tok::Bool(false),
                    "nil" => Tok::Nil,
                    _ => Tok::Ident(word),
                });
            }
            other => return Err(err(format!("unexpected {other:?} in command"))),
        }
    }
    Ok(toks)
}

const KNOWN_FUNCS: &[&str] = &[
    "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "eq", "ne", "lt",
    "le", "gt", "ge", "json", "join", "split", "lower", "upper", "title", "pad", "truncate",
    "html", "urlquery", "js",
];

struct PipeParser<'a> {
    toks: &'a [Tok],
    pos: usize,
    line: usize,
}

impl PipeParser<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Parse {
            line: self.line,
            msg: msg.into(),
        }
    }

    fn pipeline(&mut self, text: &str) -> Result<Pipeline> {
        let mut decl = Vec::new();
        let mut assign = false;
        // Declarations: `$x :=`, `$i, $v :=`, `$x =`.
        let save = self.pos;
        let mut names = Vec::new();
        while let Some(Tok::Var(n, chain)) = self.toks.get(self.pos) {
            if !chain.is_empty() {
                break;
            }
            names.push(n.clone());
            self.pos += 1;
            match self.toks.get(self.pos) {
                Some(Tok::Comma) => self.pos += 1,
                Some(Tok::Declare) => {
                    self.pos += 1;
                    decl.clone_from(&names);
                    break;
                }
                Some(Tok::Assign) => {
                    self.pos += 1;
                    decl.clone_from(&names);
                    assign = true;
                    break;
                }
                _ => break,
            }
        }
        if decl.is_empty() {
            self.pos = save;
        }
        let mut cmds = Vec::new();
        loop {
            let mut args = Vec::new();
            while let Some(t) = self.toks.get(self.pos) {
                match t {
                    Tok::Pipe | Tok::RParen(_) => break,
                    _ => args.push(self.operand()?),
                }
            }
            if args.is_empty() {
                return Err(self.err("missing value for command"));
            }
            cmds.push(Cmd { args });
            match self.toks.get(self.pos) {
                Some(Tok::Pipe) => self.pos += 1,
                _ => break,
            }
        }
        Ok(Pipeline {
            decl,
            assign,
            cmds,
            line: self.line,
            text: text.trim().to_string(),
        })
    }

    fn operand(&mut self) -> Result<Arg> {
        let t = self.toks[self.pos].clone();
        self.pos += 1;
        Ok(match t {
            Tok::Field(c) => Arg::Field(c),
            Tok::Var(n, c) => Arg::Var(n, c),
            Tok::Ident(name) => {
                if !KNOWN_FUNCS.contains(&name.as_str()) {
                    return Err(self.err(format!("function {name:?} not defined")));
                }
                Arg::Ident(name)
            }
            Tok::Str(s) => Arg::Lit(Value::String(s)),
            Tok::Num(n) => Arg::Lit(n),
            Tok::Bool(b) => Arg::Lit(Value::Bool(b)),
            Tok::Nil => Arg::Lit(Value::Null),
            Tok::Dot => Arg::Dot,
            Tok::LParen => {
                let inner = self.pipeline("")?;
                match self.toks.get(self.pos) {
                    Some(Tok::RParen(chain)) => {
                        let chain = chain.clone();
                        self.pos += 1;
                        Arg::Sub(Box::new(inner), chain)
                    }
                    _ => return Err(self.err("unclosed left paren")),
                }
            }
            Tok::RParen(_) => return Err(self.err("unexpected right paren")),
            Tok::Pipe | Tok::Declare | Tok::Assign | Tok::Comma => {
                return Err(self.err("unexpected token in operand"));
            }
        })
    }
}

fn parse_pipeline(body: &str, line: usize) -> Result<Pipeline> {
    let toks = lex(body, line)?;
    let mut p = PipeParser {
        toks: &toks,
        pos: 0,
        line,
    };
    let pipe = p.pipeline(body)?;
    if p.pos != toks.len() {
        return Err(p.err(format!("unexpected {:?} in operand", toks[p.pos])));
    }
    Ok(pipe)
}

enum Stop {
    End,
    Else(Option<(String, usize)>),
    Eof,
}

struct NodeParser {
    items: std::vec::IntoIter<Item>,
}

impl NodeParser {
    fn list(&mut self) -> Result<(Vec<Node>, Stop)> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            match item {
                Item::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t));
                    }
                }
                Item::Action { body, line } => {
                    let b = body.trim();
                    if b.starts_with("/*") {
                        continue;
                    }
                    let (word, rest) = b
                        .split_once(|c: char| c.is_whitespace())
                        .map_or((b, ""), |(w, r)| (w, r));
                    match word {
                        "end" => return Ok((nodes, Stop::End)),
                        "else" => {
                            let rest = rest.trim();
                            let chained = rest
                                .strip_prefix("if")
                                .filter(|r| r.starts_with(char::is_whitespace))
                                .map(|r| (r.to_string(), line));
                            return Ok((nodes, Stop::Else(chained)));
                        }
                        "if" | "range" | "with" => {
                            nodes.push(self.control(word, rest, line)?);
                        }
                        "define" | "template" | "block" | "break" | "continue" => {
                            return Err(Error::Parse {
                                line,
                                msg: format!("{word} is not supported"),
                            });
                        }
                        _ => nodes.push(Node::Action(parse_pipeline(b, line)?)),
                    }
                }
            }
        }
        Ok((nodes, Stop::Eof))
    }

    fn control(&mut self, word: &str, rest: &str, line: usize) -> Result<Node> {
        let pipe = parse_pipeline(rest, line)?;
        let (body, stop) = self.list()?;
        let else_nodes = match stop {
            Stop::End => Vec::new(),
            Stop::Eof => {
                return Err(Error::Parse {
                    line,
                    msg: "unexpected EOF".to_string(),
                });
            }
            Stop::Else(None) => {
                let (nodes, stop) = self.list()?;
                if !matches!(stop, Stop::End) {
                    return Err(Error::Parse {
                        line,
                        msg: "expected end; found else or EOF".to_string(),
                    });
                }
                nodes
            }
            Stop::Else(Some((cond, l))) => vec![self.control("if", &cond, l)?],
        };
        Ok(match word {
            "if" => Node::If(pipe, body, else_nodes),
            "range" => Node::Range(pipe, body, else_nodes),
            _ => Node::With(pipe, body, else_nodes),
        })
    }
}

impl Template {
    /// Parse a template.
    pub fn parse(src: &str) -> Result<Template> {
        let items = split_items(src)?;
        let mut p = NodeParser {
            items: items.into_iter(),
        };
        let (nodes, stop) = p.list()?;
        match stop {
            Stop::Eof => Ok(Template { nodes }),
            Stop::End => Err(Error::Parse {
                line: 1,
                msg: "unexpected {{end}}".to_string(),
            }),
            Stop::Else(_) => Err(Error::Parse {
                line: 1,
                msg: "unexpected {{else}}".to_string(),
            }),
        }
    }

    /// Execute against `data`.
    pub fn render(&self, data: &Value) -> Result<String> {
        let mut out = String::new();
        let mut vars = vec![("$".to_string(), data.clone())];
        exec_list(&self.nodes, data, &mut vars, &mut out)?;
        Ok(out)
    }
}

fn exec_list(
    nodes: &[Node],
    dot: &Value,
    vars: &mut Vec<(String, Value)>,
    out: &mut String,
) -> Result<()> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Action(p) => {
                let v = eval_pipeline(p, dot, vars)?;
                if p.decl.is_empty() {
                    out.push_str(&to_text(&v));
                }
            }
            Node::If(p, then, els) => {
                let mark = vars.len();
                let v = eval_pipeline(p, dot, vars)?;
                if truthy(&v) {
                    exec_list(then, dot, vars, out)?;
                } else {
                    exec_list(els, dot, vars, out)?;
                }
                vars.truncate(mark);
            }
            Node::With(p, body, els) => {
                let mark = vars.len();
                let v = eval_pipeline(p, dot, vars)?;
                if truthy(&v) {
                    exec_list(body, &v, vars, out)?;
                } else {
                    exec_list(els, dot, vars, out)?;
                }
                vars.truncate(mark);
            }
            Node::Range(p, body, els) => {
                let mark = vars.len();
                let mut q = p.clone();
                let names = std::mem::take(&mut q.decl);
                let v = eval_pipeline(&q, dot, vars)?;
                let pairs: Vec<(Value, Value)> = match &v {
                    Value::Array(a) => a
                        .iter()
                        .enumerate()
                        .map(|(i, x)| (Value::from(i), x.clone()))
                        .collect(),
                    Value::Object(m) => {
                        let mut keys: Vec<&String> = m.keys().collect();
                        keys.sort();
                        keys.into_iter()
                            .map(|k| (Value::String(k.clone()), m[k].clone()))
                            .collect()
                    }
                    Value::Null => Vec::new(),
                    Value::Number(n) => (0..n.as_i64().unwrap_or(0))
                        .map(|i| (Value::from(i), Value::from(i)))
                        .collect(),
                    other => {
                        return Err(Error::Exec {
                            line: p.line,
                            at: p.text.clone(),
                            msg: format!("range can't iterate over {}", to_text(other)),
                        });
                    }
                };
                if pairs.is_empty() {
                    exec_list(els, dot, vars, out)?;
                }
                for (k, x) in pairs {
                    let inner = vars.len();
                    match names.as_slice() {
                        [v1] => vars.push((v1.clone(), x.clone())),
                        [k1, v1, ..] => {
                            vars.push((k1.clone(), k));
                            vars.push((v1.clone(), x.clone()));
                        }
                        [] => {}
                    }
                    exec_list(body, &x, vars, out)?;
                    vars.truncate(inner);
                }
                vars.truncate(mark);
            }
        }
    }
    Ok(())
}

fn lookup_var(vars: &[(String, Value)], name: &str) -> Option<Value> {
    vars.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn field_chain(mut v: Value, chain: &[String], p: &Pipeline) -> Result<Value> {
    for f in chain {
        v = match v {
            Value::Object(mut m) => m.remove(f).unwrap_or(Value::Null),
            Value::Null => Value::Null,
            other => {
                return Err(Error::Exec {
                    line: p.line,
                    at: format!(".{f}"),
                    msg: format!("can't evaluate field {f} in type {}", go_type(&other)),
                });
            }
        };
    }
    Ok(v)
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "interface {}",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

fn eval_arg(a: &Arg, dot: &Value, vars: &mut Vec<(String, Value)>, p: &Pipeline) -> Result<Value> {
    match a {
        Arg::Dot => Ok(dot.clone()),
        Arg::Lit(v) => Ok(v.clone()),
        Arg::Field(c) => field_chain(dot.clone(), c, p),
        Arg::Var(n, c) => {
            let v = lookup_var(vars, n).ok_or_else(|| Error::Exec {
                line: p.line,
                at: n.clone(),
                msg: format!("undefined variable: {n}"),
            })?;
            field_chain(v, c, p)
        }
        Arg::Sub(inner, chain) => {
            let v = eval_pipeline(inner, dot, vars)?;
            field_chain(v, chain, p)
        }
        Arg::Ident(name) => call(name, Vec::new(), p),
    }
}

fn eval_pipeline(p: &Pipeline, dot: &Value, vars: &mut Vec<(String, Value)>) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for cmd in &p.cmds {
        let first = &cmd.args[0];
        let v = match first {
            Arg::Ident(name) => {
                let mut args = Vec::new();
                for a in &cmd.args[1..] {
                    args.push(eval_arg(a, dot, vars, p)?);
                }
                if let Some(v) = prev.take() {
                    args.push(v);
                }
                call(name, args, p)?
            }
            Arg::Field(_) | Arg::Var(..) if cmd.args.len() > 1 || prev.is_some() => {
                // A "method" call: index a map field with the arguments.
                let base = eval_arg(first, dot, vars, p)?;
                let mut args = Vec::new();
                for a in &cmd.args[1..] {
                    args.push(eval_arg(a, dot, vars, p)?);
                }
                if let Some(v) = prev.take() {
                    args.push(v);
                }
                let mut v = base;
                for a in args {
                    v = index_one(&v, &a, p)?;
                }
                v
            }
            _ => {
                if cmd.args.len() > 1 || prev.is_some() {
                    return Err(Error::Exec {
                        line: p.line,
                        at: p.text.clone(),
                        msg: "can't give argument to non-function".to_string(),
                    });
                }
                eval_arg(first, dot, vars, p)?
            }
        };
        prev = Some(v);
    }
    let v = prev.unwrap_or(Value::Null);
    if !p.decl.is_empty() {
        let name = p.decl.last().expect("checked non-empty").clone();
        if p.assign {
            if let Some(slot) = vars.iter_mut().rev().find(|(n, _)| *n == name) {
                slot.1 = v.clone();
            }
        } else {
            vars.push((name, v.clone()));
        }
    }
    Ok(v)
}

fn exec_err(p: &Pipeline, name: &str, msg: impl Into<String>) -> Error {
    Error::Exec {
        line: p.line,
        at: name.to_string(),
        msg: format!("error calling {name}: {}", msg.into()),
    }
}

fn index_one(v: &Value, key: &Value, p: &Pipeline) -> Result<Value> {
    match (v, key) {
        (Value::Object(m), k) => Ok(m.get(&to_text(k)).cloned().unwrap_or(Value::Null)),
        (Value::Array(a), Value::Number(n)) => {
            let i = n.as_i64().unwrap_or(-1);
            if i < 0 || i as usize >= a.len() {
                return Err(exec_err(p, "index", format!("index out of range: {i}")));
            }
            Ok(a[i as usize].clone())
        }
        (Value::Null, _) => Ok(Value::Null),
        (other, _) => Err(exec_err(
            p,
            "index",
            format!("can't index item of type {}", go_type(other)),
        )),
    }
}

fn str_arg(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => to_text(other),
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => num(a)?.partial_cmp(&num(b)?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

fn call(name: &str, args: Vec<Value>, p: &Pipeline) -> Result<Value> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let need = |n: usize| -> Result<()> {
        if args.len() == n {
            Ok(())
        } else {
            Err(Error::Exec {
                line: p.line,
                at: name.to_string(),
                msg: format!(
                    "wrong number of args for {name}: want {n} got {}",
                    args.len()
                ),
            })
        }
    };
    Ok(match name {
        "and" => {
            let mut last = Value::Bool(true);
            for a in args {
                if !truthy(&a) {
                    return Ok(a);
                }
                last = a;
            }
            last
        }
        "or" => {
            let mut last = Value::Bool(false);
            for a in args {
                if truthy(&a) {
                    return Ok(a);
                }
                last = a;
            }
            last
        }
        "not" => {
            need(1)?;
            Value::Bool(!truthy(&args[0]))
        }
        "len" => {
            need(1)?;
            Value::from(match &args[0] {
                Value::String(s) => s.len(),
                Value::Array(a) => a.len(),
                Value::Object(m) => m.len(),
                Value::Null => 0,
                other => {
                    return Err(exec_err(
                        p,
                        "len",
                        format!("len of type {}", go_type(other)),
                    ));
                }
            })
        }
        "index" => {
            let mut it = args.into_iter();
            let mut v = it.next().unwrap_or(Value::Null);
            for k in it {
                v = index_one(&v, &k, p)?;
            }
            v
        }
        "slice" => {
            let mut it = args.into_iter();
            let v = it.next().unwrap_or(Value::Null);
            let idx: Vec<usize> = it.filter_map(|x| num(&x)).map(|f| f as usize).collect();
            match v {
                Value::String(s) => {
                    let a = idx.first().copied().unwrap_or(0).min(s.len());
                    let b = idx.get(1).copied().unwrap_or(s.len()).min(s.len());
                    Value::String(s.get(a..b.max(a)).unwrap_or("").to_string())
                }
                Value::Array(v) => {
                    let a = idx.first().copied().unwrap_or(0).min(v.len());
                    let b = idx.get(1).copied().unwrap_or(v.len()).min(v.len());
                    Value::Array(v[a..b.max(a)].to_vec())
                }
                other => other,
            }
        }
        "println" => Value::String(go_print(&args, true)),
        "printf" => {
            let mut it = args.into_iter();
            let f = it.next().map(|v| str_arg(&v)).unwrap_or_default();
            Value::String(sprintf(&f, &it.collect::<Vec<_>>()))
        }
        "eq" => {
            if args.len() < 2 {
                need(2)?;
            }
            let first = &args[0];
            Value::Bool(
                args[1..]
                    .iter()
                    .any(|b| compare(first, b) == Some(Equal) || first == b),
            )
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            need(2)?;
            let ord = compare(&args[0], &args[1]);
            if name != "ne" && ord.is_none() {
                return Err(exec_err(p, name, "incompatible types for comparison"));
            }
            Value::Bool(match name {
                "ne" => ord != Some(Equal) && args[0] != args[1],
                "lt" => ord == Some(Less),
                "le" => matches!(ord, Some(Less | Equal)),
                "gt" => ord == Some(Greater),
                _ => matches!(ord, Some(Greater | Equal)),
            })
        }
        "json" => {
            need(1)?;
            Value::String(serde_json::to_string(&args[0]).unwrap_or_default())
        }
        "join" => {
            need(2)?;
            let items: Vec<String> = match &args[0] {
                Value::Array(a) => a.iter().map(str_arg).collect(),
                Value::Null => Vec::new(),
                other => vec![str_arg(other)],
            };
            Value::String(items.join(&str_arg(&args[1])))
        }
        "split" => {
            need(2)?;
            let s = str_arg(&args[0]);
            let sep = str_arg(&args[1]);
            let parts: Vec<Value> = if sep.is_empty() {
                s.chars().map(|c| Value::String(c.to_string())).collect()
            } else {
                s.split(sep.as_str())
                    .map(|x| Value::String(x.to_string()))
                    .collect()
            };
            Value::Array(parts)
        }
        "lower" => {
            need(1)?;
            Value::String(str_arg(&args[0]).to_lowercase())
        }
        "upper" => {
            need(1)?;
            Value::String(str_arg(&args[0]).to_uppercase())
        }
        "title" => {
            need(1)?;
            let s = str_arg(&args[0]);
            let mut out = String::with_capacity(s.len());
            let mut prev_letter = false;
            for c in s.chars() {
                if !prev_letter && c.is_alphabetic() {
                    out.extend(c.to_uppercase());
                } else {
                    out.push(c);
                }
                prev_letter = c.is_alphanumeric() || c == '_' || c == '\'';
            }
            Value::String(out)
        }
        "pad" => {
            need(3)?;
            let s = str_arg(&args[0]);
            let l = num(&args[1]).unwrap_or(0.0) as usize;
            let r = num(&args[2]).unwrap_or(0.0) as usize;
            Value::String(format!("{}{s}{}", " ".repeat(l), " ".repeat(r)))
        }
        "truncate" => {
            need(2)?;
            let s = str_arg(&args[0]);
            let n = num(&args[1]).unwrap_or(0.0) as usize;
            Value::String(s.chars().take(n).collect())
        }
        "print" | "html" | "js" | "urlquery" => Value::String(go_print(&args, false)),
        other => return Err(exec_err(p, other, "function not defined")),
    })
}

/// Go's truthiness: false, 0, nil, and empty strings, lists and maps are
/// false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// Print a value as Go's `fmt.Print` does for decoded JSON.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                go_float(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(inner_text).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Object(m) => format_map(m),
    }
}

fn inner_text(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_string(),
        other => to_text(other),
    }
}

fn format_map(m: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let parts: Vec<String> = keys
        .into_iter()
        .map(|k| format!("{k}:{}", inner_text(&m[k])))
        .collect();
    format!("map[{}]", parts.join(" "))
}

fn go_float(f: f64) -> String {
    // Go's %v for float64: shortest representation, exponent form below
    // 1e-4 and from 1e21 on.
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e21).contains(&abs) {
        let s = format!("{f:e}");
        if let Some((m, e)) = s.split_once('e') {
            let e: i32 = e.parse().unwrap_or(0);
            return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
        }
        return s;
    }
    format!("{f}")
}

fn go_print(args: &[Value], ln: bool) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        let is_str = matches!(a, Value::String(_));
        let prev_str = i > 0 && matches!(args[i - 1], Value::String(_));
        if i > 0 && (ln || (!is_str && !prev_str)) {
            out.push(' ');
        }
        out.push_str(&to_text(a));
    }
    if ln {
        out.push('\n');
    }
    out
}

/// A subset of Go's `fmt.Sprintf`: `%v %s %d %q %f %x %X %t %%` with
/// width, precision and the `-`, `0`, `+` flags.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut it = args.iter();
    let chars: Vec<char> = format.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut left = false;
        let mut zero = false;
        let mut plus = false;
        while i < chars.len() && matches!(chars[i], '-' | '0' | '+' | ' ' | '#') {
            match chars[i] {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                _ => {}
            }
            i += 1;
        }
        let mut width = String::new();
        while i < chars.len() && chars[i].is_ascii_digit() {
            width.push(chars[i]);
            i += 1;
        }
        let mut prec: Option<usize> = None;
        if i < chars.len() && chars[i] == '.' {
            i += 1;
            let mut p = String::new();
            while i < chars.len() && chars[i].is_ascii_digit() {
                p.push(chars[i]);
                i += 1;
            }
            prec = Some(p.parse().unwrap_or(0));
        }
        let Some(&verb) = chars.get(i) else {
            out.push_str("%!(NOVERB)");
            break;
        };
        i += 1;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = it.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        let body = match verb {
            'v' | 's' => {
                let s = to_text(arg);
                match prec {
                    Some(p) if verb == 's' => s.chars().take(p).collect(),
                    _ => s,
                }
            }
            'd' => match num(arg) {
                Some(f) => {
                    let s = (f as i64).to_string();
                    if plus && f >= 0.0 { format!("+{s}") } else { s }
                }
                None => format!("%!d({})", to_text(arg)),
            },
            'f' | 'F' => match num(arg) {
                Some(f) => format!("{:.*}", prec.unwrap_or(6), f),
                None => format!("%!f({})", to_text(arg)),
            },
            'g' => match num(arg) {
                Some(f) => prec.map_or_else(|| go_float(f), |p| crate::units::go_g(f, p)),
                None => format!("%!g({})", to_text(arg)),
            },
            'q' => serde_json::to_string(&to_text(arg)).unwrap_or_default(),
            't' => to_text(arg),
            'x' | 'X' => {
                let s = match arg {
                    Value::Number(_) => format!("{:x}", num(arg).unwrap_or(0.0) as i64),
                    other => hex::encode(to_text(other)),
                };
                if verb == 'X' { s.to_uppercase() } else { s }
            }
            other => format!("%!{other}({})", to_text(arg)),
        };
        let w: usize = width.parse().unwrap_or(0);
        let len = body.chars().count();
        if len >= w {
            out.push_str(&body);
        } else if left {
            out.push_str(&body);
            out.push_str(&" ".repeat(w - len));
        } else if zero && matches!(verb, 'd' | 'f' | 'F' | 'g' | 'x' | 'X') {
            let (sign, digits) = body
                .strip_prefix('-')
                .map_or(("", body.as_str()), |d| ("-", d));
            out.push_str(sign);
            out.push_str(&"0".repeat(w - len));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(w - len));
            out.push_str(&body);
        }
    }
    for extra in it {
        let _ = write!(out, "%!(EXTRA {})", to_text(extra));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().render(v).unwrap()
    }

    #[test]
    fn fields_and_text() {
        let v = json!({"Name": "/web", "State": {"Running": true, "Pid": 42}});
        assert_eq!(r("{{.Name}} {{.State.Pid}}", &v), "/web 42");
        assert_eq!(r("{{.State.Running}}", &v), "true");
        assert_eq!(r("{{.Missing}}", &v), "<no value>");
        assert_eq!(r("{{json .State}}", &v), r#"{"Pid":42,"Running":true}"#);
    }

    #[test]
    fn control_flow() {
        let v = json!({"A": [1, 2, 3], "M": {"b": "2", "a": "1"}, "E": []});
        assert_eq!(r("{{range .A}}{{.}},{{end}}", &v), "1,2,3,");
        assert_eq!(
            r("{{range $i, $x := .A}}{{$i}}={{$x}} {{end}}", &v),
            "0=1 1=2 2=3 "
        );
        assert_eq!(
            r("{{range $k, $v := .M}}{{$k}}:{{$v}};{{end}}", &v),
            "a:1;b:2;"
        );
        assert_eq!(r("{{range .E}}x{{else}}empty{{end}}", &v), "empty");
        assert_eq!(r("{{if .E}}y{{else if .A}}a{{else}}n{{end}}", &v), "a");
        assert_eq!(r("{{with .M}}{{.a}}{{end}}", &v), "1");
        assert_eq!(r("{{- \" x \" -}}  \n", &v), " x ");
        assert_eq!(r("a {{- /* c */ -}} b", &v), "ab");
    }

    #[test]
    fn functions() {
        let v = json!({"L": ["a", "b"], "S": "Hello", "N": 3, "Labels": {"x.y": "z"}});
        assert_eq!(r("{{join .L \",\"}}", &v), "a,b");
        assert_eq!(r("{{.S | lower}} {{upper .S}}", &v), "hello HELLO");
        assert_eq!(r("{{len .L}} {{index .L 1}}", &v), "2 b");
        assert_eq!(r("{{index .Labels \"x.y\"}}", &v), "z");
        assert_eq!(r("{{.Labels \"x.y\"}}", &v), "z");
        assert_eq!(
            r("{{printf \"%-4s|%03d|%.1f\" .S .N 2.25}}", &v),
            "Hello|003|2.2"
        );
        assert_eq!(r("{{if eq .N 3}}three{{end}}", &v), "three");
        assert_eq!(r("{{if and (gt .N 1) (lt .N 5)}}mid{{end}}", &v), "mid");
        assert_eq!(r("{{split \"a:b\" \":\"}}", &v), "[a b]");
        assert_eq!(r("{{.Labels}}", &v), "map[x.y:z]");
        assert_eq!(r("{{$x := .N}}{{$x}}", &v), "3");
        assert_eq!(r("{{title \"hello world\"}}", &v), "Hello World");
        assert_eq!(r("{{truncate .S 3}}", &v), "Hel");
        assert_eq!(r("{{(index .L 0) | upper}}", &v), "A");
    }

    #[test]
    fn errors_are_reported() {
        assert!(Template::parse("{{.A").is_err());
        assert!(Template::parse("{{if .A}}x").is_err());
        assert!(Template::parse("{{nosuch .A}}").is_err());
        let t = Template::parse("{{.A.B}}").unwrap();
        assert!(t.render(&json!({"A": "s"})).is_err());
    }
}
