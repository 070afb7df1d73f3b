//! Prometheus metrics for the server, rendered in the text exposition
//! format at `/metrics`.
//!
//! Owns the counters and histograms and their rendering. Route labels are a
//! small fixed set (never repository names), so cardinality stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// All server metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, &'static str, u16), u64>>,
    durations: Mutex<BTreeMap<&'static str, Histogram>>,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    gc_runs: AtomicU64,
    gc_blobs_deleted: AtomicU64,
    gc_bytes_freed: AtomicU64,
    gc_uploads_deleted: AtomicU64,
}

impl Metrics {
    /// Record one finished request.
    pub fn observe(&self, method: &str, route: &'static str, status: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .expect("metrics lock is not poisoned")
            .entry((method.to_string(), route, status))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let mut d = self.durations.lock().expect("metrics lock is not poisoned");
        let h = d.entry(route).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Count response body bytes.
    pub fn add_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Count request body bytes.
    pub fn add_received(&self, n: u64) {
        self.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    /// Record a GC run.
    pub fn gc_run(&self, blobs: u64, bytes: u64, uploads: u64) {
        self.gc_runs.fetch_add(1, Ordering::Relaxed);
        self.gc_blobs_deleted.fetch_add(blobs, Ordering::Relaxed);
        self.gc_bytes_freed.fetch_add(bytes, Ordering::Relaxed);
        self.gc_uploads_deleted
            .fetch_add(uploads, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP vessel_registry_http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE vessel_registry_http_requests_total counter\n");
        for ((m, r, s), n) in self
            .requests
            .lock()
            .expect("metrics lock is not poisoned")
            .iter()
        {
            let _ = writeln!(
                out,
                "vessel_registry_http_requests_total{{method=\"{m}\",route=\"{r}\",code=\"{s}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP vessel_registry_http_request_duration_seconds Time to response headers.\n",
        );
        out.push_str("# TYPE vessel_registry_http_request_duration_seconds histogram\n");
        for (r, h) in self
            .durations
            .lock()
            .expect("metrics lock is not poisoned")
            .iter()
        {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "vessel_registry_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "vessel_registry_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "vessel_registry_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "vessel_registry_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let counters = [
            (
                "vessel_registry_http_response_bytes_total",
                "Response body bytes sent.",
                &self.bytes_sent,
            ),
            (
                "vessel_registry_http_request_bytes_total",
                "Upload body bytes received.",
                &self.bytes_received,
            ),
            (
                "vessel_registry_gc_runs_total",
                "Garbage collection runs.",
                &self.gc_runs,
            ),
            (
                "vessel_registry_gc_blobs_deleted_total",
                "Blobs deleted by GC.",
                &self.gc_blobs_deleted,
            ),
            (
                "vessel_registry_gc_bytes_freed_total",
                "Bytes freed by GC.",
                &self.gc_bytes_freed,
            ),
            (
                "vessel_registry_gc_uploads_deleted_total",
                "Stale uploads deleted by GC.",
                &self.gc_uploads_deleted,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}
