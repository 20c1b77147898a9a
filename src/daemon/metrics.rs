//! The station's numbers in Prometheus' OpenMetrics text (`GET /metrics`).
//!
//! One source of truth: the per-source series are recorded in [`Stats`] as
//! they happen; the counters and gauges are read from it at each scrape.
//! Names follow Prometheus' conventions: a `winclip_` prefix, `_total` on
//! counters, base units (`_seconds`, `_bytes`) in the name.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::stats::Stats;

/// What `/metrics` says about the running model, beside the numbers.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// Model pack id.
    pub model: String,
    /// Bank id.
    pub bank: String,
    /// The bank's object.
    pub object: String,
    /// Where the token encoder runs ("cpu", "cuda").
    pub device: String,
    /// The precision the token encoder's linear layers run in ("f32", "int8", …).
    pub precision: String,
    /// The decision threshold in use.
    pub threshold: Option<f64>,
}

impl ModelInfo {
    /// What `inspector` runs.
    pub fn of(inspector: &crate::inspector::Inspector) -> Self {
        Self {
            model: inspector.model_id().to_string(),
            bank: inspector.bank_id().to_string(),
            object: inspector.bank().meta.object.clone(),
            device: inspector.vision().backend().name().to_string(),
            precision: inspector
                .vision()
                .encoder_numerics()
                .map_or_else(|| "f32".to_string(), |n| n.running.to_string()),
            threshold: Some(crate::record::as_printed(inspector.threshold())),
        }
    }
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric, as OpenMetrics text (ends with `# EOF`).
pub fn render(stats: &Stats, model: &ModelInfo) -> String {
    let mut r = Registry::with_prefix("winclip");
    let count = |a: &AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
    r.register(
        "inspections",
        "Inspections with a stored result, by source and verdict",
        stats.inspections.clone(),
    );
    r.register_with_unit(
        "inspection_duration",
        "Compute time per inspection: decoding, the model, scoring and the heatmap",
        Unit::Seconds,
        stats.inspection_seconds.clone(),
    );
    r.register_with_unit(
        "end_to_end_latency",
        "From detection (file seen, trigger edge) to the result stored for delivery",
        Unit::Seconds,
        stats.latency_seconds.clone(),
    );
    r.register(
        "queue_depth",
        "Pictures waiting for the inference worker",
        ConstGauge::new(stats.queue_depth.load(Ordering::Relaxed) as i64),
    );
    r.register(
        "outbox_pending",
        "Results stored and not yet acknowledged by the broker",
        ConstGauge::new(stats.outbox_pending.load(Ordering::Relaxed) as i64),
    );
    for (name, help, value) in [
        (
            "outbox_dropped",
            "Results dropped because the outbox reached a bound",
            &stats.outbox_dropped,
        ),
        (
            "heatmaps_dropped",
            "Heatmaps dropped (outbox bound or MQTT packet limit); their results say so",
            &stats.heatmaps_dropped,
        ),
        (
            "outbox_quarantined",
            "Outbox entries that could not be read, moved aside",
            &stats.outbox_quarantined,
        ),
        (
            "store_errors",
            "Results that could not be stored (state directory full or unwritable); retried",
            &stats.store_errors,
        ),
        (
            "history_errors",
            "Results delivered but not kept for the page (history files could not be written)",
            &stats.history_errors,
        ),
        (
            "after_errors",
            "Files whose after-action (move, delete) failed",
            &stats.after_errors,
        ),
        (
            "results_published",
            "Results acknowledged by the broker",
            &stats.published,
        ),
        ("mqtt_connections", "Broker connections made", &stats.connections),
        (
            "mqtt_takeovers",
            "Runs of connections the broker closed at once (another client with this client id)",
            &stats.mqtt_takeovers,
        ),
        (
            "busy_triggers",
            "GPIO triggers that found the station busy",
            &stats.busy_triggers,
        ),
    ] {
        r.register(name, help, count(value));
    }
    r.register(
        "mqtt_connected",
        "1 while the broker connection is up",
        ConstGauge::new(i64::from(stats.mqtt_connected.load(Ordering::Relaxed))),
    );
    r.register_with_unit(
        "model_load",
        "Seconds the running model took to load",
        Unit::Seconds,
        ConstGauge::new(f64::from_bits(stats.model_load_seconds.load(Ordering::Relaxed))),
    );
    if let Some(t) = model.threshold {
        r.register(
            "threshold",
            "The decision threshold in use (fail when the score is above it)",
            ConstGauge::new(t),
        );
    }
    r.register(
        "build",
        "The running build and model",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("model", model.model.clone()),
            ("bank", model.bank.clone()),
            ("object", model.object.clone()),
            ("device", model.device.clone()),
            ("precision", model.precision.clone()),
        ]),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Verdict;

    #[test]
    fn series_carry_their_source_and_verdict_and_counters_end_in_total() {
        let stats = Stats::default();
        stats.record_verdict("cam", Verdict::Fail);
        stats.record_verdict("cam", Verdict::Fail);
        stats.record_verdict("line", Verdict::Pass);
        stats.record_latency("cam", 250.0, 400.0);
        let text = render(
            &stats,
            &ModelInfo {
                model: "m1".into(),
                device: "cpu".into(),
                threshold: Some(0.3),
                ..ModelInfo::default()
            },
        );
        for line in [
            "winclip_inspections_total{source=\"cam\",verdict=\"fail\"} 2",
            "winclip_inspections_total{source=\"line\",verdict=\"pass\"} 1",
            "winclip_inspection_duration_seconds_count{source=\"cam\"} 1",
            "winclip_inspection_duration_seconds_bucket{le=\"0.32\",source=\"cam\"} 1",
            "winclip_end_to_end_latency_seconds_sum{source=\"cam\"} 0.4",
            "winclip_mqtt_connected 0",
            "winclip_threshold 0.3",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("winclip_build_info{version=\""), "{text}");
        assert!(text.contains("model=\"m1\""), "{text}");
    }
}
