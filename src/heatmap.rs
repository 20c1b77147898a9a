//! Anomaly heatmaps: colour-mapped maps blended over the inspected picture.
//!
//! The colour scale is fixed per bank (from calibration, see
//! [`crate::bank::colour_range`]), never stretched per image: a good part stays
//! calm blue, a defect turns red, and two images can be compared by eye.

use image::{imageops, Rgb, RgbImage};
use ndarray::ArrayView2;

/// Map `value` in `[lo, hi]` to a colour of the turbo palette (clamped). Only
/// turbo's middle 80 % is used: its ends are near-black, and calm must read as blue.
pub fn colour(value: f32, [lo, hi]: [f32; 2]) -> Rgb<u8> {
    let t = if hi > lo {
        ((value - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let c = colorous::TURBO.eval_continuous(0.1 + 0.8 * f64::from(t));
    Rgb([c.r, c.g, c.b])
}

/// Blend the colour-mapped `map` (same size as `image`) over `image`.
/// `alpha` is the heatmap's opacity; low scores are drawn fainter so the part
/// stays visible where nothing is wrong.
pub fn overlay(image: &RgbImage, map: ArrayView2<'_, f32>, range: [f32; 2], alpha: f32) -> RgbImage {
    assert_eq!(
        map.dim(),
        (image.height() as usize, image.width() as usize),
        "map must match the image"
    );
    let (lo, hi) = (range[0], range[1]);
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let v = map[[y as usize, x as usize]];
        let heat = colour(v, range);
        let t = if hi > lo {
            ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let a = alpha * (0.35 + 0.65 * t);
        let p = image.get_pixel(x, y);
        Rgb(std::array::from_fn(|c| {
            (f32::from(p.0[c]) * (1.0 - a) + f32::from(heat.0[c]) * a).round() as u8
        }))
    })
}

/// Shrink so that the longer side is at most `max_side` (never enlarges).
pub fn thumbnail(image: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    if w.max(h) <= max_side {
        return image.clone();
    }
    let scale = max_side as f32 / w.max(h) as f32;
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    imageops::resize(image, nw, nh, imageops::FilterType::Triangle)
}

/// JPEG-encode an image.
pub fn jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    image.write_with_encoder(enc)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    #[test]
    fn the_scale_is_fixed_not_stretched_per_image() {
        let img = RgbImage::from_pixel(4, 4, Rgb([128, 128, 128]));
        // A calm map (values near the low end, with their own small spread) keeps
        // the low-end colour: no per-image min-max stretch turns its top red.
        let calm = Array2::from_shape_fn((4, 4), |(i, _)| 0.10 + 0.001 * i as f32);
        for v in calm.iter() {
            let c = colour(*v, [0.1, 0.9]);
            assert!(c.0[2] > c.0[0], "{c:?}");
        }
        let out = overlay(&img, calm.view(), [0.1, 0.9], 1.0);
        let p = out.get_pixel(0, 3);
        assert!(p.0[2] > p.0[0], "calm is blue-tinted: {p:?}");
        // A value at the top of the scale is red-dominant.
        let hot = Array2::from_elem((4, 4), 0.95f32);
        let p = *overlay(&img, hot.view(), [0.1, 0.9], 1.0).get_pixel(1, 1);
        assert!(p.0[0] > p.0[2] + 60, "{p:?}");
    }

    #[test]
    fn thumbnails_keep_aspect_and_never_grow() {
        let img = RgbImage::new(400, 200);
        assert_eq!(thumbnail(&img, 100).dimensions(), (100, 50));
        assert_eq!(thumbnail(&img, 1000).dimensions(), (400, 200));
    }

    #[test]
    fn jpeg_bytes_decode() {
        let img = RgbImage::from_pixel(8, 8, Rgb([10, 200, 30]));
        let bytes = jpeg(&img, 85).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (8, 8));
    }
}
