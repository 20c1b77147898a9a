//! Image → normalised CHW tensor, exactly like the WinCLIP reference pipeline.
//!
//! The reference (torchvision on a float tensor) resizes straight to S×S with an
//! antialiased bicubic kernel (Keys, a = −0.5, support widened by the
//! downscale factor, weights renormalised per output pixel: the PIL/torch
//! "aa" algorithm), does not clamp, and normalises with the CLIP mean/std.
//! Non-square images are squashed, not cropped. The parity test compares this
//! module against torchvision's output on square, non-square and upscaled inputs.

use image::RgbImage;
use ndarray::Array3;

/// Turns decoded images into the vision encoder's input.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
}

/// The resampling taps of one output coordinate.
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

impl Preprocessor {
    /// A preprocessor for `size`×`size` inputs with per-channel `mean`/`std`.
    pub fn new(size: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self { size, mean, std }
    }

    /// Output side length.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Resize and normalise `img` into a `[3, size, size]` tensor.
    pub fn run(&self, img: &RgbImage) -> Array3<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let s = self.size;
        let tx = taps(w, s);
        let ty = taps(h, s);
        let src = img.as_raw();

        // Horizontal pass first, straight from u8: it shrinks the big camera
        // image before anything is stored as f32. Layout: [h][s][3].
        let mut horiz = vec![0f32; h * s * 3];
        for y in 0..h {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            let out = &mut horiz[y * s * 3..(y + 1) * s * 3];
            for (x, t) in tx.iter().enumerate() {
                let mut acc = [0f32; 3];
                for (k, wgt) in t.weights.iter().enumerate() {
                    let p = &row[(t.start + k) * 3..(t.start + k) * 3 + 3];
                    acc[0] += wgt * f32::from(p[0]);
                    acc[1] += wgt * f32::from(p[1]);
                    acc[2] += wgt * f32::from(p[2]);
                }
                out[x * 3..x * 3 + 3].copy_from_slice(&acc);
            }
        }

        // Vertical pass, then scale to [0,1] and normalise, writing CHW.
        let mut out = Array3::<f32>::zeros((3, s, s));
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.std[c]));
        for (y, t) in ty.iter().enumerate() {
            for x in 0..s {
                let mut acc = [0f32; 3];
                for (k, wgt) in t.weights.iter().enumerate() {
                    let p = &horiz[((t.start + k) * s + x) * 3..((t.start + k) * s + x) * 3 + 3];
                    acc[0] += wgt * p[0];
                    acc[1] += wgt * p[1];
                    acc[2] += wgt * p[2];
                }
                for c in 0..3 {
                    out[[c, y, x]] = acc[c] * scale[c] - self.mean[c] / self.std[c];
                }
            }
        }
        out
    }
}

/// Keys' cubic convolution kernel with a = −0.5 (as PIL and torch's antialias path).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Antialiased resampling taps from `input` to `output` samples (half-pixel centres).
fn taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    // The kernel is stretched by the downscale factor so every input pixel contributes.
    let (support, inv) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            // Truncation toward zero, then clamping, as the reference does.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64)
                .min(input as i64)
                .max(start as i64) as usize;
            let raw: Vec<f64> = (start..end)
                .map(|j| cubic((j as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| if total != 0.0 { (w / total) as f32 } else { 0.0 })
                .collect();
            Taps { start, weights }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_gives_unit_taps() {
        for t in taps(7, 7) {
            let big: Vec<_> = t.weights.iter().filter(|w| w.abs() > 1e-7).collect();
            assert_eq!(big.len(), 1);
            assert!((big[0] - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn downscale_taps_sum_to_one_and_widen() {
        let t = taps(960, 240);
        for tap in &t {
            let sum: f32 = tap.weights.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
        }
        // 4x downscale: support 8 on each side → 16 taps away from the borders.
        assert_eq!(t[100].weights.len(), 16);
    }

    #[test]
    fn a_constant_image_maps_to_its_normalised_value() {
        let img = RgbImage::from_pixel(300, 170, image::Rgb([255, 0, 128]));
        let p = Preprocessor::new(240, [0.5, 0.5, 0.5], [0.25, 0.5, 1.0]);
        let out = p.run(&img);
        assert_eq!(out.shape(), &[3, 240, 240]);
        for v in out.index_axis(ndarray::Axis(0), 0).iter() {
            assert!((v - 2.0).abs() < 1e-5);
        }
        for v in out.index_axis(ndarray::Axis(0), 1).iter() {
            assert!((v + 1.0).abs() < 1e-5);
        }
        for v in out.index_axis(ndarray::Axis(0), 2).iter() {
            assert!((v - (128.0 / 255.0 - 0.5)).abs() < 1e-5);
        }
    }

    #[test]
    fn upscaling_keeps_the_cubic_overshoot_unclamped() {
        // A hard edge upscaled with a cubic kernel overshoots; the reference does not clamp.
        let mut img = RgbImage::from_pixel(4, 4, image::Rgb([0, 0, 0]));
        for y in 0..4 {
            for x in 2..4 {
                img.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
        }
        let p = Preprocessor::new(16, [0.0; 3], [1.0; 3]);
        let out = p.run(&img);
        let max = out.iter().cloned().fold(f32::MIN, f32::max);
        let min = out.iter().cloned().fold(f32::MAX, f32::min);
        assert!(max > 1.0 && min < 0.0, "min {min} max {max}");
    }
}
