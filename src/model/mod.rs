//! The model pack and its runtime: the only module that knows about tract.
//!
//! A *model pack* is a directory written by `models/export.py`: three ONNX
//! graphs (image → token map, token encoder, text encoder), a `tokenizer.json`
//! and a `manifest.toml` with the architecture and the sha256 of every file.
//! [`ModelPack::open`] checks the manifest and the files; [`VisionModel`] and
//! [`TextModel`] load the graphs and return plain `ndarray` values, so the
//! scoring code never sees a tract type.

mod bf16;
mod contraction_split;
mod dense;
mod device;
#[cfg(test)]
mod graph_testing;
mod int8;
pub mod kernels;
mod manifest;
mod needed_rows;
mod onnx_file;
mod precision;
mod preprocess;
pub mod reference;
mod runtime;
mod shared_weights;
mod short_attention;
mod text;
mod vision;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use device::{cuda_unavailable, gpu_memory_used, Backend, Device, Gpu};
pub use manifest::{Architecture, FileEntry, Manifest, FORMAT_VERSION};
pub use precision::{
    layer_name, linear_layers, EncoderNumerics, F32Layers, Numerics, PatternError, Precision, PROJECTION,
};
pub use preprocess::Preprocessor;
pub(crate) use runtime::release_freed_memory;
pub use runtime::{set_threads, Outputs, PlanSummary};
pub use text::TextModel;
pub use vision::{ImageFeatures, VisionModel};

/// The committed tiny pack's token encoder, for the runtime's unit tests.
#[cfg(test)]
fn tiny_encoder_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny/encoder.onnx")
}

/// What can go wrong while opening or running a model pack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `manifest.toml` is malformed or inconsistent.
    #[error("invalid model pack manifest {path}: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file named in the manifest does not exist.
    #[error("model pack file missing: {path} ({role}); re-copy the whole pack directory")]
    MissingFile {
        /// Its role in the pack.
        role: &'static str,
        /// Where it should be.
        path: PathBuf,
    },
    /// A file's size or hash differs from the manifest.
    #[error(
        "model pack file {path} ({role}) is corrupt or from another export: {what} is {actual}, \
         manifest says {expected}"
    )]
    Corrupt {
        /// Its role in the pack.
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// `size` or `sha256`.
        what: &'static str,
        /// Value from the manifest.
        expected: String,
        /// Value on disk.
        actual: String,
    },
    /// tract refused or failed a graph.
    #[error("{role} model {path}: {message}")]
    Graph {
        /// Its role in the pack.
        role: &'static str,
        /// The ONNX file.
        path: PathBuf,
        /// tract's error chain.
        message: String,
    },
    /// The graph's output does not have the shape the manifest promises.
    #[error("{role} model: {message}")]
    Shape {
        /// Its role in the pack.
        role: &'static str,
        /// What was expected and what came out.
        message: String,
    },
    /// The device asked for (`[model] device`, `--device`) cannot be used.
    #[error("device = \"{device}\": {message}")]
    Device {
        /// What was asked for.
        device: Device,
        /// Why it cannot be used.
        message: String,
    },
    /// `f32_layers` names layers the encoder does not have.
    #[error(
        "f32_layers: {patterns} match(es) no linear layer of this encoder (its {layers}); \
         see `winclip-edge model info` for the names"
    )]
    F32Layers {
        /// The patterns that match nothing.
        patterns: String,
        /// The encoder's layers, in short.
        layers: String,
    },
    /// The tokenizer could not be loaded or failed on a prompt.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A model pack directory whose manifest and files have been checked.
#[derive(Debug, Clone)]
pub struct ModelPack {
    dir: PathBuf,
    manifest: Manifest,
    id: PackId,
}

/// Short identity of a pack: derived from the hashes of its model files, so two
/// exports of the same weights share it and any other weights do not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackId(String);

impl PackId {
    /// The id as 16 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ModelPack {
    /// Open `dir`: parse `manifest.toml`, then check that every file exists and
    /// has the recorded size and sha256.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let pack = Self::open_unverified(dir)?;
        for (role, entry) in pack.manifest.files.iter() {
            pack.verify_file(role, entry)?;
        }
        Ok(pack)
    }

    /// Open `dir` checking only the manifest and file sizes (no hashing).
    /// For quick summaries; [`ModelPack::open`] is what inference uses.
    pub fn open_unverified(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref().to_owned();
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::Manifest {
                    path: path.clone(),
                    message: "not found: is this a model pack directory written by models/export.py?".into(),
                }
            } else {
                Error::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let manifest = Manifest::parse(&text, &path)?;
        let id = pack_id(&manifest);
        let pack = Self { dir, manifest, id };
        for (role, entry) in pack.manifest.files.iter() {
            pack.check_size(role, entry)?;
        }
        Ok(pack)
    }

    /// The pack directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Shapes of the network.
    pub fn architecture(&self) -> &Architecture {
        &self.manifest.architecture
    }

    /// The pack's identity.
    pub fn id(&self) -> &PackId {
        &self.id
    }

    /// Absolute path of a pack file.
    pub fn path_of(&self, entry: &FileEntry) -> PathBuf {
        self.dir.join(&entry.path)
    }

    /// The image preprocessor this pack expects.
    pub fn preprocessor(&self) -> Preprocessor {
        let p = &self.manifest.preprocess;
        Preprocessor::new(self.architecture().image_size, p.mean, p.std)
    }

    fn check_size(&self, role: &'static str, entry: &FileEntry) -> Result<(), Error> {
        let path = self.path_of(entry);
        let meta = std::fs::metadata(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    role,
                    path: path.clone(),
                }
            } else {
                Error::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        if meta.len() != entry.bytes {
            return Err(Error::Corrupt {
                role,
                path,
                what: "size",
                expected: entry.bytes.to_string(),
                actual: meta.len().to_string(),
            });
        }
        Ok(())
    }

    fn verify_file(&self, role: &'static str, entry: &FileEntry) -> Result<(), Error> {
        let path = self.path_of(entry);
        let actual = sha256_file(&path)?;
        if !actual.eq_ignore_ascii_case(&entry.sha256) {
            return Err(Error::Corrupt {
                role,
                path,
                what: "sha256",
                expected: entry.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

fn pack_id(m: &Manifest) -> PackId {
    let mut h = Sha256::new();
    for (role, entry) in m.files.iter() {
        h.update(role.as_bytes());
        h.update(b" ");
        h.update(entry.sha256.to_ascii_lowercase().as_bytes());
        h.update(b"\n");
    }
    PackId(hex::encode(&h.finalize()[..8]))
}

/// Streaming sha256 of a file, as lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
