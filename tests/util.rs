//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed tiny model pack; fails loudly if it is missing.
pub fn tiny_pack() -> PathBuf {
    let p = root().join("models/tiny");
    assert!(
        p.join("manifest.toml").is_file(),
        "the committed tiny model pack is missing at {}; restore it with `git checkout models/tiny` \
         or regenerate it with `python3 models/export.py --tiny --out models/tiny`",
        p.display()
    );
    p
}

/// The winclip-edge binary built for this test run.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_winclip-edge"));
    c.env("RUST_LOG", "warn");
    c
}

/// Run the binary with `args`; return its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn winclip-edge")
}

/// stdout + stderr as one string, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Copy a directory tree (small packs only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}
