//! The region of interest: the rectangle of a picture that shows the part.
//! Only it is inspected; the rest of the picture can raise no alarm. It is a
//! property of the bank (recorded in it), because the reference features of
//! the good samples must come from the same crop as the pictures judged.

use std::fmt;
use std::str::FromStr;

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// A rectangle `x, y, width, height`: in pixels, or in fractions of the
/// picture's width and height (for cameras whose resolution may change).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Roi {
    /// Pixels.
    Pixels([u32; 4]),
    /// Fractions of the picture, each in `0..=1`.
    Fractions([f32; 4]),
}

/// A rectangle in a picture's pixels: `x, y, width, height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width, at least 1.
    pub width: u32,
    /// Height, at least 1.
    pub height: u32,
}

impl Rect {
    /// `[x0, y0, x1, y1]`: left, top (inclusive), right, bottom (exclusive),
    /// as region boxes are.
    pub fn corners(self) -> [u32; 4] {
        [self.x, self.y, self.x + self.width, self.y + self.height]
    }

    /// The same rectangle in the picture decoded `factor` times smaller
    /// (`width` × `height`): every pixel it touches, at least one.
    pub fn reduced(self, factor: u32, width: u32, height: u32) -> Rect {
        let f = factor.max(1);
        let x0 = (self.x / f).min(width.saturating_sub(1));
        let y0 = (self.y / f).min(height.saturating_sub(1));
        let x1 = (self.x + self.width).div_ceil(f).clamp(x0 + 1, width.max(x0 + 1));
        let y1 = (self.y + self.height)
            .div_ceil(f)
            .clamp(y0 + 1, height.max(y0 + 1));
        Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }
}

impl Roi {
    /// The rectangle in a `width` × `height` picture; an error when it does
    /// not lie inside it.
    pub fn rect(self, width: u32, height: u32) -> Result<Rect, String> {
        let r = match self {
            Roi::Pixels([x, y, w, h]) => Rect {
                x,
                y,
                width: w,
                height: h,
            },
            Roi::Fractions([x, y, w, h]) => {
                let at = |f: f32, n: u32| (f64::from(f) * f64::from(n)).round() as u32;
                let (x0, y0) = (at(x, width), at(y, height));
                let (x1, y1) = (at(x + w, width).min(width), at(y + h, height).min(height));
                Rect {
                    x: x0,
                    y: y0,
                    width: x1.saturating_sub(x0),
                    height: y1.saturating_sub(y0),
                }
            }
        };
        let fits = r.width > 0
            && r.height > 0
            && u64::from(r.x) + u64::from(r.width) <= u64::from(width)
            && u64::from(r.y) + u64::from(r.height) <= u64::from(height);
        if fits {
            Ok(r)
        } else {
            Err(format!(
                "the region of interest {self} does not lie inside the {width}×{height} picture"
            ))
        }
    }

    /// The part of `img` it covers.
    pub fn crop(self, img: &RgbImage) -> Result<(RgbImage, Rect), String> {
        let r = self.rect(img.width(), img.height())?;
        let part = image::imageops::crop_imm(img, r.x, r.y, r.width, r.height).to_image();
        Ok((part, r))
    }
}

impl fmt::Display for Roi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roi::Pixels([x, y, w, h]) => write!(f, "{x},{y},{w},{h}"),
            Roi::Fractions([x, y, w, h]) => write!(f, "{x:?},{y:?},{w:?},{h:?}"),
        }
    }
}

impl FromStr for Roi {
    type Err = String;

    /// `x,y,w,h`: four whole numbers are pixels; numbers written with a
    /// decimal point (`0.25,0,0.5,1.0`) are fractions of the picture.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let usage = || {
            format!(
                "region of interest {s:?}: give x,y,width,height in pixels (100,50,640,480) \
                 or as fractions of the picture (0.1,0.05,0.5,0.9)"
            )
        };
        if parts.len() != 4 {
            return Err(usage());
        }
        if parts.iter().any(|p| p.contains('.')) {
            let mut v = [0f32; 4];
            for (slot, p) in v.iter_mut().zip(&parts) {
                *slot = p.parse().map_err(|_| usage())?;
                if !(0.0..=1.0).contains(slot) {
                    return Err(format!("{}: fractions lie between 0 and 1", usage()));
                }
            }
            if v[2] <= 0.0 || v[3] <= 0.0 || v[0] + v[2] > 1.0 + 1e-6 || v[1] + v[3] > 1.0 + 1e-6 {
                return Err(format!(
                    "{}: the width and height must be above 0 and the rectangle inside the picture",
                    usage()
                ));
            }
            Ok(Roi::Fractions(v))
        } else {
            let mut v = [0u32; 4];
            for (slot, p) in v.iter_mut().zip(&parts) {
                *slot = p.parse().map_err(|_| usage())?;
            }
            if v[2] == 0 || v[3] == 0 {
                return Err(format!("{}: the width and height must be above 0", usage()));
            }
            Ok(Roi::Pixels(v))
        }
    }
}

/// Which patches of the model's grid are inspected: a mask picture (white =
/// inspect) cropped as the pictures are and reduced to the patch grid. The
/// model sees every pixel of the crop; the mask decides which patches can
/// raise an alarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchMask {
    /// Grid side.
    pub grid: usize,
    /// One string per grid row: `#` inspected, `.` not.
    pub rows: Vec<String>,
    /// sha256 of the mask picture's file.
    pub sha256: String,
}

impl PatchMask {
    /// The mask of `picture` (grey levels, white = inspect; the camera
    /// picture's size when `roi` is in pixels), cropped to `roi`, on a
    /// `grid`×`grid` patch grid: a patch is inspected when at least half of
    /// its pixels are white (≥ 128).
    pub fn from_picture(
        picture: &image::GrayImage,
        roi: Option<Roi>,
        grid: usize,
        sha256: String,
    ) -> Result<Self, String> {
        let crop = match roi {
            Some(roi) => {
                let r = roi
                    .rect(picture.width(), picture.height())
                    .map_err(|e| format!("the mask picture: {e}"))?;
                image::imageops::crop_imm(picture, r.x, r.y, r.width, r.height).to_image()
            }
            None => picture.clone(),
        };
        let (w, h) = (crop.width() as usize, crop.height() as usize);
        if w < grid || h < grid {
            return Err(format!(
                "the mask is {w}×{h} after the crop: smaller than the {grid}×{grid} patch grid"
            ));
        }
        let rows: Vec<String> = (0..grid)
            .map(|i| {
                (0..grid)
                    .map(|j| {
                        let (y0, y1) = (i * h / grid, (i + 1) * h / grid);
                        let (x0, x1) = (j * w / grid, (j + 1) * w / grid);
                        let white = (y0..y1)
                            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                            .filter(|&(x, y)| crop.get_pixel(x as u32, y as u32)[0] >= 128)
                            .count();
                        if 2 * white >= (y1 - y0) * (x1 - x0) {
                            '#'
                        } else {
                            '.'
                        }
                    })
                    .collect()
            })
            .collect();
        let mask = Self { grid, rows, sha256 };
        if mask.inspected() == 0 {
            return Err("the mask leaves no patch to inspect (white = inspect)".into());
        }
        Ok(mask)
    }

    /// The inspected patches, row-major; an error when the rows do not make a grid.
    pub fn patches(&self) -> Result<Vec<bool>, String> {
        if self.rows.len() != self.grid || self.rows.iter().any(|r| r.chars().count() != self.grid) {
            return Err(format!("the patch mask is not {0}×{0}", self.grid));
        }
        Ok(self
            .rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect())
    }

    /// How many patches are inspected.
    pub fn inspected(&self) -> usize {
        self.rows.iter().map(|r| r.matches('#').count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_picture_becomes_the_patches_half_white_or_more_after_the_crop() {
        // 40×20, the right half white; cropped to its right 30 columns and a 2×2 grid.
        let pic = image::GrayImage::from_fn(40, 20, |x, _| image::Luma([if x >= 20 { 255 } else { 0 }]));
        let m = PatchMask::from_picture(&pic, Some(Roi::Pixels([10, 0, 30, 20])), 2, "s".into()).unwrap();
        // Columns 10..25 are 1/3 white (not inspected), 25..40 all white.
        assert_eq!(m.rows, [".#", ".#"]);
        assert_eq!(m.patches().unwrap(), [false, true, false, true]);
        assert_eq!(m.inspected(), 2);
        let black = image::GrayImage::new(8, 8);
        let e = PatchMask::from_picture(&black, None, 2, "s".into()).unwrap_err();
        assert!(e.contains("no patch"), "{e}");
        assert!(PatchMask::from_picture(&pic, Some(Roi::Pixels([30, 0, 30, 20])), 2, "s".into()).is_err());
        let torn = PatchMask {
            grid: 2,
            rows: vec!["#".into()],
            sha256: String::new(),
        };
        assert!(torn.patches().is_err());
    }

    #[test]
    fn whole_numbers_are_pixels_and_decimals_fractions() {
        assert_eq!(
            "10, 20,30,40".parse::<Roi>().unwrap(),
            Roi::Pixels([10, 20, 30, 40])
        );
        assert_eq!(
            "0.25,0,0.5,1.0".parse::<Roi>().unwrap(),
            Roi::Fractions([0.25, 0.0, 0.5, 1.0])
        );
        for bad in [
            "1,2,3",
            "a,b,c,d",
            "0,0,0,5",
            "0.5,0,0.6,1",
            "0,0,1.5,1",
            "-1,0,2,2",
        ] {
            assert!(bad.parse::<Roi>().is_err(), "{bad}");
        }
        let r: Roi = "0.25,0,0.5,1.0".parse().unwrap();
        assert_eq!(r.to_string().parse::<Roi>().unwrap(), r);
    }

    #[test]
    fn the_rectangle_must_lie_inside_the_picture() {
        let r = Roi::Pixels([10, 20, 30, 40]).rect(100, 100).unwrap();
        assert_eq!(r.corners(), [10, 20, 40, 60]);
        assert!(Roi::Pixels([80, 0, 30, 10])
            .rect(100, 100)
            .unwrap_err()
            .contains("100×100"));
        let f = Roi::Fractions([0.25, 0.0, 0.5, 1.0]).rect(200, 100).unwrap();
        assert_eq!((f.x, f.y, f.width, f.height), (50, 0, 100, 100));
        let img = RgbImage::from_fn(100, 100, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let (part, at) = Roi::Pixels([10, 20, 30, 40]).crop(&img).unwrap();
        assert_eq!(part.dimensions(), (30, 40));
        assert_eq!(part.get_pixel(0, 0).0, [10, 20, 0]);
        assert_eq!(at.corners(), [10, 20, 40, 60]);
    }

    #[test]
    fn a_reduced_rectangle_covers_every_pixel_it_touches() {
        let r = Rect {
            x: 10,
            y: 21,
            width: 30,
            height: 40,
        };
        assert_eq!(r.reduced(1, 100, 100), r);
        assert_eq!(r.reduced(4, 25, 25).corners(), [2, 5, 10, 16]);
        // A sliver at the far edge still covers one pixel.
        let edge = Rect {
            x: 99,
            y: 0,
            width: 1,
            height: 100,
        };
        assert_eq!(edge.reduced(8, 13, 13).corners(), [12, 0, 13, 13]);
    }
}
