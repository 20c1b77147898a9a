//! Loading the inspector, and changing it on reload with only what changed.
//!
//! - threshold or early exit: the running inspector is copied with the new
//!   settings (the model and the bank are shared, nothing is read);
//! - bank: the bank file is read and checked against the running model's
//!   pack identity (the pack is neither hashed nor loaded again);
//! - pack, precision or device: the new pack is verified and the bank checked
//!   against it first; then the new model is loaded beside the running one
//!   when both fit `model.memory_budget_mb`, otherwise the running model is
//!   unloaded first (inspections wait meanwhile) and loaded again if the new
//!   one fails. The predicted peak is logged either way.

use std::path::Path;

use anyhow::Context;

use crate::bank::Bank;
use crate::config::{self, Config};
use crate::daemon::recipes::Recipes;
use crate::inspector::Inspector;
use crate::model::{ModelPack, Precision, VisionModel};

/// A loaded inspector and the size of the model weights it holds.
#[derive(Debug)]
pub struct Loaded {
    /// The inspector.
    pub inspector: Inspector,
    /// Bytes of the pack's vision weights (its `embed` and `encoder` files).
    pub weights: u64,
    /// Seconds loading the vision model took.
    pub seconds: f64,
}

/// The vision weights of `pack`: what loading its model keeps resident
/// (f16 halves the encoder's share).
pub fn weight_bytes(pack: &ModelPack, precision: Precision) -> u64 {
    let f = &pack.manifest().files;
    match precision {
        Precision::F32 => f.embed.bytes + f.encoder.bytes,
        Precision::F16 | Precision::Bf16 => f.embed.bytes + f.encoder.bytes / 2,
        Precision::Int8 => f.embed.bytes + f.encoder.bytes / 4,
    }
}

/// Loading a model peaks at about one and a half times its f32 weights
/// (every weight once, as read from the ONNX file, plus the copies tract and
/// the dense products make of some before their originals go, and the
/// allocator's slack); measured on the full-size pack (0.47 GB of files):
/// 0.70 GB in f32, 0.68 GB in int8 (src/model/onnx_file.rs).
pub fn load_peak(pack: &ModelPack) -> u64 {
    let f = &pack.manifest().files;
    3 * (f.embed.bytes + f.encoder.bytes) / 2
}

/// A bank file, or a recipe directory's current bank.
fn read_bank(path: &Path) -> anyhow::Result<Bank> {
    let file = crate::recipe_dir::bank_file(path);
    let bytes = std::fs::read(&file).with_context(|| format!("reading bank {}", file.display()))?;
    Bank::from_bytes(&bytes).with_context(|| format!("bank {}", file.display()))
}

fn open_pack(path: &Path) -> anyhow::Result<ModelPack> {
    ModelPack::open(path).with_context(|| format!("model pack {}", path.display()))
}

/// What a recipe sets on its inspector, and where it was set (for messages).
struct Tuning<'a> {
    bank: &'a Path,
    threshold: Option<f32>,
    early_exit: bool,
    /// `model` or `recipe "name"`.
    key: String,
}

impl<'a> Tuning<'a> {
    fn model(m: &'a config::Model) -> Self {
        Self {
            bank: &m.bank,
            threshold: m.threshold,
            early_exit: m.early_exit,
            key: "model".into(),
        }
    }

    fn recipe(r: &'a config::Recipe) -> Self {
        Self {
            bank: &r.bank,
            threshold: r.threshold,
            early_exit: r.early_exit,
            key: format!("recipe {:?}", r.name),
        }
    }
}

/// Apply a threshold override and early-exit setting.
fn configure(inspector: &mut Inspector, t: &Tuning) -> anyhow::Result<()> {
    if inspector.bank().meta.uncalibrated_few_shot() && t.threshold.is_none() {
        anyhow::bail!(
            "bank {} is an uncalibrated WinCLIP+ bank: its threshold {} is the zero-shot default, \
             which passes every defect. Set {}.threshold, or rebuild the bank with --calibrate",
            t.bank.display(),
            inspector.bank().meta.threshold,
            t.key
        );
    }
    inspector
        .configure(t.threshold, t.early_exit)
        .with_context(|| format!("{}.early_exit with bank {}", t.key, t.bank.display()))?;
    if let Some(rule) = inspector.early_exit_rule().filter(|_| t.early_exit) {
        log::info!(
            "{}: early exit on: a part whose score bound {rule} is at or below the threshold passes after the full-image pass",
            t.key
        );
    }
    Ok(())
}

/// What recipe `name` of `config` sets (`None`: no such recipe).
fn tuning<'a>(config: &'a Config, name: &str) -> Option<Tuning<'a>> {
    if name == config.model.recipe {
        return Some(Tuning::model(&config.model));
    }
    config.recipes.iter().find(|r| r.name == name).map(Tuning::recipe)
}

/// The bank path of recipe `name` in `config` (`None`: no such recipe).
pub fn bank_path<'a>(config: &'a Config, name: &str) -> Option<&'a Path> {
    tuning(config, name).map(|t| t.bank)
}

/// Recipe `name`'s inspector with `bank` on `base`'s model, with the
/// recipe's threshold override and early-exit setting from `config`.
pub fn retune(base: &Inspector, bank: Bank, config: &Config, name: &str) -> anyhow::Result<Inspector> {
    let tuning = tuning(config, name).with_context(|| format!("there is no recipe {name:?}"))?;
    let mut inspector = base
        .with_bank(bank)
        .with_context(|| format!("{}: bank {}", tuning.key, tuning.bank.display()))?;
    configure(&mut inspector, &tuning)?;
    Ok(inspector)
}

/// Every recipe of `config` on `primary`'s model: `[model]`'s is `primary`
/// itself, each `[[recipe]]`'s bank is read and checked against the model.
pub fn recipes(primary: Inspector, config: &Config) -> anyhow::Result<Recipes> {
    let mut set = Recipes::new(&config.model.recipe, primary.clone());
    for r in &config.recipes {
        let bank = read_bank(&r.bank).with_context(|| format!("recipe {:?}", r.name))?;
        let mut inspector = primary
            .with_bank(bank)
            .with_context(|| format!("recipe {:?}: bank {}", r.name, r.bank.display()))?;
        configure(&mut inspector, &Tuning::recipe(r))?;
        set.insert(&r.name, inspector);
    }
    Ok(set)
}

/// Load the model pack and bank of `model` into an inspector (start-up).
pub fn load(model: &config::Model) -> anyhow::Result<Loaded> {
    let pack = open_pack(&model.pack)?;
    let bank = read_bank(&model.bank)?;
    // Checked before the model is loaded: a wrong bank fails in milliseconds.
    bank.check_model(&crate::inspector::model_ref(&pack))
        .with_context(|| format!("bank {}", model.bank.display()))?;
    load_checked(&pack, bank, model)
}

fn load_checked(pack: &ModelPack, bank: Bank, model: &config::Model) -> anyhow::Result<Loaded> {
    // `device = "cuda"` that cannot be used fails here, before any source
    // starts: a configuration error (exit status 2), with the reason.
    let t0 = std::time::Instant::now();
    let backend = model.device.resolve()?;
    let vision = VisionModel::load_on(pack, &model.numerics(), backend)?;
    log::info!("token encoder on {}", vision.backend());
    let mut inspector =
        Inspector::new(pack, vision, bank).with_context(|| format!("bank {}", model.bank.display()))?;
    configure(&mut inspector, &Tuning::model(model))?;
    Ok(Loaded {
        inspector,
        weights: weight_bytes(pack, model.precision),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A new model to load, checked but not loaded yet.
#[derive(Debug)]
pub struct NewModel {
    pack: ModelPack,
    bank: Bank,
    model: config::Model,
    /// The resident memory predicted at the peak of the swap, bytes.
    pub peak: u64,
    /// Whether the running model must be unloaded first to stay within budget.
    pub unload_first: bool,
}

impl NewModel {
    /// Load it.
    pub fn load(self) -> anyhow::Result<Loaded> {
        load_checked(&self.pack, self.bank, &self.model)
    }
}

/// What a reload does to the inspector.
#[derive(Debug)]
pub enum Swap {
    /// Nothing changes.
    Keep,
    /// A ready inspector sharing the running model (settings or bank).
    Ready(Box<Inspector>),
    /// A new model: load it (beside the running one or after unloading it).
    Model(Box<NewModel>),
}

/// Prepare the change `change` of the running inspector to `new`.
/// `rss` is the resident memory now and `weights` the running model's.
pub fn prepare(
    change: config::EngineChange,
    current: &Inspector,
    new: &config::Model,
    rss: u64,
    weights: u64,
) -> anyhow::Result<Swap> {
    match change {
        config::EngineChange::None => Ok(Swap::Keep),
        config::EngineChange::Settings => {
            let mut next = current.clone();
            configure(&mut next, &Tuning::model(new))?;
            Ok(Swap::Ready(Box::new(next)))
        }
        config::EngineChange::Bank => {
            let bank = read_bank(&new.bank)?;
            let mut next = current
                .with_bank(bank)
                .with_context(|| format!("bank {}", new.bank.display()))?;
            configure(&mut next, &Tuning::model(new))?;
            Ok(Swap::Ready(Box::new(next)))
        }
        config::EngineChange::Model => {
            let pack = open_pack(&new.pack)?;
            let bank = read_bank(&new.bank)?;
            bank.check_model(&crate::inspector::model_ref(&pack))
                .with_context(|| {
                    format!(
                        "bank {} with model pack {}",
                        new.bank.display(),
                        new.pack.display()
                    )
                })?;
            let (peak, unload_first) = plan_memory(rss, weights, load_peak(&pack), new.memory_budget)?;
            Ok(Swap::Model(Box::new(NewModel {
                pack,
                bank,
                model: new.clone(),
                peak,
                unload_first,
            })))
        }
    }
}

/// The peak of a model swap and whether the running model must go first:
/// beside it the peak is `rss + load_peak`; after unloading it,
/// `rss - weights + load_peak` (never below `rss`, which was reached already).
fn plan_memory(rss: u64, weights: u64, load_peak: u64, budget: u64) -> anyhow::Result<(u64, bool)> {
    let beside = rss + load_peak;
    if beside <= budget {
        return Ok((beside, false));
    }
    let after_unload = rss.saturating_sub(weights) + load_peak;
    if after_unload <= budget {
        return Ok((after_unload.max(rss), true));
    }
    anyhow::bail!(
        "loading the new model pack needs about {} MB even after unloading the running one, \
         over model.memory_budget_mb = {}: raise the budget, or restart the service to load it",
        after_unload / 1_000_000,
        budget / 1_000_000
    )
}

/// Give freed heap memory back to the system, so that the next model loads
/// into memory the old one really left (glibc keeps freed blocks otherwise).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap; it has no preconditions.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn a_model_that_fits_beside_the_running_one_loads_beside_it() {
        // Tiny pack: 40 MB running, 20 MB to load, budget 1200 MB.
        assert_eq!(
            plan_memory(40 * MB, 10 * MB, 20 * MB, 1200 * MB).unwrap(),
            (60 * MB, false)
        );
    }

    #[test]
    fn a_full_size_swap_unloads_the_running_model_first() {
        // Full-size pack inspecting: 700 MB resident, 470 MB of weights; a
        // second one peaks at 940 MB more.
        let (peak, first) = plan_memory(700 * MB, 470 * MB, 940 * MB, 1200 * MB).unwrap();
        assert!(first);
        assert_eq!(peak, 1170 * MB);
    }

    #[test]
    fn a_model_too_large_for_the_budget_is_refused_with_what_to_do() {
        let err = plan_memory(700 * MB, 470 * MB, 2000 * MB, 1200 * MB)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.memory_budget_mb = 1200") && err.contains("restart"),
            "{err}"
        );
    }
}
