//! The one place that loads ONNX graphs with tract and runs them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use tract_onnx::prelude::*;

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
        let plan = tract_onnx::onnx()
            .model_for_path(path)
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
        outputs
            .iter()
            .map(|t| {
                let view = t.to_plain_array_view::<f32>().map_err(|e| self.error(e))?;
                Ok(view
                    .to_owned()
                    .into_dimensionality::<IxDyn>()
                    .expect("IxDyn from IxDyn"))
            })
            .collect()
    }

    fn error(&self, e: TractError) -> Error {
        Error::Graph {
            role: self.role,
            path: self.path.clone(),
            message: format!("{e:#}"),
        }
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
        tract_linalg::multithread::Executor::SingleThread
    } else {
        tract_linalg::multithread::Executor::multithread(n)
    };
    tract_linalg::multithread::set_default_executor(executor);
    n
}
