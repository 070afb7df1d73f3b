//! The json-file log: one JSON object per line of output, with the stream
//! it came from and a timestamp, rotated by size. It is the format
//! `docker logs` and `vessel logs` read.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::protocol::LogConfig;

/// A line longer than this is written in pieces.
const MAX_LINE: usize = 16 * 1024;

#[derive(Serialize)]
struct Entry<'a> {
    log: &'a str,
    stream: &'a str,
    time: &'a str,
}

/// Writes a container's output as json-file entries.
pub struct JsonLog {
    path: PathBuf,
    max_size: u64,
    max_files: u32,
    file: File,
    size: u64,
    /// Unterminated line per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
}

impl JsonLog {
    /// Open (append to) the log.
    pub fn open(cfg: &LogConfig) -> std::io::Result<JsonLog> {
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.path)?;
        let size = file.metadata()?.len();
        Ok(JsonLog {
            path: cfg.path.clone(),
            max_size: cfg.max_size,
            max_files: cfg.max_files.max(1),
            file,
            size,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Record output from stdout (`stderr == false`) or stderr.
    pub fn write(&mut self, stderr: bool, data: &[u8]) {
        let idx = usize::from(stderr);
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[idx]);
            line.extend_from_slice(&rest[..=pos]);
            self.entry(stderr, &line);
            rest = &rest[pos + 1..];
        }
        self.partial[idx].extend_from_slice(rest);
        while self.partial[idx].len() >= MAX_LINE {
            let piece: Vec<u8> = self.partial[idx].drain(..MAX_LINE).collect();
            self.entry(stderr, &piece);
        }
    }

    /// Write out unterminated lines (at exit).
    pub fn flush(&mut self) {
        for idx in 0..2 {
            let line = std::mem::take(&mut self.partial[idx]);
            if !line.is_empty() {
                self.entry(idx == 1, &line);
            }
        }
        let _ = self.file.flush();
    }

    fn entry(&mut self, stderr: bool, line: &[u8]) {
        let time = crate::state::now_rfc3339();
        let text = String::from_utf8_lossy(line);
        let entry = Entry {
            log: &text,
            stream: if stderr { "stderr" } else { "stdout" },
            time: &time,
        };
        let Ok(mut json) = serde_json::to_vec(&entry) else {
            return;
        };
        json.push(b'\n');
        if self.max_size > 0 && self.size > 0 && self.size + json.len() as u64 > self.max_size {
            if let Err(e) = self.rotate() {
                tracing::warn!(path = %self.path.display(), error = %e, "log rotation failed");
            }
        }
        match self.file.write_all(&json) {
            Ok(()) => self.size += json.len() as u64,
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "log write failed"),
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| -> PathBuf {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.max_files <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(numbered(self.max_files - 1));
        for n in (1..self.max_files - 1).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// The files of a rotated log, oldest first.
pub fn files(path: &Path, max_files: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for n in (1..max_files.max(1)).rev() {
        let mut p = path.to_path_buf().into_os_string();
        p.push(format!(".{n}"));
        let p = PathBuf::from(p);
        if p.exists() {
            out.push(p);
        }
    }
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn splits_lines_per_stream_and_flushes_partials() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            path: dir.path().join("c.log"),
            max_size: 0,
            max_files: 1,
        };
        let mut log = JsonLog::open(&cfg).unwrap();
        log.write(false, b"one\ntw");
        log.write(true, b"err\n");
        log.write(false, b"o\nthree");
        log.flush();
        let v = lines(&cfg.path);
        let got: Vec<(String, String)> = v
            .iter()
            .map(|e| {
                (
                    e["stream"].as_str().unwrap().to_string(),
                    e["log"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("stdout".into(), "one\n".into()),
                ("stderr".into(), "err\n".into()),
                ("stdout".into(), "two\n".into()),
                ("stdout".into(), "three".into())
            ]
        );
        assert!(v[0]["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn rotates_by_size_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            path: dir.path().join("c.log"),
            max_size: 200,
            max_files: 3,
        };
        let mut log = JsonLog::open(&cfg).unwrap();
        for i in 0..40 {
            log.write(false, format!("line {i:03}\n").as_bytes());
        }
        log.flush();
        let all = files(&cfg.path, 3);
        assert_eq!(all.len(), 3, "{all:?}");
        for f in &all {
            assert!(std::fs::metadata(f).unwrap().len() <= 200);
        }
        // The newest line is last in the current file; the oldest ones are gone.
        let last = lines(&cfg.path);
        assert_eq!(last.last().unwrap()["log"], "line 039\n");
        let first = lines(&all[0]);
        assert_ne!(first[0]["log"], "line 000\n");
    }
}
