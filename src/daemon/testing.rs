//! Helpers for the daemon's unit tests: the committed tiny pack, small banks
//! for it, fixture pictures.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::inspector::{self, BankSpec};
use crate::model::{ModelPack, TextModel, VisionModel};

pub(crate) fn tiny_pack() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny")
}

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/winclip")
        .join(name)
}

/// Bank bytes per object name.
type Banks = Mutex<Vec<(String, Vec<u8>)>>;

/// Write a zero-shot bank for `object` (built once per object and test run) to `dir`.
pub(crate) fn tiny_bank(dir: &Path, object: &str) -> PathBuf {
    static BANKS: OnceLock<Banks> = OnceLock::new();
    let banks = BANKS.get_or_init(Default::default);
    let mut banks = banks.lock().unwrap();
    let bytes = match banks.iter().find(|(o, _)| o == object) {
        Some((_, b)) => b.clone(),
        None => {
            let pack = ModelPack::open(tiny_pack()).unwrap();
            let vision = VisionModel::load(&pack).unwrap();
            let text = TextModel::load(&pack).unwrap();
            let bank =
                inspector::build_bank(&pack, &vision, &text, &BankSpec::new(object), &[], &[]).unwrap();
            let b = bank.to_bytes().unwrap();
            banks.push((object.to_string(), b.clone()));
            b
        }
    };
    let path = dir.join(format!("{object}.bank"));
    std::fs::write(&path, bytes).unwrap();
    path
}
