//! Bilinear resizing of score maps with half-pixel centres
//! (PyTorch's `interpolate(mode="bilinear", align_corners=False)`).

use ndarray::{Array2, ArrayView2};

/// Resize `map` to `out_h`×`out_w`. Sample centres sit at half-pixel offsets;
/// coordinates left of the first centre clamp to it, as in PyTorch.
pub fn bilinear(map: ArrayView2<'_, f32>, out_h: usize, out_w: usize) -> Array2<f32> {
    let (h, w) = map.dim();
    let ys = coords(h, out_h);
    let xs = coords(w, out_w);
    Array2::from_shape_fn((out_h, out_w), |(i, j)| {
        let (y0, y1, ly) = ys[i];
        let (x0, x1, lx) = xs[j];
        let top = map[[y0, x0]] * (1.0 - lx) + map[[y0, x1]] * lx;
        let bottom = map[[y1, x0]] * (1.0 - lx) + map[[y1, x1]] * lx;
        top * (1.0 - ly) + bottom * ly
    })
}

/// Per output index: the two input indices and the weight of the second.
fn coords(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ndarray::arr2;

    use super::*;

    #[test]
    fn two_by_two_to_four_by_four_matches_pytorch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0.,1.],[2.,3.]]]]), size=4,
        //   mode="bilinear", align_corners=False)
        let out = bilinear(arr2(&[[0.0, 1.0], [2.0, 3.0]]).view(), 4, 4);
        let want = arr2(&[
            [0.0, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0],
        ]);
        for (a, b) in out.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn same_size_is_identity_and_constants_stay_constant() {
        let m = arr2(&[[0.1, 0.9, 0.3], [0.4, 0.5, 0.6]]);
        assert_eq!(bilinear(m.view(), 2, 3), m);
        let c = Array2::from_elem((15, 15), 0.42f32);
        assert!(bilinear(c.view(), 240, 240)
            .iter()
            .all(|v| (v - 0.42).abs() < 1e-6));
    }

    #[test]
    fn downscaling_works_too() {
        let m = Array2::from_shape_fn((4, 4), |(i, j)| (i * 4 + j) as f32);
        let out = bilinear(m.view(), 2, 2);
        assert_eq!(out, arr2(&[[2.5, 4.5], [10.5, 12.5]]));
    }
}
