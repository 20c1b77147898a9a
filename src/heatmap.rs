//! Anomaly heatmaps: colour-mapped maps blended over the inspected picture.
//!
//! The colour scale is fixed per bank (from calibration, see
//! [`crate::bank::colour_range`]), never stretched per image: a good part stays
//! calm blue, a defect turns red, and two images can be compared by eye.
//! [`explained`] adds what a person needs to read one: the verdict and the
//! score against the threshold, the regions above the pixel threshold
//! outlined (or, for a failing part without one, its strongest point), and a
//! colour bar of the bank's scale with the pixel threshold marked.

use font8x8::UnicodeFonts;
use image::{imageops, Rgb, RgbImage};
use ndarray::ArrayView2;

use crate::winclip::upsample;

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
    shrink(image, nw, nh).unwrap_or_else(|e| {
        log::warn!("SIMD resize failed ({e}); using the portable one");
        imageops::resize(image, nw, nh, imageops::FilterType::Triangle)
    })
}

/// A triangle-filtered (bilinear, antialiased) resize in SIMD: a 20 MP
/// camera picture is shrunk to a thumbnail in milliseconds rather than the
/// portable resize's hundreds (README: camera resolution).
fn shrink(image: &RgbImage, w: u32, h: u32) -> Result<RgbImage, Box<dyn std::error::Error>> {
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let src = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3)?;
    let mut dst = Image::new(w, h, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&src, &mut dst, &options)?;
    Ok(RgbImage::from_raw(w, h, dst.into_vec()).ok_or("resized buffer of the wrong size")?)
}

/// What a heatmap says besides the map.
#[derive(Debug, Clone)]
pub struct Legend<'a> {
    /// The part failed.
    pub failed: bool,
    /// Its score.
    pub score: f32,
    /// The threshold it was compared with.
    pub threshold: f32,
    /// Where the map counts as anomalous.
    pub pixel_threshold: f32,
    /// Regions above the pixel threshold, `[x0, y0, x1, y1]` in the picture's pixels.
    pub regions: &'a [[u32; 4]],
    /// The map's strongest point `[x, y]`, in the picture's pixels.
    pub argmax: [u32; 2],
    /// The region of interest the map covers, `[x0, y0, x1, y1]` in the
    /// picture's pixels; `None`: the map covers the whole picture.
    pub roi: Option<[u32; 4]>,
    /// The size of the picture these coordinates are in, where the picture
    /// drawn was decoded smaller (JPEG DCT scaling); `None`: its own size.
    pub picture: Option<[u32; 2]>,
}

const PASS_BAND: Rgb<u8> = Rgb([20, 120, 50]);
const FAIL_BAND: Rgb<u8> = Rgb([190, 25, 25]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
/// The outline of the region of interest.
const ROI: Rgb<u8> = Rgb([255, 210, 0]);

/// The heatmap of `picture` that explains itself, its longest side at most
/// `max_side` (plus a header and a colour bar): `map` (any resolution over
/// the whole picture) upsampled and blended over it in the fixed `range`,
/// the legend's regions outlined, the verdict and score in the header.
pub fn explained(
    picture: &RgbImage,
    map: ArrayView2<'_, f32>,
    range: [f32; 2],
    legend: &Legend<'_>,
    max_side: u32,
) -> RgbImage {
    let thumb = thumbnail(picture, max_side);
    let (w, h) = thumb.dimensions();
    let [pw, ph] = legend.picture.unwrap_or([picture.width(), picture.height()]);
    let (sx, sy) = (
        f64::from(w) / f64::from(pw.max(1)),
        f64::from(h) / f64::from(ph.max(1)),
    );
    // The map covers the region of interest (the whole picture without one);
    // outside it the picture is dimmed: nothing there was inspected.
    let roi = legend.roi.map(|[x0, y0, x1, y1]| {
        let at = |v: u32, s: f64, n: u32| ((f64::from(v) * s).round() as u32).min(n);
        let (x0, y0) = (at(x0, sx, w - 1), at(y0, sy, h - 1));
        let (x1, y1) = (at(x1, sx, w).max(x0 + 1), at(y1, sy, h).max(y0 + 1));
        [x0, y0, x1, y1]
    });
    let over = match roi {
        None => {
            let full = upsample::bilinear(map, h as usize, w as usize);
            overlay(&thumb, full.view(), range, 0.55)
        }
        Some([x0, y0, x1, y1]) => {
            let (rw, rh) = (x1 - x0, y1 - y0);
            let part = imageops::crop_imm(&thumb, x0, y0, rw, rh).to_image();
            let full = upsample::bilinear(map, rh as usize, rw as usize);
            let mut dimmed = RgbImage::from_fn(w, h, |x, y| Rgb(thumb.get_pixel(x, y).0.map(|c| c / 3)));
            imageops::replace(
                &mut dimmed,
                &overlay(&part, full.view(), range, 0.55),
                i64::from(x0),
                i64::from(y0),
            );
            dimmed
        }
    };
    let (colour, mut text) = if legend.failed {
        (
            FAIL_BAND,
            format!("FAIL {:.4} > {:.4}", legend.score, legend.threshold),
        )
    } else {
        (
            PASS_BAND,
            format!("PASS {:.4} <= {:.4}", legend.score, legend.threshold),
        )
    };
    if (w as usize) < 8 * text.len() + 6 {
        // A thumbnail: the same, shorter.
        let short = |v: f32| format!("{v:.3}").trim_start_matches('0').to_string();
        let (word, cmp) = if legend.failed {
            ("FAIL", ">")
        } else {
            ("PASS", "<=")
        };
        text = format!("{word} {}{cmp}{}", short(legend.score), short(legend.threshold));
    }
    // Letters twice the size where the header still fits.
    let k = if w as usize >= 16 * text.len() + 6 { 2 } else { 1 };
    let band = 8 * k + 6;
    let mut out = RgbImage::from_pixel(w, band + h + band + 8 * k, BLACK);
    imageops::replace(&mut out, &over, 0, i64::from(band));

    if let Some([x0, y0, x1, y1]) = roi {
        let b = i64::from(band);
        rectangle(
            &mut out,
            i64::from(x0),
            i64::from(y0) + b,
            i64::from(x1) - 1,
            i64::from(y1) - 1 + b,
            ROI,
        );
    }
    // Where: regions outlined, or the strongest point of a failing part.
    let to = |x: u32, y: u32| {
        (
            (f64::from(x) * sx) as i64,
            (f64::from(y) * sy) as i64 + i64::from(band),
        )
    };
    for r in legend.regions {
        let (x0, y0) = to(r[0], r[1]);
        let (x1, y1) = to(r[2], r[3]);
        rectangle(&mut out, x0 - 1, y0 - 1, x1 + 1, y1 + 1, BLACK);
        rectangle(&mut out, x0, y0, x1, y1, WHITE);
    }
    if legend.failed && legend.regions.is_empty() {
        let (cx, cy) = to(legend.argmax[0], legend.argmax[1]);
        let r = i64::from(6 * k);
        rectangle(&mut out, cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1, BLACK);
        rectangle(&mut out, cx - r, cy - r, cx + r, cy + r, WHITE);
    }

    // The verdict: score against threshold.
    fill(&mut out, 0, 0, w, band, colour);
    text_at(&mut out, 3, 3, &text, k, WHITE);

    // The scale: the bank's fixed colours, the pixel threshold marked.
    let bar_top = band + h + 2;
    let bar = 8 * k - 2;
    let [lo, hi] = range;
    for x in 0..w {
        let v = lo + (hi - lo) * (x as f32 + 0.5) / w as f32;
        fill(&mut out, x, bar_top, 1, bar, colour_of(v, range));
    }
    if hi > lo {
        let t = ((legend.pixel_threshold - lo) / (hi - lo)).clamp(0.0, 1.0);
        let x = ((t * (w - 1) as f32) as u32).min(w - 1);
        fill(&mut out, x.saturating_sub(1), bar_top, 3, bar, WHITE);
    }
    let labels_top = bar_top + bar + 2;
    text_at(&mut out, 2, labels_top, &format!("{lo:.3}"), k.max(1), WHITE);
    let right = format!("{hi:.3}");
    let rx = i64::from(w) - (8 * k * right.len() as u32) as i64 - 2;
    text_at(&mut out, rx.max(0) as u32, labels_top, &right, k, WHITE);
    out
}

fn colour_of(v: f32, range: [f32; 2]) -> Rgb<u8> {
    colour(v, range)
}

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, c: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, c);
        }
    }
}

/// A one-pixel rectangle outline (clipped to the image).
fn rectangle(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            img.put_pixel(x as u32, y as u32, c);
        }
    };
    for x in x0..=x1 {
        put(x, y0);
        put(x, y1);
    }
    for y in y0..=y1 {
        put(x0, y);
        put(x1, y);
    }
}

/// `text` in the 8×8 font scaled by `k`, clipped to the image.
fn text_at(img: &mut RgbImage, x: u32, y: u32, text: &str, k: u32, c: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let Some(glyph) = font8x8::BASIC_FONTS.get(ch) else {
            continue;
        };
        let gx = x + i as u32 * 8 * k;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    fill(img, gx + col * k, y + row as u32 * k, k, k, c);
                }
            }
        }
    }
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

    /// The SIMD shrink is the portable triangle filter, to a grey level.
    #[test]
    fn the_simd_thumbnail_matches_the_portable_triangle_filter() {
        let img = RgbImage::from_fn(1234, 617, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
        });
        let fast = shrink(&img, 300, 150).unwrap();
        let portable = imageops::resize(&img, 300, 150, imageops::FilterType::Triangle);
        let diffs: Vec<i32> = fast
            .as_raw()
            .iter()
            .zip(portable.as_raw())
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .collect();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        assert!(mean < 1.0, "mean difference {mean} grey levels");
    }

    #[test]
    fn an_explained_heatmap_shows_verdict_regions_and_scale() {
        let picture = RgbImage::from_pixel(480, 240, Rgb([128, 128, 128]));
        let mut map = Array2::from_elem((15, 15), 0.2f32);
        map[[7, 3]] = 0.9;
        let regions = [[96, 96, 160, 144]];
        let legend = Legend {
            failed: true,
            score: 0.31,
            threshold: 0.29,
            pixel_threshold: 0.5,
            regions: &regions,
            argmax: [112, 120],
            roi: None,
            picture: None,
        };
        let out = explained(&picture, map.view(), [0.2, 0.8], &legend, 400);
        // 400 × 200 picture, a 22-px header and a 16-px scale with its labels.
        assert_eq!(out.width(), 400);
        assert_eq!(out.height(), 22 + 200 + 22 + 16);
        assert_eq!(*out.get_pixel(1, 1), FAIL_BAND, "a red header says FAIL");
        // The region's outline, at 5/6 scale, below the header.
        assert_eq!(*out.get_pixel(100, 22 + 80), WHITE);
        // The bar runs from calm (blue-ish) to hot (red-ish).
        let bar_y = 22 + 200 + 3;
        assert!(out.get_pixel(2, bar_y).0[2] > out.get_pixel(2, bar_y).0[0]);
        assert!(out.get_pixel(397, bar_y).0[0] > out.get_pixel(397, bar_y).0[2]);
        // The pixel threshold's tick, halfway.
        assert_eq!(*out.get_pixel(199, bar_y), WHITE);
        let pass = Legend {
            failed: false,
            regions: &[],
            ..legend
        };
        let out = explained(&picture, map.view(), [0.2, 0.8], &pass, 120);
        assert_eq!(*out.get_pixel(1, 1), PASS_BAND);
        assert_eq!(out.width(), 120);
    }

    /// A picture decoded at half scale, with the legend in the full
    /// picture's pixels, is drawn as the full picture would be.
    #[test]
    fn a_picture_decoded_smaller_is_drawn_in_the_full_pictures_coordinates() {
        let map = Array2::from_elem((15, 15), 0.2f32);
        let regions = [[200, 100, 300, 150]];
        let legend = |picture| Legend {
            failed: true,
            score: 0.9,
            threshold: 0.5,
            pixel_threshold: 0.5,
            regions: &regions,
            argmax: [250, 120],
            roi: Some([100, 0, 400, 200]),
            picture,
        };
        let draw = |w, h, picture| {
            explained(
                &RgbImage::from_pixel(w, h, Rgb([90; 3])),
                map.view(),
                [0.0, 1.0],
                &legend(picture),
                100,
            )
        };
        let full = draw(400, 200, None);
        assert_eq!(draw(200, 100, Some([400, 200])), full);
        assert_ne!(
            draw(200, 100, None),
            full,
            "the coordinates read as the small picture's"
        );
    }

    #[test]
    fn with_a_region_of_interest_the_map_lies_inside_it_outlined_and_the_rest_is_dimmed() {
        let picture = RgbImage::from_pixel(480, 240, Rgb([150, 150, 150]));
        let map = Array2::from_elem((15, 15), 0.9f32);
        let legend = Legend {
            failed: true,
            score: 0.9,
            threshold: 0.5,
            pixel_threshold: 0.5,
            regions: &[],
            argmax: [300, 120],
            roi: Some([240, 0, 480, 240]),
            picture: None,
        };
        // 1:1 scale: the picture is 480 wide; the header is 22 px.
        let out = explained(&picture, map.view(), [0.0, 1.0], &legend, 480);
        let at = |x: u32, y: u32| out.get_pixel(x, 22 + y).0;
        assert_eq!(
            at(100, 120),
            [50, 50, 50],
            "outside: the picture, dimmed, no heat"
        );
        let hot = at(360, 120);
        assert!(hot[0] > hot[2] + 60, "inside: the hot map {hot:?}");
        assert_eq!(at(240, 120), ROI.0, "the outline at the left edge");
        assert_eq!(at(300, 0), ROI.0, "the outline at the top edge");
    }

    #[test]
    fn jpeg_bytes_decode() {
        let img = RgbImage::from_pixel(8, 8, Rgb([10, 200, 30]));
        let bytes = jpeg(&img, 85).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (8, 8));
    }
}
