//! The server's metrics, rendered in Prometheus' text format (`GET /metrics`): requests by
//! route and status, queue depth, batch sizes, latency of queue wait, preprocessing and
//! inference, and images per second. Counters are atomics; the histograms have fixed buckets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A histogram with fixed upper bounds (Prometheus' cumulative `le` buckets).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths (seconds or images), to stay an integer atomic.
    sum_micro: AtomicU64,
    count: AtomicU64,
}

/// Latency buckets, seconds.
pub const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch-size buckets, images.
pub const IMAGES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything `/metrics` reports.
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub queue_depth: AtomicU64,
    pub batch_size: Histogram,
    pub queue_wait: Histogram,
    pub preprocess: Histogram,
    pub inference: Histogram,
    pub images: AtomicU64,
    /// (time, images done then), the last ten seconds' samples, for images/s.
    recent: Mutex<Vec<(Instant, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            queue_depth: AtomicU64::new(0),
            batch_size: Histogram::new(IMAGES),
            queue_wait: Histogram::new(SECONDS),
            preprocess: Histogram::new(SECONDS),
            inference: Histogram::new(SECONDS),
            images: AtomicU64::new(0),
            recent: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    /// One request answered on `route` with `status`.
    pub fn request(&self, route: &'static str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((route, status)).or_default() += 1;
    }

    /// A batch of `n` images done.
    pub fn images_done(&self, n: usize) {
        let total = self.images.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push((now, total));
        recent.retain(|(t, _)| now.duration_since(*t) <= Duration::from_secs(10));
    }

    /// Images per second over the last ten seconds.
    fn images_per_second(&self) -> f64 {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        match (recent.first(), recent.last()) {
            (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP cnx_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE cnx_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "cnx_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let depth = self.queue_depth.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP cnx_queue_depth Images waiting for a batch.\n# TYPE cnx_queue_depth gauge\ncnx_queue_depth {depth}"
        );
        self.batch_size
            .render(&mut out, "cnx_batch_size", "Images per forward pass.");
        self.queue_wait.render(
            &mut out,
            "cnx_queue_wait_seconds",
            "Time an image waited in the queue.",
        );
        self.preprocess.render(
            &mut out,
            "cnx_preprocess_seconds",
            "Decoding and preprocessing time per request.",
        );
        self.inference.render(
            &mut out,
            "cnx_inference_seconds",
            "Forward pass time per batch.",
        );
        let images = self.images.load(Ordering::Relaxed);
        let rate = self.images_per_second();
        let _ = writeln!(
            out,
            "# HELP cnx_images_total Images run.\n# TYPE cnx_images_total counter\ncnx_images_total {images}"
        );
        let _ = writeln!(
            out,
            "# HELP cnx_images_per_second Images run per second over the last 10 s.\n# TYPE cnx_images_per_second gauge\ncnx_images_per_second {rate}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_requests_counted() {
        let m = Metrics::default();
        m.batch_size.observe(3.0);
        m.batch_size.observe(16.0);
        m.batch_size.observe(1000.0);
        m.request("classify", 200);
        m.request("classify", 200);
        m.request("embed", 400);
        let text = m.render();
        assert!(
            text.contains("cnx_batch_size_bucket{le=\"4\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("cnx_batch_size_bucket{le=\"16\"} 2\n"));
        assert!(text.contains("cnx_batch_size_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("cnx_batch_size_sum 1019\n"));
        assert!(text.contains("cnx_requests_total{route=\"classify\",status=\"200\"} 2\n"));
        assert!(text.contains("cnx_requests_total{route=\"embed\",status=\"400\"} 1\n"));
    }
}
