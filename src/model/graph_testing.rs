//! What the unit tests of the graph rewrites share: the tiny encoder as tract
//! declutters it, test tokens, a run, and the difference of two outputs.

use std::collections::HashMap;

use tract_onnx::prelude::*;

use super::tiny_encoder_path;

/// The tiny encoder, decluttered, with symbolic batch and sequence.
pub(crate) fn tiny_encoder() -> TypedModel {
    tract_onnx::onnx()
        .model_for_path(tiny_encoder_path())
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .unwrap()
}

/// The tiny encoder, decluttered for `batch` sequences of `seq` tokens.
pub(crate) fn tiny_encoder_for(batch: usize, seq: usize) -> TypedModel {
    let model = tiny_encoder();
    let fact = model.input_fact(0).unwrap();
    let subs: HashMap<Symbol, TDim> = fact
        .shape
        .iter()
        .zip([batch, seq])
        .filter_map(|(d, v)| match d {
            TDim::Sym(s) => Some((s.clone(), TDim::Val(v as i64))),
            _ => None,
        })
        .collect();
    let mut model = model.set_symbols(&subs).unwrap();
    model.declutter().unwrap();
    model
}

/// `batch` sequences of `seq` tokens of the tiny encoder's width, in [-1, 1].
pub(crate) fn tokens(batch: usize, seq: usize) -> Tensor {
    let len = batch * seq * 64;
    let values: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    Tensor::from_shape(&[batch, seq, 64], &values).unwrap()
}

/// Optimise `model` and run it on `tokens`; its first output.
pub(crate) fn run(model: TypedModel, tokens: &Tensor) -> Tensor {
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    plan.run(tvec!(tokens.clone().into())).unwrap()[0]
        .clone()
        .into_tensor()
}

/// The largest absolute difference of two f32 outputs of one shape.
pub(crate) fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (
        a.to_plain_array_view::<f32>().unwrap(),
        b.to_plain_array_view::<f32>().unwrap(),
    );
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
