//! Synthetic inspection images with known defect masks, for tests and demos.
//!
//! No dataset can be shipped with the project, so it draws its own: an
//! "object" scene (a round part, seen from above, on a conveyor background) or a
//! "texture" scene (woven or grained surface), with per-image variation in pose,
//! lighting and noise. Defective images carry one or more drawn defects —
//! scratch, hole, stain, crack — and a binary mask marking exactly the changed
//! pixels. Everything is a pure function of the seed.

use std::f32::consts::PI;
use std::fmt;
use std::str::FromStr;

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The kind of scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scene {
    /// A round part on a background (like MVTec's bottle, seen from above).
    Object,
    /// A regular surface filling the frame (like MVTec's carpet or wood).
    Texture,
}

impl Scene {
    /// Object name used in prompts for this scene.
    pub fn object_name(self) -> &'static str {
        match self {
            Scene::Object => "bottle",
            Scene::Texture => "carpet",
        }
    }
}

impl FromStr for Scene {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "object" => Ok(Self::Object),
            "texture" => Ok(Self::Texture),
            other => Err(format!(
                "unknown scene {other:?} (expected \"object\" or \"texture\")"
            )),
        }
    }
}

impl fmt::Display for Scene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scene::Object => "object",
            Scene::Texture => "texture",
        })
    }
}

/// The kinds of drawn defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// A thin straight line, brighter or darker than the surface.
    Scratch,
    /// A dark round pit with a lighter rim.
    Hole,
    /// A soft-edged coloured blob.
    Stain,
    /// A jagged dark polyline.
    Crack,
}

impl Defect {
    /// All kinds, in a fixed order.
    pub const ALL: [Defect; 4] = [Defect::Scratch, Defect::Hole, Defect::Stain, Defect::Crack];

    /// Lower-case name (used as MVTec-style defect folder name).
    pub fn name(self) -> &'static str {
        match self {
            Defect::Scratch => "scratch",
            Defect::Hole => "hole",
            Defect::Stain => "stain",
            Defect::Crack => "crack",
        }
    }
}

/// One generated picture.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The picture.
    pub image: RgbImage,
    /// 255 where a defect was drawn, 0 elsewhere.
    pub mask: GrayImage,
    /// The defects drawn (empty for a good sample).
    pub defects: Vec<Defect>,
}

/// Generates samples of one scene; every sample is a pure function of (seed, index).
#[derive(Debug, Clone)]
pub struct Generator {
    scene: Scene,
    size: u32,
    seed: u64,
}

impl Generator {
    /// A generator of `size`×`size` pictures.
    pub fn new(scene: Scene, size: u32, seed: u64) -> Self {
        Self {
            scene,
            size: size.max(32),
            seed,
        }
    }

    /// Sample number `index`: good when `defect` is `None`, else with that defect
    /// (and, one time in four, a second one of another kind).
    pub fn sample(&self, index: u64, defect: Option<Defect>) -> Sample {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut image = match self.scene {
            Scene::Object => self.object(&mut rng),
            Scene::Texture => self.texture(&mut rng),
        };
        let mut mask = GrayImage::new(self.size, self.size);
        let mut defects = Vec::new();
        if let Some(d) = defect {
            let region = self.defect_region();
            draw_defect(&mut image, &mut mask, d, region, &mut rng);
            defects.push(d);
            if rng.random_bool(0.25) {
                let other = Defect::ALL
                    [(Defect::ALL.iter().position(|x| *x == d).unwrap_or(0) + rng.random_range(1..4)) % 4];
                draw_defect(&mut image, &mut mask, other, region, &mut rng);
                defects.push(other);
            }
        }
        add_noise(&mut image, &mut rng, 3.0);
        Sample { image, mask, defects }
    }

    /// Where defects may go: (centre x, centre y, radius) in pixels.
    fn defect_region(&self) -> (f32, f32, f32) {
        let s = self.size as f32;
        match self.scene {
            Scene::Object => (s / 2.0, s / 2.0, s * 0.28),
            Scene::Texture => (s / 2.0, s / 2.0, s * 0.38),
        }
    }

    fn object(&self, rng: &mut ChaCha8Rng) -> RgbImage {
        let s = self.size as f32;
        let light = rng.random_range(0.9..1.1f32);
        let (cx, cy) = (
            s / 2.0 + rng.random_range(-0.02..0.02) * s,
            s / 2.0 + rng.random_range(-0.02..0.02) * s,
        );
        let r = s * rng.random_range(0.36..0.38);
        let hl_angle = rng.random_range(0.0..2.0 * PI);
        let (hx, hy) = (cx + 0.35 * r * hl_angle.cos(), cy + 0.35 * r * hl_angle.sin());
        RgbImage::from_fn(self.size, self.size, |x, y| {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let d = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
            // Conveyor belt: dark, with faint diagonal ribs.
            let belt = 38.0 + 6.0 * ((fx + fy) * 0.35).sin();
            let v = if d > r {
                let shadow = ((d - r) / (0.08 * s)).clamp(0.0, 1.0);
                [belt * (0.6 + 0.4 * shadow); 3]
            } else if d > 0.82 * r {
                // Rim: bright glass edge.
                let t = (d - 0.82 * r) / (0.18 * r);
                let v = 170.0 + 60.0 * (1.0 - (2.0 * t - 1.0).abs());
                [v * 0.9, v * 0.95, v]
            } else {
                // Bottom of the bottle: smooth brown glass with a soft highlight.
                let h = (-((fx - hx).powi(2) + (fy - hy).powi(2)) / (0.1 * r * r)).exp();
                let ring = 8.0 * (d / r * 18.0).sin();
                [
                    95.0 + ring + 90.0 * h,
                    70.0 + ring + 80.0 * h,
                    40.0 + 0.5 * ring + 70.0 * h,
                ]
            };
            Rgb(v.map(|c| (c * light).clamp(0.0, 255.0) as u8))
        })
    }

    fn texture(&self, rng: &mut ChaCha8Rng) -> RgbImage {
        let s = self.size as f32;
        let light = rng.random_range(0.92..1.08f32);
        let phase = rng.random_range(0.0..2.0 * PI);
        let period = s / rng.random_range(15.0..17.0f32);
        let base = [150.0, 110.0, 80.0];
        RgbImage::from_fn(self.size, self.size, |x, y| {
            let (fx, fy) = (x as f32, y as f32);
            // A plain weave: alternating warp and weft threads.
            let u = (2.0 * PI * fx / period + phase).sin();
            let w = (2.0 * PI * fy / period + phase).sin();
            let over = ((fx / period).floor() + (fy / period).floor()) as i64 % 2 == 0;
            let thread = if over { u.abs() } else { w.abs() };
            let fibre = 6.0 * (fx * 1.7 + fy * 0.9).sin() * (fy * 1.3).cos();
            let v = 0.75 + 0.25 * thread;
            Rgb(base.map(|c| ((c * v + fibre) * light).clamp(0.0, 255.0) as u8))
        })
    }
}

fn add_noise(img: &mut RgbImage, rng: &mut ChaCha8Rng, sigma: f32) {
    for p in img.pixels_mut() {
        // Sum of uniforms: a cheap, deterministic, roughly Gaussian noise.
        let n: f32 = (0..4).map(|_| rng.random_range(-1.0..1.0f32)).sum::<f32>() * sigma * 0.87;
        for c in p.0.iter_mut() {
            *c = (f32::from(*c) + n).clamp(0.0, 255.0) as u8;
        }
    }
}

/// Blend `colour` into pixel (x, y) with opacity `alpha` and mark it in the mask.
fn paint(img: &mut RgbImage, mask: &mut GrayImage, x: i64, y: i64, colour: [f32; 3], alpha: f32) {
    if x < 0 || y < 0 || x >= i64::from(img.width()) || y >= i64::from(img.height()) || alpha <= 0.0 {
        return;
    }
    let (x, y) = (x as u32, y as u32);
    let p = img.get_pixel_mut(x, y);
    for (c, target) in p.0.iter_mut().zip(colour) {
        *c = (f32::from(*c) * (1.0 - alpha) + target * alpha).clamp(0.0, 255.0) as u8;
    }
    if alpha >= 0.25 {
        mask.put_pixel(x, y, Luma([255]));
    }
}

fn draw_defect(
    img: &mut RgbImage,
    mask: &mut GrayImage,
    defect: Defect,
    (cx, cy, radius): (f32, f32, f32),
    rng: &mut ChaCha8Rng,
) {
    let s = img.width() as f32;
    let a = rng.random_range(0.0..2.0 * PI);
    let d = radius * rng.random_range(0.0..0.8f32).sqrt();
    let (x0, y0) = (cx + d * a.cos(), cy + d * a.sin());
    match defect {
        Defect::Scratch => {
            let len = s * rng.random_range(0.12..0.25);
            let dir = rng.random_range(0.0..PI);
            let bright = rng.random_bool(0.5);
            let colour = if bright {
                [235.0, 235.0, 230.0]
            } else {
                [20.0, 20.0, 25.0]
            };
            let width = (s / 180.0).max(1.0);
            line(
                img,
                mask,
                (x0, y0),
                (x0 + len * dir.cos(), y0 + len * dir.sin()),
                width,
                colour,
            );
        }
        Defect::Hole => {
            let r = s * rng.random_range(0.025..0.05);
            disk(img, mask, (x0, y0), r * 1.3, [200.0, 190.0, 170.0], 0.9);
            disk(img, mask, (x0, y0), r, [10.0, 8.0, 8.0], 1.0);
        }
        Defect::Stain => {
            let r = s * rng.random_range(0.04..0.08);
            let colour = [
                rng.random_range(20.0..90.0),
                rng.random_range(100.0..200.0),
                rng.random_range(20.0..80.0),
            ];
            let (rx, ry, rot) = (r, r * rng.random_range(0.5..1.0), rng.random_range(0.0..PI));
            let reach = (rx.max(ry) + 2.0) as i64;
            for dy in -reach..=reach {
                for dx in -reach..=reach {
                    let (px, py) = (dx as f32, dy as f32);
                    let u = (px * rot.cos() + py * rot.sin()) / rx;
                    let v = (-px * rot.sin() + py * rot.cos()) / ry;
                    let q = u * u + v * v;
                    if q <= 1.0 {
                        let alpha = 0.85 * (1.0 - q.powi(3));
                        paint(img, mask, x0 as i64 + dx, y0 as i64 + dy, colour, alpha);
                    }
                }
            }
        }
        Defect::Crack => {
            let steps = rng.random_range(5..9);
            let mut p = (x0, y0);
            let mut dir = rng.random_range(0.0..2.0 * PI);
            let step = s * 0.03;
            let width = (s / 256.0).max(1.0);
            for _ in 0..steps {
                dir += rng.random_range(-0.7..0.7);
                let q = (p.0 + step * dir.cos(), p.1 + step * dir.sin());
                line(img, mask, p, q, width, [15.0, 12.0, 10.0]);
                p = q;
            }
        }
    }
}

fn line(
    img: &mut RgbImage,
    mask: &mut GrayImage,
    a: (f32, f32),
    b: (f32, f32),
    width: f32,
    colour: [f32; 3],
) {
    let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt().max(1.0);
    let n = (len * 2.0) as usize + 1;
    for i in 0..=n {
        let t = i as f32 / n as f32;
        let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
        disk(img, mask, (x, y), width, colour, 1.0);
    }
}

fn disk(img: &mut RgbImage, mask: &mut GrayImage, c: (f32, f32), r: f32, colour: [f32; 3], alpha: f32) {
    let reach = r.ceil() as i64 + 1;
    let (cx, cy) = (c.0.floor() as i64, c.1.floor() as i64);
    for y in cy - reach..=cy + reach {
        for x in cx - reach..=cx + reach {
            let d = ((x as f32 + 0.5 - c.0).powi(2) + (y as f32 + 0.5 - c.1).powi(2)).sqrt();
            if d <= r {
                paint(img, mask, x, y, colour, alpha);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_reproducible_and_vary_by_index() {
        let g = Generator::new(Scene::Object, 96, 7);
        let a = g.sample(3, Some(Defect::Hole));
        let b = g.sample(3, Some(Defect::Hole));
        assert_eq!(a.image, b.image);
        assert_eq!(a.mask, b.mask);
        assert_ne!(g.sample(4, None).image, g.sample(5, None).image);
    }

    #[test]
    fn good_samples_have_empty_masks_and_defects_have_some() {
        for scene in [Scene::Object, Scene::Texture] {
            let g = Generator::new(scene, 128, 1);
            assert!(g.sample(0, None).mask.pixels().all(|p| p.0[0] == 0));
            for (i, d) in Defect::ALL.iter().enumerate() {
                let s = g.sample(i as u64, Some(*d));
                let marked = s.mask.pixels().filter(|p| p.0[0] == 255).count();
                assert!(marked > 5, "{scene} {d:?}: {marked} mask pixels");
                assert!(marked < 128 * 128 / 4, "{scene} {d:?}: {marked} mask pixels");
                assert_eq!(s.defects[0], *d);
            }
        }
    }

    #[test]
    fn the_mask_marks_changed_pixels() {
        // Same seed and index: the good and defective samples share the scene and
        // the noise differs only after the defect draws consumed randomness, so
        // compare against a noise-free rendering instead: masked pixels moved a lot.
        let g = Generator::new(Scene::Texture, 128, 3);
        let s = g.sample(2, Some(Defect::Hole));
        let dark = s
            .mask
            .enumerate_pixels()
            .filter(|(_, _, m)| m.0[0] == 255)
            .filter(|(x, y, _)| {
                s.image
                    .get_pixel(*x, *y)
                    .0
                    .iter()
                    .map(|c| u32::from(*c))
                    .sum::<u32>()
                    < 150
            })
            .count();
        assert!(dark > 10, "the hole's dark centre lies inside the mask");
    }

    #[test]
    fn scene_names_parse() {
        assert_eq!("object".parse::<Scene>().unwrap(), Scene::Object);
        assert!("blob".parse::<Scene>().is_err());
    }
}
