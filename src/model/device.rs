//! Where the token encoder runs: the CPU (always) or, in a build with the
//! `cuda` feature, an NVIDIA GPU through tract's CUDA backend.
//!
//! The choice (`[model] device`, `--device`) is resolved once, when a model
//! is loaded: `cuda` must work or loading fails with the reason (the library
//! that could not be opened, the driver's error); `auto` takes CUDA when it
//! works and says in one log line why not otherwise. Only the token encoder
//! moves: the image embedding is 1 % of the work and stays on the CPU.

use super::Error;

/// Where the user asked the token encoder to run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU (the default; the paper-exact reference path).
    #[default]
    Cpu,
    /// An NVIDIA GPU (CUDA 12.6 or newer driver); loading fails when it cannot be used.
    Cuda,
    /// CUDA when it can be used, else the CPU with one log line saying why.
    Auto,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Auto => "auto",
        })
    }
}

/// Where a loaded model's token encoder actually runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Backend {
    /// The CPU.
    Cpu,
    /// CUDA device 0.
    Cuda(Gpu),
}

impl Backend {
    /// "cpu" or "cuda".
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda(_) => "cuda",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Cpu => f.write_str("cpu"),
            Backend::Cuda(g) => write!(
                f,
                "cuda ({}, compute capability {}, {} MiB)",
                g.name,
                g.compute_capability,
                g.memory_total >> 20
            ),
        }
    }
}

/// The GPU a model runs on, as its driver describes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Gpu {
    /// The device's name ("Orin", "NVIDIA H200").
    pub name: String,
    /// "major.minor".
    pub compute_capability: String,
    /// Its memory, bytes.
    pub memory_total: u64,
    /// Seconds to open CUDA and compile (or load from tract's cache) its
    /// kernels with NVRTC: paid once per process, on first use.
    pub first_use_seconds: f64,
}

impl Device {
    /// Resolve the choice on this machine and with this build.
    pub fn resolve(self) -> Result<Backend, Error> {
        match self {
            Device::Cpu => Ok(Backend::Cpu),
            Device::Cuda => cuda::open().map(Backend::Cuda).map_err(|message| Error::Device {
                device: self,
                message,
            }),
            Device::Auto => match cuda::open() {
                Ok(gpu) => Ok(Backend::Cuda(gpu)),
                Err(why) => {
                    log::info!("device = auto: running on the CPU: {why}");
                    Ok(Backend::Cpu)
                }
            },
        }
    }
}

/// Why CUDA cannot be used in this process (`None`: it can).
pub fn cuda_unavailable() -> Option<String> {
    cuda::open().err()
}

/// GPU memory in use on the device right now (all processes), bytes; `None`
/// without a usable CUDA device.
pub fn gpu_memory_used() -> Option<u64> {
    cuda::memory_used()
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::Gpu;

    pub(super) fn open() -> Result<Gpu, String> {
        Err("this build has no CUDA support (build with `--features cuda`)".into())
    }

    pub(super) fn memory_used() -> Option<u64> {
        None
    }
}

#[cfg(feature = "cuda")]
pub(crate) use cuda::prepare;

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::{Arc, OnceLock};

    use tract_core::internal::*;
    use tract_core::runtime::runtime_for_name;

    use std::time::Instant;

    use super::Gpu;

    /// The outcome of the first attempt, kept: CUDA is opened once per process.
    static OPENED: OnceLock<Result<Gpu, String>> = OnceLock::new();

    pub(super) fn open() -> Result<Gpu, String> {
        OPENED.get_or_init(open_once).clone()
    }

    fn open_once() -> Result<Gpu, String> {
        let t0 = Instant::now();
        // Every library (driver, runtime, NVRTC, cuBLAS, cuDNN) is opened and
        // the driver initialised before anything can panic inside tract.
        tract_cuda::utils::ensure_cuda_runtime_dependencies("CUDA cannot be used")
            .map_err(|e| format!("{e:#}"))?;
        let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| format!("CUDA device 0: {e}"))?;
        let name = ctx.name().map_err(|e| format!("CUDA device 0: {e}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("CUDA device 0: {e}"))?;
        let memory_total = ctx.total_mem().map_err(|e| format!("CUDA device 0: {e}"))? as u64;
        // tract's context: compiles its kernels with NVRTC (cached on disk
        // under $XDG_CACHE_HOME/tract, so later starts only load them).
        tract_cuda::with_cuda_stream(|_| Ok(())).map_err(|e| format!("{e:#}"))?;
        let gpu = Gpu {
            name,
            compute_capability: format!("{major}.{minor}"),
            memory_total,
            first_use_seconds: t0.elapsed().as_secs_f64(),
        };
        log::info!(
            "CUDA: {} (compute capability {}, {} MiB), ready in {:.2} s",
            gpu.name,
            gpu.compute_capability,
            gpu.memory_total >> 20,
            gpu.first_use_seconds
        );
        Ok(gpu)
    }

    pub(super) fn memory_used() -> Option<u64> {
        OPENED.get()?.as_ref().ok()?;
        let ctx = cudarc::driver::CudaContext::new(0).ok()?;
        let (free, total) = ctx.mem_get_info().ok()?;
        Some(total.saturating_sub(free) as u64)
    }

    /// Turn an optimisable model into a plan whose nodes run on the GPU
    /// (tract falls back to the CPU, node by node, for what it cannot run).
    pub(crate) fn prepare(model: TypedModel) -> TractResult<Arc<TypedRunnableModel>> {
        open().map_err(TractError::msg)?;
        let runtime = runtime_for_name("cuda")?.context("this tract has no CUDA runtime")?;
        let runnable = runtime.prepare(model)?;
        runnable
            .typed_plan()
            .cloned()
            .context("tract's CUDA runtime returned no plan")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_always_there() {
        assert_eq!(Device::Cpu.resolve().unwrap(), Backend::Cpu);
    }

    /// On a machine without an NVIDIA driver (every CI machine), `auto`
    /// falls back to the CPU and `cuda` fails with the reason: the build, or
    /// the library it could not open. Where a GPU is present, it is used.
    #[test]
    fn without_a_usable_gpu_auto_falls_back_and_cuda_says_why() {
        match Device::Cuda.resolve() {
            Ok(Backend::Cuda(gpu)) => {
                assert_eq!(Device::Auto.resolve().unwrap(), Backend::Cuda(gpu));
            }
            Ok(Backend::Cpu) => panic!("device = cuda resolved to the CPU"),
            Err(e) => {
                let message = e.to_string();
                if cfg!(feature = "cuda") {
                    assert!(message.contains("libcuda"), "{message}");
                } else {
                    assert!(message.contains("--features cuda"), "{message}");
                }
                assert!(message.contains("device = \"cuda\""), "{message}");
                assert_eq!(Device::Auto.resolve().unwrap(), Backend::Cpu);
                assert_eq!(gpu_memory_used(), None);
            }
        }
    }

    #[test]
    fn device_names_parse_as_in_the_config() {
        #[derive(serde::Deserialize)]
        struct M {
            device: Device,
        }
        let m: M = toml::from_str("device = \"auto\"").unwrap();
        assert_eq!(m.device, Device::Auto);
        assert!(toml::from_str::<M>("device = \"gpu\"").is_err());
    }
}
