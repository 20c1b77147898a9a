//! The scoring formulas of WinCLIP / WinCLIP+, on plain arrays.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::WindowSet;

/// L2-normalise a vector; a zero vector stays zero.
pub fn normalized(v: ArrayView1<'_, f32>) -> Array1<f32> {
    let n = v.dot(&v).sqrt();
    if n > 0.0 {
        v.mapv(|x| x / n)
    } else {
        v.to_owned()
    }
}

/// L2-normalise every row.
pub fn normalized_rows(m: ArrayView2<'_, f32>) -> Array2<f32> {
    let mut out = m.to_owned();
    for mut row in out.rows_mut() {
        let n = row.dot(&row).sqrt();
        if n > 0.0 {
            row.mapv_inplace(|x| x / n);
        }
    }
    out
}

/// Class score `a(e) = exp(cos(e,t_a)/τ) / (exp(cos(e,t_n)/τ) + exp(cos(e,t_a)/τ))` for
/// every row of `embeddings`. `text` holds the *normalised* prototypes
/// `[t_n, t_a]` as rows. Written as a logistic function of the difference, which
/// is the same value without overflow for small τ.
pub fn class_scores(embeddings: ArrayView2<'_, f32>, text: ArrayView2<'_, f32>, tau: f32) -> Array1<f32> {
    embeddings
        .rows()
        .into_iter()
        .map(|e| {
            let norm = e.dot(&e).sqrt();
            let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            let cos_n = f64::from(e.dot(&text.row(0)) * inv);
            let cos_a = f64::from(e.dot(&text.row(1)) * inv);
            (1.0 / (1.0 + ((cos_n - cos_a) / f64::from(tau)).exp())) as f32
        })
        .collect()
}

/// Patch ← window incidence of one window set, for harmonic aggregation.
#[derive(Debug, Clone)]
pub struct Incidence {
    /// For every patch, the windows covering it.
    covering: Vec<Vec<usize>>,
    windows: usize,
}

impl Incidence {
    /// Build the incidence of `set` on its grid.
    pub fn new(set: &WindowSet) -> Self {
        let mut covering = vec![Vec::new(); set.grid() * set.grid()];
        for (w, patches) in set.patches().iter().enumerate() {
            for &p in patches {
                covering[p].push(w);
            }
        }
        Self {
            covering,
            windows: set.len(),
        }
    }

    /// Number of windows.
    pub fn windows(&self) -> usize {
        self.windows
    }

    /// Harmonic aggregation of window scores to patches:
    /// `M̄(p) = |W_p| / Σ_{w∈W_p} 1/M_w`. A window score of 0 makes its patches 0
    /// (1/0 = ∞); a patch no window covers gets 0.
    pub fn harmonic(&self, window_scores: ArrayView1<'_, f32>) -> Array1<f32> {
        assert_eq!(window_scores.len(), self.windows, "one score per window");
        self.covering
            .iter()
            .map(|ws| {
                if ws.is_empty() {
                    return 0.0;
                }
                let inv: f64 = ws.iter().map(|&w| 1.0 / f64::from(window_scores[w])).sum();
                (ws.len() as f64 / inv) as f32
            })
            .collect()
    }
}

/// Harmonic mean of several maps (element-wise), `n / Σ 1/M_i`; any zero gives zero.
pub fn harmonic_mean(maps: &[ArrayView1<'_, f32>]) -> Array1<f32> {
    let n = maps.first().map_or(0, |m| m.len());
    (0..n)
        .map(|i| {
            let inv: f64 = maps.iter().map(|m| 1.0 / f64::from(m[i])).sum();
            (maps.len() as f64 / inv) as f32
        })
        .collect()
}

/// Visual association `v(f; R) = min_{r∈R} ½(1 − cos(f, r))` for every row of
/// `queries`, as one matrix product. Both inputs must have L2-normalised rows.
pub fn association(queries: ArrayView2<'_, f32>, references: ArrayView2<'_, f32>) -> Array1<f32> {
    let sims = queries.dot(&references.t());
    sims.map_axis(Axis(1), |row| {
        let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Rounding can push a cosine of identical vectors past 1; v is ≥ 0 by
        // definition, and a negative v would turn the harmonic aggregation into NaN.
        (0.5 * (1.0 - best)).max(0.0)
    })
}

#[cfg(test)]
mod tests {
    use ndarray::{arr1, arr2, Array1};

    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn harmonic_aggregation_matches_the_worked_3x3_example() {
        let set = WindowSet::new(3, 2, 1).unwrap();
        let inc = Incidence::new(&set);
        let m = inc.harmonic(arr1(&[1.0, 0.75, 0.5, 0.25]).view());
        close(
            m.as_slice().unwrap(),
            &[
                1.0,
                0.857_142_9,
                0.75,
                0.666_666_7,
                0.48,
                0.375,
                0.5,
                0.333_333_3,
                0.25,
            ],
            1e-6,
        );
    }

    #[test]
    fn a_zero_window_score_zeroes_its_patches_and_nothing_else() {
        let set = WindowSet::new(3, 2, 1).unwrap();
        let m = Incidence::new(&set).harmonic(arr1(&[0.0, 0.5, 0.5, 0.5]).view());
        close(
            m.as_slice().unwrap(),
            &[0.0, 0.0, 0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5],
            1e-6,
        );
    }

    #[test]
    fn uncovered_patches_get_zero() {
        // Stride 2 with scale 1 on a 3x3 grid leaves the middle row/column uncovered.
        let set = WindowSet::new(3, 1, 2).unwrap();
        let m = Incidence::new(&set).harmonic(Array1::from_elem(set.len(), 0.7).view());
        close(
            m.as_slice().unwrap(),
            &[0.7, 0.0, 0.7, 0.0, 0.0, 0.0, 0.7, 0.0, 0.7],
            1e-6,
        );
    }

    #[test]
    fn class_score_is_a_two_way_softmax_with_temperature() {
        let text = arr2(&[[1.0, 0.0], [0.0, 1.0]]);
        // e at 45° between the two prototypes: equal cosines → 0.5.
        let s = class_scores(arr2(&[[1.0, 1.0]]).view(), text.view(), 0.07);
        close(s.as_slice().unwrap(), &[0.5], 1e-7);
        // e = t_a: cos_a = 1, cos_n = 0 → 1 / (1 + exp(-1/τ)).
        let s = class_scores(arr2(&[[0.0, 3.0]]).view(), text.view(), 0.07);
        let want = 1.0 / (1.0 + (-1.0f64 / 0.07).exp());
        close(s.as_slice().unwrap(), &[want as f32], 1e-7);
        // The scale of e does not matter; τ sharpens.
        let soft = class_scores(arr2(&[[1.0, 2.0]]).view(), text.view(), 1.0)[0];
        let sharp = class_scores(arr2(&[[10.0, 20.0]]).view(), text.view(), 0.07)[0];
        assert!(sharp > soft && soft > 0.5);
    }

    #[test]
    fn tiny_tau_does_not_overflow() {
        let text = arr2(&[[1.0, 0.0], [0.0, 1.0]]);
        let s = class_scores(arr2(&[[1.0, 0.0], [0.0, 1.0]]).view(), text.view(), 1e-4);
        close(s.as_slice().unwrap(), &[0.0, 1.0], 1e-7);
    }

    #[test]
    fn harmonic_mean_of_maps() {
        let a = arr1(&[0.5, 1.0, 0.0]);
        let b = arr1(&[0.5, 0.5, 0.9]);
        let c = arr1(&[0.5, 0.25, 0.9]);
        let m = harmonic_mean(&[a.view(), b.view(), c.view()]);
        close(m.as_slice().unwrap(), &[0.5, 3.0 / 7.0, 0.0], 1e-6);
    }

    #[test]
    fn an_exact_reference_match_scores_zero_not_nan() {
        // Rows whose float dot product with themselves exceeds 1 after normalising.
        let m = normalized_rows(arr2(&[[0.1, 0.7, 0.3], [0.9, 0.2, 0.4], [0.3, 0.3, 0.3]]).view());
        let v = association(m.view(), m.view());
        assert!(v.iter().all(|x| *x == 0.0 || (*x > 0.0 && *x < 1e-6)), "{v:?}");
        let set = WindowSet::new(2, 1, 1).unwrap();
        let agg = Incidence::new(&set).harmonic(Array1::from(vec![0.0, 0.0, 0.0, 0.0]).view());
        assert!(agg.iter().all(|x| *x == 0.0));
    }

    #[test]
    fn association_is_half_one_minus_the_best_cosine() {
        let refs = normalized_rows(arr2(&[[1.0, 0.0], [0.0, 1.0]]).view());
        let q = normalized_rows(arr2(&[[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]).view());
        let v = association(q.view(), refs.view());
        let half = 0.5 * (1.0 - std::f32::consts::FRAC_1_SQRT_2);
        close(v.as_slice().unwrap(), &[0.0, half, 0.5], 1e-6);
    }
}
