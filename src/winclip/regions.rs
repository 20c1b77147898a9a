//! Where the defect is: the connected regions of an anomaly map above a
//! pixel threshold, in the coordinates of the original picture.
//!
//! The map covers the model's input square, which is the whole picture
//! resized (not cropped) to it, so a map cell maps back to a rectangle of the
//! picture by scaling each axis.

use ndarray::ArrayView2;
use serde::Serialize;

/// Label the 8-connected components of a binary mask (`h`×`w`, row-major);
/// returns the label per pixel (0 = background) and the number of regions.
pub fn connected_regions(mask: &[bool], h: usize, w: usize) -> (Vec<u32>, u32) {
    let mut labels = vec![0u32; mask.len()];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        next += 1;
        labels[start] = next;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (y, x) = (p / w, p % w);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                    if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if mask[q] && labels[q] == 0 {
                        labels[q] = next;
                        stack.push(q);
                    }
                }
            }
        }
    }
    (labels, next)
}

/// One region above the pixel threshold, in picture pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Region {
    /// Bounding box `[x0, y0, x1, y1]`: left, top (inclusive), right, bottom
    /// (exclusive), in the original picture's pixels.
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
    /// Area in the original picture's pixels.
    pub area: u64,
    /// Share of the picture it covers.
    pub area_fraction: f32,
    /// Highest map value inside.
    pub peak: f32,
    /// Where that is, `[x, y]` in picture pixels.
    pub peak_at: [u32; 2],
}

/// A picture's `width` × `height`, and how a map of `side` × `side` scales to it.
#[derive(Debug, Clone, Copy)]
struct Scale {
    sx: f64,
    sy: f64,
    width: u32,
    height: u32,
}

impl Scale {
    fn x(&self, cell: usize) -> u32 {
        ((cell as f64 * self.sx).floor() as u32).min(self.width)
    }
    fn y(&self, cell: usize) -> u32 {
        ((cell as f64 * self.sy).floor() as u32).min(self.height)
    }
    /// The centre of cell (row, col), in picture pixels.
    fn at(&self, row: usize, col: usize) -> [u32; 2] {
        [
            (((col as f64 + 0.5) * self.sx) as u32).min(self.width.saturating_sub(1)),
            (((row as f64 + 0.5) * self.sy) as u32).min(self.height.saturating_sub(1)),
        ]
    }
}

/// The regions of `map` (the model's input square) above `threshold`,
/// largest peak first, at most `limit`, in the pixels of a `width` ×
/// `height` picture.
pub fn regions(
    map: ArrayView2<'_, f32>,
    threshold: f32,
    width: u32,
    height: u32,
    limit: usize,
) -> Vec<Region> {
    let (h, w) = map.dim();
    if h == 0 || w == 0 {
        return Vec::new();
    }
    let scale = Scale {
        sx: f64::from(width) / w as f64,
        sy: f64::from(height) / h as f64,
        width,
        height,
    };
    let values: Vec<f32> = map.iter().copied().collect();
    let mask: Vec<bool> = values.iter().map(|v| *v > threshold).collect();
    let (labels, n) = connected_regions(&mask, h, w);
    // Per region: cells, bounds (columns and rows), peak and where.
    #[derive(Clone)]
    struct Acc {
        cells: usize,
        bounds: [usize; 4],
        peak: f32,
        at: (usize, usize),
    }
    let empty = Acc {
        cells: 0,
        bounds: [usize::MAX, usize::MAX, 0, 0],
        peak: f32::NEG_INFINITY,
        at: (0, 0),
    };
    let mut acc = vec![empty; n as usize];
    for (i, &l) in labels.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let (r, c) = (i / w, i % w);
        let a = &mut acc[l as usize - 1];
        a.cells += 1;
        let b = a.bounds;
        a.bounds = [b[0].min(c), b[1].min(r), b[2].max(c + 1), b[3].max(r + 1)];
        if values[i] > a.peak {
            a.peak = values[i];
            a.at = (r, c);
        }
    }
    let cell_area = scale.sx * scale.sy;
    let picture = f64::from(width) * f64::from(height);
    let mut out: Vec<Region> = acc
        .into_iter()
        .map(
            |Acc {
                 cells,
                 bounds: [c0, r0, c1, r1],
                 peak,
                 at: (pr, pc),
             }| {
                let area = (cells as f64 * cell_area).round() as u64;
                Region {
                    bbox: [scale.x(c0), scale.y(r0), scale.x(c1), scale.y(r1)],
                    area,
                    area_fraction: (area as f64 / picture.max(1.0)) as f32,
                    peak,
                    peak_at: scale.at(pr, pc),
                }
            },
        )
        .collect();
    out.sort_by(|a, b| b.peak.total_cmp(&a.peak));
    out.truncate(limit);
    out
}

/// The map's highest value and where it is, `[x, y]` in picture pixels.
pub fn argmax(map: ArrayView2<'_, f32>, width: u32, height: u32) -> (f32, [u32; 2]) {
    let (h, w) = map.dim();
    let scale = Scale {
        sx: f64::from(width) / w.max(1) as f64,
        sy: f64::from(height) / h.max(1) as f64,
        width,
        height,
    };
    let mut best = (f32::NEG_INFINITY, (0, 0));
    for ((r, c), v) in map.indexed_iter() {
        if *v > best.0 {
            best = (*v, (r, c));
        }
    }
    (best.0, scale.at(best.1 .0, best.1 .1))
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    #[test]
    fn regions_use_8_connectivity() {
        // Two pixels touching at a corner form one region.
        let m = [true, false, false, false, true, false, false, false, false];
        let (_, n) = connected_regions(&m, 3, 3);
        assert_eq!(n, 1);
        let m = [true, false, true, false, false, false, true, false, true];
        assert_eq!(connected_regions(&m, 3, 3).1, 4);
    }

    #[test]
    fn regions_come_back_in_picture_pixels_strongest_first() {
        // A 10 × 10 map of a 1000 × 500 picture: each cell is 100 × 50 pixels.
        let mut map = Array2::<f32>::zeros((10, 10));
        map[[1, 2]] = 0.9; // one cell
        map[[6, 6]] = 0.6;
        map[[6, 7]] = 0.7;
        map[[7, 7]] = 0.65; // three cells
        let r = regions(map.view(), 0.5, 1000, 500, 5);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].bbox, [200, 50, 300, 100]);
        assert_eq!(r[0].area, 5000);
        assert_eq!(r[0].peak, 0.9);
        assert_eq!(r[0].peak_at, [250, 75]);
        assert_eq!(r[1].bbox, [600, 300, 800, 400]);
        assert_eq!(r[1].area, 15_000);
        assert!((r[1].area_fraction - 0.03).abs() < 1e-6);
        assert_eq!(r[1].peak_at, [750, 325]);
        assert_eq!(
            regions(map.view(), 0.5, 1000, 500, 1).len(),
            1,
            "the limit keeps the strongest"
        );
        assert!(regions(map.view(), 0.95, 1000, 500, 5).is_empty());
        assert_eq!(argmax(map.view(), 1000, 500), (0.9, [250, 75]));
    }
}
