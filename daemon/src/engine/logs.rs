//! Reading a container's json-file log for `logs`: stream selection,
//! `--since`/`--until`, `--tail`, timestamps, and `--follow` (inotify on the
//! log directory, so appends and rotations are seen as they happen).

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

/// One line (or piece of a long line) of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1 for stdout, 2 for stderr.
    pub stream: u8,
    /// RFC 3339 with nanoseconds.
    pub time: String,
    pub data: Vec<u8>,
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub stdout: bool,
    pub stderr: bool,
    /// Unix seconds (fractional), exclusive lower bound; 0: none.
    pub since: f64,
    /// Unix seconds, inclusive upper bound; 0: none.
    pub until: f64,
    /// Only the last N lines (before following).
    pub tail: Option<usize>,
    pub follow: bool,
}

#[derive(Deserialize)]
struct Entry {
    log: String,
    stream: String,
    time: String,
}

fn unix_time(t: &str) -> f64 {
    let secs = super::container::parse_rfc3339(t).unwrap_or(0) as f64;
    let frac = t.split('.').nth(1).map_or(0.0, |f| {
        let digits: String = f.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            0.0
        } else {
            digits.parse::<f64>().unwrap_or(0.0) / 10f64.powi(digits.len() as i32)
        }
    });
    secs + frac
}

fn parse_line(line: &str, opts: &Options) -> Option<Line> {
    let e: Entry = serde_json::from_str(line).ok()?;
    let stream = match e.stream.as_str() {
        "stdout" if opts.stdout => 1,
        "stderr" if opts.stderr => 2,
        _ => return None,
    };
    let t = unix_time(&e.time);
    if opts.since > 0.0 && t <= opts.since {
        return None;
    }
    if opts.until > 0.0 && t > opts.until {
        return None;
    }
    Some(Line {
        stream,
        time: e.time,
        data: e.log.into_bytes(),
    })
}

/// Stream a container's log. `running` turns false when the container
/// stops; following ends then (after reading what is left).
pub fn stream(
    path: PathBuf,
    max_files: u32,
    opts: Options,
    mut running: watch::Receiver<bool>,
) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        let files = vessel_runtime::shim::logfile::files(&path, max_files);
        let mut lines: Vec<Line> = Vec::new();
        for f in &files {
            let Ok(file) = std::fs::File::open(f) else {
                continue;
            };
            for l in BufReader::new(file).lines().map_while(Result::ok) {
                if let Some(line) = parse_line(&l, &opts) {
                    lines.push(line);
                }
            }
        }
        if let Some(n) = opts.tail {
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
        }
        for l in lines {
            if tx.blocking_send(l).is_err() {
                return;
            }
        }
        if !opts.follow || !*running.borrow() {
            return;
        }
        follow(&path, &opts, &tx, &mut running);
    });
    rx
}

/// Read appends to `path` as they happen until the container stops.
fn follow(
    path: &Path,
    opts: &Options,
    tx: &mpsc::Sender<Line>,
    running: &mut watch::Receiver<bool>,
) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let Some(dir) = path.parent() else { return };
    let Ok(inotify) = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) else {
        return;
    };
    if inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
        )
        .is_err()
    {
        return;
    }
    let mut file = std::fs::File::open(path).ok();
    let mut pos = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len());
    let mut partial = String::new();
    loop {
        // Read everything appended since last time.
        if let Some(f) = &mut file {
            let len = f.metadata().map_or(0, |m| m.len());
            if len < pos {
                pos = 0; // truncated or replaced
            }
            if len > pos && f.seek(SeekFrom::Start(pos)).is_ok() {
                let mut reader = BufReader::new(&mut *f);
                let mut buf = String::new();
                while let Ok(n) = reader.read_line(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    pos += n as u64;
                    if buf.ends_with('\n') {
                        partial.push_str(&buf);
                        if let Some(line) = parse_line(partial.trim_end(), opts) {
                            if tx.blocking_send(line).is_err() {
                                return;
                            }
                        }
                        partial.clear();
                    } else {
                        partial.push_str(&buf);
                    }
                    buf.clear();
                }
            }
        }
        if !*running.borrow() {
            return;
        }
        // Wait for a change to the directory (write, rotation) or a stop.
        let fd = std::os::fd::AsFd::as_fd(&inotify);
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(250u16));
        let mut rotated = false;
        if let Ok(events) = inotify.read_events() {
            rotated = events.iter().any(|e| {
                e.mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                    && e.name
                        .as_deref()
                        .is_some_and(|n| Some(n) == path.file_name())
            });
        }
        if rotated || file.is_none() {
            file = std::fs::File::open(path).ok();
            pos = 0;
        }
        if running.has_changed().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_streams_and_times() {
        let opts = Options {
            stdout: true,
            stderr: false,
            since: 1_700_000_000.5,
            ..Options::default()
        };
        let early = r#"{"log":"a\n","stream":"stdout","time":"2023-11-14T22:13:20.100000000Z"}"#;
        let late = r#"{"log":"b\n","stream":"stdout","time":"2023-11-14T22:13:20.900000000Z"}"#;
        let err = r#"{"log":"c\n","stream":"stderr","time":"2023-11-14T22:13:21.000000000Z"}"#;
        assert!(parse_line(early, &opts).is_none());
        assert_eq!(parse_line(late, &opts).unwrap().data, b"b\n");
        assert!(parse_line(err, &opts).is_none());
    }
}
