//! Long contractions split into short ones, before tract optimises a graph.
//!
//! tract's matrix kernels run the whole contracted dimension for each output
//! tile. At the MLP's down-projection of ViT-B-16-plus-240 (k = 3 584) the
//! packed panels of one tile no longer stay in cache: a single-threaded product
//! reached ≈ 102 GFLOP/s there, against ≈ 140 at k = 896 on the same machine.
//! `x · W` with `W` constant equals `Σ_c x[.., c] · W[c, ..]` over chunks `c` of
//! the contracted axis, and each chunk is a product with a short contraction.

use tract_core::internal::*;
use tract_core::ops::array::Slice;
use tract_core::ops::einsum::EinSum;

/// Longest contraction left whole. ViT-B-16-plus-240's k = 896 products run
/// at the kernels' best; its MLP's 3 584 becomes 4 × 896.
pub(crate) const MAX_CONTRACTION: usize = 1024;

/// Split every product of an activation with a constant matrix whose
/// contracted dimension is longer than `max_k` into equal chunks of at most
/// `max_k`, summed. Returns how many products were split.
pub(crate) fn split_long_contractions(model: &mut TypedModel, max_k: usize) -> TractResult<usize> {
    let mut split = 0;
    // Node ids change when the graph is compacted, so look again after each split.
    while let Some(Candidate { id, k_axes, chunks }) = next_candidate(model, max_k)? {
        let node = model.node(id);
        let op = node.op.clone();
        let name = node.name.clone();
        let (input, weights) = (node.inputs[0], node.inputs[1]);
        let konst = model
            .outlet_fact(weights)?
            .konst
            .clone()
            .context("constant operand")?;
        let (ka, kb) = k_axes;
        let len = konst.shape()[kb] / chunks;
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, input)?;
        let mut sum = None;
        for c in 0..chunks {
            let (start, end) = (c * len, (c + 1) * len);
            let part = patch.wire_node(format!("{name}.k{c}.input"), Slice::new(ka, start, end), &[x])?[0];
            let w = patch.add_const(format!("{name}.k{c}.weights"), konst.slice(kb, start, end)?)?;
            let y = patch.wire_node(format!("{name}.k{c}"), op.clone(), &[part, w])?[0];
            sum = Some(match sum {
                None => y,
                Some(s) => {
                    patch.wire_node(format!("{name}.k{c}.sum"), tract_core::ops::math::add(), &[s, y])?[0]
                }
            });
        }
        let sum = sum.context("at least one chunk")?;
        patch.shunt_outside(model, id.into(), sum)?;
        patch.apply(model)?;
        // Drops the unsplit matrix now, so at most one extra copy is alive.
        model.compact()?;
        split += 1;
    }
    Ok(split)
}

/// A product to split.
struct Candidate {
    /// Its node.
    id: usize,
    /// The contracted axis in the activation and in the matrix.
    k_axes: (usize, usize),
    /// Into how many chunks.
    chunks: usize,
}

/// The first product to split.
fn next_candidate(model: &TypedModel, max_k: usize) -> TractResult<Option<Candidate>> {
    for node in model.nodes() {
        let Some(op) = node.op_as::<EinSum>() else {
            continue;
        };
        if node.inputs.len() != 2 || op.q_params.is_some() {
            continue;
        }
        let Some(konst) = model.outlet_fact(node.inputs[1])?.konst.as_ref() else {
            continue;
        };
        let mut contracted = op.axes.iter_all_axes().filter(|a| a.outputs[0].is_empty());
        let (Some(axis), None) = (contracted.next(), contracted.next()) else {
            continue;
        };
        let ([ka], [kb]) = (&axis.inputs[0][..], &axis.inputs[1][..]) else {
            continue;
        };
        let k = konst.shape()[*kb];
        let chunks = k.div_ceil(max_k);
        if chunks > 1 && k % chunks == 0 {
            return Ok(Some(Candidate {
                id: node.id,
                k_axes: (*ka, *kb),
                chunks,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::graph_testing::{max_difference, run, tiny_encoder, tokens};
    use super::*;

    fn einsums(model: &TypedModel) -> usize {
        model.nodes().iter().filter(|n| n.op_is::<EinSum>()).count()
    }

    #[test]
    fn split_products_give_the_same_outputs() {
        let whole = tiny_encoder();
        let mut split = whole.clone();
        // The tiny model's MLP contracts 256: split in two of 128 (2 layers).
        assert_eq!(split_long_contractions(&mut split, 128).unwrap(), 2);
        assert_eq!(einsums(&split), einsums(&whole) + 2);
        // Nothing left to split, and a limit above every contraction splits nothing.
        assert_eq!(split_long_contractions(&mut split, 128).unwrap(), 0);
        assert_eq!(split_long_contractions(&mut whole.clone(), 256).unwrap(), 0);

        let input = tokens(3, 5);
        let (a, b) = (run(whole, &input), run(split, &input));
        assert_eq!(a.shape(), [3, 32], "the window embeddings");
        let worst = max_difference(&a, &b);
        assert!(worst < 1e-5, "max difference {worst}");
    }
}
