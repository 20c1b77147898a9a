//! What one inspection reports: the one result schema of `inspect --json`
//! and of the daemon's `<prefix>/<station>/result`, errors included.
//!
//! Fields that do not apply are `null` (the CLI has no station, source or
//! inspection id; an error has no scores), never missing, so a consumer reads
//! one shape. [`SCHEMA`] is bumped when a field changes meaning or goes.

use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::inspector::{self, Inspection, Inspector};
use crate::winclip::regions::{self, Region};

/// The schema version every record carries.
pub const SCHEMA: u32 = 1;
/// Most regions a record lists (the strongest).
pub const MAX_REGIONS: usize = 5;

/// Verdict of one inspection: `error` when the picture could not be inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Good part.
    Pass,
    /// Defective part.
    Fail,
    /// No verdict: unreadable picture, failed capture, busy station, …
    Error,
}

impl Verdict {
    /// "pass", "fail" or "error", as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
        }
    }
}

impl From<inspector::Verdict> for Verdict {
    fn from(v: inspector::Verdict) -> Self {
        match v {
            inspector::Verdict::Pass => Verdict::Pass,
            inspector::Verdict::Fail => Verdict::Fail,
        }
    }
}

/// The heatmap published beside a result (daemon).
#[derive(Debug, Clone, Serialize)]
pub struct HeatmapInfo {
    /// Topic the JPEG is published on: set by the publisher when it sends
    /// the result, so it always names the topic actually used (the prefix
    /// may change while results wait in the outbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// JPEG size.
    pub bytes: usize,
    /// Heatmap width.
    pub width: u32,
    /// Heatmap height.
    pub height: u32,
}

/// The anomaly map in short.
#[derive(Debug, Clone, Serialize)]
pub struct MapSummary {
    /// Highest value.
    pub max: f32,
    /// Mean value.
    pub mean: f32,
    /// Where the highest value is, `[x, y]` in the picture's pixels.
    pub argmax: [u32; 2],
    /// Highest value of the zero-shot part of the map.
    pub zero_shot_max: f32,
    /// Regions are where the map is above this (see `Inspector::pixel_threshold`).
    pub pixel_threshold: f32,
    /// The picture's width and height, which `argmax` and regions refer to.
    pub picture: [u32; 2],
}

/// One inspection's result.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Inspection id (daemon): stable for the same file, so subscribers can drop duplicates.
    pub id: Option<String>,
    /// Station name (daemon).
    pub station: Option<String>,
    /// Source name (daemon).
    pub source: Option<String>,
    /// The picture's path (invalid UTF-8 replaced by U+FFFD).
    pub file: Option<String>,
    /// The path with every byte that is not UTF-8 (and every control
    /// character) written `\xNN`; only where that differs from `file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_escaped: Option<String>,
    /// GPIO trigger number since start (trigger sources).
    pub trigger: Option<u64>,
    /// When the picture was written (file mtime), RFC 3339.
    pub captured_at: Option<String>,
    /// When the daemon saw the picture or trigger.
    pub detected_at: Option<String>,
    /// When the result was ready.
    pub inspected_at: String,
    /// pass / fail / error.
    pub verdict: Verdict,
    /// What went wrong (verdict `error`).
    pub error: Option<String>,
    /// The object the bank judges ("bottle").
    pub object: Option<String>,
    /// The recipe inspected with (daemon: `[model]`'s or a `[[recipe]]`).
    pub recipe: Option<String>,
    /// Model pack id.
    pub model: Option<String>,
    /// Bank id.
    pub bank: Option<String>,
    /// K, the bank's shots (0: zero-shot).
    pub shots: Option<usize>,
    /// The score compared with the threshold.
    pub score: Option<f32>,
    /// Threshold applied: fail when `score > threshold`.
    pub threshold: Option<f32>,
    /// Zero-shot image score s_img.
    pub image_score: Option<f32>,
    /// max M_W (WinCLIP+ banks).
    pub fewshot_max: Option<f32>,
    /// Passed by the early-exit cascade from the full-image pass (no window
    /// pass ran): `score` is the calibrated bound, the map the patch-level one.
    pub early_exit: Option<bool>,
    /// The score bound of the full-image pass, when early exit is on.
    pub score_bound: Option<f32>,
    /// The map in short.
    pub map: Option<MapSummary>,
    /// The regions above the pixel threshold, strongest first (at most [`MAX_REGIONS`]).
    pub regions: Vec<Region>,
    /// The bank's region of interest, `[x0, y0, x1, y1]` in picture pixels
    /// (right and bottom exclusive): only it was inspected. `null`: the whole picture.
    pub roi: Option<[u32; 4]>,
    /// How many times smaller each side of the picture was decoded (JPEG DCT
    /// scaling, `station.jpeg_dct_scaling`): 2, 4 or 8; absent: in full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_scale: Option<u32>,
    /// Milliseconds per stage.
    pub timings_ms: Option<serde_json::Value>,
    /// Milliseconds from detection to the result being stored (daemon).
    pub latency_ms: Option<f64>,
    /// The heatmap published with it (daemon).
    pub heatmap: Option<HeatmapInfo>,
}

/// What is known of the inspector when a result is made: for error results too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The bank's object.
    pub object: Option<String>,
    /// The recipe (daemon).
    pub recipe: Option<String>,
    /// Model pack id.
    pub model: Option<String>,
    /// Bank id.
    pub bank: Option<String>,
    /// K.
    pub shots: Option<usize>,
}

impl Identity {
    /// The identity of `inspector`.
    pub fn of(inspector: &Inspector) -> Self {
        Self {
            object: Some(inspector.bank().meta.object.clone()),
            recipe: None,
            model: Some(inspector.model_id().to_string()),
            bank: Some(inspector.bank_id().to_string()),
            shots: Some(inspector.bank().meta.shots),
        }
    }
}

impl Record {
    /// An empty record of `verdict`, inspected now, with `identity`.
    fn new(verdict: Verdict, identity: &Identity) -> Self {
        Self {
            schema: SCHEMA,
            id: None,
            station: None,
            source: None,
            file: None,
            file_escaped: None,
            trigger: None,
            captured_at: None,
            detected_at: None,
            inspected_at: timestamp(SystemTime::now()),
            verdict,
            error: None,
            object: identity.object.clone(),
            recipe: identity.recipe.clone(),
            model: identity.model.clone(),
            bank: identity.bank.clone(),
            shots: identity.shots,
            score: None,
            threshold: None,
            image_score: None,
            fewshot_max: None,
            early_exit: None,
            score_bound: None,
            map: None,
            regions: Vec::new(),
            roi: None,
            decode_scale: None,
            timings_ms: None,
            latency_ms: None,
            heatmap: None,
        }
    }

    /// A result with verdict `error` saying `why`, with what is known.
    pub fn error(why: String, identity: &Identity) -> Self {
        let mut r = Self::new(Verdict::Error, identity);
        r.error = Some(why);
        r
    }

    /// The result of `ins` on a `width` × `height` picture by `inspector`.
    pub fn inspected(inspector: &Inspector, ins: &Inspection, width: u32, height: u32) -> Self {
        let mut r = Self::new(ins.verdict.into(), &Identity::of(inspector));
        let o = &ins.outcome;
        let pixel_threshold = inspector.pixel_threshold();
        // The map covers the region of interest alone; everything is said in
        // the whole picture's pixels.
        let roi = ins.roi.unwrap_or(crate::roi::Rect {
            x: 0,
            y: 0,
            width,
            height,
        });
        let (max, [ax, ay]) = regions::argmax(ins.map.view(), roi.width, roi.height);
        let argmax = [ax + roi.x, ay + roi.y];
        let mean = ins.map.iter().map(|v| f64::from(*v)).sum::<f64>() / ins.map.len().max(1) as f64;
        r.score = Some(o.score);
        r.threshold = Some(ins.threshold);
        r.image_score = Some(o.image_score);
        r.fewshot_max = o.fewshot_max;
        r.early_exit = Some(ins.early_exit);
        r.score_bound = ins.score_bound;
        r.map = Some(MapSummary {
            max,
            mean: mean as f32,
            argmax,
            zero_shot_max: o.zero_shot.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            pixel_threshold,
            picture: [width, height],
        });
        r.regions = regions::regions(
            ins.map.view(),
            pixel_threshold,
            roi.width,
            roi.height,
            MAX_REGIONS,
        );
        let picture_area = (u64::from(width) * u64::from(height)).max(1) as f64;
        for g in &mut r.regions {
            g.bbox = [
                g.bbox[0] + roi.x,
                g.bbox[1] + roi.y,
                g.bbox[2] + roi.x,
                g.bbox[3] + roi.y,
            ];
            g.peak_at = [g.peak_at[0] + roi.x, g.peak_at[1] + roi.y];
            g.area_fraction = (g.area as f64 / picture_area) as f32;
        }
        r.roi = ins.roi.map(crate::roi::Rect::corners);
        r
    }

    /// The boxes of the regions, `[x0, y0, x1, y1]` in picture pixels.
    pub fn boxes(&self) -> Vec<[u32; 4]> {
        self.regions.iter().map(|r| r.bbox).collect()
    }

    /// What the heatmap of this result says besides the map.
    pub fn legend<'a>(&self, boxes: &'a [[u32; 4]]) -> crate::heatmap::Legend<'a> {
        crate::heatmap::Legend {
            failed: self.verdict == Verdict::Fail,
            score: self.score.unwrap_or(f32::NAN),
            threshold: self.threshold.unwrap_or(f32::NAN),
            pixel_threshold: self.map.as_ref().map_or(f32::NAN, |m| m.pixel_threshold),
            regions: boxes,
            argmax: self.map.as_ref().map_or([0, 0], |m| m.argmax),
            roi: self.roi,
            picture: self.map.as_ref().map(|m| m.picture),
        }
    }

    /// One line for a person: verdict, score against threshold, regions.
    pub fn summary(&self) -> String {
        let verdict = match self.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Error => "ERROR",
        };
        if let Some(e) = &self.error {
            return format!("{verdict}: {e}");
        }
        let (score, threshold) = (self.score.unwrap_or(f32::NAN), self.threshold.unwrap_or(f32::NAN));
        let cmp = if self.verdict == Verdict::Fail { ">" } else { "<=" };
        let mut line = format!("{verdict} score {score:.4} {cmp} threshold {threshold:.4}");
        if self.early_exit == Some(true) {
            line.push_str(" (early exit)");
        }
        match self.regions.first() {
            Some(r) => {
                let [x0, y0, x1, y1] = r.bbox;
                line.push_str(&format!(
                    ", {} region(s), strongest {x0},{y0}–{x1},{y1} peak {:.4}",
                    self.regions.len(),
                    r.peak
                ));
            }
            None if self.verdict == Verdict::Fail => {
                if let Some(m) = &self.map {
                    line.push_str(&format!(", strongest at {},{}", m.argmax[0], m.argmax[1]));
                }
            }
            None => {}
        }
        line
    }
}

/// `x` as an f64 that prints as `x` does (0.3, not 0.30000001192092896):
/// for numbers put in JSON values by hand (typed records print f32 as is).
pub fn as_printed(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
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

    #[test]
    fn an_error_record_has_every_field_of_the_schema_and_what_is_known() {
        let id = Identity {
            object: Some("bottle".into()),
            recipe: Some("bottle-a".into()),
            model: Some("m".into()),
            bank: Some("b".into()),
            shots: Some(2),
        };
        let v = serde_json::to_value(Record::error("cannot read x".into(), &id)).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["verdict"], "error");
        assert_eq!(v["model"], "m");
        assert_eq!(v["recipe"], "bottle-a");
        for key in [
            "id",
            "station",
            "file",
            "score",
            "threshold",
            "map",
            "heatmap",
            "latency_ms",
        ] {
            assert!(
                v.get(key).is_some_and(serde_json::Value::is_null),
                "{key} is null, not missing: {v}"
            );
        }
        assert_eq!(v["regions"], serde_json::json!([]));
        assert!(v.get("file_escaped").is_none(), "only where it differs");
    }
}
