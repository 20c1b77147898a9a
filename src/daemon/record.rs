//! What the daemon publishes per inspection.

use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Verdict of one inspection as published: `error` when the image could not be inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Good part.
    Pass,
    /// Defective part.
    Fail,
    /// No verdict: unreadable image, failed capture, busy station, …
    Error,
}

/// Heatmap description inside a result.
#[derive(Debug, Clone, Serialize)]
pub struct HeatmapInfo {
    /// Topic the JPEG is published on: set by the publisher when it sends
    /// the result, so it always names the topic actually used (the prefix
    /// may change while results wait in the outbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// JPEG size.
    pub bytes: usize,
    /// Thumbnail width.
    pub width: u32,
    /// Thumbnail height.
    pub height: u32,
}

/// The JSON published on `<prefix>/<station>/result`.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRecord {
    /// Inspection id: stable for the same file, so subscribers can drop duplicates.
    pub id: String,
    /// Station name.
    pub station: String,
    /// Source name.
    pub source: String,
    /// Image file, when there is one (invalid UTF-8 replaced by U+FFFD).
    pub file: Option<String>,
    /// The file's path with every byte that is not UTF-8 (and every control
    /// character) written `\xNN`; only where that differs from `file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_escaped: Option<String>,
    /// GPIO trigger number (since start), for trigger sources.
    pub trigger: Option<u64>,
    /// When the image was written (file mtime), RFC 3339.
    pub captured_at: Option<String>,
    /// When the daemon saw the image or trigger.
    pub detected_at: String,
    /// When the result was ready.
    pub inspected_at: String,
    /// pass / fail / error.
    pub verdict: Verdict,
    /// Image score.
    pub score: Option<f32>,
    /// Threshold applied.
    pub threshold: Option<f32>,
    /// Zero-shot image score s_img.
    pub image_score: Option<f32>,
    /// max M_W (few-shot banks).
    pub fewshot_max: Option<f32>,
    /// Passed by the early-exit cascade from the full-image pass (no window
    /// passes ran): `score` is the calibrated bound, the map the patch-level one.
    pub early_exit: Option<bool>,
    /// Maximum of the anomaly map.
    pub map_max: Option<f32>,
    /// What went wrong (verdict `error`).
    pub error: Option<String>,
    /// Milliseconds per stage.
    pub timings_ms: Option<serde_json::Value>,
    /// Milliseconds from detection to the result being stored.
    pub latency_ms: f64,
    /// Model pack id.
    pub model: String,
    /// Bank id.
    pub bank: String,
    /// The heatmap, if published.
    pub heatmap: Option<HeatmapInfo>,
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Inspection id of an image: the same station, source, file name and bytes
/// always give the same id, so a re-inspection after a crash is recognisable.
pub fn inspection_id(station: &str, source: &str, name: &str, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [station.as_bytes(), source.as_bytes(), name.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(Sha256::digest(bytes));
    hex::encode(&h.finalize()[..10])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinguish_content_and_names() {
        let a = inspection_id("s", "cam", "1.png", b"abc");
        assert_eq!(a, inspection_id("s", "cam", "1.png", b"abc"));
        assert_ne!(a, inspection_id("s", "cam", "1.png", b"abd"));
        assert_ne!(a, inspection_id("s", "cam", "2.png", b"abc"));
        assert_ne!(
            inspection_id("s", "ca", "m1.png", b""),
            inspection_id("s", "cam", "1.png", b"")
        );
        assert_eq!(a.len(), 20);
    }
}
