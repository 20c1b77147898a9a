//! One copy of each packed weight matrix for every plan of a graph.
//!
//! tract packs a graph's weight matrices for its matrix-product kernels when
//! it optimises a plan, so each fixed-shape plan would hold its own copy
//! (≈ 470 MB for ViT-B-16-plus-240). Plans name their nodes differently
//! (fusions add suffixes), so a weight is recognised by content: the packing
//! layout and a fingerprint pick candidates, a value-for-value compare
//! confirms. The compare is done as each matrix is packed, inside the
//! optimiser, so a new plan never holds more than one unshared matrix at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tract_core::ops::konst::Const;
use tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_core::optim::{Optimizer, OptimizerSession, TypedPass};
use tract_linalg::mmm::{EagerPackedInput, MMMInputValue, PackedMatrixStorage};
use tract_linalg::pack::PackedFormat;
use tract_onnx::prelude::*;

/// The packed weights of every plan of one graph, by content.
#[derive(Debug, Default)]
pub(crate) struct SharedWeights {
    table: Mutex<HashMap<PackedKey, Vec<Held>>>,
}

/// A packed matrix and the plan that packed it first.
#[derive(Debug)]
struct Held {
    plan: usize,
    value: EagerPackedInput,
}

impl SharedWeights {
    /// tract's code-generating optimiser for plan number `plan`, every pass of
    /// which hands each packed constant it creates to [`Self::share`] at once.
    pub(crate) fn optimizer(self: &Arc<Self>, plan: usize) -> Optimizer {
        let mut optimizer = Optimizer::codegen();
        optimizer.passes = std::mem::take(&mut optimizer.passes)
            .into_iter()
            .map(|inner| {
                Box::new(SharePacked {
                    inner,
                    weights: self.clone(),
                    plan,
                }) as Box<dyn TypedPass>
            })
            .collect();
        optimizer
    }

    /// Point every packed constant operand of an optimised `model` (plan
    /// number `plan`) at the held copy of its values.
    /// Returns (packed operands, of them first packed by an earlier plan).
    pub(crate) fn share_plan(&self, plan: usize, model: &mut TypedModel) -> (usize, usize) {
        let (mut seen, mut shared) = (0, 0);
        for packed in packed_operands(model) {
            seen += 1;
            if self.share(plan, packed).is_some_and(|first| first < plan) {
                shared += 1;
            }
        }
        (seen, shared)
    }

    /// Let go of held copies no plan uses: packed constants an optimiser
    /// created and then dropped or replaced.
    pub(crate) fn prune(&self) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        for held in table.values_mut() {
            held.retain(|h| Arc::strong_count(&h.value.packed) > 1);
        }
        table.retain(|_, held| !held.is_empty());
    }

    /// Make `packed` use the held copy of its values, or hold it if there is
    /// none. Returns the plan that first packed these values (`None`: a
    /// layout that cannot be compared, never shared).
    fn share(&self, plan: usize, packed: &mut EagerPackedInput) -> Option<usize> {
        let key = PackedKey::of(packed)?;
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let held = table.entry(key).or_default();
        match held
            .iter()
            .find(|h| Arc::ptr_eq(&h.value.packed, &packed.packed) || same_values(&h.value, packed))
        {
            Some(same) => {
                packed.packed = same.value.packed.clone();
                Some(same.plan)
            }
            None => {
                held.push(Held {
                    plan,
                    value: packed.clone(),
                });
                Some(plan)
            }
        }
    }

    /// A constant holding the held copies of `konst`'s packed matrices, when
    /// it is a packed constant with at least one value packed before.
    fn shared_const(&self, plan: usize, konst: &Const) -> TractResult<Option<Const>> {
        let Ok(storage) = konst.val().try_storage_as::<PackedMatrixStorage>() else {
            return Ok(None);
        };
        let mut replaced = false;
        let values: TVec<Box<dyn MMMInputValue>> = storage
            .values()
            .iter()
            .map(|value| match value.downcast_ref::<EagerPackedInput>() {
                Some(packed) => {
                    let mut packed = packed.clone();
                    let before = packed.packed.clone();
                    self.share(plan, &mut packed);
                    replaced |= !Arc::ptr_eq(&before, &packed.packed);
                    Box::new(packed) as Box<dyn MMMInputValue>
                }
                None => tract_core::dyn_clone::clone_box(&**value),
            })
            .collect();
        if !replaced {
            return Ok(None);
        }
        let tensor = PackedMatrixStorage::new_batched(storage.batch_shape(), values)
            .into_tensor(konst.val().datum_type());
        let fact = konst.exotic_fact().map(tract_core::dyn_clone::clone_box);
        Const::new_with_opt_exotic_fact(Arc::new(tensor), fact).map(Some)
    }
}

/// The packed constant operands of every matrix product of an optimised model.
fn packed_operands(model: &mut TypedModel) -> impl Iterator<Item = &mut EagerPackedInput> {
    model
        .nodes
        .iter_mut()
        .filter_map(|node| node.op.downcast_mut::<OptMatMul>())
        .flat_map(|op| op.micro_ops.iter_mut())
        .filter_map(|spec| match spec {
            ProtoFusedSpec::AddMatMul { a, b, .. } => Some([a, b]),
            _ => None,
        })
        .flatten()
        .filter_map(|operand| match operand {
            MatMulOperand::Const(value) => value.downcast_mut::<EagerPackedInput>(),
            _ => None,
        })
}

/// An optimiser pass that shares the packed constants its inner pass creates
/// before the patch is applied, so the unshared copy is freed right away.
#[derive(Debug)]
struct SharePacked {
    inner: Box<dyn TypedPass>,
    weights: Arc<SharedWeights>,
    plan: usize,
}

impl Clone for SharePacked {
    fn clone(&self) -> Self {
        Self {
            inner: tract_core::dyn_clone::clone_box(&*self.inner),
            weights: self.weights.clone(),
            plan: self.plan,
        }
    }
}

impl TypedPass for SharePacked {
    fn reset(&mut self) -> TractResult<()> {
        self.inner.reset()
    }

    fn next(
        &mut self,
        session: &mut OptimizerSession,
        model: &TypedModel,
    ) -> TractResult<Option<TypedModelPatch>> {
        let Some(mut patch) = self.inner.next(session, model)? else {
            return Ok(None);
        };
        for node in patch.model.nodes.iter_mut() {
            let Some(konst) = node.op_as::<Const>() else {
                continue;
            };
            if let Some(shared) = self.weights.shared_const(self.plan, konst)? {
                // The output fact carries the constant too, and it is what
                // consumers read: replace both, or the copy lives on.
                for (output, fact) in node.outputs.iter_mut().zip(shared.output_facts(&[])?) {
                    output.fact = fact;
                }
                node.op = Box::new(shared);
            }
        }
        Ok(Some(patch))
    }

    fn run_direct(&mut self, model: &mut TypedModel) -> TractResult<bool> {
        self.inner.run_direct(model)
    }
}

/// Where to look for an identical packed weight matrix: the packing layout and
/// a fingerprint of its values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PackedKey {
    layout: String,
    panel_bytes: usize,
    len: usize,
    fingerprint: u64,
}

impl PackedKey {
    /// `None` for packings whose layout we cannot read (never shared).
    fn of(packed: &EagerPackedInput) -> Option<Self> {
        use std::hash::{Hash, Hasher};
        let mut panels = panel_values(packed)?;
        // The first and last panels tell weights apart; a full compare confirms.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        panels.next().hash(&mut hasher);
        panels.last().hash(&mut hasher);
        Some(Self {
            layout: format!("{:?}", packed.fact),
            panel_bytes: packed.panel_bytes,
            len: packed.packed.len(),
            fingerprint: hasher.finish(),
        })
    }
}

/// The value bytes of each panel of a packed operand. Each panel ends in a
/// padding record that tract leaves uninitialised, so whole buffers of equal
/// weights differ; only these parts are compared.
fn panel_values(packed: &EagerPackedInput) -> Option<impl Iterator<Item = &[u8]>> {
    let format = packed.fact.format.downcast_ref::<PackedFormat>()?;
    let values = packed.fact.k * format.r * format.dt.size_of();
    if packed.panel_bytes == 0 || values > packed.panel_bytes {
        return None;
    }
    Some(
        packed
            .packed
            .as_bytes()
            .chunks(packed.panel_bytes)
            .map(move |panel| &panel[..values.min(panel.len())]),
    )
}

fn same_values(a: &EagerPackedInput, b: &EagerPackedInput) -> bool {
    match (panel_values(a), panel_values(b)) {
        (Some(a), Some(b)) => a.eq(b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tiny_encoder_path;
    use super::*;

    /// The tiny encoder optimised for `[b, t, 64]` as plan number `plan`,
    /// without the final [`SharedWeights::share_plan`] pass.
    fn optimised(weights: &Arc<SharedWeights>, plan: usize, b: usize, t: usize) -> TypedModel {
        let mut model = tract_onnx::onnx()
            .model_for_path(tiny_encoder_path())
            .and_then(|m| m.with_input_fact(0, f32::fact([b, t, 64]).into()))
            .and_then(|m| m.into_typed())
            .and_then(|m| m.into_decluttered())
            .unwrap();
        model
            .optimize_with_session(&mut weights.optimizer(plan).session())
            .unwrap();
        model
    }

    /// Copies of a model's packed operands (sharing their buffers).
    fn packed_copies(model: &TypedModel) -> Vec<EagerPackedInput> {
        packed_operands(&mut model.clone()).map(|p| p.clone()).collect()
    }

    #[test]
    fn a_second_plan_uses_the_first_plans_copies_straight_out_of_the_optimiser() {
        let weights = Arc::new(SharedWeights::default());
        optimised(&weights, 0, 4, 5);
        let second = optimised(&weights, 1, 5, 4);
        let operands = packed_copies(&second);
        // Every weight the first plan packed alike must already be the first
        // plan's copy, not an equal one still to be swapped in afterwards.
        let mut from_first = 0;
        for operand in &operands {
            let mut probe = operand.clone();
            if weights.share(2, &mut probe) == Some(0) {
                from_first += 1;
                assert!(
                    Arc::ptr_eq(&probe.packed, &operand.packed),
                    "a packed weight of the second plan is a copy of its own: {:?}",
                    operand.fact
                );
            }
        }
        // Both shapes have b·t = 20 rows: the layers' weights are packed
        // alike (the class projection may not be). tract chooses its kernel
        // by the row count, and which counts pack alike differs between CPUs
        // (20 and 15 do on AVX-512, not on AVX2).
        assert!(
            from_first + 1 >= operands.len(),
            "{from_first} of {}",
            operands.len()
        );
        let mut second = second;
        assert_eq!(weights.share_plan(1, &mut second), (operands.len(), from_first));
    }

    #[test]
    fn copies_no_plan_uses_are_let_go() {
        let weights = SharedWeights::default();
        let operand = packed_copies(&optimised(&Arc::new(SharedWeights::default()), 0, 4, 5)).swap_remove(0);
        let fresh = || {
            let mut copy = operand.clone();
            copy.packed =
                Arc::new(tract_data::internal::Blob::from_bytes(operand.packed.as_bytes()).unwrap());
            copy
        };
        // Held by the table only, as if its plan had dropped it.
        assert_eq!(weights.share(0, &mut fresh()), Some(0));
        weights.prune();
        assert_eq!(weights.share(1, &mut fresh()), Some(1), "an unused copy was kept");
        // Plan 1's copy is in use (`kept`): it stays.
        let mut kept = fresh();
        assert_eq!(weights.share(1, &mut kept), Some(1));
        weights.prune();
        assert_eq!(weights.share(2, &mut fresh()), Some(1));
    }

    #[test]
    fn different_values_are_never_shared() {
        let weights = SharedWeights::default();
        let first = optimised(&Arc::new(SharedWeights::default()), 0, 4, 5);
        let mut a = packed_copies(&first)
            .into_iter()
            .max_by_key(|p| p.packed.len() / p.panel_bytes)
            .unwrap();
        assert_eq!(weights.share(0, &mut a), Some(0));
        // Same layout, length and fingerprint (first and last panels): one
        // value of a middle panel changed.
        let panels = a.packed.len() / a.panel_bytes;
        assert!(panels >= 3, "{panels} panels");
        let mut b = a.clone();
        let mut bytes = b.packed.as_bytes().to_vec();
        bytes[a.panel_bytes * (panels / 2)] ^= 0x40;
        b.packed = Arc::new(tract_data::internal::Blob::from_bytes(&bytes).unwrap());
        assert_eq!(PackedKey::of(&a), PackedKey::of(&b));
        assert_eq!(weights.share(1, &mut b), Some(1));
        assert!(!Arc::ptr_eq(&a.packed, &b.packed));
        let mut c = a.clone();
        c.packed = Arc::new(tract_data::internal::Blob::from_bytes(a.packed.as_bytes()).unwrap());
        assert_eq!(weights.share(2, &mut c), Some(0));
        assert!(Arc::ptr_eq(&a.packed, &c.packed));
    }
}
