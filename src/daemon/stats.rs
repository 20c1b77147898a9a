//! Counters and latency percentiles for `<prefix>/<station>/stats`, and the
//! per-source series that [`super::metrics`] exposes to Prometheus.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::json;

use crate::record::Verdict;

/// Latency samples kept for percentiles.
const WINDOW: usize = 1000;

/// Shared daemon statistics.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    /// Images inspected (pass + fail).
    pub inspected: AtomicU64,
    /// Verdict pass.
    pub passed: AtomicU64,
    /// Verdict fail.
    pub failed: AtomicU64,
    /// Verdict error.
    pub errors: AtomicU64,
    /// GPIO triggers that found the station busy.
    pub busy_triggers: AtomicU64,
    /// Results acknowledged by the broker.
    pub published: AtomicU64,
    /// Broker (re)connections.
    pub connections: AtomicU64,
    /// Runs of connections the broker closed at once (another client with
    /// the station's client id, most likely).
    pub mqtt_takeovers: AtomicU64,
    /// Jobs waiting for the worker.
    pub queue_depth: AtomicUsize,
    /// Results pending in the outbox.
    pub outbox_pending: AtomicUsize,
    /// Results dropped from a full outbox.
    pub outbox_dropped: AtomicU64,
    /// Heatmaps dropped (outbox full, or larger than the MQTT packet limit);
    /// their results were published saying so.
    pub heatmaps_dropped: AtomicU64,
    /// Outbox entries that could not be read, moved to `outbox/quarantine/`.
    pub outbox_quarantined: AtomicU64,
    /// Results that could not be stored (state directory full or unwritable);
    /// their pictures stay and are retried.
    pub store_errors: AtomicU64,
    /// Results stored and delivered but not kept in the history (its files
    /// could not be written).
    pub history_errors: AtomicU64,
    /// Files whose after-action (move, delete) failed: left in place, recorded,
    /// not inspected again.
    pub after_errors: AtomicU64,
    /// Whether the broker connection is up.
    pub mqtt_connected: AtomicBool,
    /// Seconds the running model took to load (f64 bits).
    pub model_load_seconds: AtomicU64,
    /// Inspections by source and verdict.
    pub inspections: Family<SourceVerdict, Counter>,
    /// Compute time per inspection (decode to scores and heatmap), by source.
    pub inspection_seconds: Family<SourceLabel, Histogram, fn() -> Histogram>,
    /// Detection (file seen, trigger edge) to stored result, by source.
    pub latency_seconds: Family<SourceLabel, Histogram, fn() -> Histogram>,
    /// Why results cannot be stored now, while that lasts.
    store_problem: Mutex<Option<String>>,
    /// Why the HTTP endpoint is not serving, if it is not.
    http_problem: Mutex<Option<String>>,
    /// Why the last reload was refused, until one succeeds.
    reload_problem: Mutex<Option<String>>,
    /// What each source is doing, where it is not simply at work.
    sources: Mutex<BTreeMap<String, String>>,
    inspect_ms: Mutex<VecDeque<f64>>,
    latency_ms: Mutex<VecDeque<f64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            inspected: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            busy_triggers: AtomicU64::new(0),
            published: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            mqtt_takeovers: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            outbox_pending: AtomicUsize::new(0),
            outbox_dropped: AtomicU64::new(0),
            outbox_quarantined: AtomicU64::new(0),
            heatmaps_dropped: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            history_errors: AtomicU64::new(0),
            after_errors: AtomicU64::new(0),
            mqtt_connected: AtomicBool::new(false),
            model_load_seconds: AtomicU64::new(0),
            inspections: Family::default(),
            inspection_seconds: Family::new_with_constructor(seconds_histogram),
            latency_seconds: Family::new_with_constructor(seconds_histogram),
            store_problem: Mutex::new(None),
            http_problem: Mutex::new(None),
            reload_problem: Mutex::new(None),
            sources: Mutex::new(BTreeMap::new()),
            inspect_ms: Mutex::new(VecDeque::new()),
            latency_ms: Mutex::new(VecDeque::new()),
        }
    }
}

/// The labels of a per-source series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// The source's name.
    pub source: String,
}

/// The labels of the inspection counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceVerdict {
    /// The source's name.
    pub source: String,
    /// "pass", "fail" or "error".
    pub verdict: String,
}

/// Buckets from 5 ms to ≈ 41 s (×2): the tiny pack's few milliseconds to a
/// full-size pack's seconds on a small board.
fn seconds_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 14,
    ))
}

fn push(q: &Mutex<VecDeque<f64>>, v: f64) {
    if let Ok(mut q) = q.lock() {
        if q.len() == WINDOW {
            q.pop_front();
        }
        q.push_back(v);
    }
}

/// Nearest-rank percentiles of the samples.
fn percentiles(q: &Mutex<VecDeque<f64>>) -> serde_json::Value {
    let mut v: Vec<f64> = q.lock().map(|q| q.iter().copied().collect()).unwrap_or_default();
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let p = |q: f64| {
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        (v[rank - 1] * 10.0).round() / 10.0
    };
    json!({ "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "max": p(1.0), "samples": v.len() })
}

impl Stats {
    /// Record one inspection's compute time and detection-to-result latency.
    pub fn record_latency(&self, source: &str, inspect_ms: f64, latency_ms: f64) {
        push(&self.inspect_ms, inspect_ms);
        push(&self.latency_ms, latency_ms);
        let label = SourceLabel {
            source: source.to_string(),
        };
        self.inspection_seconds
            .get_or_create(&label)
            .observe(inspect_ms / 1e3);
        self.latency_seconds
            .get_or_create(&label)
            .observe(latency_ms / 1e3);
    }

    /// Count one stored result.
    pub fn record_verdict(&self, source: &str, verdict: Verdict) {
        let counter = match verdict {
            Verdict::Pass => &self.passed,
            Verdict::Fail => &self.failed,
            Verdict::Error => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inspections
            .get_or_create(&SourceVerdict {
                source: source.to_string(),
                verdict: verdict.as_str().to_string(),
            })
            .inc();
    }

    /// Results can (`None`) or cannot be stored, and why.
    pub fn set_store_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.store_problem.lock() {
            *p = problem;
        }
    }

    /// The HTTP endpoint serves (`None`) or not, and why.
    pub fn set_http_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.http_problem.lock() {
            *p = problem;
        }
    }

    /// The last reload succeeded (`None`) or was refused, and why: said in every status
    /// line until a reload succeeds, so `systemctl status` still shows it minutes later.
    pub fn set_reload_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.reload_problem.lock() {
            *p = problem;
        }
    }

    /// Source `name` is at work (`None`) or in trouble (what it waits for).
    pub fn set_source_problem(&self, name: &str, problem: Option<String>) {
        if let Ok(mut s) = self.sources.lock() {
            match problem {
                Some(p) => s.insert(name.to_string(), p),
                None => s.remove(name),
            };
        }
    }

    /// One line of what is wrong now (state directory, sources), for
    /// `systemctl status`; `None` when nothing is.
    pub fn problems(&self) -> Option<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(p) = self.store_problem.lock().ok().and_then(|p| p.clone()) {
            out.push(format!("state dir: {p}"));
        }
        if let Ok(s) = self.sources.lock() {
            out.extend(s.iter().map(|(n, p)| format!("source {n}: {p}")));
        }
        if let Some(p) = self.http_problem.lock().ok().and_then(|p| p.clone()) {
            out.push(format!("http: {p}"));
        }
        if let Some(p) = self.reload_problem.lock().ok().and_then(|p| p.clone()) {
            out.push(format!(
                "last reload refused, running the previous configuration: {p}"
            ));
        }
        (!out.is_empty()).then(|| out.join("; "))
    }

    /// The `/stats` JSON.
    pub fn snapshot(&self, station: &str) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "station": station,
            "uptime_s": self.started.elapsed().as_secs(),
            "inspected": g(&self.inspected),
            "pass": g(&self.passed),
            "fail": g(&self.failed),
            "errors": g(&self.errors),
            "busy_triggers": g(&self.busy_triggers),
            "published": g(&self.published),
            "connections": g(&self.connections),
            "mqtt_takeovers": g(&self.mqtt_takeovers),
            "queue_depth": self.queue_depth.load(Ordering::Relaxed),
            "outbox_pending": self.outbox_pending.load(Ordering::Relaxed),
            "outbox_dropped": g(&self.outbox_dropped),
            "outbox_quarantined": g(&self.outbox_quarantined),
            "heatmaps_dropped": g(&self.heatmaps_dropped),
            "store_errors": g(&self.store_errors),
            "history_errors": g(&self.history_errors),
            "after_errors": g(&self.after_errors),
            "state_dir": self.store_problem.lock().ok().and_then(|p| p.clone()).unwrap_or_else(|| "ok".into()),
            "sources": self.sources.lock().map(|s| json!(*s)).unwrap_or_default(),
            "http": self.http_problem.lock().ok().and_then(|p| p.clone()).unwrap_or_else(|| "ok".into()),
            "inspect_ms": percentiles(&self.inspect_ms),
            "latency_ms": percentiles(&self.latency_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = Stats::default();
        for i in 1..=100 {
            s.record_latency("cam", f64::from(i), f64::from(i) * 2.0);
        }
        let snap = s.snapshot("x");
        assert_eq!(snap["inspect_ms"]["p50"], 50.0);
        assert_eq!(snap["inspect_ms"]["p99"], 99.0);
        assert_eq!(snap["latency_ms"]["max"], 200.0);
        assert!(Stats::default().snapshot("x")["latency_ms"].is_null());
    }

    #[test]
    fn a_refused_reload_stays_among_the_problems_until_one_succeeds() {
        let s = Stats::default();
        assert_eq!(s.problems(), None);
        s.set_reload_problem(Some("TOML parse error at line 3".into()));
        s.set_http_problem(Some("port in use".into()));
        assert_eq!(
            s.problems().as_deref(),
            Some("http: port in use; last reload refused, running the previous configuration: TOML parse error at line 3")
        );
        s.set_reload_problem(None);
        s.set_http_problem(None);
        assert_eq!(s.problems(), None);
    }
}
