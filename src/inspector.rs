//! The inspection pipeline: image → features (model) → scores and map (winclip).
//!
//! This is the glue between the tract runtime and the pure algorithm, shared by
//! `inspect`, `bank`, the daemon and the evaluation tools. It owns no I/O
//! beyond what callers hand it: decoded images in, numbers and maps out.

use std::time::Instant;

use image::RgbImage;
use ndarray::Array2;
use serde::Serialize;

use crate::bank::{self, Bank, EncoderRecord, FileRef, Meta, ModelRef, ThresholdSource};
use crate::model::{ModelPack, TextModel, VisionModel};
use crate::winclip::{self, upsample, Config, Features, Outcome, References, Scorer, TemplateSet, WindowSet};

/// Anything that can fail while inspecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model runtime failed.
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    /// Scoring inputs did not fit.
    #[error(transparent)]
    Scoring(#[from] winclip::Error),
    /// The bank is unusable.
    #[error(transparent)]
    Bank(#[from] bank::Error),
    /// The score or map is not a finite number (never seen; guarded so a
    /// verdict is never taken on NaN).
    #[error("the anomaly score is not a finite number")]
    NonFinite,
    /// The bank's region of interest does not fit the picture.
    #[error("{0} (the bank was built with it: use pictures of that size, or rebuild the bank)")]
    Roi(String),
    /// The bank cannot be rebuilt as recorded.
    #[error("the bank cannot be rebuilt: {0}")]
    Rebuild(String),
}

/// Pass or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Score at or below the threshold.
    Pass,
    /// Score above the threshold.
    Fail,
}

impl Verdict {
    /// `fail` when `score > threshold`.
    pub fn from_score(score: f32, threshold: f32) -> Self {
        if score > threshold {
            Verdict::Fail
        } else {
            Verdict::Pass
        }
    }
}

/// Milliseconds spent per stage of one inspection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Resize + normalise.
    pub preprocess_ms: f64,
    /// Token map + full-image encoder pass.
    pub image_ms: f64,
    /// Window encoder passes, per scale (`[scale, ms]`).
    pub windows_ms: Vec<(usize, f64)>,
    /// Class scores, aggregation, few-shot association.
    pub scoring_ms: f64,
    /// Upsampling the map to the model input size.
    pub upsample_ms: f64,
}

impl Timings {
    /// Sum of all stages.
    pub fn total_ms(&self) -> f64 {
        self.preprocess_ms
            + self.image_ms
            + self.windows_ms.iter().map(|(_, t)| t).sum::<f64>()
            + self.scoring_ms
            + self.upsample_ms
    }
}

/// The result of inspecting one image.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Scores and grid maps.
    pub outcome: Outcome,
    /// Pass / fail against `threshold`.
    pub verdict: Verdict,
    /// Threshold applied.
    pub threshold: f32,
    /// Final anomaly map upsampled to the model input size (240×240).
    pub map: Array2<f32>,
    /// Time per stage.
    pub timings: Timings,
    /// Passed by the early-exit cascade from the full-image pass alone: the
    /// window passes did not run; `outcome` is the prescore's (see
    /// [`Scorer::prescore`]) with the score bound as its score.
    pub early_exit: bool,
    /// The score bound from the full-image pass, when the cascade is on.
    pub score_bound: Option<f32>,
    /// Where in the picture the bank's region of interest lies: `map`
    /// covers it alone. `None`: the whole picture.
    pub roi: Option<crate::roi::Rect>,
}

/// Milliseconds since `t`.
pub(crate) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The arithmetic of `vision`'s encoder as recorded in banks: what it runs
/// (bf16 on a CPU without bf16 dot products runs f32).
pub fn encoder_record(vision: &VisionModel) -> EncoderRecord {
    match vision.encoder_numerics() {
        Some(n) if n.running.lowers_linear_layers() => EncoderRecord {
            precision: n.running,
            f32_layers: n.kept,
        },
        Some(n) => EncoderRecord {
            precision: n.running,
            f32_layers: Vec::new(),
        },
        None => EncoderRecord::default(),
    }
}

/// The identity of `pack` as recorded in banks.
pub fn model_ref(pack: &ModelPack) -> ModelRef {
    let m = pack.manifest();
    let a = pack.architecture();
    ModelRef {
        id: pack.id().to_string(),
        name: m.source.model.clone(),
        embed_sha256: m.files.embed.sha256.clone(),
        encoder_sha256: m.files.encoder.sha256.clone(),
        text_sha256: m.files.text.sha256.clone(),
        grid: a.grid,
        embed_dim: a.embed_dim,
        vision_width: a.vision_width,
    }
}

/// Run the vision encoder on an image: full image, then every window scale.
pub fn extract(
    vision: &VisionModel,
    sets: &[WindowSet],
    img: &RgbImage,
) -> Result<(Features, Timings), Error> {
    let mut timings = Timings::default();
    let (mut features, token_map) = image_pass(vision, img, &mut timings)?;
    window_passes(vision, sets, &token_map, &mut features, &mut timings)?;
    Ok((features, timings))
}

/// Preprocessing and the full-image pass: features without windows, and the
/// token map the window passes start from.
fn image_pass(
    vision: &VisionModel,
    img: &RgbImage,
    timings: &mut Timings,
) -> Result<(Features, Array2<f32>), Error> {
    let t = Instant::now();
    let pixels = vision.preprocess(img);
    timings.preprocess_ms = ms(t);
    let t = Instant::now();
    let f = vision.image_features(&pixels)?;
    timings.image_ms = ms(t);
    let patches = f.patch_features().to_owned();
    let features = Features {
        embedding: f.embedding,
        patches,
        windows: Vec::new(),
    };
    Ok((features, f.token_map))
}

fn window_passes(
    vision: &VisionModel,
    sets: &[WindowSet],
    token_map: &Array2<f32>,
    features: &mut Features,
    timings: &mut Timings,
) -> Result<(), Error> {
    for set in sets {
        let t = Instant::now();
        features.windows.push(vision.window_embeddings(token_map, set)?);
        timings.windows_ms.push((set.scale(), ms(t)));
    }
    Ok(())
}

/// A vision model and a bank, ready to inspect images.
///
/// Cloning is cheap for the model (its plans and weights are shared), so a
/// new bank or threshold never loads a second model beside the first.
#[derive(Debug, Clone)]
pub struct Inspector {
    vision: VisionModel,
    model: ModelRef,
    scorer: Scorer,
    bank: Bank,
    bank_id: String,
    model_id: String,
    threshold: f32,
    early_exit: Option<ExitRule>,
}

/// How the early-exit cascade bounds the final score from the full-image pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExitRule {
    /// Zero-shot: the score is `s_img`, known exactly.
    Exact,
    /// WinCLIP+: the bank's calibrated upper estimate.
    Calibrated(bank::EarlyExit),
}

impl ExitRule {
    /// The score bound for a prescore outcome.
    fn bound(&self, pre: &Outcome) -> f32 {
        match (self, pre.fewshot_max) {
            (ExitRule::Calibrated(rule), Some(patch_max)) => rule.bound(pre.image_score, patch_max),
            _ => pre.score,
        }
    }
}

impl std::fmt::Display for ExitRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitRule::Exact => f.write_str("exact (zero-shot: the score is s_img)"),
            ExitRule::Calibrated(r) => write!(
                f,
                "(s_img + {:.5} + {:.4} * max v_patch + margin {:.5})/2, fitted on {} good images",
                r.intercept, r.slope, r.margin, r.images
            ),
        }
    }
}

/// Why the early-exit cascade cannot be switched on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the bank has no early-exit rule: rebuild it with at least {min} calibration images \
     (`winclip-edge bank ... --calibrate DIR`), or switch early exit off",
    min = bank::EARLY_EXIT_MIN_IMAGES
)]
pub struct NoExitRule;

impl Inspector {
    /// Check that `bank` belongs to `pack` and prepare the scorer.
    pub fn new(pack: &ModelPack, vision: VisionModel, bank: Bank) -> Result<Self, Error> {
        Self::with_model(vision, model_ref(pack), bank)
    }

    /// [`Inspector::new`] for a model whose pack is described by `model`.
    fn with_model(vision: VisionModel, model: ModelRef, bank: Bank) -> Result<Self, Error> {
        bank.check_model(&model)?;
        bank.check_encoder(&encoder_record(&vision))?;
        let scorer = masked(
            Scorer::new(bank.config(), model.grid, &bank.text, bank.references.as_ref())?,
            bank.meta.mask.as_ref(),
        )?;
        Ok(Self {
            vision,
            scorer,
            bank_id: bank.id(),
            model_id: model.id.clone(),
            model,
            threshold: bank.meta.threshold,
            early_exit: None,
            bank,
        })
    }

    /// An inspector for `bank` with this one's model (shared, not loaded
    /// again; the pack is not read): the bank's threshold, early exit off.
    pub fn with_bank(&self, bank: Bank) -> Result<Self, Error> {
        Self::with_model(self.vision.clone(), self.model.clone(), bank)
    }

    /// Apply a threshold override (`None`: the bank's) and switch the
    /// early-exit cascade; on error nothing changes.
    pub fn configure(&mut self, threshold: Option<f32>, early_exit: bool) -> Result<(), NoExitRule> {
        self.set_early_exit(early_exit)?;
        self.threshold = threshold.unwrap_or(self.bank.meta.threshold);
        Ok(())
    }

    /// The identity of the model pack, as banks record it.
    pub fn model_ref(&self) -> &ModelRef {
        &self.model
    }

    /// The rule the early-exit cascade would use: exact for a zero-shot bank,
    /// the bank's calibrated one for WinCLIP+ (`None`: not calibrated for it).
    pub fn early_exit_rule(&self) -> Option<ExitRule> {
        if self.scorer.is_few_shot() {
            let rule = self.bank.meta.calibration.as_ref()?.early_exit?;
            Some(ExitRule::Calibrated(rule))
        } else {
            Some(ExitRule::Exact)
        }
    }

    /// Switch the early-exit cascade on or off. On: an image whose score bound
    /// from the full-image pass is at or below the threshold passes at once;
    /// every other image gets the full pipeline.
    pub fn set_early_exit(&mut self, on: bool) -> Result<(), NoExitRule> {
        self.early_exit = if on {
            Some(self.early_exit_rule().ok_or(NoExitRule)?)
        } else {
            None
        };
        Ok(())
    }

    /// Override the bank's threshold.
    pub fn set_threshold(&mut self, threshold: f32) {
        self.threshold = threshold;
    }

    /// Threshold in use.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Where the map counts as anomalous (regions): above the highest map
    /// value of any good calibration picture, so that a region is a place
    /// no good part showed; without calibration, the image threshold (the
    /// final map and score are on one scale).
    pub fn pixel_threshold(&self) -> f32 {
        match &self.bank.meta.calibration {
            Some(c) => c.map_max,
            None => self.threshold,
        }
    }

    /// The bank.
    pub fn bank(&self) -> &Bank {
        &self.bank
    }

    /// The bank's id.
    pub fn bank_id(&self) -> &str {
        &self.bank_id
    }

    /// The model pack's id.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The vision model.
    pub fn vision(&self) -> &VisionModel {
        &self.vision
    }

    /// A new bank like this one's, from other pictures: same text prototypes
    /// (the text encoder is not needed), prompts, algorithm settings and
    /// region of interest; new references from `shots`, the calibration
    /// re-scored and the threshold and early-exit rule fitted again (an
    /// explicit threshold stays). What teaching on the device runs.
    pub fn rebuild(&self, shots: &[(FileRef, RgbImage)], calibration: &[RgbImage]) -> Result<Bank, Error> {
        let m = &self.bank.meta;
        let spec = BankSpec {
            object: m.object.clone(),
            prompt_set: m.prompt_set.parse().map_err(Error::Rebuild)?,
            extra_states: m.extra_states.clone(),
            config: self.bank.config(),
            threshold: (m.threshold_source == ThresholdSource::Explicit).then_some(m.threshold),
            sigmas: m.calibration.as_ref().map_or(bank::DEFAULT_SIGMAS, |c| c.sigmas),
            roi: m.roi,
            mask: m.mask.clone(),
        };
        build_for(
            &self.model,
            &self.vision,
            self.bank.text.clone(),
            &spec,
            shots,
            calibration,
        )
    }

    /// Inspect one decoded image.
    pub fn inspect(&self, img: &RgbImage) -> Result<Inspection, Error> {
        self.inspect_reduced(img, 1, img.dimensions())
    }

    /// Inspect `img`, a `width` × `height` picture decoded `factor` times
    /// smaller (JPEG DCT scaling): the region of interest is placed in the
    /// picture's own pixels, and so is the [`Inspection::roi`] returned.
    pub fn inspect_reduced(
        &self,
        img: &RgbImage,
        factor: u32,
        (width, height): (u32, u32),
    ) -> Result<Inspection, Error> {
        match self.bank.meta.roi {
            None => self.inspect_whole(img),
            Some(roi) => {
                let rect = roi.rect(width, height).map_err(Error::Roi)?;
                let r = rect.reduced(factor, img.width(), img.height());
                let part = image::imageops::crop_imm(img, r.x, r.y, r.width, r.height).to_image();
                let mut ins = self.inspect_whole(&part)?;
                ins.roi = Some(rect);
                Ok(ins)
            }
        }
    }

    fn inspect_whole(&self, img: &RgbImage) -> Result<Inspection, Error> {
        let mut timings = Timings::default();
        let (mut features, token_map) = image_pass(&self.vision, img, &mut timings)?;
        let mut score_bound = None;
        let mut prescore = None;
        if let Some(rule) = self.early_exit {
            let t = Instant::now();
            let mut pre = self.scorer.prescore(&features)?;
            // The bound stands in for the score: comparable with the
            // threshold and with full scores, and never below the latter on
            // the calibration images.
            pre.score = rule.bound(&pre);
            timings.scoring_ms = ms(t);
            score_bound = Some(pre.score);
            if pre.score <= self.threshold {
                return self.finish(pre, timings, score_bound, true);
            }
            prescore = Some(pre);
        }
        let sets = self.scorer.window_sets();
        window_passes(&self.vision, sets, &token_map, &mut features, &mut timings)?;
        let t = Instant::now();
        let outcome = match &prescore {
            Some(pre) => self.scorer.score_after(&features, pre)?,
            None => self.scorer.score(&features)?,
        };
        timings.scoring_ms += ms(t);
        self.finish(outcome, timings, score_bound, false)
    }

    fn finish(
        &self,
        outcome: Outcome,
        mut timings: Timings,
        score_bound: Option<f32>,
        early_exit: bool,
    ) -> Result<Inspection, Error> {
        if !outcome.score.is_finite() || outcome.map.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite);
        }
        let t = Instant::now();
        let size = self.vision.architecture().image_size;
        let map = upsample::bilinear(outcome.map.view(), size, size);
        timings.upsample_ms = ms(t);
        Ok(Inspection {
            verdict: Verdict::from_score(outcome.score, self.threshold),
            threshold: self.threshold,
            outcome,
            map,
            timings,
            early_exit,
            score_bound,
            roi: None,
        })
    }
}

/// `scorer` inspecting only the patches `mask` marks (`None`: all of them).
fn masked(scorer: Scorer, mask: Option<&crate::roi::PatchMask>) -> Result<Scorer, Error> {
    let patches = mask.map(|m| m.patches()).transpose().map_err(Error::Roi)?;
    Ok(scorer.with_mask(patches.as_deref())?)
}

/// What to put in a new bank.
#[derive(Debug, Clone)]
pub struct BankSpec {
    /// Object name for the prompts.
    pub object: String,
    /// Template set.
    pub prompt_set: TemplateSet,
    /// Extra anomalous states.
    pub extra_states: Vec<String>,
    /// Algorithm settings.
    pub config: Config,
    /// Explicit threshold (overrides calibration).
    pub threshold: Option<f32>,
    /// σ multiplier of the calibration rule.
    pub sigmas: f32,
    /// The region of interest the shots, the calibration pictures and
    /// every picture judged with the bank are cropped to.
    pub roi: Option<crate::roi::Roi>,
    /// The patches of the (cropped) picture that are inspected.
    pub mask: Option<crate::roi::PatchMask>,
}

impl BankSpec {
    /// Defaults for `object`: paper prompts, τ 0.07, scales 2 and 3, stride 1, 3σ.
    pub fn new(object: &str) -> Self {
        Self {
            object: object.to_string(),
            prompt_set: TemplateSet::Paper,
            extra_states: Vec::new(),
            config: Config::default(),
            threshold: None,
            sigmas: bank::DEFAULT_SIGMAS,
            roi: None,
            mask: None,
        }
    }
}

/// Build a bank: text prototypes from the prompt ensemble, references from `shots`
/// (named images; empty = zero-shot), then calibration on `calibration` images.
pub fn build_bank(
    pack: &ModelPack,
    vision: &VisionModel,
    text: &TextModel,
    spec: &BankSpec,
    shots: &[(FileRef, RgbImage)],
    calibration: &[RgbImage],
) -> Result<Bank, Error> {
    let ens = winclip::ensemble(&spec.object, spec.prompt_set, &spec.extra_states);
    let prototypes =
        winclip::TextPrototypes::from_embeddings(&text.embed(&ens.normal)?, &text.embed(&ens.anomalous)?)?;
    build_bank_from_prototypes(pack, vision, prototypes, spec, shots, calibration)
}

/// [`build_bank`] with the text side already done: `prototypes` must be the
/// pack's text encoder's prototypes for `spec`'s prompt ensemble. For callers
/// that have them and want the text encoder out of memory.
pub fn build_bank_from_prototypes(
    pack: &ModelPack,
    vision: &VisionModel,
    prototypes: winclip::TextPrototypes,
    spec: &BankSpec,
    shots: &[(FileRef, RgbImage)],
    calibration: &[RgbImage],
) -> Result<Bank, Error> {
    build_for(&model_ref(pack), vision, prototypes, spec, shots, calibration)
}

/// [`build_bank_from_prototypes`] for the pack `model` describes.
fn build_for(
    model: &ModelRef,
    vision: &VisionModel,
    prototypes: winclip::TextPrototypes,
    spec: &BankSpec,
    shots: &[(FileRef, RgbImage)],
    calibration: &[RgbImage],
) -> Result<Bank, Error> {
    let ens = winclip::ensemble(&spec.object, spec.prompt_set, &spec.extra_states);
    let grid = model.grid;
    // Every picture of the bank is cropped as every picture judged with it will be.
    let crop = |img: &RgbImage| -> Result<RgbImage, Error> {
        match spec.roi {
            Some(roi) => Ok(roi.crop(img).map_err(Error::Roi)?.0),
            None => Ok(img.clone()),
        }
    };
    let shots = shots
        .iter()
        .map(|(f, img)| Ok((f.clone(), crop(img)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let calibration = calibration.iter().map(crop).collect::<Result<Vec<_>, _>>()?;
    let (shots, calibration) = (&shots[..], &calibration[..]);
    // Validates the configuration against the grid before any heavy work.
    let zero_shot = Scorer::new(spec.config.clone(), grid, &prototypes, None)?;
    let references = if shots.is_empty() {
        None
    } else {
        let feats = shots
            .iter()
            .map(|(_, img)| extract(vision, zero_shot.window_sets(), img).map(|(f, _)| f))
            .collect::<Result<Vec<_>, _>>()?;
        Some(References::from_features(&feats)?)
    };
    let scorer = masked(
        Scorer::new(spec.config.clone(), grid, &prototypes, references.as_ref())?,
        spec.mask.as_ref(),
    )?;
    let mut scores = Vec::with_capacity(calibration.len());
    let mut maxima = Vec::with_capacity(calibration.len());
    let mut maps = Vec::with_capacity(calibration.len());
    for img in calibration {
        let (f, _) = extract(vision, scorer.window_sets(), img)?;
        let pre = scorer.prescore(&f)?;
        let o = scorer.score_after(&f, &pre)?;
        scores.push(o.score);
        if let (Some(patch), Some(full)) = (pre.fewshot_max, o.fewshot_max) {
            maxima.push((patch, full));
        }
        maps.push(o.map);
    }
    let calib = bank::calibrate(&scores, &maps, &maxima, spec.sigmas);
    let (threshold, threshold_source) = match (spec.threshold, &calib) {
        (Some(t), _) => (t, ThresholdSource::Explicit),
        (None, Some(c)) => (bank::calibrated_threshold(c), ThresholdSource::Calibration),
        (None, None) => (bank::DEFAULT_THRESHOLD, ThresholdSource::Default),
    };
    let bank = Bank {
        meta: Meta {
            format_version: bank::FORMAT_VERSION,
            model: model.clone(),
            object: spec.object.clone(),
            prompt_set: spec.prompt_set.name().to_string(),
            extra_states: spec.extra_states.clone(),
            normal_prompts: ens.normal.len(),
            anomalous_prompts: ens.anomalous.len(),
            shots: shots.len(),
            shot_files: shots.iter().map(|(f, _)| f.clone()).collect(),
            tau: spec.config.tau,
            scales: spec.config.scales.clone(),
            stride: spec.config.stride,
            threshold,
            threshold_source,
            colour_range: bank::colour_range(calib.as_ref()),
            calibration: calib,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            creator: concat!("winclip-edge ", env!("CARGO_PKG_VERSION")).to_string(),
            roi: spec.roi,
            mask: spec.mask.clone(),
            encoder: encoder_record(vision),
        },
        text: prototypes,
        references,
        calibration_scores: scores,
    };
    bank.check_shapes()?;
    Ok(bank)
}
