//! The bank file: everything an inspecting station needs besides the model pack.
//!
//! One safetensors file (readable from Python with `safetensors.numpy.load_file`)
//! holding the text prototypes, the few-shot references per scale, the
//! calibration scores, and JSON metadata: the model pack it was made with, the
//! object and prompts, K, τ, the window scales, the threshold and where it came
//! from, score statistics, the heatmap colour scale and the creation time.
//!
//! Serialisation is pure (`to_bytes` / `from_bytes`); the metadata carries a
//! sha256 of the tensor data and one of the metadata with it, so a bank
//! altered after writing (a flipped byte, a threshold edited by hand) is
//! refused. A threshold is changed where it is used (`inspect --threshold`,
//! the daemon's `model.threshold`), never in the bank.
//!
//! | tensor | shape |
//! |---|---|
//! | `text.normal`, `text.anomalous` | `[D]` (means of raw prompt embeddings) |
//! | `ref.patches` | `[K·grid², D_w]` |
//! | `ref.windows.<k>` | `[K·n_windows(k), D]` for each scale k |
//! | `calibration.scores` | `[N]` image scores of the calibration images |

use std::collections::HashMap;

use ndarray::{Array1, Array2, ArrayD};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::winclip::{Config, References, TextPrototypes};

/// The bank format this build writes and reads (2: the checksum covers the
/// metadata too).
pub const FORMAT_VERSION: u32 = 2;
/// Value of the `format` metadata key.
pub const FORMAT_NAME: &str = "winclip-edge-bank";

/// Why a bank could not be read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not a safetensors file, or truncated.
    #[error("not a readable bank file (truncated or not a winclip-edge bank): {0}")]
    Format(String),
    /// A safetensors file, but not one of ours, or a version we do not read.
    #[error("unsupported bank: {0}")]
    Version(String),
    /// The content does not match its recorded checksum.
    #[error("bank is corrupt: tensor data sha256 {actual} does not match the recorded {expected}")]
    Checksum {
        /// Recorded hash.
        expected: String,
        /// Hash of the data found.
        actual: String,
    },
    /// The metadata does not match its recorded checksum: edited after writing.
    #[error(
        "bank metadata was changed after the bank was written (its sha256 {actual} does not match the \
         recorded {expected}); a threshold belongs in the daemon's model.threshold or `inspect --threshold`, \
         anything else needs the bank rebuilt with `winclip-edge bank`"
    )]
    Tampered {
        /// Recorded hash.
        expected: String,
        /// Hash of the metadata found.
        actual: String,
    },
    /// Metadata and tensors disagree.
    #[error("bank is inconsistent: {0}")]
    Inconsistent(String),
    /// The bank was made with an encoder of other arithmetic.
    #[error(
        "bank was built with the {bank} encoder, and this one runs {running}: its reference features \
         and calibrated threshold come from other arithmetic and could pass parts they should not; \
         rebuild the bank with `winclip-edge bank ... --precision {precision}` (a recipe directory \
         keeps its pictures in current/shots and current/calibration), or run the precision it was \
         built with"
    )]
    Numerics {
        /// What the bank records.
        bank: String,
        /// What the encoder runs.
        running: String,
        /// The running precision, for the command.
        precision: String,
    },
    /// The bank was made with another model pack.
    #[error(
        "bank was made with model pack {bank_pack} ({bank_model}), but the loaded pack is {pack} ({model}); \
         rebuild the bank with `winclip-edge bank --model <this pack>`"
    )]
    ModelMismatch {
        /// Pack id recorded in the bank.
        bank_pack: String,
        /// Model name recorded in the bank.
        bank_model: String,
        /// Pack id of the loaded pack.
        pack: String,
        /// Model name of the loaded pack.
        model: String,
    },
}

/// The arithmetic of the encoder a bank's features and threshold came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderRecord {
    /// The precision the encoder's linear layers ran in.
    pub precision: crate::model::Precision,
    /// With int8 or bf16: the linear layers that ran in f32, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub f32_layers: Vec<String>,
}

impl EncoderRecord {
    /// f32, as every bank was before the record existed (not written then,
    /// so f32 banks keep their bytes and ids).
    pub fn is_f32(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a bank built with this encoder holds for `running`: the same
    /// int8 or bf16 layers. f32 and f16 count as alike: f16 moves scores by
    /// about 1e-5 (README: reduced precision), int8 and bf16 by up to 1e-3,
    /// enough to move a calibrated threshold's verdicts.
    pub fn holds_for(&self, running: &Self) -> bool {
        let exact = |r: &Self| !r.precision.lowers_linear_layers();
        (exact(self) && exact(running)) || self == running
    }
}

impl std::fmt::Display for EncoderRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.precision)?;
        if !self.f32_layers.is_empty() {
            write!(f, " (f32 layers: {})", self.f32_layers.join(", "))?;
        }
        Ok(())
    }
}

/// Identity and shapes of the model pack a bank belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Pack id (derived from all file hashes).
    pub id: String,
    /// open_clip model name.
    pub name: String,
    /// sha256 of `embed.onnx`.
    pub embed_sha256: String,
    /// sha256 of `encoder.onnx`.
    pub encoder_sha256: String,
    /// sha256 of `text.onnx`.
    pub text_sha256: String,
    /// Patch grid side.
    pub grid: usize,
    /// Joint embedding width D.
    pub embed_dim: usize,
    /// Vision width D_w.
    pub vision_width: usize,
}

/// Where the threshold came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdSource {
    /// No calibration and none given: [`DEFAULT_THRESHOLD`].
    Default,
    /// Given on the command line.
    Explicit,
    /// From the calibration images' scores (see [`calibrated_threshold`]).
    Calibration,
}

/// Threshold without calibration: the scores are probabilities of "anomalous".
/// Right for zero-shot banks only; WinCLIP+ scores are not probabilities.
pub const DEFAULT_THRESHOLD: f32 = 0.5;
/// Fewest calibration pictures: below, the spread of good parts' scores is
/// a guess and mean + 3σ means little.
pub const MIN_CALIBRATION_IMAGES: usize = 5;
/// Calibration rule: threshold = max(highest score, mean + SIGMAS · std).
pub const DEFAULT_SIGMAS: f32 = 3.0;

/// Summary of the calibration images' scores and maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Number of good images scored.
    pub images: usize,
    /// Mean image score.
    pub mean: f32,
    /// Standard deviation of the image scores (population).
    pub std: f32,
    /// Lowest image score.
    pub min: f32,
    /// Highest image score.
    pub max: f32,
    /// Median image score.
    pub p50: f32,
    /// 95th percentile of the image scores.
    pub p95: f32,
    /// Median of all anomaly-map values (patch grid) over the calibration images.
    pub map_median: f32,
    /// Highest anomaly-map value over the calibration images.
    pub map_max: f32,
    /// The σ multiplier used by the threshold rule.
    pub sigmas: f32,
    /// The early-exit rule fitted on the calibration images (WinCLIP+ banks
    /// calibrated on at least [`EARLY_EXIT_MIN_IMAGES`] images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_exit: Option<EarlyExit>,
}

/// The bank's metadata (stored as JSON in the safetensors header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The model pack the bank belongs to.
    pub model: ModelRef,
    /// Object name used in the prompts.
    pub object: String,
    /// Template set name (`paper` or `anomalib`).
    pub prompt_set: String,
    /// User-supplied anomalous states.
    pub extra_states: Vec<String>,
    /// Number of normal prompts averaged.
    pub normal_prompts: usize,
    /// Number of anomalous prompts averaged.
    pub anomalous_prompts: usize,
    /// Number of reference images K (0 = zero-shot).
    pub shots: usize,
    /// Reference image files (names and sha256), in order.
    pub shot_files: Vec<FileRef>,
    /// Softmax temperature.
    pub tau: f32,
    /// Window scales.
    pub scales: Vec<usize>,
    /// Window stride.
    pub stride: usize,
    /// Decision threshold on the image score (fail when score > threshold).
    pub threshold: f32,
    /// Where the threshold came from.
    pub threshold_source: ThresholdSource,
    /// Calibration summary, if calibrated.
    pub calibration: Option<Calibration>,
    /// Heatmap colour scale `[lo, hi]`, fixed per bank.
    pub colour_range: [f32; 2],
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Program and version that wrote the bank.
    pub creator: String,
    /// The region of interest its pictures were cropped to (every picture
    /// judged with it is cropped the same way); `None`: the whole picture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roi: Option<crate::roi::Roi>,
    /// The patches inside the region of interest that are inspected (a mask
    /// picture, white = inspect); `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<crate::roi::PatchMask>,
    /// The encoder's arithmetic (absent: f32).
    #[serde(default, skip_serializing_if = "EncoderRecord::is_f32")]
    pub encoder: EncoderRecord,
}

/// A file that went into a bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// File name (no directories).
    pub name: String,
    /// sha256 of its bytes.
    pub sha256: String,
}

impl FileRef {
    /// The reference of a file named `name` holding `bytes`.
    pub fn of(name: &str, bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self {
            name: name.to_string(),
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }
}

/// A loaded or freshly built bank.
#[derive(Debug, Clone, PartialEq)]
pub struct Bank {
    /// Metadata.
    pub meta: Meta,
    /// Text prototypes.
    pub text: TextPrototypes,
    /// Few-shot references (None = zero-shot).
    pub references: Option<References>,
    /// Image scores of the calibration images.
    pub calibration_scores: Vec<f32>,
}

impl Meta {
    /// A WinCLIP+ bank whose threshold is the zero-shot default 0.5: few-shot
    /// scores sit far below it (0.25–0.31 with the tiny pack), so it would
    /// pass every defect.
    pub fn uncalibrated_few_shot(&self) -> bool {
        self.shots > 0 && self.threshold_source == ThresholdSource::Default
    }
}

impl Bank {
    /// The algorithm configuration recorded in the bank.
    pub fn config(&self) -> Config {
        Config {
            tau: self.meta.tau,
            scales: self.meta.scales.clone(),
            stride: self.meta.stride,
        }
    }

    /// Short identity: 16 hex digits of the sha256 of metadata and tensors.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.meta).unwrap_or_default());
        h.update(data_hash(&self.tensors()).as_bytes());
        hex::encode(&h.finalize()[..8])
    }

    /// Fail unless the bank was made with the model pack `model`.
    pub fn check_model(&self, model: &ModelRef) -> Result<(), Error> {
        let m = &self.meta.model;
        if m.id != model.id
            || m.encoder_sha256 != model.encoder_sha256
            || m.embed_sha256 != model.embed_sha256
        {
            return Err(Error::ModelMismatch {
                bank_pack: m.id.clone(),
                bank_model: m.name.clone(),
                pack: model.id.clone(),
                model: model.name.clone(),
            });
        }
        Ok(())
    }

    /// Fail unless the bank's features and threshold hold for an encoder
    /// running `running` ([`EncoderRecord::holds_for`]).
    pub fn check_encoder(&self, running: &EncoderRecord) -> Result<(), Error> {
        if self.meta.encoder.holds_for(running) {
            return Ok(());
        }
        Err(Error::Numerics {
            bank: self.meta.encoder.to_string(),
            running: running.to_string(),
            precision: running.precision.to_string(),
        })
    }

    /// Serialise to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let tensors = self.tensors();
        let data_sha256 = data_hash(&tensors);
        let meta = serde_json::to_string(&self.meta).map_err(|e| Error::Format(e.to_string()))?;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT_NAME.to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("sha256".to_string(), meta_hash(&meta, &data_sha256)),
            ("meta".to_string(), meta),
            ("data_sha256".to_string(), data_sha256),
        ]);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, a)| {
                (
                    n.clone(),
                    a.shape().to_vec(),
                    a.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, shape, data)| TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (n.as_str(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Format(e.to_string()))?;
        safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Format(e.to_string()))
    }

    /// Parse and check a bank file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| Error::Format(e.to_string()))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Format(e.to_string()))?;
        let md = header
            .metadata()
            .as_ref()
            .ok_or_else(|| Error::Version("no metadata: not a winclip-edge bank".into()))?;
        if md.get("format").map(String::as_str) != Some(FORMAT_NAME) {
            return Err(Error::Version(
                "not a winclip-edge bank (format key missing)".into(),
            ));
        }
        let version = md.get("format_version").and_then(|v| v.parse::<u32>().ok());
        if version != Some(FORMAT_VERSION) {
            return Err(Error::Version(format!(
                "format version {:?}; this build reads version {FORMAT_VERSION}; rebuild the bank with this version",
                md.get("format_version")
            )));
        }
        let meta_text = md.get("meta").map(String::as_str).unwrap_or("");
        let data_sha256 = md.get("data_sha256").cloned().unwrap_or_default();
        let expected = md.get("sha256").cloned().unwrap_or_default();
        let actual = meta_hash(meta_text, &data_sha256);
        if actual != expected {
            return Err(Error::Tampered { expected, actual });
        }
        let meta: Meta =
            serde_json::from_str(meta_text).map_err(|e| Error::Inconsistent(format!("metadata: {e}")))?;

        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(Error::Inconsistent(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let a = ArrayD::from_shape_vec(view.shape().to_vec(), data)
                .map_err(|e| Error::Inconsistent(format!("{name}: {e}")))?;
            tensors.push((name, a));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let actual = data_hash(&tensors);
        if actual != data_sha256 {
            return Err(Error::Checksum {
                expected: data_sha256,
                actual,
            });
        }
        let take = |name: &str| -> Result<ArrayD<f32>, Error> {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| a.clone())
                .ok_or_else(|| Error::Inconsistent(format!("tensor {name} missing")))
        };
        let vec1 = |name: &str| -> Result<Array1<f32>, Error> {
            take(name)?
                .into_dimensionality()
                .map_err(|e| Error::Inconsistent(format!("{name}: {e}")))
        };
        let mat = |name: &str| -> Result<Array2<f32>, Error> {
            take(name)?
                .into_dimensionality()
                .map_err(|e| Error::Inconsistent(format!("{name}: {e}")))
        };
        let text = TextPrototypes {
            normal: vec1("text.normal")?,
            anomalous: vec1("text.anomalous")?,
        };
        let references = if meta.shots > 0 {
            let windows = meta
                .scales
                .iter()
                .map(|k| mat(&format!("ref.windows.{k}")))
                .collect::<Result<Vec<_>, _>>()?;
            Some(References {
                shots: meta.shots,
                patches: mat("ref.patches")?,
                windows,
            })
        } else {
            None
        };
        let calibration_scores = match take("calibration.scores") {
            Ok(a) => a.iter().copied().collect(),
            Err(_) => Vec::new(),
        };
        let bank = Bank {
            meta,
            text,
            references,
            calibration_scores,
        };
        bank.check_shapes()?;
        Ok(bank)
    }

    /// Tensors in name order.
    fn tensors(&self) -> Vec<(String, ArrayD<f32>)> {
        let mut t = vec![
            ("text.normal".to_string(), self.text.normal.clone().into_dyn()),
            (
                "text.anomalous".to_string(),
                self.text.anomalous.clone().into_dyn(),
            ),
        ];
        if let Some(r) = &self.references {
            t.push(("ref.patches".into(), r.patches.clone().into_dyn()));
            for (k, w) in self.meta.scales.iter().zip(&r.windows) {
                t.push((format!("ref.windows.{k}"), w.clone().into_dyn()));
            }
        }
        if !self.calibration_scores.is_empty() {
            t.push((
                "calibration.scores".into(),
                Array1::from(self.calibration_scores.clone()).into_dyn(),
            ));
        }
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    }

    /// Check that tensor shapes agree with the metadata.
    pub fn check_shapes(&self) -> Result<(), Error> {
        let m = &self.meta;
        if let Some(mask) = &m.mask {
            if mask.grid != m.model.grid {
                return Err(Error::Inconsistent(format!(
                    "the patch mask is for a {0}×{0} grid, the model's is {1}×{1}",
                    mask.grid, m.model.grid
                )));
            }
            mask.patches().map_err(Error::Inconsistent)?;
        }
        let d = m.model.embed_dim;
        if self.text.normal.len() != d || self.text.anomalous.len() != d {
            return Err(Error::Inconsistent(format!(
                "text prototypes are not of width {d}"
            )));
        }
        match (&self.references, m.shots) {
            (None, 0) => {}
            (Some(r), k) if r.shots == k && k > 0 => {
                let p = m.model.grid * m.model.grid;
                if r.patches.dim() != (k * p, m.model.vision_width) {
                    return Err(Error::Inconsistent(format!(
                        "ref.patches is {:?}, expected [{}, {}]",
                        r.patches.shape(),
                        k * p,
                        m.model.vision_width
                    )));
                }
                if r.windows.len() != m.scales.len() {
                    return Err(Error::Inconsistent("one reference set per scale expected".into()));
                }
                for (scale, w) in m.scales.iter().zip(&r.windows) {
                    let n = m.model.grid.saturating_sub(*scale) / m.stride.max(1) + 1;
                    if w.dim() != (k * n * n, d) {
                        return Err(Error::Inconsistent(format!(
                            "ref.windows.{scale} is {:?}, expected [{}, {d}]",
                            w.shape(),
                            k * n * n
                        )));
                    }
                }
            }
            _ => {
                return Err(Error::Inconsistent(format!(
                    "{} shots but references do not match",
                    m.shots
                )))
            }
        }
        if !(m.threshold.is_finite()
            && m.colour_range[0].is_finite()
            && m.colour_range[1] > m.colour_range[0])
        {
            return Err(Error::Inconsistent(
                "threshold or colour range not finite/ordered".into(),
            ));
        }
        Ok(())
    }
}

/// The checksum over the metadata: its JSON text as stored, and the tensor
/// data's checksum.
fn meta_hash(meta: &str, data_sha256: &str) -> String {
    let mut h = Sha256::new();
    h.update(meta.as_bytes());
    h.update([0]);
    h.update(data_sha256.as_bytes());
    hex::encode(h.finalize())
}

fn data_hash(tensors: &[(String, ArrayD<f32>)]) -> String {
    let mut h = Sha256::new();
    for (name, a) in tensors {
        h.update(name.as_bytes());
        h.update([0]);
        for dim in a.shape() {
            h.update((*dim as u64).to_le_bytes());
        }
        for v in a.iter() {
            h.update(v.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// Summarise calibration scores and grid maps; `None` without images.
/// `maxima` are, per WinCLIP+ calibration image, `(max v_patch, max M_W)`:
/// the few-shot map's maximum from the full-image pass alone and in full,
/// for the early-exit rule (empty for zero-shot banks).
pub fn calibrate(
    scores: &[f32],
    maps: &[Array2<f32>],
    maxima: &[(f32, f32)],
    sigmas: f32,
) -> Option<Calibration> {
    if scores.is_empty() {
        return None;
    }
    let n = scores.len() as f64;
    let mean = scores.iter().map(|s| f64::from(*s)).sum::<f64>() / n;
    let var = scores.iter().map(|s| (f64::from(*s) - mean).powi(2)).sum::<f64>() / n;
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    let mut values: Vec<f32> = maps.iter().flat_map(|m| m.iter().copied()).collect();
    values.sort_by(f32::total_cmp);
    Some(Calibration {
        images: scores.len(),
        mean: mean as f32,
        std: var.sqrt() as f32,
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        p50: quantile(&sorted, 0.5),
        p95: quantile(&sorted, 0.95),
        map_median: if values.is_empty() {
            0.0
        } else {
            quantile(&values, 0.5)
        },
        map_max: values.last().copied().unwrap_or(0.0),
        sigmas,
        early_exit: EarlyExit::fit(maxima, sigmas),
    })
}

/// Fewest calibration images for an early-exit rule: a line through two
/// points leaves no residuals to size the margin from.
pub const EARLY_EXIT_MIN_IMAGES: usize = 3;

/// The early-exit rule of a WinCLIP+ bank: an upper estimate of the final
/// score from the full-image pass alone.
///
/// The final score is `(s_img + max M_W)/2` with `M_W = (v_patch + harm(v_2) +
/// harm(v_3))/3`; the full-image pass gives `s_img` and `v_patch` exactly, the
/// window terms need the window passes. On the good calibration images `max M_W`
/// is fitted as `intercept + slope · max v_patch` (least squares; the slope is
/// at least 1/3, because `M_W ≥ v_patch/3` everywhere), and `margin` is the
/// largest residual plus `sigmas` standard deviations of the residuals. Then
/// `bound = (s_img + intercept + slope · max v_patch + margin)/2`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyExit {
    /// Fitted intercept of `max M_W`.
    pub intercept: f32,
    /// Fitted slope of `max M_W` on `max v_patch` (≥ 1/3).
    pub slope: f32,
    /// Largest residual + `sigmas` standard deviations.
    pub margin: f32,
    /// Calibration images the rule was fitted on.
    pub images: usize,
}

impl EarlyExit {
    /// Fit on `(max v_patch, max M_W)` pairs; `None` below [`EARLY_EXIT_MIN_IMAGES`].
    pub fn fit(maxima: &[(f32, f32)], sigmas: f32) -> Option<Self> {
        if maxima.len() < EARLY_EXIT_MIN_IMAGES {
            return None;
        }
        let n = maxima.len() as f64;
        let (xs, ys): (Vec<f64>, Vec<f64>) =
            maxima.iter().map(|(x, y)| (f64::from(*x), f64::from(*y))).unzip();
        let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
        let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 }.max(1.0 / 3.0);
        let intercept = my - slope * mx;
        let residuals: Vec<f64> = xs
            .iter()
            .zip(&ys)
            .map(|(x, y)| y - intercept - slope * x)
            .collect();
        let mean = residuals.iter().sum::<f64>() / n;
        let std = (residuals.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        let max = residuals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let rule = Self {
            intercept: intercept as f32,
            slope: slope as f32,
            margin: (max + f64::from(sigmas) * std) as f32,
            images: maxima.len(),
        };
        [rule.intercept, rule.slope, rule.margin]
            .iter()
            .all(|v| v.is_finite())
            .then_some(rule)
    }

    /// Upper estimate of the final score from `s_img` and `max v_patch`.
    pub fn bound(&self, image_score: f32, patch_max: f32) -> f32 {
        (image_score + self.intercept + self.slope * patch_max + self.margin) / 2.0
    }
}

/// The calibration rule: every calibration image passes, and a normal
/// distribution fitted to their scores would reject at most the fraction
/// beyond `sigmas` standard deviations (0.13 % at 3σ):
/// `threshold = max(max score, mean + sigmas · std)`.
pub fn calibrated_threshold(c: &Calibration) -> f32 {
    c.max.max(c.mean + c.sigmas * c.std)
}

/// Heatmap colour scale: calm (low end) at the median map value of good parts,
/// good parts' highest value mid-scale, saturation at twice that distance.
/// Without calibration, the probability scale `[0, 1]`.
pub fn colour_range(c: Option<&Calibration>) -> [f32; 2] {
    match c {
        Some(c) if c.map_max > c.map_median => {
            [c.map_median, c.map_median + 2.0 * (c.map_max - c.map_median)]
        }
        Some(c) => [c.map_median, c.map_median + 1e-3],
        None => [0.0, 1.0],
    }
}

/// Linear-interpolated quantile of sorted values.
fn quantile(sorted: &[f32], q: f64) -> f32 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let t = (pos - lo as f64) as f32;
    sorted[lo] * (1.0 - t) + sorted[hi] * t
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    fn model() -> ModelRef {
        ModelRef {
            id: "00112233aabbccdd".into(),
            name: "tiny".into(),
            embed_sha256: "e".repeat(64),
            encoder_sha256: "c".repeat(64),
            text_sha256: "t".repeat(64),
            grid: 3,
            embed_dim: 2,
            vision_width: 4,
        }
    }

    fn bank(shots: usize) -> Bank {
        let references = (shots > 0).then(|| References {
            shots,
            patches: Array2::from_shape_fn((shots * 9, 4), |(i, j)| (i * 4 + j) as f32),
            windows: vec![Array2::from_elem((shots * 4, 2), 0.5)],
        });
        Bank {
            meta: Meta {
                format_version: FORMAT_VERSION,
                model: model(),
                object: "bottle".into(),
                prompt_set: "paper".into(),
                extra_states: vec![],
                normal_prompts: 154,
                anomalous_prompts: 88,
                shots,
                shot_files: vec![],
                tau: 0.07,
                scales: vec![2],
                stride: 1,
                threshold: 0.5,
                threshold_source: ThresholdSource::Default,
                calibration: None,
                colour_range: [0.0, 1.0],
                created: "2026-11-27T00:00:00Z".into(),
                creator: "test".into(),
                roi: None,
                mask: None,
                encoder: EncoderRecord::default(),
            },
            text: TextPrototypes {
                normal: ndarray::arr1(&[1.0, 0.0]),
                anomalous: ndarray::arr1(&[0.0, 1.0]),
            },
            references,
            calibration_scores: vec![0.1, 0.2],
        }
    }

    #[test]
    fn a_bank_holds_for_the_encoder_arithmetic_it_was_built_with() {
        use crate::model::Precision;
        let record = |precision, layers: &[&str]| EncoderRecord {
            precision,
            f32_layers: layers.iter().map(|s| s.to_string()).collect(),
        };
        let f32 = record(Precision::F32, &[]);
        let int8 = record(Precision::Int8, &["proj"]);
        let mut b = bank(1);
        // An f32 bank writes no record: its bytes and id are as before.
        let bytes = b.to_bytes().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("\"encoder\""));
        assert_eq!(Bank::from_bytes(&bytes).unwrap().meta.encoder, f32);
        b.check_encoder(&f32).unwrap();
        b.check_encoder(&record(Precision::F16, &[])).unwrap();
        let err = b.check_encoder(&int8).unwrap_err().to_string();
        assert!(
            err.contains("built with the f32 encoder") && err.contains("--precision int8"),
            "{err}"
        );
        // An int8 bank: the same layers, or refused.
        b.meta.encoder = int8.clone();
        let back = Bank::from_bytes(&b.to_bytes().unwrap()).unwrap();
        assert_eq!(back.meta.encoder, int8);
        back.check_encoder(&int8).unwrap();
        assert!(back.check_encoder(&f32).is_err());
        assert!(back
            .check_encoder(&record(Precision::Int8, &["proj", "blocks.0.mlp.c_fc"]))
            .is_err());
        assert!(back.check_encoder(&record(Precision::Bf16, &["proj"])).is_err());
    }

    #[test]
    fn banks_round_trip() {
        for k in [0, 2] {
            let b = bank(k);
            let back = Bank::from_bytes(&b.to_bytes().unwrap()).unwrap();
            assert_eq!(back, b);
            assert_eq!(back.id(), b.id());
        }
    }

    #[test]
    fn a_truncated_bank_is_a_format_error() {
        let bytes = bank(1).to_bytes().unwrap();
        let err = Bank::from_bytes(&bytes[..bytes.len() - 10]).unwrap_err();
        assert!(matches!(err, Error::Format(_)), "{err}");
    }

    #[test]
    fn flipped_tensor_bytes_fail_the_checksum() {
        let mut bytes = bank(1).to_bytes().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let err = Bank::from_bytes(&bytes).unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
    }

    /// Issue #16, finding 12: metadata edits were accepted.
    #[test]
    fn a_threshold_or_object_edited_by_hand_is_refused() {
        let bytes = bank(1).to_bytes().unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for (from, to) in [
            (r#"\"threshold\":0.5"#, r#"\"threshold\":0.9"#),
            ("bottle", "bolter"),
        ] {
            let at = text
                .find(from)
                .unwrap_or_else(|| panic!("{from} not in the header"));
            let mut edited = bytes.clone();
            edited[at..at + to.len()].copy_from_slice(to.as_bytes());
            let err = Bank::from_bytes(&edited).unwrap_err();
            assert!(matches!(err, Error::Tampered { .. }), "{from}: {err}");
            assert!(err.to_string().contains("model.threshold"), "{err}");
        }
    }

    #[test]
    fn another_model_pack_is_refused_with_advice() {
        let b = bank(0);
        let mut other = model();
        other.id = "ffffffffffffffff".into();
        let err = b.check_model(&other).unwrap_err();
        assert!(err.to_string().contains("rebuild the bank"), "{err}");
        b.check_model(&model()).unwrap();
    }

    #[test]
    fn foreign_safetensors_files_are_not_banks() {
        let data = vec![0u8; 8];
        let view = TensorView::new(Dtype::F32, vec![2], &data).unwrap();
        let bytes = safetensors::serialize(vec![("x", view)], None).unwrap();
        assert!(matches!(Bank::from_bytes(&bytes), Err(Error::Version(_))));
    }

    #[test]
    fn calibration_rule_takes_the_stricter_of_max_and_three_sigma() {
        let scores = [0.50, 0.51, 0.52, 0.53, 0.54];
        let c = calibrate(&scores, &[], &[], 3.0).unwrap();
        let t = calibrated_threshold(&c);
        let std = (0.0002f32).sqrt();
        assert!((t - (0.52 + 3.0 * std)).abs() < 1e-5, "{t}");
        // One outlier above mean + 3σ: the max wins so every calibration image passes.
        let c = calibrate(&[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9], &[], &[], 3.0).unwrap();
        assert_eq!(calibrated_threshold(&c), 0.9);
        assert!(calibrate(&[], &[], &[], 3.0).is_none());
    }

    #[test]
    fn early_exit_rule_fits_the_window_share_and_bounds_every_calibration_image() {
        // max M_W = 0.1 + 0.5 · max v_patch, with residuals +0.01, −0.01, 0, 0.
        let maxima = [(0.2, 0.21), (0.4, 0.29), (0.6, 0.40), (0.8, 0.50)];
        let rule = EarlyExit::fit(&maxima, 3.0).unwrap();
        assert!((rule.slope - 0.5).abs() < 0.05, "{rule:?}");
        for (v, m) in maxima {
            // Every calibration image's final score is at most its bound.
            assert!(rule.bound(0.3, v) >= (0.3 + m) / 2.0, "{rule:?}");
        }
        assert_eq!(rule.images, 4);
        assert_eq!(
            calibrate(&[0.1; 4], &[], &maxima, 3.0).unwrap().early_exit,
            Some(rule)
        );
        // M_W ≥ v_patch/3: a fitted slope below 1/3 is raised to it.
        let flat = EarlyExit::fit(&[(0.2, 0.3), (0.4, 0.3), (0.6, 0.3)], 3.0).unwrap();
        assert!((flat.slope - 1.0 / 3.0).abs() < 1e-6, "{flat:?}");
        // Too few images, or a zero-shot bank: no rule.
        assert_eq!(EarlyExit::fit(&maxima[..2], 3.0), None);
        assert_eq!(calibrate(&[0.1; 4], &[], &[], 3.0).unwrap().early_exit, None);
    }

    #[test]
    fn colour_range_puts_good_parts_mid_scale() {
        let maps = vec![Array2::from_shape_vec((1, 3), vec![0.2, 0.3, 0.4]).unwrap()];
        let c = calibrate(&[0.5], &maps, &[], 3.0).unwrap();
        let [lo, hi] = colour_range(Some(&c));
        assert!((lo - 0.3).abs() < 1e-6 && (hi - 0.5).abs() < 1e-6, "{lo} {hi}");
        assert_eq!(colour_range(None), [0.0, 1.0]);
    }
}
