//! Sliding windows over the patch grid.
//!
//! A window of scale k covers k×k patches; windows move with a stride and are
//! ordered row-major by their top-left corner. Patch index = row · grid + col
//! (the order of `conv1`'s tokens); token index in the token map = patch + 1,
//! because the class token comes first.

/// All windows of one scale on one grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSet {
    grid: usize,
    scale: usize,
    stride: usize,
    /// Patch indices per window, `scale²` each, row-major inside the window.
    patches: Vec<Vec<usize>>,
}

impl WindowSet {
    /// Windows of `scale`×`scale` patches with `stride` on a `grid`×`grid` grid.
    ///
    /// Returns `None` when the scale or stride is zero or the scale exceeds the grid.
    pub fn new(grid: usize, scale: usize, stride: usize) -> Option<Self> {
        if scale == 0 || stride == 0 || scale > grid {
            return None;
        }
        let starts: Vec<usize> = (0..=grid - scale).step_by(stride).collect();
        let mut patches = Vec::with_capacity(starts.len() * starts.len());
        for &r in &starts {
            for &c in &starts {
                let mut w = Vec::with_capacity(scale * scale);
                for i in 0..scale {
                    for j in 0..scale {
                        w.push((r + i) * grid + c + j);
                    }
                }
                patches.push(w);
            }
        }
        Some(Self {
            grid,
            scale,
            stride,
            patches,
        })
    }

    /// Grid side.
    pub fn grid(&self) -> usize {
        self.grid
    }

    /// Window side in patches.
    pub fn scale(&self) -> usize {
        self.scale
    }

    /// Step between window corners.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.patches.len()
    }

    /// True when there are no windows (never, for a set built by [`WindowSet::new`]).
    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    /// Patch indices of each window.
    pub fn patches(&self) -> &[Vec<usize>] {
        &self.patches
    }

    /// Token-map rows of window `w`: the class token (row 0) then its patches (row = patch + 1).
    pub fn token_rows(&self, w: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(0).chain(self.patches[w].iter().map(|p| p + 1))
    }

    /// Tokens per window sequence: 1 + scale².
    pub fn seq_len(&self) -> usize {
        1 + self.scale * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_grid_has_196_and_169_windows() {
        assert_eq!(WindowSet::new(15, 2, 1).unwrap().len(), 196);
        assert_eq!(WindowSet::new(15, 3, 1).unwrap().len(), 169);
    }

    #[test]
    fn windows_are_row_major_by_top_left_corner() {
        let w = WindowSet::new(3, 2, 1).unwrap();
        assert_eq!(
            w.patches(),
            &[
                vec![0, 1, 3, 4],
                vec![1, 2, 4, 5],
                vec![3, 4, 6, 7],
                vec![4, 5, 7, 8]
            ]
        );
        assert_eq!(w.token_rows(3).collect::<Vec<_>>(), vec![0, 5, 6, 8, 9]);
        assert_eq!(w.seq_len(), 5);
    }

    #[test]
    fn stride_skips_corners() {
        let w = WindowSet::new(5, 2, 2).unwrap();
        assert_eq!(w.len(), 4);
        assert_eq!(w.patches()[1], vec![2, 3, 7, 8]);
    }

    #[test]
    fn impossible_sets_are_none() {
        assert!(WindowSet::new(3, 4, 1).is_none());
        assert!(WindowSet::new(3, 0, 1).is_none());
        assert!(WindowSet::new(3, 2, 0).is_none());
    }
}
