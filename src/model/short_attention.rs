//! Attention within short window sequences, computed with plain loops
//! instead of tract's batched matrix kernels and softmax.
//!
//! A window pass attends over 5 or 10 tokens per window and head. tract runs
//! each window-and-head product (5 × 64 by 64 × 5) as a packed matrix product
//! and each softmax row of 5 through its vector kernels, paying a setup per
//! product and row that dwarfs the arithmetic: profiled on a full-size
//! 98 × 5 window pass, the two products, their packing and the softmax took
//! ≈ 135 ms of 850, for 4.4 M multiply-adds. Here they are direct loops over
//! contiguous rows. Plans with long sequences (the full image, 226 tokens)
//! keep tract's kernels, which are better there.

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Longest softmax row taken over.
const MAX_ROW: usize = 32;
/// Most output values per product of one window and head taken over.
const MAX_FREE: usize = 4096;
/// Longest contraction taken over.
const MAX_CONTRACTION: usize = 256;

/// A product of two activations over one contracted axis, per batch
/// (window, head), for short sequences.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SmallProduct {
    /// Per output axis: the axis of each input it runs along (`None`: that
    /// input does not vary along it).
    output_axes: TVec<[Option<usize>; 2]>,
    /// The contracted axis of each input.
    contracted: [usize; 2],
}

impl Op for SmallProduct {
    fn name(&self) -> StaticName {
        "SmallProduct".into()
    }

    op_as_typed_op!();
}

impl EvalOp for SmallProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, y) = args_2!(inputs);
        let (xs, ys) = (x.try_as_plain_ram()?, y.try_as_plain_ram()?);
        let (xs, ys) = (xs.as_slice::<f32>()?, ys.as_slice::<f32>()?);
        let (x_strides, y_strides) = (
            Tensor::natural_strides(x.shape()),
            Tensor::natural_strides(y.shape()),
        );
        let stride = |strides: &[isize], axis: Option<usize>| axis.map_or(0, |a| strides[a] as usize);
        let mut shape: TVec<usize> = tvec![];
        let mut strides: TVec<(usize, usize)> = tvec![];
        for &[a, b] in &self.output_axes {
            let len = match (a, b) {
                (Some(a), _) => x.shape()[a],
                (None, Some(b)) => y.shape()[b],
                (None, None) => bail!("an output axis from neither input"),
            };
            shape.push(len);
            strides.push((stride(&x_strides, a), stride(&y_strides, b)));
        }
        let k = x.shape()[self.contracted[0]];
        ensure!(k == y.shape()[self.contracted[1]], "contracted axes differ");
        let contracted = Strides {
            x: x_strides[self.contracted[0]] as usize,
            y: y_strides[self.contracted[1]] as usize,
        };
        let mut out = Tensor::zero::<f32>(&shape)?;
        let Some((&n, outer)) = shape.split_last() else {
            bail!("a product with a scalar output");
        };
        let last = strides[strides.len() - 1];
        let last = Strides { x: last.0, y: last.1 };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let rows = view.as_slice_mut::<f32>()?;
            // Walk the output row by row, keeping each input's offset.
            let mut index: TVec<usize> = tvec![0; outer.len()];
            let (mut at_x, mut at_y) = (0usize, 0usize);
            for row in rows.chunks_exact_mut(n.max(1)) {
                product_row(row, &xs[at_x..], &ys[at_y..], last, contracted, k);
                for axis in (0..outer.len()).rev() {
                    let (sx, sy) = strides[axis];
                    index[axis] += 1;
                    at_x += sx;
                    at_y += sy;
                    if index[axis] < outer[axis] {
                        break;
                    }
                    index[axis] = 0;
                    at_x -= sx * outer[axis];
                    at_y -= sy * outer[axis];
                }
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Strides of the two inputs along one axis.
#[derive(Debug, Clone, Copy)]
struct Strides {
    x: usize,
    y: usize,
}

/// `row[j] = Σ_c x[j·last.x + c·contracted.x] · y[j·last.y + c·contracted.y]`.
fn product_row(row: &mut [f32], x: &[f32], y: &[f32], last: Strides, contracted: Strides, k: usize) {
    let n = row.len();
    if contracted.x == 1 && contracted.y == 1 {
        // Queries by keys: dot products of contiguous rows.
        for (j, out) in row.iter_mut().enumerate() {
            *out = dot(&x[j * last.x..][..k], &y[j * last.y..][..k]);
        }
    } else if last.x == 0 && last.y == 1 {
        // Weights by values: a sum of contiguous value rows.
        for c in 0..k {
            let weight = x[c * contracted.x];
            for (out, v) in row.iter_mut().zip(&y[c * contracted.y..][..n]) {
                *out += weight * v;
            }
        }
    } else if last.y == 0 && last.x == 1 {
        for c in 0..k {
            let weight = y[c * contracted.y];
            for (out, v) in row.iter_mut().zip(&x[c * contracted.x..][..n]) {
                *out += weight * v;
            }
        }
    } else {
        for (j, out) in row.iter_mut().enumerate() {
            *out = (0..k)
                .map(|c| x[j * last.x + c * contracted.x] * y[j * last.y + c * contracted.y])
                .sum();
        }
    }
}

/// Dot product in eight lanes, so the compiler can keep them in one vector.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(p, q)| p * q)
        .sum();
    for (p, q) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += p[l] * q[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

impl TypedOp for SmallProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape: TVec<TDim> = self
            .output_axes
            .iter()
            .map(|&[a, b]| match (a, b) {
                (Some(a), _) => Ok(inputs[0].shape[a].clone()),
                (None, Some(b)) => Ok(inputs[1].shape[b].clone()),
                (None, None) => bail!("an output axis from neither input"),
            })
            .collect::<TractResult<_>>()?;
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Softmax over short rows of the last axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ShortSoftmax;

impl Op for ShortSoftmax {
    fn name(&self) -> StaticName {
        "ShortSoftmax".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ShortSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut t = args_1!(inputs).into_tensor();
        let n = *t.shape().last().context("softmax of a scalar")?;
        {
            let mut view = t.try_as_plain_ram_mut()?;
            for row in view.as_slice_mut::<f32>()?.chunks_exact_mut(n.max(1)) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0.0;
                for v in row.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                for v in row.iter_mut() {
                    *v /= sum;
                }
            }
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for ShortSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// In a model with concrete shapes, replace the products of two f32
/// activations and the softmaxes over short sequences. Returns how many
/// nodes were replaced.
pub(crate) fn use_short_attention(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let op: Box<dyn TypedOp> = if let Some(p) = small_product(model, node)? {
            Box::new(p)
        } else if short_softmax(model, node)? {
            Box::new(ShortSoftmax)
        } else {
            continue;
        };
        TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?.apply(model)?;
        replaced += 1;
    }
    model.compact()?;
    Ok(replaced)
}

fn small_product(model: &TypedModel, node: &TypedNode) -> TractResult<Option<SmallProduct>> {
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if node.inputs.len() != 2 || op.q_params.is_some() || op.operating_dt != f32::datum_type() {
        return Ok(None);
    }
    let facts = [
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    ];
    if facts
        .iter()
        .any(|f| f.datum_type != f32::datum_type() || f.konst.is_some())
    {
        return Ok(None);
    }
    let (Some(x), Some(y)) = (facts[0].shape.as_concrete(), facts[1].shape.as_concrete()) else {
        return Ok(None);
    };
    let rank = model.outlet_fact(node.id.into())?.rank();
    let mut output_axes: TVec<[Option<usize>; 2]> = tvec![[None, None]; rank];
    let mut contracted = None;
    let (mut free, mut k) = (1, 0);
    for axis in op.axes.iter_all_axes() {
        let (a, b, o) = (&axis.inputs[0][..], &axis.inputs[1][..], &axis.outputs[0][..]);
        if a.len() > 1 || b.len() > 1 || o.len() > 1 {
            return Ok(None);
        }
        match (a.first(), b.first(), o.first()) {
            (Some(&a), Some(&b), None) => {
                if contracted.replace([a, b]).is_some() || x[a] != y[b] {
                    return Ok(None);
                }
                k = x[a];
            }
            (a, b, Some(&o)) if a.is_some() || b.is_some() => {
                // An axis both inputs run along must not broadcast one of them.
                if let (Some(&a), Some(&b)) = (a, b) {
                    if x[a] != y[b] {
                        return Ok(None);
                    }
                }
                output_axes[o] = [a.copied(), b.copied()];
                // Axes of one input only are the per-batch product's rows and columns.
                match (a, b) {
                    (Some(&a), None) => free *= x[a],
                    (None, Some(&b)) => free *= y[b],
                    _ => {}
                }
            }
            _ => return Ok(None),
        }
    }
    let Some(contracted) = contracted else {
        return Ok(None);
    };
    if free > MAX_FREE || k > MAX_CONTRACTION || output_axes.iter().any(|a| a == &[None, None]) {
        return Ok(None);
    }
    Ok(Some(SmallProduct {
        output_axes,
        contracted,
    }))
}

fn short_softmax(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let Some(op) = node.op_as::<Softmax>() else {
        return Ok(false);
    };
    let fact = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = fact.shape.as_concrete() else {
        return Ok(false);
    };
    Ok(op.kind == SoftmaxKind::Softmax
        && op.quant_output_dt.is_none()
        && fact.datum_type == f32::datum_type()
        && op.axes[..] == [fact.rank() - 1]
        && shape.last().is_some_and(|&n| n <= MAX_ROW))
}

#[cfg(test)]
mod tests {
    use super::super::graph_testing::{max_difference, run, tiny_encoder_for, tokens};
    use super::*;

    #[test]
    fn window_attention_gives_tracts_outputs() {
        for seq in [5, 10] {
            let tract = tiny_encoder_for(7, seq);
            let mut ours = tract.clone();
            // Per block: queries by keys, the softmax, weights by values.
            assert_eq!(use_short_attention(&mut ours).unwrap(), 2 * 3);
            assert_eq!(
                ours.nodes().iter().filter(|n| n.op_is::<SmallProduct>()).count(),
                4
            );
            let input = tokens(7, seq);
            let (a, b) = (run(tract, &input), run(ours, &input));
            assert_eq!(a.shape(), [7, 32], "the window embeddings");
            let worst = max_difference(&a, &b);
            assert!(worst < 1e-5, "{seq} tokens: max difference {worst}");
        }
    }

    #[test]
    fn a_broadcast_batch_axis_stays_with_tract() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 5, 8])).unwrap();
        let y = model.add_source("y", f32::fact([3, 5, 8])).unwrap();
        let op = EinSum::new("bmk,bnk->bmn".parse().unwrap(), f32::datum_type());
        let out = model.wire_node("qk", op, &[x, y]).unwrap();
        model.select_output_outlets(&out).unwrap();
        assert_eq!(use_short_attention(&mut model).unwrap(), 0);
    }

    #[test]
    fn long_sequences_stay_with_tract() {
        assert_eq!(use_short_attention(&mut tiny_encoder_for(1, 226)).unwrap(), 0);
    }

    #[test]
    fn every_row_kind_matches_the_plain_sum() {
        // x: 3 × 4 (rows j, contracted c), y: 4 × 3 (contracted c, columns j).
        let x: Vec<f32> = (0..12).map(|v| v as f32 - 5.0).collect();
        let y: Vec<f32> = (0..12).map(|v| (v % 5) as f32 * 0.5).collect();
        let want = |j: usize| -> f32 { (0..4).map(|c| x[j * 4 + c] * y[c * 3 + j]).sum() };
        let mut row = [0f32; 3];
        // Strided on both sides: the general loop.
        product_row(
            &mut row,
            &x,
            &y,
            Strides { x: 4, y: 1 },
            Strides { x: 1, y: 3 },
            4,
        );
        assert_eq!(row, [want(0), want(1), want(2)]);
        // Contiguous contraction on both sides: dot products (y read as its transpose).
        let yt: Vec<f32> = (0..12).map(|i| y[(i % 4) * 3 + i / 4]).collect();
        let mut row = [0f32; 3];
        product_row(
            &mut row,
            &x,
            &yt,
            Strides { x: 4, y: 4 },
            Strides { x: 1, y: 1 },
            4,
        );
        assert_eq!(row, [want(0), want(1), want(2)]);
        // One weight per contracted step, by contiguous rows of the other input.
        let mut row = [0f32; 3];
        product_row(
            &mut row,
            &x[..4],
            &y,
            Strides { x: 0, y: 1 },
            Strides { x: 1, y: 3 },
            4,
        );
        let by_row: Vec<f32> = (0..3)
            .map(|j| (0..4).map(|c| x[c] * y[c * 3 + j]).sum())
            .collect();
        assert_eq!(row.to_vec(), by_row);
        assert_eq!(dot(&x, &x), x.iter().map(|v| v * v).sum::<f32>());
    }
}
