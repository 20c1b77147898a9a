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
    ///
    /// Vertical pass first, straight from the `u8` rows: each output row is a
    /// weighted sum of whole input rows, contiguous in memory, so it runs as
    /// wide SIMD (AVX2 where the CPU has it, chosen at run time; NEON on
    /// aarch64) and nothing of the camera-sized picture is ever held as
    /// `f32`. The horizontal pass then works on one filtered row at a time.
    /// Every SIMD width computes the same sums in the same order, so the
    /// result is bit-identical on every CPU.
    pub fn run(&self, img: &RgbImage) -> Array3<f32> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.run_avx2(img) };
        }
        self.run_portable(img)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn run_avx2(&self, img: &RgbImage) -> Array3<f32> {
        self.run_portable(img)
    }

    #[inline(always)]
    fn run_portable(&self, img: &RgbImage) -> Array3<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let s = self.size;
        let tx = taps(w, s);
        let ty = taps(h, s);
        let src = img.as_raw();
        let stride = w * 3;
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.std[c]));
        let bias: [f32; 3] = std::array::from_fn(|c| self.mean[c] / self.std[c]);

        let mut out = vec![0f32; 3 * s * s];
        // One output row filtered vertically, interleaved RGB at the input's width …
        let mut column = vec![0f32; stride];
        // … and the same, one plane per channel, for the horizontal dot products.
        let mut planes = vec![0f32; stride];
        for (y, t) in ty.iter().enumerate() {
            column.fill(0.0);
            for (k, &weight) in t.weights.iter().enumerate() {
                let row = &src[(t.start + k) * stride..(t.start + k + 1) * stride];
                for (a, &p) in column.iter_mut().zip(row) {
                    *a += weight * f32::from(p);
                }
            }
            for (x, px) in column.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    planes[c * w + x] = px[c];
                }
            }
            for c in 0..3 {
                let plane = &planes[c * w..(c + 1) * w];
                let dst = &mut out[(c * s + y) * s..(c * s + y + 1) * s];
                for (o, t) in dst.iter_mut().zip(&tx) {
                    *o = dot(&t.weights, &plane[t.start..]) * scale[c] - bias[c];
                }
            }
        }
        Array3::from_shape_vec((3, s, s), out).expect("3 × size × size values")
    }
}

/// `Σ weights[i] · xs[i]` in eight independent lanes (vectorised, and the
/// same order of additions whatever the SIMD width).
#[inline(always)]
fn dot(weights: &[f32], xs: &[f32]) -> f32 {
    let xs = &xs[..weights.len()];
    let (wc, wr) = weights.as_chunks::<8>();
    let (xc, xr) = xs.as_chunks::<8>();
    let mut lanes = [0f32; 8];
    for (a, b) in wc.iter().zip(xc) {
        for i in 0..8 {
            lanes[i] += a[i] * b[i];
        }
    }
    let tail: f32 = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
    lanes.iter().sum::<f32>() + tail
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

    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        RgbImage::from_fn(w, h, |_, _| {
            image::Rgb(std::array::from_fn(|_| {
                // xorshift32: pixels without structure, so every tap matters.
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            }))
        })
    }

    /// The separable passes against the resampling written out as one double
    /// sum in f64, downscaling (wide, antialiased taps) and upscaling.
    #[test]
    fn the_passes_equal_the_direct_two_dimensional_sum() {
        let (mean, std) = ([0.48, 0.46, 0.41], [0.27, 0.26, 0.28]);
        for (w, h, s) in [(203, 157, 24), (7, 5, 16), (240, 240, 240)] {
            let img = noise(w, h, w * h);
            let out = Preprocessor::new(s, mean, std).run(&img);
            let (tx, ty) = (taps(w as usize, s), taps(h as usize, s));
            let mut worst = 0f64;
            for c in 0..3 {
                for (y, ty) in ty.iter().enumerate() {
                    for (x, tx) in tx.iter().enumerate() {
                        let mut sum = 0f64;
                        for (j, wy) in ty.weights.iter().enumerate() {
                            for (i, wx) in tx.weights.iter().enumerate() {
                                let p = img.get_pixel((tx.start + i) as u32, (ty.start + j) as u32);
                                sum += f64::from(*wy) * f64::from(*wx) * f64::from(p.0[c]);
                            }
                        }
                        let want = (sum / 255.0 - f64::from(mean[c])) / f64::from(std[c]);
                        worst = worst.max((f64::from(out[[c, y, x]]) - want).abs());
                    }
                }
            }
            assert!(worst < 2e-5, "{w}×{h} → {s}: {worst:e}");
        }
    }

    /// The AVX2 build of the passes and the portable one give the same bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_simd_width_gives_the_same_bits() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let p = Preprocessor::new(240, [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]);
        for (w, h) in [(1001, 653), (97, 130)] {
            let img = noise(w, h, 7);
            // SAFETY: AVX2 is present, checked above.
            let simd = unsafe { p.run_avx2(&img) };
            assert_eq!(simd, p.run_portable(&img), "{w}×{h}");
        }
    }

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
