//! OCI lifecycle hooks: run a hook binary with the container state on its
//! standard input, within its timeout.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

/// Run each hook in order; the first failure stops the sequence.
pub fn run_all(kind: &'static str, hooks: &[Hook], state: &serde_json::Value) -> Result<()> {
    for h in hooks {
        run(kind, h, state)?;
    }
    Ok(())
}

/// Run each hook in order, logging failures and carrying on (for poststart
/// and poststop, whose failures the spec says must not stop the lifecycle).
pub fn run_all_warn(kind: &'static str, hooks: &[Hook], state: &serde_json::Value) {
    for h in hooks {
        if let Err(e) = run(kind, h, state) {
            tracing::warn!(error = %e.chain(), "{kind} hook failed");
        }
    }
}

/// Run one hook.
pub fn run(kind: &'static str, hook: &Hook, state: &serde_json::Value) -> Result<()> {
    let path = hook.path().display().to_string();
    let fail = |reason: String| Error::Hook {
        kind,
        path: path.clone(),
        reason,
    };
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((first, rest)) = args.split_first() {
            cmd.arg0(first);
            cmd.args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().as_deref().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that ignores its input may close stdin early: not an error.
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    // Drain stderr on the side so a chatty hook cannot block on a full pipe
    // while we wait for it.
    let stderr_reader = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut buf);
            buf
        })
    });
    let timeout = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    if let Some(limit) = timeout {
        let pidfd =
            crate::sys::pidfd_open(child.id() as i32).map_err(|e| fail(format!("pidfd: {e}")))?;
        let exited =
            crate::sys::pidfd_wait(&pidfd, Some(limit)).map_err(|e| fail(format!("wait: {e}")))?;
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("timed out after {}s", limit.as_secs())));
        }
    }
    let status = child.wait().map_err(|e| fail(format!("wait: {e}")))?;
    let stderr = stderr_reader
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let stderr = stderr.trim();
    Err(fail(if stderr.is_empty() {
        format!("{status}")
    } else {
        format!("{status}: {stderr}")
    }))
}
