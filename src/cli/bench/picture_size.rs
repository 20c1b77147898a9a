//! `bench --picture-size 1280x1024,2448x2048,5472x3648`: the work around the
//! network at camera resolution — JPEG decode, the resize to the model's
//! input, the heatmap thumbnail — and what decoding a JPEG at reduced DCT
//! scale saves and changes.

use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use image::{Rgb, RgbImage};
use ndarray::Array2;
use serde::Serialize;

use crate::bench::median;
use crate::heatmap::{self, Legend};
use crate::imageio::{self, Limits};
use crate::inspector::{self, ms};
use crate::model::VisionModel;
use crate::synth::{Generator, Scene};
use crate::winclip::Scorer;

/// A camera's picture size, `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PictureSize {
    pub width: u32,
    pub height: u32,
}

impl FromStr for PictureSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not WIDTHxHEIGHT (e.g. 2448x2048)");
        let (w, h) = s.split_once(['x', 'X', '×']).ok_or_else(bad)?;
        let side = |v: &str| match v.trim().parse::<u32>() {
            Ok(n) if (1..=imageio::MAX_SIDE).contains(&n) => Ok(n),
            _ => Err(format!(
                "{bad} (each side 1 to {})",
                imageio::MAX_SIDE,
                bad = bad()
            )),
        };
        let size = PictureSize {
            width: side(w)?,
            height: side(h)?,
        };
        let pixels = u64::from(size.width) * u64::from(size.height);
        if pixels > Limits::DEFAULT.max_pixels {
            return Err(format!(
                "{s}: {pixels} pixels, more than the station accepts ({})",
                Limits::DEFAULT.max_pixels
            ));
        }
        Ok(size)
    }
}

/// The numbers of one picture size (medians, milliseconds).
#[derive(Debug, Serialize)]
pub(super) struct PictureReport {
    pub size: PictureSize,
    /// The synthetic JPEG's size (quality 90, with sensor-like noise).
    pub jpeg_bytes: usize,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    /// `decode_ms + preprocess_ms`: what the station spends before the network.
    pub decode_preprocess_ms: f64,
    /// How many times smaller each side was decoded (DCT scaling, shorter
    /// side kept at 2 × the model's input).
    pub reduced_factor: u32,
    pub reduced_decode_ms: f64,
    pub reduced_preprocess_ms: f64,
    pub reduced_decode_preprocess_ms: f64,
    /// Largest difference of the model's input, reduced against full decode,
    /// in normalised units (one grey level ≈ 0.015).
    pub reduced_input_max_diff: f32,
    /// Mean absolute difference of the model's input, normalised units.
    pub reduced_input_mean_diff: f32,
    /// Zero-shot image score and map, reduced against full decode.
    pub reduced_score_diff: f32,
    pub reduced_map_max_diff: f32,
    /// The heatmap as the station publishes it: explained, thumbnail side
    /// 256, JPEG.
    pub heatmap_ms: f64,
}

/// A synthetic part at camera resolution: the generator's scene enlarged,
/// with sensor-like grain (σ ≈ 8 grey levels of luminance, ≈ 3 of colour)
/// so that the JPEG is as dense as a camera's (≈ 2.5 bits a pixel at
/// quality 90, 7 MB at 20 MP) and its decode as slow.
fn picture(size: PictureSize, seed: u64) -> RgbImage {
    let base = Generator::new(Scene::Object, 256, 1).sample(seed, None).image;
    let mut img = image::imageops::resize(
        &base,
        size.width,
        size.height,
        image::imageops::FilterType::Triangle,
    );
    let mut state = (seed as u32).wrapping_mul(2_654_435_761) | 1;
    let mut uniform = |half: i32| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % (2 * half as u32 + 1)) as i32 - half
    };
    for p in img.pixels_mut() {
        let luma = uniform(8) + uniform(8) + uniform(8);
        *p = Rgb(p
            .0
            .map(|c| (i32::from(c) + luma + uniform(5)).clamp(0, 255) as u8));
    }
    img
}

fn max_and_mean_diff(a: &ndarray::Array3<f32>, b: &ndarray::Array3<f32>) -> (f32, f32) {
    let (mut max, mut sum) = (0f32, 0f64);
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    (max, (sum / a.len().max(1) as f64) as f32)
}

/// Time `repeats` rounds of each stage at every size in `sizes`.
pub(super) fn run(
    vision: &VisionModel,
    scorer: &Scorer,
    sizes: &[PictureSize],
    repeats: usize,
) -> anyhow::Result<Vec<PictureReport>> {
    let limits = Limits::DEFAULT;
    let input = vision.architecture().image_size as u32;
    let path = Path::new("bench.jpg");
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        eprintln!("picture size {}x{}: making the JPEG...", size.width, size.height);
        let jpeg = heatmap::jpeg(&picture(size, 500 + i as u64), 90)?;
        let (mut dec, mut pre, mut rdec, mut rpre, mut heat) = (vec![], vec![], vec![], vec![], vec![]);
        let mut last = None;
        for _ in 0..repeats.max(1) {
            let t = Instant::now();
            let full = imageio::decode_rgb_within(&jpeg, path, &limits)?;
            dec.push(ms(t));
            let t = Instant::now();
            let x = vision.preprocess(&full);
            pre.push(ms(t));
            let t = Instant::now();
            let reduced = imageio::decode_rgb_reduced(&jpeg, path, &limits, input)?;
            rdec.push(ms(t));
            let t = Instant::now();
            let rx = vision.preprocess(&reduced.image);
            rpre.push(ms(t));

            let mut map = Array2::from_elem((15, 15), 0.2f32);
            map[[7, 4]] = 0.9;
            let regions = [[size.width / 4, size.height / 3, size.width / 3, size.height / 2]];
            let legend = Legend {
                failed: true,
                score: 0.9,
                threshold: 0.5,
                pixel_threshold: 0.6,
                regions: &regions,
                argmax: [size.width / 4, size.height / 2],
                roi: None,
                picture: None,
            };
            let t = Instant::now();
            let shown = heatmap::explained(
                &full,
                map.view(),
                [0.0, 1.0],
                &legend,
                crate::config::DEFAULT_HEATMAP_SIDE,
            );
            std::hint::black_box(heatmap::jpeg(&shown, crate::config::DEFAULT_HEATMAP_QUALITY)?);
            heat.push(ms(t));
            last = Some((full, x, reduced, rx));
        }
        let Some((full, x, reduced, rx)) = last else {
            continue;
        };
        let (max_diff, mean_diff) = max_and_mean_diff(&x, &rx);
        let sets = scorer.window_sets();
        let score = |img: &RgbImage| -> anyhow::Result<_> {
            Ok(scorer.score(&inspector::extract(vision, sets, img)?.0)?)
        };
        let (a, b) = (score(&full)?, score(&reduced.image)?);
        let map_diff = a
            .map
            .iter()
            .zip(b.map.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
        out.push(PictureReport {
            size,
            jpeg_bytes: jpeg.len(),
            decode_ms: med(&dec),
            preprocess_ms: med(&pre),
            decode_preprocess_ms: med(&dec) + med(&pre),
            reduced_factor: reduced.factor,
            reduced_decode_ms: med(&rdec),
            reduced_preprocess_ms: med(&rpre),
            reduced_decode_preprocess_ms: med(&rdec) + med(&rpre),
            reduced_input_max_diff: max_diff,
            reduced_input_mean_diff: mean_diff,
            reduced_score_diff: (a.score - b.score).abs(),
            reduced_map_max_diff: map_diff,
            heatmap_ms: med(&heat),
        });
    }
    Ok(out)
}

pub(super) fn print(reports: &[PictureReport]) {
    println!(
        "\ncamera resolution (median ms; a synthetic JPEG of quality 90 with sensor-like grain):\n\
         {:<11} {:>8} {:>8} {:>8} {:>8} | {:>6} {:>8} {:>8} {:>8} | {:>9} {:>9} {:>10} | {:>8}",
        "picture",
        "JPEG MB",
        "decode",
        "resize",
        "total",
        "DCT",
        "decode",
        "resize",
        "total",
        "input max",
        "mean",
        "score",
        "heatmap"
    );
    for r in reports {
        println!(
            "{:<11} {:>8.2} {:>8.1} {:>8.1} {:>8.1} | {:>6} {:>8.1} {:>8.1} {:>8.1} | {:>9.4} {:>9.5} {:>10.2e} | {:>8.1}",
            format!("{}x{}", r.size.width, r.size.height),
            r.jpeg_bytes as f64 / 1e6,
            r.decode_ms,
            r.preprocess_ms,
            r.decode_preprocess_ms,
            format!("1/{}", r.reduced_factor),
            r.reduced_decode_ms,
            r.reduced_preprocess_ms,
            r.reduced_decode_preprocess_ms,
            r.reduced_input_max_diff,
            r.reduced_input_mean_diff,
            r.reduced_score_diff,
            r.heatmap_ms,
        );
    }
    println!(
        "(left: the reference pipeline, full decode then the antialiased bicubic resize; middle: the JPEG \
         decoded at reduced DCT scale, shorter side ≥ 2 × the model's input, then the same resize; right of \
         it: how far that input and the zero-shot score move from the reference's, in normalised units; \
         heatmap: the published thumbnail, explained, JPEG)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picture_sizes_parse_and_refuse_nonsense() {
        assert_eq!(
            "5472x3648".parse::<PictureSize>(),
            Ok(PictureSize {
                width: 5472,
                height: 3648
            })
        );
        assert!("2448X2048".parse::<PictureSize>().is_ok());
        for bad in ["", "2448", "0x10", "x10", "99999x2", "10000x10000", "axb"] {
            assert!(bad.parse::<PictureSize>().is_err(), "{bad}");
        }
    }
}
