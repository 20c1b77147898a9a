//! Products of activations with constant matrices (the encoder's linear
//! layers), run by the `gemm` crate instead of tract's matrix kernels.
//!
//! Measured single-threaded on this project's shapes (490 and 850 rows times
//! ViT-B-16-plus-240's 896 × 896 … 3 584 matrices, x86-64 with AVX-512):
//! `gemm` reaches 153–170 GFLOP/s, packing included, where tract's kernel
//! picked for the same shapes reaches 105–150 with its operands packed ahead.
//! The gap is widest at long contractions (k = 3 584: 158 against 105),
//! where `gemm` blocks the contracted axis and tract does not.
//!
//! [`use_dense_products`] rewrites an optimisable graph: every f32 `EinSum`
//! of one activation with one constant whose contracted axes are the
//! activation's last and the constant's first (`…k, kn → …n`, also with
//! several contracted axes) becomes a [`DenseProduct`] holding the constant
//! as a `k × n` matrix. Plans built from the rewritten graph share that
//! matrix (one `Arc`), so the weights are in memory once for every plan.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;
use tract_linalg::multithread::{current_tract_executor, Executor};

use super::bf16::{self, Bf16Matrix};
use super::int8::{Int8Matrix, MAX_K};
use super::precision::{layer_name, F32Layers, Precision};

/// `x · W (+ b)` over the last axes of `x`, with `W` a constant `k × n` matrix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DenseProduct {
    /// The constant, in the precision it runs.
    weight: Matrix,
    /// How many trailing axes of the input are contracted.
    contracted: usize,
    /// The output's trailing axes (the constant's non-contracted axes).
    trailing: TVec<usize>,
    /// Added to every output row, if fused.
    bias: Option<Arc<Tensor>>,
    /// The layer's name ([`layer_name`]).
    layer: Arc<str>,
}

/// A dense product's constant matrix, in the precision it runs. Plans share
/// it (one `Arc`); two are the same matrix when they are the same `Arc`.
#[derive(Debug, Clone)]
pub(crate) enum Matrix {
    /// f32, `k × n` row-major, run by `gemm`.
    F32(Arc<Tensor>),
    /// Quantised to int8 ([`super::int8`]).
    Int8(Arc<Int8Matrix>),
    /// Rounded to bf16 ([`super::bf16`]), with the kernel that runs it.
    Bf16(Arc<Bf16Matrix>, bf16::Kernel),
}

impl Matrix {
    fn address(&self) -> *const () {
        match self {
            Matrix::F32(m) => Arc::as_ptr(m).cast(),
            Matrix::Int8(m) => Arc::as_ptr(m).cast(),
            Matrix::Bf16(m, _) => Arc::as_ptr(m).cast(),
        }
    }

    fn k(&self) -> usize {
        match self {
            Matrix::F32(m) => m.shape()[0],
            Matrix::Int8(m) => m.k(),
            Matrix::Bf16(m, _) => m.k(),
        }
    }

    fn n(&self) -> usize {
        match self {
            Matrix::F32(m) => m.shape()[1],
            Matrix::Int8(m) => m.n(),
            Matrix::Bf16(m, _) => m.n(),
        }
    }

    /// The precision the product runs in.
    pub(crate) fn precision(&self) -> Precision {
        match self {
            Matrix::F32(_) => Precision::F32,
            Matrix::Int8(_) => Precision::Int8,
            Matrix::Bf16(..) => Precision::Bf16,
        }
    }
}

impl PartialEq for Matrix {
    fn eq(&self, other: &Self) -> bool {
        self.address() == other.address()
    }
}

impl Eq for Matrix {}

impl std::hash::Hash for Matrix {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.address().hash(state)
    }
}

impl DenseProduct {
    fn k(&self) -> usize {
        self.weight.k()
    }

    fn n(&self) -> usize {
        self.weight.n()
    }

    /// The constant matrix.
    pub(crate) fn weight(&self) -> &Matrix {
        &self.weight
    }

    /// The layer's name ([`layer_name`]).
    #[cfg(test)]
    pub(crate) fn layer(&self) -> &str {
        &self.layer
    }
}

impl Op for DenseProduct {
    fn name(&self) -> StaticName {
        "DenseProduct".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}: k = {}, n = {}, {}, bias: {}",
            self.layer,
            self.k(),
            self.n(),
            self.weight.precision(),
            self.bias.is_some()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DenseProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let lead = &x.shape()[..x.rank() - self.contracted];
        let rows: usize = lead.iter().product();
        let (k, n) = (self.k(), self.n());
        let mut shape: TVec<usize> = lead.into();
        shape.extend(self.trailing.iter().copied());
        let xs = x.try_as_plain_ram()?.as_slice::<f32>()?;
        ensure!(
            xs.len() == rows * k,
            "input {:?} does not contract {k}",
            x.shape()
        );
        let mut y = match &self.weight {
            Matrix::F32(_) => Tensor::zero::<f32>(&shape)?,
            // SAFETY: f32 has no invalid bit patterns, and the int8 and bf16
            // products write every output (each row of each column); zeroing
            // 7 MB per MLP product first was 6 % of an int8 window pass.
            Matrix::Int8(_) | Matrix::Bf16(..) => unsafe { Tensor::uninitialized::<f32>(&shape)? },
        };
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            let bias = match &self.bias {
                Some(b) => Some(b.try_as_plain_ram()?.as_slice::<f32>()?),
                None => None,
            };
            match &self.weight {
                Matrix::F32(w) => {
                    let ws = w.try_as_plain_ram()?.as_slice::<f32>()?;
                    if let Some(bs) = bias {
                        for row in ys.chunks_exact_mut(n.max(1)) {
                            row.copy_from_slice(bs);
                        }
                    }
                    product(rows, k, n, xs, ws, ys, bias.is_some());
                }
                Matrix::Int8(w) => by_rows(rows, k, n, xs, ys, |r, x, y| w.product(r, x, bias, y)),
                Matrix::Bf16(w, kernel) => by_rows(rows, k, n, xs, ys, |r, x, y| {
                    w.product_with(*kernel, r, x, bias, y)
                }),
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

/// Run `f(rows, x, y)` on blocks of rows as tract's executor says: on this
/// thread inside a concurrent window pass, one block per thread of the
/// executor's pool otherwise.
fn by_rows<F>(rows: usize, k: usize, n: usize, x: &[f32], y: &mut [f32], f: F)
where
    F: Fn(usize, &[f32], &mut [f32]) + Sync,
{
    if rows == 0 || n == 0 {
        return;
    }
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 && rows > 1 => {
            let block = rows.div_ceil(pool.current_num_threads());
            let f = &f;
            pool.scope(|scope| {
                for (x, y) in x.chunks(block * k).zip(y.chunks_mut(block * n)) {
                    scope.spawn(move |_| f(y.len() / n, x, y));
                }
            })
        }
        _ => f(rows, x, y),
    }
}

/// `y (+)= x · w`, all row-major: `x` is `rows × k`, `w` `k × n`, `y` `rows × n`.
pub(crate) fn product(
    rows: usize,
    k: usize,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    accumulate: bool,
) {
    if rows == 0 || k == 0 || n == 0 {
        return;
    }
    // Follow tract's executor: one thread inside a concurrent window pass,
    // the executor's pool otherwise.
    match current_tract_executor() {
        Executor::SingleThread => gemm_f32(rows, k, n, x, w, y, accumulate, gemm::Parallelism::None),
        Executor::MultiThread(pool) => {
            // One block of rows per thread, each a single-threaded product:
            // on the full image's 226 rows gemm's own threading gained
            // 0.9–1.4× on 2 threads, row blocks 1.5–1.7×.
            let block = rows.div_ceil(pool.current_num_threads().max(1));
            pool.scope(|scope| {
                for (x, y) in x.chunks(block * k).zip(y.chunks_mut(block * n)) {
                    scope.spawn(move |_| {
                        gemm_f32(x.len() / k, k, n, x, w, y, accumulate, gemm::Parallelism::None)
                    });
                }
            })
        }
        Executor::RayonGlobal => gemm_f32(rows, k, n, x, w, y, accumulate, gemm::Parallelism::Rayon(0)),
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    rows: usize,
    k: usize,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    assert!(x.len() == rows * k && w.len() == k * n && y.len() == rows * n);
    // SAFETY: the three slices hold exactly the rows × k, k × n and rows × n
    // elements the strides below address (asserted above), and `y` does not
    // alias `x` or `w` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

impl TypedOp for DenseProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(x.datum_type == f32::datum_type(), "DenseProduct runs f32 only");
        let mut shape: TVec<TDim> = x.shape.iter().take(x.rank() - self.contracted).cloned().collect();
        shape.extend(self.trailing.iter().map(|&d| d.to_dim()));
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let x = inputs[0];
        let rows: TDim = x.shape.iter().take(x.rank() - self.contracted).product();
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            rows * (self.k() * self.n())
        )))
    }

    fn axes_mapping(&self, inputs: &[&TypedFact], _outputs: &[&TypedFact]) -> TractResult<AxesMapping> {
        // Leading (row) axes pass through; the contracted axes and the
        // trailing ones are the product's own.
        let rows = inputs[0].rank() - self.contracted;
        let label = |i: usize| char::from(b'a' + i as u8);
        ensure!(
            rows + self.contracted + self.trailing.len() <= 26,
            "too many axes"
        );
        let mut axes: Vec<Axis> = (0..rows).map(|i| Axis::natural(1, 1, label(i), i)).collect();
        for c in 0..self.contracted {
            axes.push(Axis::new(label(rows + c), 1, 1).input(0, rows + c));
        }
        for t in 0..self.trailing.len() {
            axes.push(Axis::new(label(rows + self.contracted + t), 1, 1).output(0, rows + t));
        }
        AxesMapping::new(1, 1, axes)
    }

    fn slice(
        &self,
        patch: &mut TypedModelPatch,
        model: &TypedModel,
        node: &TypedNode,
        prefix: &str,
        inputs: &[OutletId],
        output_axis: usize,
        _start: &TDim,
        _end: &TDim,
    ) -> TractResult<Option<TVec<OutletId>>> {
        // Each output row is one input row times the matrix.
        let rows = model.outlet_fact(node.id.into())?.rank() - self.trailing.len();
        if output_axis >= rows {
            return Ok(None);
        }
        patch.wire_node(prefix, self.clone(), inputs).map(Some)
    }

    fn declutter(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        if self.bias.is_some() {
            return Ok(None);
        }
        // Fuse a following `+ b` with a constant `b` along the output's last axis.
        let Some(&succ) = node.outputs[0].successors.iter().next() else {
            return Ok(None);
        };
        if node.outputs[0].successors.len() != 1 || self.trailing.len() != 1 {
            return Ok(None);
        }
        let add = model.node(succ.node);
        let Some(bin) = add.op_as::<TypedBinOp>() else {
            return Ok(None);
        };
        if !bin.0.is::<Add>() {
            return Ok(None);
        }
        let other = add.inputs[1 - succ.slot];
        let Some(bias) = model.outlet_fact(other)?.konst.clone() else {
            return Ok(None);
        };
        let n = self.n();
        let ours = model.outlet_fact(node.id.into())?;
        if bias.datum_type() != f32::datum_type()
            || bias.len() != n
            || bias.shape().last() != Some(&n)
            || bias.rank() > ours.rank()
            || model.outlet_fact(add.id.into())?.shape != ours.shape
        {
            return Ok(None);
        }
        let fused = DenseProduct {
            bias: Some(Arc::new(bias.into_tensor().into_shape(&[n])?)),
            ..self.clone()
        };
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let y = patch.wire_node(&node.name, fused, &[x])?[0];
        patch.shunt_outside(model, add.id.into(), y)?;
        Ok(Some(patch))
    }

    as_op!();
}

/// Replace every f32 product of an activation with a constant matrix by a
/// [`DenseProduct`]. Returns how many were replaced.
pub(crate) fn use_dense_products(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    // One product at a time, compacting the graph after each: the product
    // holds a copy of its matrix, and compacting lets go of the constant it
    // was copied from (replacing them all first held every weight twice:
    // 0.46 GB more at the peak of loading the full-size encoder).
    while let Some((id, dense)) = next_dense(model)? {
        let node = model.node(id);
        // The constant is not an input any more: the product holds it.
        TypedModelPatch::replace_single_op(model, node, &node.inputs[..1], dense)?.apply(model)?;
        model.compact()?;
        replaced += 1;
    }
    Ok(replaced)
}

/// The first node, in evaluation order, that [`as_dense`] turns into a dense product.
fn next_dense(model: &TypedModel) -> TractResult<Option<(usize, DenseProduct)>> {
    for id in model.eval_order()? {
        if let Some(dense) = as_dense(model, model.node(id))? {
            return Ok(Some((id, dense)));
        }
    }
    Ok(None)
}

/// The dense product `node` computes, if it is `…k, kn → …n` with a constant f32 `kn`.
fn as_dense(model: &TypedModel, node: &TypedNode) -> TractResult<Option<DenseProduct>> {
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if node.inputs.len() != 2 || op.q_params.is_some() || op.operating_dt != f32::datum_type() {
        return Ok(None);
    }
    let (x, w) = (
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    );
    let Some(konst) = w.konst.as_ref() else {
        return Ok(None);
    };
    if x.datum_type != f32::datum_type() || konst.datum_type() != f32::datum_type() || x.konst.is_some() {
        return Ok(None);
    }
    let (rx, rw) = (x.rank(), konst.rank());
    let contracted = op
        .axes
        .iter_all_axes()
        .filter(|a| a.outputs[0].is_empty())
        .count();
    if contracted == 0 || contracted > rx || contracted >= rw {
        return Ok(None);
    }
    let lead = rx - contracted;
    for axis in op.axes.iter_all_axes() {
        let (xi, wi, oi) = (&axis.inputs[0][..], &axis.inputs[1][..], &axis.outputs[0][..]);
        let fits = match (xi, wi, oi) {
            // Contracted: the t-th of x's last axes is the t-th of w's first.
            ([a], [b], []) => *a >= lead && a - lead == *b,
            // Carried from x, in place.
            ([a], [], [o]) => a < &lead && a == o,
            // Carried from w, after x's leading axes, in order.
            ([], [b], [o]) => *b >= contracted && *o == lead + (b - contracted),
            _ => false,
        };
        if !fits {
            return Ok(None);
        }
    }
    let k: usize = konst.shape()[..contracted].iter().product();
    let trailing: TVec<usize> = konst.shape()[contracted..].into();
    let n: usize = trailing.iter().product();
    let weight = konst.clone().into_tensor().into_shape(&[k, n])?;
    Ok(Some(DenseProduct {
        weight: Matrix::F32(Arc::new(weight)),
        contracted,
        trailing,
        bias: None,
        layer: layer_name(&node.name).into(),
    }))
}

/// The dense products of a model.
pub(crate) fn dense_products(model: &TypedModel) -> impl Iterator<Item = &DenseProduct> {
    model.nodes().iter().filter_map(|n| n.op_as::<DenseProduct>())
}

/// What [`lower_dense_products`] did, by layer name (once each, in graph order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Lowering {
    /// Layers now in the reduced precision.
    pub lowered: Vec<String>,
    /// Layers kept in f32.
    pub kept: Vec<String>,
}

impl Lowering {
    /// Every layer's name.
    pub(crate) fn layers(&self) -> Vec<String> {
        self.lowered.iter().chain(&self.kept).cloned().collect()
    }
}

fn note(names: &mut Vec<String>, name: &str) {
    if !names.iter().any(|n| n == name) {
        names.push(name.to_string());
    }
}

/// Turn the f32 matrices of the dense products into int8 or bf16 (with
/// `bf16_kernel`), except those of the layers `keep` names. The other
/// precisions change nothing.
pub(crate) fn lower_dense_products(
    model: &mut TypedModel,
    precision: Precision,
    keep: &F32Layers,
    bf16_kernel: Option<bf16::Kernel>,
) -> TractResult<Lowering> {
    let mut done = Lowering::default();
    for id in model.eval_order()? {
        let Some(dense) = model.node(id).op_as::<DenseProduct>() else {
            continue;
        };
        let Matrix::F32(w) = &dense.weight else {
            note(&mut done.lowered, &dense.layer);
            continue;
        };
        let (k, n) = (dense.k(), dense.n());
        let ws = w.try_as_plain_ram()?.as_slice::<f32>()?;
        let weight = match (precision, bf16_kernel) {
            _ if keep.keeps(&dense.layer) => None,
            (Precision::Int8, _) if k <= MAX_K => {
                Some(Matrix::Int8(Arc::new(Int8Matrix::quantise(ws, k, n)?)))
            }
            (Precision::Bf16, Some(kernel)) => {
                Some(Matrix::Bf16(Arc::new(Bf16Matrix::new(ws, k, n)), kernel))
            }
            _ => None,
        };
        let Some(weight) = weight else {
            note(&mut done.kept, &dense.layer);
            continue;
        };
        note(&mut done.lowered, &dense.layer);
        let lowered = DenseProduct {
            weight,
            ..dense.clone()
        };
        model.node_mut(id).op = Box::new(lowered);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::super::graph_testing::{max_difference, run, tiny_encoder, tokens};
    use super::*;

    #[test]
    fn dense_products_give_tracts_outputs_with_the_biases_fused() {
        let tract = tiny_encoder();
        let mut dense = tract.clone();
        // 2 blocks × (query, key, value, attention out, MLP in, MLP out) and
        // the projection; the attention's own products have no constant.
        assert_eq!(use_dense_products(&mut dense).unwrap(), 13);
        assert_eq!(use_dense_products(&mut dense).unwrap(), 0, "nothing left");
        dense.declutter().unwrap();
        let products: Vec<_> = dense_products(&dense).collect();
        assert_eq!(products.len(), 13);
        // Named after their modules; the input projection is three products.
        let names: std::collections::BTreeSet<&str> = products.iter().map(|p| p.layer()).collect();
        assert_eq!(names.len(), 9, "{names:?}");
        for name in [
            "blocks.0.attn.in_proj",
            "blocks.1.attn.out_proj",
            "blocks.1.mlp.c_fc",
            "proj",
        ] {
            assert!(names.contains(name), "{name} in {names:?}");
        }
        // The attention output is `ambk,bkn->amn`: two contracted axes.
        assert!(products.iter().any(|p| p.contracted == 2));
        // The MLP's biases are fused. (The attention's are zero in a freshly
        // initialised CLIP, and tract drops additions of zeros; the
        // projection has none.)
        assert_eq!(products.iter().filter(|p| p.bias.is_some()).count(), 4);
        for node in dense.nodes().iter().filter(|n| n.op_is::<DenseProduct>()) {
            for succ in &node.outputs[0].successors {
                let next = dense.node(succ.node);
                let adds_constant = next.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Add>())
                    && next
                        .inputs
                        .iter()
                        .any(|i| dense.outlet_fact(*i).unwrap().konst.is_some());
                assert!(!adds_constant, "{} is left after {}", next.name, node.name);
            }
        }

        let input = tokens(3, 5);
        let (a, b) = (run(tract, &input), run(dense, &input));
        assert_eq!(a.shape(), [3, 32], "the window embeddings");
        let worst = max_difference(&a, &b);
        assert!(worst < 1e-5, "max difference {worst}");
    }

    #[test]
    fn a_product_runs_single_and_multi_threaded_alike() {
        let (rows, k, n) = (37, 50, 23);
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5).collect();
        let want: Vec<f32> = (0..rows * n)
            .map(|ij| (0..k).map(|c| x[ij / n * k + c] * w[c * n + ij % n]).sum())
            .collect();
        for executor in [Executor::SingleThread, Executor::multithread(2)] {
            let mut y = vec![1.0; rows * n];
            tract_linalg::multithread::multithread_tract_scope(executor, || {
                product(rows, k, n, &x, &w, &mut y, true)
            });
            // Small integers: exact in any summation order; `accumulate` adds to the 1s.
            assert!(y.iter().zip(&want).all(|(g, w)| *g == w + 1.0));
        }
    }
}
