//! Teaching from the line: a kept picture joins a recipe's shots or
//! calibration set and the bank is rebuilt on the device, from the vision
//! model alone (the text prototypes come from the running bank).
//!
//! The rebuild runs on a blocking thread while inspection goes on with the
//! old bank. It stages the next version of the recipe directory (see
//! [`crate::recipe_dir`]), builds and checks the new inspector, and only
//! then commits the version and switches `current`: a failure or a kill at
//! any moment leaves the old version current and complete.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::bank::{FileRef, ThresholdSource, MIN_CALIBRATION_IMAGES};
use crate::config::Config;
use crate::daemon::engine;
use crate::inspector::Inspector;
use crate::recipe_dir::{RecipeDir, Set};

/// A rebuild to run.
#[derive(Debug)]
pub struct Job {
    /// The recipe taught.
    pub recipe: String,
    /// Its recipe directory.
    pub dir: PathBuf,
    /// Its inspector now (the model, the text prototypes, the settings).
    pub inspector: Arc<Inspector>,
    /// The configuration that runs (the recipe's threshold override and early exit).
    pub config: Config,
    /// The inspection the picture comes from.
    pub inspection: String,
    /// The picture's bytes, as the camera wrote them.
    pub picture: Vec<u8>,
    /// Its format's file extension.
    pub extension: &'static str,
    /// Where it goes.
    pub set: Set,
}

/// What is being rebuilt, for `…/state`.
#[derive(Debug, Clone)]
pub struct Building {
    /// The recipe.
    pub recipe: String,
    /// The inspection whose picture is taught.
    pub inspection: String,
    /// Where it goes.
    pub set: Set,
    /// When it started.
    pub started: Instant,
}

impl Building {
    /// As `…/state` shows it.
    pub fn state(&self) -> Value {
        json!({
            "state": "building",
            "recipe": self.recipe,
            "inspection": self.inspection,
            "as": self.set,
            "seconds": self.started.elapsed().as_secs_f64(),
        })
    }
}

/// A finished rebuild: the new version is current on disk.
#[derive(Debug)]
pub struct Taught {
    /// The recipe.
    pub recipe: String,
    /// The version made (now `current`).
    pub version: u32,
    /// The version it was made from.
    pub previous: u32,
    /// The new bank (checked: the recipe's settings accept it).
    pub bank: crate::bank::Bank,
    /// How long the rebuild took, seconds.
    pub seconds: f64,
}

/// The file name a taught picture gets: the inspection id, kept to safe characters.
fn picture_name(inspection: &str, extension: &str) -> String {
    let stem: String = inspection
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    format!("taught-{stem}.{extension}")
}

/// Refuse a picture that recipe `recipe`'s current version already has.
pub fn check_new(dir: &RecipeDir, recipe: &str, picture: &[u8]) -> anyhow::Result<()> {
    if let Some((set, name)) = dir.find(dir.current()?, picture)? {
        bail!(
            "that picture is already in recipe {recipe}'s {} set (as {name}): a picture is taught once, \
             and never as both a shot and a calibration picture",
            set.name()
        );
    }
    Ok(())
}

/// Rebuild `job.recipe`'s bank with the picture added; the new version is
/// committed and made current only when the new bank is complete and usable.
pub fn rebuild(job: Job) -> anyhow::Result<Taught> {
    let t0 = Instant::now();
    let dir = RecipeDir::open(&job.dir)?;
    let base = dir.current()?;
    check_new(&dir, &job.recipe, &job.picture)?;
    let mut staged = dir.stage_from(base)?;
    staged.add(
        job.set,
        &picture_name(&job.inspection, job.extension),
        &job.picture,
    )?;
    let decode = |name: &str, bytes: &[u8]| {
        crate::imageio::decode_rgb_within(bytes, Path::new(name), &job.config.station.limits)
            .with_context(|| format!("recipe directory {}: {name}", job.dir.display()))
    };
    let mut shots = Vec::new();
    for (name, bytes) in staged.pictures(Set::Shot)? {
        shots.push((FileRef::of(&name, &bytes), decode(&name, &bytes)?));
    }
    let mut calibration = Vec::new();
    for (name, bytes) in staged.pictures(Set::Calibration)? {
        calibration.push(decode(&name, &bytes)?);
    }
    let meta = &job.inspector.bank().meta;
    if meta.threshold_source != ThresholdSource::Explicit && calibration.len() < MIN_CALIBRATION_IMAGES {
        bail!(
            "recipe {} would have {} calibration pictures; a threshold fitted to good parts needs at \
             least {MIN_CALIBRATION_IMAGES}: make its recipe directory with `winclip-edge bank --calibrate DIR \
             --recipe-dir ...`",
            job.recipe,
            calibration.len()
        );
    }
    let bank = job.inspector.rebuild(&shots, &calibration)?;
    let bytes = bank.to_bytes()?;
    // Checked as the station will use it before anything becomes current.
    engine::retune(&job.inspector, bank.clone(), &job.config, &job.recipe)?;
    let version = staged.commit(&bytes)?;
    dir.switch(version)?;
    if let Err(e) = dir.prune() {
        log::warn!("recipe {}: old versions not removed: {e}", job.recipe);
    }
    Ok(Taught {
        recipe: job.recipe,
        version,
        previous: base,
        bank,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taught_picture_is_named_after_its_inspection_in_safe_characters() {
        assert_eq!(picture_name("cam1-0007", "png"), "taught-cam1-0007.png");
        assert_eq!(picture_name("../x y", "jpg"), "taught-___x_y.jpg");
    }
}
