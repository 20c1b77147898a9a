//! `bench --precision f16`: what reduced precision does to the numbers — the
//! same pictures and bank through the f32 and the reduced-precision encoder.

use image::RgbImage;
use serde::Serialize;

use crate::inspector;
use crate::model::{ModelPack, Precision, VisionModel};
use crate::winclip::{Config, Outcome, References, Scorer, TextPrototypes};

/// Largest differences between the two precisions over the bench pictures.
#[derive(Debug, Serialize)]
pub(super) struct PrecisionReport {
    pub precision: Precision,
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

/// Compare `ours`, the reduced-precision outcomes of `queries` against a bank
/// of `shots` (none: zero-shot) from the timed run, with the same pictures and
/// bank through a freshly loaded f32 encoder; report the largest differences.
pub(super) fn compare(
    pack: &ModelPack,
    precision: Precision,
    ours: &[Outcome],
    config: &Config,
    prototypes: &TextPrototypes,
    shots: &[RgbImage],
    queries: &[RgbImage],
) -> anyhow::Result<PrecisionReport> {
    eprintln!("precision: scoring the pictures again with the f32 encoder...");
    let f32_vision = VisionModel::load_with(pack, Precision::F32)?;
    let reference = outcomes(&f32_vision, config, prototypes, shots, queries)?;
    let mut r = PrecisionReport {
        precision,
        pictures: queries.len(),
        shots: shots.len(),
        max_score_diff: 0.0,
        max_image_score_diff: 0.0,
        max_map_diff: 0.0,
        map_range: 0.0,
    };
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for (a, b) in ours.iter().zip(&reference) {
        r.max_score_diff = r.max_score_diff.max((a.score - b.score).abs());
        r.max_image_score_diff = r.max_image_score_diff.max((a.image_score - b.image_score).abs());
        for (x, y) in a.map.iter().zip(&b.map) {
            r.max_map_diff = r.max_map_diff.max((x - y).abs());
            lo = lo.min(*y);
            hi = hi.max(*y);
        }
    }
    r.map_range = hi - lo;
    Ok(r)
}

/// Print the precision section of the bench report.
pub(super) fn print(r: &PrecisionReport) {
    println!(
        "\n{} vs f32 on the same {} picture(s), {}-shot bank: max |score diff| {:.2e}, max |s_img diff| {:.2e}, \
         max |map diff| {:.2e} (f32 maps span {:.3})",
        r.precision, r.pictures, r.shots, r.max_score_diff, r.max_image_score_diff, r.max_map_diff, r.map_range
    );
}
