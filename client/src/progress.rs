//! Display of the API's JSON message streams (pull, push, load, import,
//! build): progress bars with indicatif on a terminal, docker's plain
//! `id: status` lines otherwise, and error and aux handling.
//!
//! It reads messages from a [`JsonStream`]; it does not start requests.

use std::collections::HashMap;
use std::io::Write as _;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::api::{self, JsonStream};

/// Stream display errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream carried an error message (`errorDetail`); `code` is its
    /// code when the daemon gave one (build steps do).
    #[error("{message}")]
    Remote { message: String, code: Option<i64> },
    #[error(transparent)]
    Api(#[from] api::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a stream carried besides its display.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `aux` objects in order (build image ID, push digest, ...).
    pub aux: Vec<Value>,
    /// Every `stream` text, concatenated (for `build -q` and `load`).
    pub text: String,
}

/// How to show a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Progress bars (a terminal).
    Bars,
    /// Plain lines (not a terminal).
    Plain,
    /// Nothing but errors.
    Quiet,
}

impl Mode {
    /// Bars on a terminal, plain lines otherwise.
    pub fn auto(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if crate::term::stdout_is_tty() {
            Mode::Bars
        } else {
            Mode::Plain
        }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}: {msg:<12} [{bar:40}] {bytes}/{total_bytes}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}: {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Show a JSON message stream on stdout until it ends. An `error` message
/// ends it with [`Error::Remote`].
pub async fn show(stream: &mut JsonStream, mode: Mode) -> Result<Outcome> {
    show_on(stream, mode, false).await
}

/// [`show`] on stderr when `to_stderr` (as `run` shows its pull).
pub async fn show_on(stream: &mut JsonStream, mode: Mode, to_stderr: bool) -> Result<Outcome> {
    let multi = MultiProgress::with_draw_target(if to_stderr {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::stdout()
    });
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut out = Outcome::default();
    let mut stdout: Box<dyn std::io::Write> = if to_stderr {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    while let Some(msg) = stream.next().await? {
        if let Some(e) = msg.get("errorDetail").filter(|e| !e.is_null()) {
            for b in bars.values() {
                b.abandon();
            }
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| msg.get("error").and_then(Value::as_str))
                .unwrap_or("unknown error")
                .to_string();
            return Err(Error::Remote {
                message,
                code: e.get("code").and_then(Value::as_i64).filter(|c| *c != 0),
            });
        }
        if let Some(e) = msg.get("error").and_then(Value::as_str) {
            return Err(Error::Remote {
                message: e.to_string(),
                code: None,
            });
        }
        if let Some(a) = msg.get("aux").filter(|a| !a.is_null()) {
            out.aux.push(a.clone());
            continue;
        }
        if let Some(s) = msg.get("stream").and_then(Value::as_str) {
            out.text.push_str(s);
            match mode {
                Mode::Quiet => {}
                Mode::Bars => {
                    let text = s.strip_suffix('\n').unwrap_or(s);
                    if bars.is_empty() {
                        let _ = write!(stdout, "{s}");
                        let _ = stdout.flush();
                    } else {
                        let _ = multi.println(text);
                    }
                }
                Mode::Plain => {
                    let _ = write!(stdout, "{s}");
                    let _ = stdout.flush();
                }
            }
            continue;
        }
        let status = msg.get("status").and_then(Value::as_str).unwrap_or("");
        let id = msg.get("id").and_then(Value::as_str).unwrap_or("");
        let detail = msg.get("progressDetail");
        let current = detail
            .and_then(|d| d.get("current"))
            .and_then(Value::as_u64);
        let total = detail.and_then(|d| d.get("total")).and_then(Value::as_u64);
        match mode {
            Mode::Quiet => {}
            Mode::Plain => {
                // Progress ticks are noise in a log; print status changes.
                if current.is_some() {
                    continue;
                }
                if id.is_empty() {
                    let _ = writeln!(stdout, "{status}");
                } else {
                    let _ = writeln!(stdout, "{id}: {status}");
                }
            }
            Mode::Bars => {
                if id.is_empty() {
                    let _ = multi.println(status);
                    continue;
                }
                let bar = bars.entry(id.to_string()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(0));
                    b.set_style(line_style());
                    b.set_prefix(id.to_string());
                    b
                });
                match (current, total) {
                    (Some(c), Some(t)) if t > 0 => {
                        if bar.length() != Some(t) {
                            bar.set_style(bar_style());
                            bar.set_length(t);
                        }
                        bar.set_position(c);
                    }
                    _ => {
                        bar.set_style(line_style());
                    }
                }
                bar.set_message(status.to_string());
            }
        }
    }
    for b in bars.values() {
        b.finish();
    }
    Ok(out)
}
