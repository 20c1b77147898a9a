//! WinCLIP / WinCLIP+ as pure math on embeddings: no I/O, no tract, no async.
//!
//! Inputs are the vision encoder's outputs for one image ([`Features`]), the
//! text prototypes and, for WinCLIP+, the few-shot reference features
//! ([`References`]). [`Scorer::score`] returns the image score and the anomaly
//! map on the patch grid; [`upsample::bilinear`] brings the map to pixels.
//!
//! Zero-shot (WinCLIP): `s_img = a(f(x))`; per window scale k the window class
//! scores are aggregated harmonically onto the patches, and
//! `M0 = n / (1/s_img + Σ_k 1/M̄_k)` with n = 1 + number of scales.
//! Few-shot (WinCLIP+): `M_W = (v_patch + Σ_k harm(v_k)) / (1 + number of scales)`,
//! map `(M0 + M_W)/2`, score `(s_img + max M_W)/2`.

pub mod prompts;
pub mod regions;
pub mod score;
pub mod upsample;
mod windows;

use ndarray::{Array1, Array2, ArrayView1, Axis};

pub use prompts::{ensemble, Ensemble, TemplateSet};
pub use score::Incidence;
pub use windows::WindowSet;

/// Default softmax temperature τ (paper and anomalib).
pub const DEFAULT_TAU: f32 = 0.07;
/// Default window scales in patches (32 and 48 px at patch 16).
pub const DEFAULT_SCALES: [usize; 2] = [2, 3];

/// Scoring inputs that do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid WinCLIP configuration: {0}")]
    Config(String),
    /// Features, prototypes or references have inconsistent shapes.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// Algorithm settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Softmax temperature τ of the class score.
    pub tau: f32,
    /// Window scales, in patches.
    pub scales: Vec<usize>,
    /// Window stride, in patches.
    pub stride: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tau: DEFAULT_TAU,
            scales: DEFAULT_SCALES.to_vec(),
            stride: 1,
        }
    }
}

impl Config {
    /// The window sets of every configured scale on a `grid`×`grid` patch grid.
    pub fn window_sets(&self, grid: usize) -> Result<Vec<WindowSet>, Error> {
        self.scales
            .iter()
            .map(|&k| {
                WindowSet::new(grid, k, self.stride).ok_or_else(|| {
                    Error::Config(format!(
                        "window scale {k} with stride {} does not fit a {grid}x{grid} grid",
                        self.stride
                    ))
                })
            })
            .collect()
    }
}

/// Normal / anomalous text prototypes: means of un-normalised prompt embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct TextPrototypes {
    /// t_n, `[D]`.
    pub normal: Array1<f32>,
    /// t_a, `[D]`.
    pub anomalous: Array1<f32>,
}

impl TextPrototypes {
    /// Mean of each set of prompt embeddings (`[N, D]` each).
    pub fn from_embeddings(normal: &Array2<f32>, anomalous: &Array2<f32>) -> Result<Self, Error> {
        let mean = |m: &Array2<f32>, what: &str| {
            m.mean_axis(Axis(0))
                .ok_or_else(|| Error::Shape(format!("no {what} prompt embeddings")))
        };
        let p = Self {
            normal: mean(normal, "normal")?,
            anomalous: mean(anomalous, "anomalous")?,
        };
        if p.normal.len() != p.anomalous.len() {
            return Err(Error::Shape(
                "normal and anomalous embeddings differ in width".into(),
            ));
        }
        Ok(p)
    }
}

/// What the vision encoder gives for one image.
#[derive(Debug, Clone)]
pub struct Features {
    /// Image embedding f(x), `[D]`.
    pub embedding: Array1<f32>,
    /// Patch features (last-layer tokens after `ln_post`), `[grid², D_w]`.
    pub patches: Array2<f32>,
    /// Window embeddings per configured scale, `[n_windows, D]` each.
    pub windows: Vec<Array2<f32>>,
}

/// Few-shot reference features of K normal images, flattened over images and positions.
#[derive(Debug, Clone, PartialEq)]
pub struct References {
    /// Number of normal images K.
    pub shots: usize,
    /// Patch features, `[K·grid², D_w]`.
    pub patches: Array2<f32>,
    /// Window embeddings per configured scale, `[K·n_windows, D]`.
    pub windows: Vec<Array2<f32>>,
}

impl References {
    /// Stack the features of K normal images.
    pub fn from_features(shots: &[Features]) -> Result<Self, Error> {
        let first = shots
            .first()
            .ok_or_else(|| Error::Shape("no reference images".into()))?;
        let stack = |get: &dyn Fn(&Features) -> ndarray::ArrayView2<'_, f32>| {
            let views: Vec<_> = shots.iter().map(get).collect();
            ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape(e.to_string()))
        };
        let patches = stack(&|f| f.patches.view())?;
        let windows = (0..first.windows.len())
            .map(|s| stack(&|f| f.windows[s].view()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            shots: shots.len(),
            patches,
            windows,
        })
    }
}

/// The result of scoring one image.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Final image score: `s_img` zero-shot, `(s_img + max M_W)/2` few-shot.
    pub score: f32,
    /// Zero-shot image score `s_img = a(f(x))`.
    pub image_score: f32,
    /// `max M_W` (few-shot only).
    pub fewshot_max: Option<f32>,
    /// Zero-shot map M0 on the grid.
    pub zero_shot: Array2<f32>,
    /// Few-shot map M_W on the grid (few-shot only).
    pub few_shot: Option<Array2<f32>>,
    /// Final anomaly map on the grid: M0, or (M0 + M_W)/2.
    pub map: Array2<f32>,
}

/// Normalised references, ready for matrix products.
#[derive(Debug, Clone)]
struct NormalizedRefs {
    patches: Array2<f32>,
    windows: Vec<Array2<f32>>,
}

/// Scores images against one bank: prototypes, window geometry and references prepared once.
#[derive(Debug, Clone)]
pub struct Scorer {
    config: Config,
    grid: usize,
    text: Array2<f32>,
    sets: Vec<WindowSet>,
    incidence: Vec<Incidence>,
    refs: Option<NormalizedRefs>,
    /// The patches inspected (row-major, grid²); `None`: all of them.
    mask: Option<Vec<bool>>,
}

impl Scorer {
    /// Prepare a scorer for a `grid`×`grid` patch grid. `refs` = `None` is zero-shot.
    pub fn new(
        config: Config,
        grid: usize,
        text: &TextPrototypes,
        refs: Option<&References>,
    ) -> Result<Self, Error> {
        if !(config.tau.is_finite() && config.tau > 0.0) {
            return Err(Error::Config(format!(
                "tau must be a positive number, got {}",
                config.tau
            )));
        }
        let sets = config.window_sets(grid)?;
        let d = text.normal.len();
        if d == 0 || text.anomalous.len() != d {
            return Err(Error::Shape(
                "text prototypes must be non-empty and of equal width".into(),
            ));
        }
        let mut t = Array2::<f32>::zeros((2, d));
        t.row_mut(0).assign(&score::normalized(text.normal.view()));
        t.row_mut(1).assign(&score::normalized(text.anomalous.view()));
        let refs = match refs {
            None => None,
            Some(r) => {
                if r.windows.len() != sets.len() {
                    return Err(Error::Shape(format!(
                        "references have {} window scales, configuration has {}",
                        r.windows.len(),
                        sets.len()
                    )));
                }
                for (w, set) in r.windows.iter().zip(&sets) {
                    if w.nrows() != r.shots * set.len() || w.ncols() != d {
                        return Err(Error::Shape(format!(
                            "scale {} references are {:?}, expected [{}, {d}]",
                            set.scale(),
                            w.shape(),
                            r.shots * set.len()
                        )));
                    }
                }
                if r.patches.nrows() != r.shots * grid * grid {
                    return Err(Error::Shape(format!(
                        "patch references have {} rows, expected {}",
                        r.patches.nrows(),
                        r.shots * grid * grid
                    )));
                }
                Some(NormalizedRefs {
                    patches: score::normalized_rows(r.patches.view()),
                    windows: r
                        .windows
                        .iter()
                        .map(|w| score::normalized_rows(w.view()))
                        .collect(),
                })
            }
        };
        let incidence = sets.iter().map(Incidence::new).collect();
        Ok(Self {
            config,
            grid,
            text: t,
            sets,
            incidence,
            refs,
            mask: None,
        })
    }

    /// Inspect only the patches `mask` marks (row-major over the grid,
    /// grid² values, at least one set); `None`: every patch. Outside it the
    /// maps are flattened to their lowest value inside, so nothing there can
    /// make a region, and the few-shot maximum is taken inside only. The
    /// zero-shot image score comes from the whole picture's embedding, which
    /// a mask cannot restrict.
    pub fn with_mask(mut self, mask: Option<&[bool]>) -> Result<Self, Error> {
        if let Some(m) = mask {
            if m.len() != self.grid * self.grid || !m.contains(&true) {
                return Err(Error::Config(format!(
                    "a patch mask needs {} values with at least one patch inspected, got {} with {} inspected",
                    self.grid * self.grid,
                    m.len(),
                    m.iter().filter(|&&b| b).count()
                )));
            }
        }
        self.mask = mask.map(<[bool]>::to_vec);
        Ok(self)
    }

    /// Whether patch `i` (row-major) is inspected.
    fn inspected(&self, i: usize) -> bool {
        self.mask.as_ref().is_none_or(|m| m[i])
    }

    /// Outside the mask, the lowest value inside.
    fn flatten(&self, v: &mut Array1<f32>) {
        let Some(m) = &self.mask else { return };
        let low = v
            .iter()
            .zip(m)
            .filter(|(_, &inside)| inside)
            .map(|(x, _)| *x)
            .fold(f32::INFINITY, f32::min);
        for (x, &inside) in v.iter_mut().zip(m) {
            if !inside {
                *x = low;
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Patch grid side.
    pub fn grid(&self) -> usize {
        self.grid
    }

    /// The window sets, one per configured scale, in order.
    pub fn window_sets(&self) -> &[WindowSet] {
        &self.sets
    }

    /// Whether references are loaded (WinCLIP+).
    pub fn is_few_shot(&self) -> bool {
        self.refs.is_some()
    }

    /// The zero-shot image score `s_img = a(f(x))` alone: the whole of
    /// zero-shot classification, needing one forward pass and no windows.
    /// The embedding's width must match the prototypes ([`Scorer::score`] checks it).
    pub fn image_score(&self, embedding: ArrayView1<'_, f32>) -> f32 {
        score::class_scores(embedding.insert_axis(Axis(0)), self.text.view(), self.config.tau)[0]
    }

    /// Score one image.
    pub fn score(&self, f: &Features) -> Result<Outcome, Error> {
        self.check_windows(f)?;
        self.outcome(f, &self.incidence, None)
    }

    /// [`Scorer::score`] of an image whose [`Scorer::prescore`] outcome is
    /// `pre`: the few-shot patch association comes from `pre` instead of being
    /// computed again. The result is the same, bit for bit.
    pub fn score_after(&self, f: &Features, pre: &Outcome) -> Result<Outcome, Error> {
        self.check_windows(f)?;
        self.outcome(f, &self.incidence, pre.few_shot.as_ref())
    }

    /// The score and map without the window scales, from the full-image pass
    /// alone (`f.windows` is not read): zero-shot `s_img` with the map `s_img`
    /// everywhere (the zero-shot score itself, exactly); few-shot
    /// `(s_img + max v_patch)/2` with the map `(s_img + v_patch)/2`. The first
    /// stage of the early-exit cascade.
    pub fn prescore(&self, f: &Features) -> Result<Outcome, Error> {
        self.outcome(f, &[], None)
    }

    fn check_windows(&self, f: &Features) -> Result<(), Error> {
        if f.windows.len() != self.sets.len() {
            return Err(Error::Shape(format!(
                "{} window scales in features, {} configured",
                f.windows.len(),
                self.sets.len()
            )));
        }
        for (w, set) in f.windows.iter().zip(&self.sets) {
            if w.nrows() != set.len() || w.ncols() != self.text.ncols() {
                return Err(Error::Shape(format!(
                    "scale {} window embeddings are {:?}, expected [{}, {}]",
                    set.scale(),
                    w.shape(),
                    set.len(),
                    self.text.ncols()
                )));
            }
        }
        Ok(())
    }

    /// Score with the window scales of `incidence` (all of them, or none).
    /// `patch_few`: the patch association, when a prescore already has it.
    fn outcome(
        &self,
        f: &Features,
        incidence: &[Incidence],
        patch_few: Option<&Array2<f32>>,
    ) -> Result<Outcome, Error> {
        let p = self.grid * self.grid;
        if f.embedding.len() != self.text.ncols() {
            return Err(Error::Shape(format!(
                "image embedding has width {}, text prototypes {}",
                f.embedding.len(),
                self.text.ncols()
            )));
        }
        let tau = self.config.tau;
        let image_score = self.image_score(f.embedding.view());

        // Zero-shot: harmonic mean of the image score and the aggregated window scores.
        let per_scale: Vec<Array1<f32>> = f
            .windows
            .iter()
            .zip(incidence)
            .map(|(w, inc)| inc.harmonic(score::class_scores(w.view(), self.text.view(), tau).view()))
            .collect();
        let s_img = Array1::from_elem(p, image_score);
        let mut terms: Vec<ArrayView1<'_, f32>> = vec![s_img.view()];
        terms.extend(per_scale.iter().map(|m| m.view()));
        let mut zero_shot = score::harmonic_mean(&terms);
        self.flatten(&mut zero_shot);

        let (score, fewshot_max, few_shot, map) = match &self.refs {
            None => (image_score, None, None, zero_shot.clone()),
            Some(refs) => {
                if f.patches.nrows() != p || f.patches.ncols() != refs.patches.ncols() {
                    return Err(Error::Shape(format!(
                        "patch features are {:?}, expected [{p}, {}]",
                        f.patches.shape(),
                        refs.patches.ncols()
                    )));
                }
                // A prescore's few-shot map is the patch association alone
                // (divided by one scale).
                let mut few = match patch_few {
                    Some(m) if m.len() == p => m.iter().copied().collect(),
                    _ => {
                        let q = score::normalized_rows(f.patches.view());
                        score::association(q.view(), refs.patches.view())
                    }
                };
                for ((w, r), inc) in f.windows.iter().zip(&refs.windows).zip(incidence) {
                    let q = score::normalized_rows(w.view());
                    few += &inc.harmonic(score::association(q.view(), r.view()).view());
                }
                few /= (1 + incidence.len()) as f32;
                self.flatten(&mut few);
                let max = few
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| self.inspected(*i))
                    .map(|(_, v)| *v)
                    .fold(f32::NEG_INFINITY, f32::max);
                let map = (&zero_shot + &few) / 2.0;
                ((image_score + max) / 2.0, Some(max), Some(few), map)
            }
        };
        let grid = |v: Array1<f32>| {
            v.into_shape_with_order((self.grid, self.grid))
                .expect("grid² values")
        };
        Ok(Outcome {
            score,
            image_score,
            fewshot_max,
            zero_shot: grid(zero_shot),
            few_shot: few_shot.map(grid),
            map: grid(map),
        })
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{arr1, Array2};

    use super::*;

    /// Features on a 3x3 grid with one window scale (k = 2, 4 windows) in 2-D embedding space.
    fn features(embedding: [f32; 2], windows: [[f32; 2]; 4], patch: f32) -> Features {
        Features {
            embedding: arr1(&embedding),
            patches: Array2::from_shape_fn((9, 3), |(i, j)| if j == 0 { 1.0 } else { patch * i as f32 }),
            windows: vec![Array2::from_shape_fn((4, 2), |(i, j)| windows[i][j])],
        }
    }

    fn text() -> TextPrototypes {
        TextPrototypes {
            normal: arr1(&[2.0, 0.0]),
            anomalous: arr1(&[0.0, 5.0]),
        }
    }

    fn config() -> Config {
        Config {
            tau: 0.07,
            scales: vec![2],
            stride: 1,
        }
    }

    #[test]
    fn zero_shot_score_is_the_image_class_score_not_the_map_max() {
        let s = Scorer::new(config(), 3, &text(), None).unwrap();
        // Image looks normal, one window looks anomalous.
        let f = features([1.0, 0.0], [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], 0.0);
        let o = s.score(&f).unwrap();
        assert!(o.score < 1e-5, "{}", o.score);
        assert_eq!(o.score, o.image_score);
        assert!(o.fewshot_max.is_none() && o.few_shot.is_none());
        // The map is the harmonic mean of s_img and the window aggregate: tiny everywhere,
        // because s_img is tiny — the image scale is part of M0.
        assert!(o.map.iter().all(|v| *v < 1e-4));
    }

    #[test]
    fn zero_shot_map_combines_image_and_window_scales_harmonically() {
        let s = Scorer::new(config(), 3, &text(), None).unwrap();
        let f = features([1.0, 1.0], [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], 0.0);
        let o = s.score(&f).unwrap();
        assert!((o.image_score - 0.5).abs() < 1e-6);
        let wa = score::class_scores(
            Array2::from_shape_vec((1, 2), vec![0.0, 1.0]).unwrap().view(),
            s.text.view(),
            0.07,
        )[0];
        // Patch (0,0) is covered only by window 0.
        let want = 2.0 / (1.0 / 0.5 + 1.0 / wa);
        assert!((o.map[[0, 0]] - want).abs() < 1e-6, "{} vs {want}", o.map[[0, 0]]);
        // Patch (2,2) only by window 3 (score 0.5).
        assert!((o.map[[2, 2]] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn few_shot_adds_the_association_map_and_its_max() {
        let normal = features([1.0, 0.0], [[1.0, 0.0]; 4], 0.0);
        let refs = References::from_features(std::slice::from_ref(&normal)).unwrap();
        let s = Scorer::new(config(), 3, &text(), Some(&refs)).unwrap();
        // The same image as the reference: association 0 everywhere.
        let o = s.score(&normal).unwrap();
        assert!(o.fewshot_max.unwrap().abs() < 1e-6);
        assert!((o.score - o.image_score / 2.0).abs() < 1e-6);
        // A different image: the patch features rotate away from the references.
        let odd = features([1.0, 0.0], [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], 1.0);
        let o = s.score(&odd).unwrap();
        let few = o.few_shot.as_ref().unwrap();
        assert!(few[[2, 2]] > few[[0, 0]]);
        let max = few.iter().copied().fold(0.0f32, f32::max);
        assert_eq!(o.fewshot_max, Some(max));
        assert!((o.score - (o.image_score + max) / 2.0).abs() < 1e-6);
        let avg = (o.zero_shot[[1, 1]] + few[[1, 1]]) / 2.0;
        assert!((o.map[[1, 1]] - avg).abs() < 1e-6);
    }

    /// Issue #17: a mask keeps the few-shot maximum and the map's peaks to
    /// the patches it marks; the zero-shot image score stays the picture's.
    #[test]
    fn a_mask_keeps_what_is_outside_it_from_the_score_and_the_map() {
        let normal = features([1.0, 0.0], [[1.0, 0.0]; 4], 0.0);
        let refs = References::from_features(std::slice::from_ref(&normal)).unwrap();
        let odd = features([1.0, 0.0], [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], 1.0);
        let all = Scorer::new(config(), 3, &text(), Some(&refs)).unwrap();
        let whole = all.score(&odd).unwrap();
        // Patch (2,2), the most anomalous, left out.
        let mut mask = vec![true; 9];
        mask[8] = false;
        let masked = all.clone().with_mask(Some(&mask)).unwrap();
        let o = masked.score(&odd).unwrap();
        let few = whole.few_shot.as_ref().unwrap();
        let inside_max = few.iter().take(8).copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(inside_max < few[[2, 2]]);
        assert_eq!(o.fewshot_max, Some(inside_max));
        assert_eq!(o.score, (o.image_score + inside_max) / 2.0);
        assert_eq!(o.image_score, whole.image_score);
        let low = o.map.iter().take(8).copied().fold(f32::INFINITY, f32::min);
        assert_eq!(o.map[[2, 2]], low, "flattened outside");
        assert_eq!(o.map[[1, 1]], whole.map[[1, 1]], "unchanged inside");
        // The early-exit path sees the same mask: the two stages agree bit for bit.
        let pre = masked.prescore(&odd).unwrap();
        assert_eq!(masked.score_after(&odd, &pre).unwrap().score, o.score);
        assert!(all.clone().with_mask(Some(&[false; 9])).is_err());
        assert!(all.with_mask(Some(&[true; 4])).is_err());
    }

    #[test]
    fn prescore_is_the_score_without_window_scales() {
        // Zero-shot: the score needs no windows, so the prescore is exact.
        let zero = Scorer::new(config(), 3, &text(), None).unwrap();
        let f = features([1.0, 1.0], [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], 0.0);
        let (full, pre) = (zero.score(&f).unwrap(), zero.prescore(&f).unwrap());
        assert_eq!(pre.score, full.score);
        assert!(pre.map.iter().all(|v| (v - full.image_score).abs() < 1e-6));

        // Few-shot: patch association only, so the windows' anomaly is unseen.
        let normal = features([1.0, 0.0], [[1.0, 0.0]; 4], 0.0);
        let refs = References::from_features(std::slice::from_ref(&normal)).unwrap();
        let few = Scorer::new(config(), 3, &text(), Some(&refs)).unwrap();
        let mut odd = normal.clone();
        odd.windows[0].row_mut(3).assign(&arr1(&[0.0, 1.0]));
        let (full, pre) = (few.score(&odd).unwrap(), few.prescore(&odd).unwrap());
        assert!(
            pre.fewshot_max.unwrap().abs() < 1e-6,
            "patches equal the reference"
        );
        assert!((pre.score - pre.image_score / 2.0).abs() < 1e-6);
        assert!(full.score > pre.score + 0.05, "{} vs {}", full.score, pre.score);
        // Windows are not read at all.
        odd.windows.clear();
        assert_eq!(few.prescore(&odd).unwrap().score, pre.score);
    }

    #[test]
    fn score_after_a_prescore_reuses_its_patch_association_and_equals_score() {
        let normal = features([1.0, 0.0], [[1.0, 0.0]; 4], 0.0);
        let refs = References::from_features(std::slice::from_ref(&normal)).unwrap();
        let few = Scorer::new(config(), 3, &text(), Some(&refs)).unwrap();
        let mut odd = features([0.5, 1.0], [[0.2, 1.0]; 4], 1.0);
        odd.patches.row_mut(4).assign(&arr1(&[0.0, 1.0, 0.0]));
        let mut pre = few.prescore(&odd).unwrap();
        let (after, full) = (few.score_after(&odd, &pre).unwrap(), few.score(&odd).unwrap());
        assert_eq!((after.score, &after.map), (full.score, &full.map));
        // The association is read from the prescore, not computed again.
        pre.few_shot.as_mut().unwrap().fill(0.0);
        let reused = few.score_after(&odd, &pre).unwrap();
        assert!(reused.score < full.score, "{} vs {}", reused.score, full.score);
    }

    #[test]
    fn mismatched_shapes_are_errors_not_panics() {
        let s = Scorer::new(config(), 3, &text(), None).unwrap();
        let mut f = features([1.0, 0.0], [[1.0, 0.0]; 4], 0.0);
        f.windows.push(f.windows[0].clone());
        assert!(matches!(s.score(&f), Err(Error::Shape(_))));
        assert!(matches!(
            Scorer::new(Config { tau: 0.0, ..config() }, 3, &text(), None),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Scorer::new(
                Config {
                    scales: vec![4],
                    ..config()
                },
                3,
                &text(),
                None
            ),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn window_sets_follow_the_configured_scales_and_name_one_that_does_not_fit() {
        let sets = Config::default().window_sets(15).unwrap();
        let sizes: Vec<_> = sets.iter().map(|s| (s.scale(), s.len())).collect();
        assert_eq!(sizes, [(2, 196), (3, 169)]);
        let too_big = Config {
            scales: vec![2, 16],
            ..Config::default()
        };
        let err = too_big.window_sets(15).unwrap_err().to_string();
        assert!(err.contains("window scale 16") && err.contains("15x15"), "{err}");
    }
}
