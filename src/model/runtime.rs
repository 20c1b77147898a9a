//! The one place that loads ONNX graphs with tract and runs them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ndarray::{ArrayD, IxDyn};
use tract_linalg::multithread::{
    current_tract_executor, multithread_tract_scope, set_default_executor, Executor,
};
use tract_onnx::prelude::*;

use super::bf16;
use super::contraction_split::{split_long_contractions, MAX_CONTRACTION};
use super::dense::{dense_products, lower_dense_products, use_dense_products, Matrix};
use super::device::Backend;
use super::int8;
use super::needed_rows::use_needed_rows;
use super::onnx_file;
use super::precision::{EncoderNumerics, Numerics, Precision};
use super::shared_weights::SharedWeights;
use super::short_attention::use_short_attention;
use super::Error;

/// A loaded, optimised graph ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    role: &'static str,
    path: PathBuf,
    plan: Arc<TypedRunnableModel>,
}

impl Graph {
    /// Load and optimise an ONNX file. Dimensions named in the ONNX file (batch,
    /// sequence) stay symbolic, so one plan serves every batch size and window scale.
    pub(crate) fn load(role: &'static str, path: &Path) -> Result<Self, Error> {
        let fail = |e: TractError| Error::Graph {
            role,
            path: path.to_owned(),
            message: format!("{e:#}"),
        };
        let plan = onnx_file::load(path)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(fail)?;
        Ok(Self {
            role,
            path: path.to_owned(),
            plan,
        })
    }

    /// Run the graph on f32 or i64 inputs; return every output as f32.
    pub(crate) fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<ArrayD<f32>>, Error> {
        let outputs = self
            .plan
            .run(inputs.into_iter().map(TValue::from).collect())
            .map_err(|e| self.error(e))?;
        outputs_to_arrays(self.role, &self.path, outputs)
    }

    fn error(&self, e: TractError) -> Error {
        graph_error(self.role, &self.path, e)
    }
}

fn graph_error(role: &'static str, path: &Path, e: TractError) -> Error {
    Error::Graph {
        role,
        path: path.to_owned(),
        message: format!("{e:#}"),
    }
}

fn outputs_to_arrays(
    role: &'static str,
    path: &Path,
    outputs: TVec<TValue>,
) -> Result<Vec<ArrayD<f32>>, Error> {
    outputs
        .iter()
        .map(|t| {
            // f16 plans hand back f16; callers always get f32.
            let t = t.cast_to::<f32>().map_err(|e| graph_error(role, path, e))?;
            let view = t
                .to_plain_array_view::<f32>()
                .map_err(|e| graph_error(role, path, e))?;
            Ok(view
                .to_owned()
                .into_dimensionality::<IxDyn>()
                .expect("IxDyn from IxDyn"))
        })
        .collect()
}

/// A graph with one optimised plan per input shape (and selection of outputs).
///
/// tract optimises much better when every dimension is known (measured: the
/// full-size window passes run ≈ 1.6× faster than with symbolic batch and
/// sequence). One plan per shape would normally hold its own copy of the
/// weights (≈ 470 MB for ViT-B-16-plus-240). Here f32 plans run the linear
/// layers as dense products ([`super::dense`]) whose matrices every plan
/// shares (one `Arc`); f16 plans, left to tract's kernels, share the weights
/// each plan packs identically ([`SharedWeights`], as it is packed, so
/// loading peaks at one copy plus the unpacked weights). Shapes not planned at
/// load time are planned on first use (the ONNX file is read again, ≈ 1 s).
#[derive(Debug)]
pub(crate) struct ShapedGraph {
    role: &'static str,
    path: PathBuf,
    numerics: Numerics,
    /// What the CPU made of `numerics` (known once the graph is read).
    running: Mutex<Option<EncoderNumerics>>,
    backend: Backend,
    plans: Mutex<Vec<Plan>>,
    /// Held while a plan is built on first use.
    planning: Mutex<()>,
    weights: Arc<SharedWeights>,
}

/// One optimised plan and what it computes.
#[derive(Debug)]
struct Plan {
    runnable: Arc<TypedRunnableModel>,
    summary: PlanSummary,
}

/// Which outputs of a graph a plan computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outputs {
    /// Every output.
    All,
    /// The first only: what only the others need is not computed (for the
    /// encoder, the last layer on all but the class token).
    First,
}

/// What a plan computes and how it holds its constant matrices.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlanSummary {
    /// Input shape the plan runs.
    pub shape: Vec<usize>,
    /// Outputs it computes.
    pub outputs: Outputs,
    /// Nodes that compute only the rows its outputs read ([`super::needed_rows`]).
    pub narrowed: usize,
    /// Dense products: their matrices are the same `Arc`s in every plan.
    pub dense: usize,
    /// Of them, in int8.
    pub int8: usize,
    /// Of them, in bf16.
    pub bf16: usize,
    /// Weight operands packed for tract's kernels (f16 plans).
    pub packed: usize,
    /// Of them, shared with an earlier plan rather than copied.
    pub shared: usize,
}

impl ShapedGraph {
    /// Load `path` and optimise it for each shape of its first input and
    /// selection of outputs in `plans`.
    pub(crate) fn load(
        role: &'static str,
        path: &Path,
        plans: &[(Vec<usize>, Outputs)],
        numerics: &Numerics,
        backend: Backend,
    ) -> Result<Self, Error> {
        let graph = Self {
            role,
            path: path.to_owned(),
            numerics: numerics.clone(),
            running: Mutex::new(None),
            backend,
            plans: Mutex::new(Vec::new()),
            planning: Mutex::new(()),
            weights: Arc::default(),
        };
        if !plans.is_empty() {
            let model = graph.decluttered()?;
            // The ONNX protobuf is gone: return its memory before packing.
            release_freed_memory();
            for (shape, outputs) in plans {
                graph.add_plan(&model, shape, *outputs)?;
                // What optimising this plan dropped is free now: return it
                // before the next.
                release_freed_memory();
            }
            // And the unpacked weights of the decluttered model.
            drop(model);
            release_freed_memory();
        }
        Ok(graph)
    }

    fn decluttered(&self) -> Result<TypedModel, Error> {
        let model = onnx_file::load(&self.path)
            .and_then(|m| m.into_typed())
            .and_then(|m| m.into_decluttered())
            .map_err(|e| self.error(e))?;
        let mut model = match self.numerics.precision {
            Precision::F32 | Precision::Int8 | Precision::Bf16 => model,
            Precision::F16 => tract_core::transform::get_transform("f32_to_f16")
                .and_then(|t| t.ok_or_else(|| TractError::msg("tract has no f32_to_f16 transform")))
                .and_then(|t| t.transform_into(model))
                .and_then(|m| m.into_decluttered())
                .map_err(|e| self.error(e))?,
        };
        if self.backend != Backend::Cpu {
            // The rewrites below are for tract's CPU kernels; its CUDA
            // transform wants the products as tract declares them. int8 and
            // bf16 are this crate's CPU kernels: on a GPU the layers stay f32.
            let precision = self.numerics.precision;
            let warning = precision.lowers_linear_layers().then(|| {
                format!(
                    "precision = \"{precision}\" runs on the CPU only; on {} the encoder runs f32",
                    self.backend
                )
            });
            self.record(EncoderNumerics {
                asked: precision,
                running: if warning.is_some() {
                    Precision::F32
                } else {
                    precision
                },
                kernel: None,
                lowered: Vec::new(),
                kept: Vec::new(),
                warning,
            });
            return Ok(model);
        }
        // f32 products with constant matrices go to `gemm`; what stays with
        // tract's kernels (f16) gets its long contractions split.
        let dense = use_dense_products(&mut model).map_err(|e| self.error(e))?;
        let split = split_long_contractions(&mut model, MAX_CONTRACTION).map_err(|e| self.error(e))?;
        if dense + split > 0 {
            // Fuses the bias additions into the dense products; after a
            // split, tract moves the new slices up to the producing products
            // (the MLP's first product is split by output column) and slices
            // their weights. Done once here, each plan starts from the
            // rewritten graph and shares its matrices; otherwise every plan
            // would rewrite again, and the first would hold the old weights
            // and the new at once while packing.
            model.declutter().map_err(|e| self.error(e))?;
        }
        log::debug!(
            "{}: {dense} dense products, {split} long contractions split",
            self.role
        );
        self.lower(&mut model)?;
        Ok(model)
    }

    /// Lower the dense products to int8 or bf16 as `numerics` asks, and
    /// record what ran.
    fn lower(&self, model: &mut TypedModel) -> Result<(), Error> {
        let Numerics {
            precision,
            f32_layers,
        } = &self.numerics;
        let bf16_kernel = match precision {
            Precision::Bf16 => bf16::Kernel::best(),
            _ => None,
        };
        let done =
            lower_dense_products(model, *precision, f32_layers, bf16_kernel).map_err(|e| self.error(e))?;
        let mut running = EncoderNumerics {
            asked: *precision,
            running: *precision,
            kernel: None,
            lowered: done.lowered.clone(),
            kept: done.kept.clone(),
            warning: None,
        };
        if precision.lowers_linear_layers() {
            let layers = done.layers();
            let unmatched = f32_layers.unmatched(&layers);
            if !unmatched.is_empty() {
                return Err(Error::F32Layers {
                    patterns: unmatched.join(", "),
                    layers: summary_of_layers(&layers),
                });
            }
        }
        match precision {
            Precision::Int8 => {
                let kernel = int8::Kernel::best();
                running.kernel = Some(kernel.to_string());
                if kernel.is_slower_than_f32() {
                    running.warning = Some(format!(
                        "precision = \"int8\": this CPU has no int8 dot product instruction (AVX-512 VNNI, \
                         AVX-VNNI, Arm dot product); its {kernel} kernel is slower than f32 here: \
                         use precision = \"f32\" on this machine"
                    ));
                }
            }
            Precision::Bf16 => match bf16_kernel {
                Some(kernel) => running.kernel = Some(kernel.to_string()),
                None => {
                    running.running = Precision::F32;
                    running.lowered.clear();
                    running.kept = done.layers();
                    running.warning = Some(
                        "precision = \"bf16\": this CPU has no bf16 dot products (AVX-512 BF16, Arm BF16); \
                         the encoder runs f32"
                            .into(),
                    );
                }
            },
            Precision::F32 | Precision::F16 => {}
        }
        self.record(running);
        Ok(())
    }

    /// Keep what the encoder runs in, and say it the first time.
    fn record(&self, running: EncoderNumerics) {
        let mut slot = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return;
        }
        if let Some(w) = &running.warning {
            log::warn!("{w}");
        }
        if running.asked.lowers_linear_layers() {
            log::info!(
                "{}: {} linear layers in {} ({}), {} kept f32",
                self.role,
                running.lowered.len(),
                running.running,
                running.kernel.as_deref().unwrap_or("-"),
                running.kept.len()
            );
        }
        *slot = Some(running);
    }

    /// What the encoder runs in (`None` before the graph was first read).
    pub(crate) fn numerics(&self) -> Option<EncoderNumerics> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Optimise `model` for `shape` (of input 0) and `outputs`, share packed
    /// weights, store the plan.
    fn add_plan(
        &self,
        model: &TypedModel,
        shape: &[usize],
        outputs: Outputs,
    ) -> Result<Arc<TypedRunnableModel>, Error> {
        let fact = model.input_fact(0).map_err(|e| self.error(e))?;
        if fact.rank() != shape.len() {
            return Err(Error::Shape {
                role: self.role,
                message: format!("input of rank {}, expected {}", shape.len(), fact.rank()),
            });
        }
        let mut subs = HashMap::new();
        for (dim, &value) in fact.shape.iter().zip(shape) {
            match dim {
                TDim::Sym(sym) => {
                    subs.insert(sym.clone(), TDim::Val(value as i64));
                }
                other => {
                    if other.to_i64().ok() != Some(value as i64) {
                        return Err(Error::Shape {
                            role: self.role,
                            message: format!("input {shape:?} does not fit {:?}", fact.shape),
                        });
                    }
                }
            }
        }
        let plan = self.plans.lock().unwrap_or_else(PoisonError::into_inner).len();
        let mut narrowed = 0;
        let mut optimised = model
            .set_symbols(&subs)
            .and_then(|mut m| {
                if outputs == Outputs::First {
                    let Some(&first) = m.output_outlets()?.first() else {
                        return Err(TractError::msg("the graph has no output"));
                    };
                    m.select_output_outlets(&[first])?;
                }
                m.declutter()?;
                if needed_rows_enabled() {
                    narrowed = use_needed_rows(&mut m)?;
                }
                if self.backend != Backend::Cpu {
                    return Ok(m);
                }
                let short = use_short_attention(&mut m)?;
                log::debug!(
                    "{} plan for {shape:?}: {short} short-sequence attention nodes",
                    self.role
                );
                m.optimize_with_session(&mut self.weights.optimizer(plan).session())?;
                Ok(m)
            })
            .map_err(|e| self.error(e))?;
        if let Backend::Cuda(_) = self.backend {
            return self.add_gpu_plan(optimised, shape, outputs, narrowed);
        }
        let (packed, shared) = self.weights.share_plan(plan, &mut optimised);
        self.weights.prune();
        let summary = PlanSummary {
            shape: shape.to_vec(),
            outputs,
            narrowed,
            dense: dense_products(&optimised).count(),
            int8: dense_products(&optimised)
                .filter(|d| matches!(d.weight(), Matrix::Int8(_)))
                .count(),
            bf16: dense_products(&optimised)
                .filter(|d| matches!(d.weight(), Matrix::Bf16(..)))
                .count(),
            packed,
            shared,
        };
        log::debug!("{} plan: {summary:?}", self.role);
        let runnable = optimised.into_runnable().map_err(|e| self.error(e))?;
        Ok(self.keep(runnable, summary))
    }

    /// Store a built plan beside the others; return it.
    fn keep(&self, runnable: Arc<TypedRunnableModel>, summary: PlanSummary) -> Arc<TypedRunnableModel> {
        self.plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Plan {
                runnable: runnable.clone(),
                summary,
            });
        runnable
    }

    /// Hand a decluttered plan to tract's CUDA runtime and store it. Each
    /// plan holds its own copy of the weights on the GPU.
    #[cfg(feature = "cuda")]
    fn add_gpu_plan(
        &self,
        model: TypedModel,
        shape: &[usize],
        outputs: Outputs,
        narrowed: usize,
    ) -> Result<Arc<TypedRunnableModel>, Error> {
        let runnable = super::device::prepare(model).map_err(|e| self.error(e))?;
        let summary = PlanSummary {
            shape: shape.to_vec(),
            outputs,
            narrowed,
            dense: 0,
            int8: 0,
            bf16: 0,
            packed: 0,
            shared: 0,
        };
        log::debug!("{} CUDA plan: {summary:?}", self.role);
        Ok(self.keep(runnable, summary))
    }

    #[cfg(not(feature = "cuda"))]
    fn add_gpu_plan(
        &self,
        _: TypedModel,
        _: &[usize],
        _: Outputs,
        _: usize,
    ) -> Result<Arc<TypedRunnableModel>, Error> {
        // A `Backend::Cuda` exists only where the feature opened CUDA.
        unreachable!("a CUDA backend in a build without the cuda feature")
    }

    /// The plan for `shape` and `outputs`, built now if it was not planned at load time.
    fn plan(&self, shape: &[usize], outputs: Outputs) -> Result<Arc<TypedRunnableModel>, Error> {
        if let Some(plan) = self.known(shape, outputs) {
            return Ok(plan);
        }
        // One at a time: window passes running concurrently that meet the
        // same new shape would each read and optimise the graph otherwise.
        let _planning = self.planning.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plan) = self.known(shape, outputs) {
            return Ok(plan);
        }
        log::info!(
            "optimising the {} graph for input shape {shape:?} (first use)",
            self.role
        );
        let model = self.decluttered()?;
        let plan = self.add_plan(&model, shape, outputs)?;
        drop(model);
        release_freed_memory();
        Ok(plan)
    }

    fn known(&self, shape: &[usize], outputs: Outputs) -> Option<Arc<TypedRunnableModel>> {
        self.plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|p| p.summary.shape == shape && p.summary.outputs == outputs)
            .map(|p| p.runnable.clone())
    }

    /// What every plan built so far computes and how it holds its weights,
    /// in build order.
    pub(crate) fn plans(&self) -> Vec<PlanSummary> {
        self.plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|p| p.summary.clone())
            .collect()
    }

    /// Run on one f32 input; return `outputs` as f32.
    pub(crate) fn run(&self, input: Tensor, outputs: Outputs) -> Result<Vec<ArrayD<f32>>, Error> {
        let plan = self.plan(input.shape(), outputs)?;
        let input = match self.numerics.precision {
            Precision::F32 | Precision::Int8 | Precision::Bf16 => input,
            Precision::F16 => input.cast_to::<f16>().map_err(|e| self.error(e))?.into_owned(),
        };
        let outputs = plan.run(tvec![input.into()]).map_err(|e| self.error(e))?;
        outputs_to_arrays(self.role, &self.path, outputs)
    }

    fn error(&self, e: TractError) -> Error {
        graph_error(self.role, &self.path, e)
    }
}

/// A list of layer names short enough for an error message.
fn summary_of_layers(layers: &[String]) -> String {
    if layers.len() <= 8 {
        return format!("{} layers: {}", layers.len(), layers.join(", "));
    }
    format!(
        "{} layers: {}, … , {}",
        layers.len(),
        layers[..5].join(", "),
        layers[layers.len() - 2..].join(", ")
    )
}

/// Whether plans compute only the rows their outputs read
/// ([`super::needed_rows`]); `WINCLIP_NEEDED_ROWS=off` turns it off, to
/// measure what it saves (on the CPU or the GPU).
fn needed_rows_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WINCLIP_NEEDED_ROWS").map_or(true, |v| v != "off"))
}

/// Give memory freed while loading (the ONNX protobuf, the unpacked weights)
/// back to the OS; glibc keeps it otherwise, and a station's resident set is
/// what its operators watch.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it has no
    // preconditions and may be called at any time from any thread.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Turn an ndarray into a tract tensor.
pub(crate) fn tensor<T: Datum, D: ndarray::Dimension>(a: ndarray::Array<T, D>) -> Tensor {
    a.into_dyn().into()
}

/// Use `n` threads for matrix products in every graph (tract is single-threaded
/// by default). Call once at start-up; `0` means one per available core.
/// Returns the number of threads in use.
pub fn set_threads(n: usize) -> usize {
    let n = if n == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        n
    };
    let executor = if n <= 1 {
        Executor::SingleThread
    } else {
        Executor::multithread(n)
    };
    set_default_executor(executor);
    n
}

/// How many independent graph runs to overlap with [`concurrently`]: the
/// threads of tract's executor on this thread ([`set_threads`] sets the
/// default; 1 inside a concurrent job, whose runs are single-threaded).
pub(crate) fn workers() -> usize {
    match current_tract_executor() {
        Executor::MultiThread(pool) => pool.current_num_threads().max(1),
        _ => 1,
    }
}

/// Run `f` on every job, up to `workers` at a time, each on its own thread
/// running tract single-threaded; the results come back in job order.
///
/// Several independent runs beat one run spread over every core: tract
/// threads its matrix products but runs the other operators (softmax, layer
/// norm, GELU, the many tiny attention products of short window sequences)
/// on the calling thread, so one run leaves the other cores idle for about
/// a fifth of its time. With one worker or one job the jobs run in turn on
/// the calling thread and tract's default executor.
pub(crate) fn concurrently<J, R, F>(workers: usize, jobs: &[J], f: F) -> Vec<R>
where
    J: Sync,
    R: Send,
    F: Fn(&J) -> R + Sync,
{
    let threads = workers.min(jobs.len());
    if threads <= 1 {
        return jobs.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        multithread_tract_scope(Executor::SingleThread, || {
            let mut done = Vec::new();
            loop {
                let ix = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(ix) else {
                    return done;
                };
                done.push((ix, f(job)));
            }
        })
    };
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    results.sort_by_key(|(ix, _)| *ix);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tiny_encoder_path;
    use super::*;

    const THREE_SHAPES: [[usize; 3]; 3] = [[196, 5, 64], [169, 10, 64], [1, 226, 64]];

    /// Plans of every output for `shapes`.
    fn all(shapes: &[[usize; 3]]) -> Vec<(Vec<usize>, Outputs)> {
        shapes.iter().map(|s| (s.to_vec(), Outputs::All)).collect()
    }

    /// The largest absolute difference of two outputs, and the largest
    /// absolute value of the first (the scale it is judged against).
    fn difference(want: &ArrayD<f32>, got: &ArrayD<f32>) -> (f32, f32) {
        assert_eq!(want.shape(), got.shape());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = want
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        (diff, scale)
    }

    fn tokens(b: usize, t: usize) -> Tensor {
        let a = ndarray::Array3::from_shape_fn((b, t, 64), |(i, j, k)| {
            ((i * 7 + j * 3 + k) % 11) as f32 / 11.0 - 0.5
        });
        tensor(a)
    }

    /// The dense products' matrices of every plan, as addresses, sorted.
    fn dense_matrices(shaped: &ShapedGraph) -> Vec<Vec<*const Tensor>> {
        let plans = shaped.plans.lock().unwrap();
        plans
            .iter()
            .map(|p| {
                let mut m: Vec<_> = dense_products(p.runnable.model())
                    .map(|d| match d.weight() {
                        Matrix::F32(w) => Arc::as_ptr(w),
                        _ => std::ptr::null(),
                    })
                    .collect();
                m.sort();
                m
            })
            .collect()
    }

    #[test]
    fn f32_plans_share_their_dense_matrices_and_match_the_symbolic_graph() {
        let path = tiny_encoder_path();
        let shaped = ShapedGraph::load(
            "encoder",
            &path,
            &all(&THREE_SHAPES),
            &Precision::F32.into(),
            Backend::Cpu,
        )
        .unwrap();
        let plans = shaped.plans();
        assert_eq!(plans.len(), 3);
        // 2 blocks × (query, key, value, attention out, MLP in, MLP out) and
        // the projection; nothing left for tract to pack.
        for p in &plans {
            assert_eq!((p.dense, p.packed), (13, 0), "{plans:?}");
        }
        let matrices = dense_matrices(&shaped);
        assert_eq!(matrices[0].len(), 13);
        assert!(
            matrices.iter().all(|m| *m == matrices[0]),
            "every plan holds the same matrices"
        );

        let symbolic = Graph::load("encoder", &path).unwrap();
        // A planned shape and one planned on first use both agree with the symbolic graph.
        for (b, t) in [(169, 10), (3, 17)] {
            let want = symbolic.run(vec![tokens(b, t)]).unwrap();
            let got = shaped.run(tokens(b, t), Outputs::All).unwrap();
            for (w, g) in want.iter().zip(&got) {
                let (diff, _) = difference(w, g);
                assert!(diff < 1e-4, "({b}, {t}): max diff {diff}");
            }
        }
        assert_eq!(shaped.plans().len(), 4, "(3, 17) was planned on first use");
    }

    #[test]
    fn f16_plans_share_the_weights_they_pack_alike() {
        let shaped = ShapedGraph::load(
            "encoder",
            &tiny_encoder_path(),
            &all(&THREE_SHAPES),
            &Precision::F16.into(),
            Backend::Cpu,
        )
        .unwrap();
        let plans = shaped.plans();
        assert_eq!(plans.len(), 3);
        for p in &plans {
            assert!(p.dense == 0 && p.packed > 0 && p.shared <= p.packed, "{plans:?}");
        }
        assert!(plans[1].shared > 0 && plans[2].shared > 0, "{plans:?}");
    }

    #[test]
    fn an_f16_plan_takes_and_gives_f32_close_to_the_f32_plan() {
        let shapes = all(&[[3, 17, 64]]);
        let full = ShapedGraph::load(
            "encoder",
            &tiny_encoder_path(),
            &shapes,
            &Precision::F32.into(),
            Backend::Cpu,
        )
        .unwrap();
        let half = ShapedGraph::load(
            "encoder",
            &tiny_encoder_path(),
            &shapes,
            &Precision::F16.into(),
            Backend::Cpu,
        )
        .unwrap();
        let want = full.run(tokens(3, 17), Outputs::All).unwrap();
        let got = half.run(tokens(3, 17), Outputs::All).unwrap();
        for (w, g) in want.iter().zip(&got) {
            let (diff, scale) = difference(w, g);
            // Half precision: ~3 significant digits, not bit-equal.
            assert!(
                diff > 0.0 && diff < 2e-2 * scale,
                "max diff {diff} at scale {scale}"
            );
        }
    }

    #[test]
    fn int8_and_bf16_plans_lower_every_linear_layer_but_the_kept_ones() {
        use super::super::precision::F32Layers;
        let shapes = all(&[[3, 17, 64], [1, 226, 64]]);
        let load = |numerics: &Numerics| {
            ShapedGraph::load("encoder", &tiny_encoder_path(), &shapes, numerics, Backend::Cpu)
        };
        let full = load(&Precision::F32.into()).unwrap();
        let want = full.run(tokens(3, 17), Outputs::All).unwrap();
        assert_eq!(full.numerics().unwrap().lowered, Vec::<String>::new());

        let int8 = load(&Precision::Int8.into()).unwrap();
        let n = int8.numerics().unwrap();
        assert_eq!((n.asked, n.running), (Precision::Int8, Precision::Int8));
        assert_eq!(n.kept, vec!["proj".to_string()], "the projection stays f32");
        assert_eq!(
            n.lowered.len(),
            8,
            "2 blocks × in_proj, out_proj, c_fc, c_proj: {n:?}"
        );
        assert!(n.lowered.contains(&"blocks.1.mlp.c_proj".to_string()), "{n:?}");
        // Named as `model info` lists them, in graph order.
        let mut every = n.lowered.clone();
        every.extend(n.kept.clone());
        assert_eq!(every, super::super::precision::linear_layers(2));
        for p in int8.plans() {
            // The attention's input projection is three products (queries, keys, values).
            assert_eq!((p.dense, p.int8, p.bf16), (13, 12, 0), "{p:?}");
        }
        let got = int8.run(tokens(3, 17), Outputs::All).unwrap();
        for (w, g) in want.iter().zip(&got) {
            let (diff, scale) = difference(w, g);
            assert!(
                diff > 0.0 && diff < 0.05 * scale,
                "int8: max diff {diff} at scale {scale}"
            );
        }

        let kept = Numerics {
            precision: Precision::Int8,
            f32_layers: F32Layers::new(&["blocks.1.*"]).unwrap(),
        };
        let some = load(&kept).unwrap();
        let n = some.numerics().unwrap();
        assert_eq!(n.lowered.len(), 4, "{n:?}");
        assert!(n.kept.contains(&"blocks.1.attn.in_proj".to_string()), "{n:?}");
        assert_eq!(some.plans()[0].int8, 6, "{:?}", some.plans());

        let typo = Numerics {
            precision: Precision::Int8,
            f32_layers: F32Layers::new(&["blocks.1.*", "block.0.*"]).unwrap(),
        };
        let err = load(&typo).unwrap_err().to_string();
        assert!(
            err.contains("block.0.*")
                && !err.contains("blocks.1.*,")
                && err.contains("blocks.0.attn.in_proj"),
            "{err}"
        );

        let bf16 = load(&Precision::Bf16.into()).unwrap();
        let n = bf16.numerics().unwrap();
        match super::bf16::Kernel::best() {
            Some(kernel) => {
                assert_eq!(n.running, Precision::Bf16);
                assert_eq!(n.kernel.as_deref(), Some(kernel.to_string().as_str()));
                assert_eq!(bf16.plans()[0].bf16, 12);
                let got = bf16.run(tokens(3, 17), Outputs::All).unwrap();
                for (w, g) in want.iter().zip(&got) {
                    let (diff, scale) = difference(w, g);
                    assert!(
                        diff > 0.0 && diff < 0.05 * scale,
                        "bf16: max diff {diff} at scale {scale}"
                    );
                }
            }
            None => {
                // No bf16 dot products here: f32, said loudly.
                assert_eq!(n.running, Precision::F32);
                assert!(
                    n.warning.as_deref().is_some_and(|w| w.contains("runs f32")),
                    "{n:?}"
                );
                assert_eq!(bf16.plans()[0].bf16, 0);
                assert_eq!(bf16.run(tokens(3, 17), Outputs::All).unwrap(), want);
            }
        }
    }

    #[test]
    fn a_plan_of_the_first_output_gives_what_the_whole_plan_gives_first() {
        for precision in [Precision::F32, Precision::F16] {
            let shaped = ShapedGraph::load(
                "encoder",
                &tiny_encoder_path(),
                &[],
                &precision.into(),
                Backend::Cpu,
            )
            .unwrap();
            let whole = shaped.run(tokens(7, 5), Outputs::All).unwrap();
            let first = shaped.run(tokens(7, 5), Outputs::First).unwrap();
            assert_eq!((whole.len(), first.len()), (2, 1));
            let (diff, scale) = difference(&whole[0], &first[0]);
            assert!(
                diff <= 1e-5 * scale,
                "{precision}: max diff {diff} at scale {scale}"
            );
            let plans = shaped.plans();
            assert_eq!(plans.len(), 2, "one plan per selection of outputs");
            assert_eq!((plans[0].outputs, plans[0].narrowed), (Outputs::All, 0));
            assert_eq!(plans[1].outputs, Outputs::First);
            assert!(plans[1].narrowed > 0, "{plans:?}");
        }
    }

    #[test]
    fn a_new_shape_met_by_concurrent_runs_is_planned_once() {
        let shaped = ShapedGraph::load(
            "encoder",
            &tiny_encoder_path(),
            &[],
            &Precision::F32.into(),
            Backend::Cpu,
        )
        .unwrap();
        let outputs = concurrently(3, &[0, 1, 2], |_| shaped.run(tokens(2, 5), Outputs::All).unwrap());
        assert_eq!(outputs.len(), 3);
        assert_eq!(outputs[0], outputs[2]);
        let plans = shaped.plans();
        assert_eq!(plans.len(), 1, "{plans:?}");
        assert_eq!(plans[0].shape, vec![2, 5, 64]);
    }

    #[test]
    fn concurrent_jobs_run_single_threaded_and_come_back_in_order() {
        let jobs: Vec<usize> = (0..7).collect();
        let sequential = concurrently(1, &jobs, |&j| (j * j, std::thread::current().id()));
        let caller = std::thread::current().id();
        assert!(sequential.iter().all(|&(_, id)| id == caller));
        let overlapped = concurrently(3, &jobs, |&j| {
            let single = matches!(current_tract_executor(), Executor::SingleThread) && workers() == 1;
            (j * j, single, std::thread::current().id())
        });
        let squares: Vec<usize> = overlapped.iter().map(|r| r.0).collect();
        assert_eq!(squares, jobs.iter().map(|j| j * j).collect::<Vec<_>>());
        assert!(
            overlapped.iter().all(|r| r.1),
            "tract must run single-threaded per job"
        );
        assert!(overlapped.iter().all(|r| r.2 != caller));
        assert!(concurrently(4, &[] as &[usize], |&j| j).is_empty());
    }

    #[test]
    fn a_shape_that_cannot_fit_is_a_clear_error() {
        let shaped = ShapedGraph::load(
            "encoder",
            &tiny_encoder_path(),
            &[],
            &Precision::F32.into(),
            Backend::Cpu,
        )
        .unwrap();
        let err = shaped
            .run(tensor(ndarray::Array2::<f32>::zeros((5, 64))), Outputs::All)
            .unwrap_err();
        assert!(err.to_string().contains("encoder"), "{err}");
    }
}
