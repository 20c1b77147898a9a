//! What commands set (`<state_dir>/operator.json`): an overlay on the
//! configuration file, so a restart or a reload (SIGHUP) keeps it until a
//! command takes it back. Written atomically (fsync, rename) before it takes
//! effect: nothing a command does lives in memory only.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The operator's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// The station takes no pictures.
    #[serde(default)]
    pub paused: bool,
    /// Thresholds set by command, by recipe, over the configuration's.
    #[serde(default)]
    pub thresholds: BTreeMap<String, f32>,
}

impl Operator {
    /// Where it is kept under `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("operator.json")
    }

    /// Read it (the default when there is none).
    pub fn load(state_dir: &Path) -> io::Result<Self> {
        match std::fs::read(Self::path(state_dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e} (fix or remove it)", Self::path(state_dir).display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Write it atomically.
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(&Self::path(state_dir), &json)
    }

    /// `config` with these settings over it.
    pub fn over(&self, config: &Config) -> Config {
        let mut c = config.clone();
        for (recipe, t) in &self.thresholds {
            // One for a recipe that is gone does nothing (and stays, should it return).
            c.set_recipe_threshold(recipe, Some(*t));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_across_a_restart_and_laid_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Operator::load(dir.path()).unwrap(), Operator::default());
        let op = Operator {
            paused: true,
            thresholds: BTreeMap::from([("default".into(), 0.25), ("gone".into(), 0.5)]),
        };
        op.save(dir.path()).unwrap();
        assert_eq!(Operator::load(dir.path()).unwrap(), op);
        let config = Config::new(
            "st",
            dir.path().into(),
            crate::config::Model::new("p".into(), "b".into()),
            Vec::new(),
        );
        assert_eq!(op.over(&config).model.threshold, Some(0.25));
        assert_eq!(Operator::default().over(&config), config);
        std::fs::write(Operator::path(dir.path()), b"{\"paused\": 3}").unwrap();
        let e = Operator::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("operator.json"), "{e}");
    }
}
