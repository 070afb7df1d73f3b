//! Debug-level timings of the steps of container operations (create,
//! start, exit, removal), so where a `run --rm` spends its time can be read
//! from the daemon's log: `vesseld -l vesseld::engine::timing=debug`.
//!
//! This module measures and logs; it changes nothing about the steps.

use std::time::Instant;

/// A step being timed: logs its duration at debug level when dropped.
pub struct Step {
    /// Absent when debug logging is off, so timing costs nothing then.
    inner: Option<(&'static str, &'static str, String, Instant)>,
}

/// Start timing `step` of operation `op` on container `id`.
pub fn step(op: &'static str, step: &'static str, id: &str) -> Step {
    let inner = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        let short: String = id.chars().take(12).collect();
        (op, step, short, Instant::now())
    });
    Step { inner }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some((op, step, id, start)) = self.inner.take() {
            let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            tracing::debug!(op, step, container = %id, us, "timing");
        }
    }
}
