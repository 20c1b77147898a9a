//! Compute only the rows that an output reads.
//!
//! A window pass keeps one row of its last layer: the class token, which
//! WinCLIP embeds. After the last attention everything works row by row
//! (residual, layer norms, MLP, `ln_post`), and the last attention needs its
//! queries only for that row; keys and values still need every token. So,
//! for windows of 5 and 10 tokens, 4 of 5 and 9 of 10 rows of the last
//! layer's query, attention output and MLP products were computed for
//! nothing: ≈ 6 % of a window pass.
//!
//! [`use_needed_rows`] knows nothing of transformers. From every node that
//! picks a fixed range of rows of one axis (a `Gather` of one constant index,
//! a `Slice`), it walks back through the nodes that work row by row along
//! that axis, as each op's axes mapping and its `slice` say, and rewires them
//! on those rows only. A result that some other node needs whole stays whole,
//! and the narrowed nodes slice it where they read it. Nothing changes
//! numerically: each kept row is computed exactly as before.

use std::collections::HashMap;

use tract_core::internal::*;
use tract_core::ops::array::{Gather, Slice};
use tract_core::ops::nn::Softmax;

/// Which values of an outlet its consumers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Need {
    /// All of them.
    Whole,
    /// Rows `start..end` of `axis`.
    Rows { axis: usize, start: usize, end: usize },
}

impl Need {
    /// What two consumers read together. Different rows count as the whole:
    /// a narrowed result is narrowed once, for every consumer alike.
    fn and(self, other: Need) -> Need {
        if self == other {
            self
        } else {
            Need::Whole
        }
    }
}

/// How a node is computed on fewer rows: the axis and rows of its output,
/// and per input the axis to take the same rows of (`None`: read whole).
struct Narrowing {
    axis: usize,
    start: usize,
    end: usize,
    inputs: TVec<Option<usize>>,
}

impl Narrowing {
    /// The same rows, of `axis` (an input's).
    fn rows_along(&self, axis: usize) -> Need {
        Need::Rows {
            axis,
            start: self.start,
            end: self.end,
        }
    }
}

/// Rewire every node whose consumers read only some rows of one axis to
/// compute those rows only. Returns how many nodes were narrowed.
pub(crate) fn use_needed_rows(model: &mut TypedModel) -> TractResult<usize> {
    let order = model.eval_order()?;
    let mut needs: HashMap<OutletId, Need> = model
        .output_outlets()?
        .iter()
        .map(|&o| (o, Need::Whole))
        .collect();
    let mut narrowed: HashMap<usize, Narrowing> = HashMap::new();
    for &id in order.iter().rev() {
        let node = model.node(id);
        let need = if node.outputs.len() == 1 {
            needs.get(&OutletId::new(id, 0)).copied().unwrap_or(Need::Whole)
        } else {
            Need::Whole
        };
        let input_needs: TVec<Need> = if let Some(narrowing) = narrowing(model, node, need)? {
            let needs = narrowing
                .inputs
                .iter()
                .map(|axis| axis.map_or(Need::Whole, |axis| narrowing.rows_along(axis)))
                .collect();
            narrowed.insert(id, narrowing);
            needs
        } else {
            let mut needs: TVec<Need> = tvec![Need::Whole; node.inputs.len()];
            if let Some(rows) = rows_picked(model, node)? {
                needs[0] = rows;
            }
            needs
        };
        for (&input, input_need) in node.inputs.iter().zip(input_needs) {
            needs
                .entry(input)
                .and_modify(|n| *n = n.and(input_need))
                .or_insert(input_need);
        }
    }
    // (Every consumer of a node comes after it in evaluation order: walking
    // it backwards, a node's need is complete when the node is judged.)
    if narrowed.is_empty() {
        return Ok(0);
    }

    let mut patch = TypedModelPatch::new("compute only the rows read");
    let mut rows_of: HashMap<OutletId, OutletId> = HashMap::new();
    let mut slices: HashMap<(OutletId, Need), OutletId> = HashMap::new();
    for &id in &order {
        let node = model.node(id);
        if let Some(n) = narrowed.get(&id) {
            let mut inputs: TVec<OutletId> = tvec![];
            for (&input, &axis) in node.inputs.iter().zip(&n.inputs) {
                let wire = match (rows_of.get(&input), axis) {
                    (Some(&rows), _) => rows,
                    (None, None) => patch.tap_model(model, input)?,
                    (None, Some(axis)) => slice_of_whole(&mut patch, model, &mut slices, input, axis, n)?,
                };
                inputs.push(wire);
            }
            let name = format!("{}.rows-{}..{}", node.name, n.start, n.end);
            let wire = wire_narrowed(&mut patch, model, node, &name, &inputs, n)?;
            rows_of.insert(OutletId::new(id, 0), wire);
        } else if let Some(&rows) = node.inputs.first().and_then(|i| rows_of.get(i)) {
            // A node picking rows, now fed exactly those rows.
            let wire = match rows_picked(model, node)? {
                Some(Need::Rows { axis, .. }) if node.op_is::<Gather>() => {
                    patch.wire_node(&node.name, AxisOp::Rm(axis), &[rows])?[0]
                }
                Some(Need::Rows { .. }) => rows,
                _ => bail!("{node} reads narrowed rows it does not pick"),
            };
            patch.shunt_outside(model, OutletId::new(id, 0), wire)?;
        }
    }
    patch.apply(model)?;
    model.compact()?;
    Ok(narrowed.len())
}

/// Rows `n.start..n.end` along `axis` of `input`, a result computed whole;
/// sliced once per range, however many narrowed nodes read it.
fn slice_of_whole(
    patch: &mut TypedModelPatch,
    model: &TypedModel,
    slices: &mut HashMap<(OutletId, Need), OutletId>,
    input: OutletId,
    axis: usize,
    n: &Narrowing,
) -> TractResult<OutletId> {
    let rows = n.rows_along(axis);
    if let Some(&wire) = slices.get(&(input, rows)) {
        return Ok(wire);
    }
    let whole = patch.tap_model(model, input)?;
    let name = format!("{}.rows-{}..{}", model.node(input.node).name, n.start, n.end);
    let wire = patch.wire_node(name, Slice::new(axis, n.start, n.end), &[whole])?[0];
    slices.insert((input, rows), wire);
    Ok(wire)
}

/// How `node` computes fewer rows of its output, if its consumers read only
/// some rows and the op works row by row along their axis.
fn narrowing(model: &TypedModel, node: &TypedNode, need: Need) -> TractResult<Option<Narrowing>> {
    let Need::Rows { axis, start, end } = need else {
        return Ok(None);
    };
    if node.outputs.len() != 1 || node.inputs.is_empty() {
        return Ok(None);
    }
    // A slice along the same axis picks rows itself: its bounds would not
    // fit its narrowed input.
    if node.op_as::<Slice>().is_some_and(|s| s.axis == axis) {
        return Ok(None);
    }
    let output = &node.outputs[0].fact;
    if output.shape[axis].to_usize().ok() == Some(end - start) {
        return Ok(None);
    }
    // An op that cannot say how its axes map is left whole.
    let input_facts = model.node_input_facts(node.id)?;
    let Ok(mapping) = node.op.axes_mapping(&input_facts, &[output]) else {
        return Ok(None);
    };
    let Ok(along) = mapping.axis((InOut::Out(0), axis)) else {
        return Ok(None);
    };
    let mut inputs: TVec<Option<usize>> = tvec![];
    for (slot, fact) in input_facts.iter().enumerate() {
        inputs.push(match along.inputs[slot][..] {
            [] => None,
            // A broadcast input: every row reads the same.
            [a] if fact.shape[a].is_one() => None,
            [a] if fact.shape[a] == output.shape[axis] => Some(a),
            _ => return Ok(None),
        });
    }
    let narrowing = Narrowing {
        axis,
        start,
        end,
        inputs,
    };
    // Whether the op computes its rows independently along `axis` is the
    // op's to say: try it on a scratch patch.
    let mut scratch = TypedModelPatch::default();
    let mut wires = tvec![];
    for (&input, &a) in node.inputs.iter().zip(&narrowing.inputs) {
        wires.push(match a {
            Some(a) => slice_of_whole(&mut scratch, model, &mut HashMap::new(), input, a, &narrowing)?,
            None => scratch.tap_model(model, input)?,
        });
    }
    if wire_narrowed(&mut scratch, model, node, &node.name, &wires, &narrowing).is_err() {
        return Ok(None);
    }
    Ok(Some(narrowing))
}

/// Wire `node`'s op on `inputs`, its rows as `n` says; an error if the op
/// cannot work on fewer rows of that axis.
fn wire_narrowed(
    patch: &mut TypedModelPatch,
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    inputs: &[OutletId],
    n: &Narrowing,
) -> TractResult<OutletId> {
    // tract's softmax does not say it is row by row; it is along every axis
    // it does not normalise over.
    if let Some(softmax) = node.op_as::<Softmax>() {
        ensure!(!softmax.axes.contains(&n.axis), "softmax over the narrowed axis");
        return Ok(patch.wire_node(name, softmax.clone(), inputs)?[0]);
    }
    let wires = node
        .op
        .slice(
            patch,
            model,
            node,
            name,
            inputs,
            n.axis,
            &n.start.to_dim(),
            &n.end.to_dim(),
        )?
        .with_context(|| format!("{node} does not compute rows of axis {} alone", n.axis))?;
    ensure!(wires.len() == 1);
    Ok(wires[0])
}

/// The rows of one axis of its first input that `node` picks: a `Slice` with
/// fixed bounds, or a `Gather` of one constant index.
fn rows_picked(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Need>> {
    if !(node.op_is::<Slice>() || node.op_is::<Gather>()) {
        return Ok(None);
    }
    let Some(&input) = node.inputs.first() else {
        return Ok(None);
    };
    let Some(shape) = model.outlet_fact(input)?.shape.as_concrete() else {
        return Ok(None);
    };
    if let Some(slice) = node.op_as::<Slice>() {
        let (Ok(start), Ok(end)) = (slice.start.to_usize(), slice.end.to_usize()) else {
            return Ok(None);
        };
        return Ok((end > start).then_some(Need::Rows {
            axis: slice.axis,
            start,
            end,
        }));
    }
    if let Some(gather) = node.op_as::<Gather>() {
        let Some(&indices) = node.inputs.get(1) else {
            return Ok(None);
        };
        let Some(index) = model.outlet_fact(indices)?.konst.clone() else {
            return Ok(None);
        };
        if index.rank() != 0 {
            return Ok(None);
        }
        let Ok(index) = index.cast_to_scalar::<i64>() else {
            return Ok(None);
        };
        let dim = shape[gather.axis] as i64;
        let index = if index < 0 { index + dim } else { index };
        if !(0..dim).contains(&index) {
            return Ok(None);
        }
        let start = index as usize;
        return Ok(Some(Need::Rows {
            axis: gather.axis,
            start,
            end: start + 1,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::dense::use_dense_products;
    use super::super::graph_testing::{max_difference, run, tiny_encoder_for, tokens};
    use super::*;
    use tract_core::ops::binary::TypedBinOp;
    use tract_core::ops::math::{Add, Mul};

    /// The tiny encoder for `batch` windows of `seq` tokens, keeping its
    /// class embedding output only; its linear layers as dense products if
    /// `dense`, as in the plans.
    fn class_only(batch: usize, seq: usize, dense: bool) -> TypedModel {
        let mut model = tiny_encoder_for(batch, seq);
        if dense {
            use_dense_products(&mut model).unwrap();
        }
        let first = model.output_outlets().unwrap()[0];
        model.select_output_outlets(&[first]).unwrap();
        model.declutter().unwrap();
        model
    }

    /// Token rows of every computed (not constant) output of a node whose
    /// name starts with `prefix`.
    fn rows_of(model: &TypedModel, prefix: &str) -> Vec<usize> {
        model
            .nodes()
            .iter()
            .filter(|n| n.name.starts_with(prefix) && !n.inputs.is_empty())
            .filter(|n| n.outputs[0].fact.rank() >= 3 && n.outputs[0].fact.konst.is_none())
            .map(|n| n.outputs[0].fact.shape[1].to_usize().unwrap())
            .collect()
    }

    #[test]
    fn the_class_embedding_needs_the_last_layer_on_the_class_token_only() {
        for dense in [false, true] {
            for seq in [5, 10] {
                let whole = class_only(7, seq, dense);
                let mut ours = whole.clone();
                assert!(use_needed_rows(&mut ours).unwrap() > 10);
                // The last block's MLP runs on one row per window, the first
                // block on all of them.
                let mlp = rows_of(&ours, "/blocks.1/mlp/");
                assert!(!mlp.is_empty() && mlp.iter().all(|&r| r == 1), "{mlp:?}");
                let first = rows_of(&ours, "/blocks.0/mlp/");
                assert!(!first.is_empty() && first.iter().all(|&r| r == seq), "{first:?}");

                let input = tokens(7, seq);
                let (a, b) = (run(whole, &input), run(ours, &input));
                assert_eq!(a.shape(), [7, 32], "the window embeddings");
                let worst = max_difference(&a, &b);
                assert!(
                    worst < 1e-5,
                    "{seq} tokens, dense {dense}: max difference {worst}"
                );
            }
        }
    }

    #[test]
    fn an_output_of_every_token_keeps_every_row() {
        let mut model = tiny_encoder_for(3, 5);
        assert_eq!(model.output_outlets().unwrap().len(), 2);
        assert_eq!(use_needed_rows(&mut model).unwrap(), 0);
    }

    /// `x + 1` on a 4 × 6 input, then each of `rows` sliced off as an output;
    /// with `scale`, each output doubled first (a consumer that can be narrowed).
    fn sliced_sum(rows: &[(usize, usize)], scale: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([4, 6])).unwrap();
        let one = model.add_const("one", tensor2(&[[1f32; 6]])).unwrap();
        let sum = model
            .wire_node("sum", TypedBinOp(Box::new(Add), None), &[x, one])
            .unwrap()[0];
        let outputs: Vec<OutletId> = rows
            .iter()
            .map(|&(s, e)| {
                let mut wire = sum;
                if scale {
                    let two = model
                        .add_const(format!("two {s}"), tensor2(&[[2f32; 6]]))
                        .unwrap();
                    let op = TypedBinOp(Box::new(Mul), None);
                    wire = model.wire_node(format!("scale {s}"), op, &[sum, two]).unwrap()[0];
                }
                model
                    .wire_node(format!("rows {s}"), Slice::new(0, s, e), &[wire])
                    .unwrap()[0]
            })
            .collect();
        model.select_output_outlets(&outputs).unwrap();
        model
    }

    #[test]
    fn rows_read_by_a_slice_are_the_only_ones_computed() {
        let whole = sliced_sum(&[(1, 3)], false);
        let mut ours = whole.clone();
        assert_eq!(use_needed_rows(&mut ours).unwrap(), 1);
        let sum = ours.nodes().iter().find(|n| n.name.starts_with("sum")).unwrap();
        assert_eq!(sum.outputs[0].fact.shape.as_concrete(), Some(&[2, 6][..]));
        let (a, b) = (run(whole, &numbers()), run(ours, &numbers()));
        assert_eq!(a.shape(), [2, 6]);
        assert_eq!(max_difference(&a, &b), 0.0);
    }

    #[test]
    fn different_rows_read_by_two_consumers_keep_the_result_whole() {
        let mut model = sliced_sum(&[(0, 1), (2, 3)], false);
        assert_eq!(use_needed_rows(&mut model).unwrap(), 0);
    }

    #[test]
    fn consumers_narrowed_to_different_rows_of_one_result_each_read_their_own() {
        let whole = sliced_sum(&[(0, 1), (2, 3)], true);
        let mut ours = whole.clone();
        // The two doublings; the sum they share stays whole.
        assert_eq!(use_needed_rows(&mut ours).unwrap(), 2);
        let plan = |m: TypedModel| m.into_optimized().unwrap().into_runnable().unwrap();
        let want = plan(whole).run(tvec!(numbers().into())).unwrap();
        let got = plan(ours).run(tvec!(numbers().into())).unwrap();
        assert_eq!(want.len(), 2);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(max_difference(w, g), 0.0);
        }
    }

    /// 0, 1, … 23 as a 4 × 6 input.
    fn numbers() -> Tensor {
        Tensor::from_shape(&[4, 6], &(0..24).map(|v| v as f32).collect::<Vec<_>>()).unwrap()
    }
}
