//! `bench --precision f16` / `--device cuda`: what reduced precision or
//! another device does to the numbers — the same pictures and bank through
//! the f32 CPU encoder and the one measured.

use image::RgbImage;
use serde::Serialize;

use crate::inspector;
use crate::model::{ModelPack, Precision, VisionModel};
use crate::winclip::{Config, Outcome, References, Scorer, TextPrototypes};

/// Largest differences between the two encoders over the bench pictures.
#[derive(Debug, Serialize)]
pub(super) struct PrecisionReport {
    /// The encoder measured: "f16 on cpu", "f32 on cuda".
    pub measured: String,
    pub pictures: usize,
    pub shots: usize,
    /// Final image score.
    pub max_score_diff: f32,
    /// Zero-shot image score `s_img`.
    pub max_image_score_diff: f32,
    /// Final anomaly map on the patch grid.
    pub max_map_diff: f32,
    /// Spread (max − min) of the f32 maps, to read the difference against.
    pub map_range: f32,
    /// Pearson correlation of every map value, both encoders.
    pub map_pearson_r: f64,
}

fn outcomes(
    vision: &VisionModel,
    config: &Config,
    prototypes: &TextPrototypes,
    shots: &[RgbImage],
    queries: &[RgbImage],
) -> anyhow::Result<Vec<Outcome>> {
    let grid = vision.architecture().grid;
    let zero = Scorer::new(config.clone(), grid, prototypes, None)?;
    let sets = zero.window_sets();
    let refs = shots
        .iter()
        .map(|img| Ok(inspector::extract(vision, sets, img)?.0))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let refs = if refs.is_empty() {
        None
    } else {
        Some(References::from_features(&refs)?)
    };
    let scorer = Scorer::new(config.clone(), grid, prototypes, refs.as_ref())?;
    queries
        .iter()
        .map(|img| Ok(scorer.score(&inspector::extract(vision, sets, img)?.0)?))
        .collect()
}

/// Compare `ours`, the outcomes of `queries` against a bank of `shots`
/// (none: zero-shot) from the timed run of the encoder `measured`, with the
/// same pictures and bank through a freshly loaded f32 CPU encoder; report
/// the largest differences.
pub(super) fn compare(
    pack: &ModelPack,
    measured: String,
    ours: &[Outcome],
    config: &Config,
    prototypes: &TextPrototypes,
    shots: &[RgbImage],
    queries: &[RgbImage],
) -> anyhow::Result<PrecisionReport> {
    eprintln!("{measured}: scoring the pictures again with the f32 encoder on the CPU...");
    let f32_vision = VisionModel::load_with(pack, Precision::F32)?;
    let reference = outcomes(&f32_vision, config, prototypes, shots, queries)?;
    let mut r = PrecisionReport {
        measured,
        pictures: queries.len(),
        shots: shots.len(),
        max_score_diff: 0.0,
        max_image_score_diff: 0.0,
        max_map_diff: 0.0,
        map_range: 0.0,
        map_pearson_r: f64::NAN,
    };
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (a, b) in ours.iter().zip(&reference) {
        xs.extend(a.map.iter().map(|&v| f64::from(v)));
        ys.extend(b.map.iter().map(|&v| f64::from(v)));
        r.max_score_diff = r.max_score_diff.max((a.score - b.score).abs());
        r.max_image_score_diff = r.max_image_score_diff.max((a.image_score - b.image_score).abs());
        for (x, y) in a.map.iter().zip(&b.map) {
            r.max_map_diff = r.max_map_diff.max((x - y).abs());
            lo = lo.min(*y);
            hi = hi.max(*y);
        }
    }
    r.map_range = hi - lo;
    r.map_pearson_r = pearson(&xs, &ys);
    Ok(r)
}

/// Pearson's r of two equally long samples (NaN when either is constant).
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Print the precision section of the bench report.
pub(super) fn print(r: &PrecisionReport) {
    println!(
        "\n{} vs f32 on the cpu, the same {} picture(s), {}-shot bank: max |score diff| {:.2e}, \
         max |s_img diff| {:.2e}, max |map diff| {:.2e} (f32 maps span {:.3}), map Pearson r {:.6}",
        r.measured,
        r.pictures,
        r.shots,
        r.max_score_diff,
        r.max_image_score_diff,
        r.max_map_diff,
        r.map_range,
        r.map_pearson_r
    );
}
