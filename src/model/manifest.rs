//! The pack's `manifest.toml`: what the exporter promises about the files next to it.
//!
//! Parsing is pure (`Manifest::parse`); checking the files on disk is `model::ModelPack`'s job.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Error;

/// The manifest format this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// `manifest.toml`, as written by `models/export.py`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version; must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Network shapes.
    pub architecture: Architecture,
    /// How images are turned into the vision encoder's input.
    pub preprocess: Preprocess,
    /// Where the weights came from.
    pub source: Source,
    /// The model files with their hashes.
    pub files: Files,
    /// Reference inputs/outputs for parity tests (optional in user packs).
    #[serde(default)]
    pub reference: Option<Reference>,
}

/// Shapes of the exported CLIP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Square input side in pixels (240 for ViT-B-16-plus-240).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Patches per side (`image_size / patch_size`).
    pub grid: usize,
    /// Tokens of the full image: `grid² + 1` (class token first).
    pub tokens: usize,
    /// Vision transformer width D_w.
    pub vision_width: usize,
    /// Vision transformer depth.
    pub vision_layers: usize,
    /// Vision attention heads.
    pub vision_heads: usize,
    /// Joint embedding dimension D.
    pub embed_dim: usize,
    /// Text transformer width.
    pub text_width: usize,
    /// Text transformer depth.
    pub text_layers: usize,
    /// Text attention heads.
    pub text_heads: usize,
    /// Text context length (77).
    pub context_length: usize,
    /// BPE vocabulary size (49408).
    pub vocab_size: usize,
}

/// Image preprocessing constants.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Resize kernel; only `bicubic-antialias` exists.
    pub resize: String,
    /// Per-channel mean (RGB).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
}

/// Provenance of the weights.
#[derive(Debug, Clone, Deserialize)]
pub struct Source {
    /// open_clip model name.
    pub model: String,
    /// open_clip pretrained tag, `checkpoint` or `none` (random weights).
    pub pretrained: String,
    /// Seed of random weights.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Checkpoint file name, when exported from a local checkpoint.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// sha256 of that checkpoint.
    #[serde(default)]
    pub checkpoint_sha256: Option<String>,
    /// open_clip version used by the exporter.
    #[serde(default)]
    pub open_clip_version: Option<String>,
    /// torch version used by the exporter.
    #[serde(default)]
    pub torch_version: Option<String>,
    /// Export time (UTC, RFC 3339).
    #[serde(default)]
    pub exported: Option<String>,
}

/// The pack's files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    /// image → token map ONNX.
    pub embed: FileEntry,
    /// token encoder ONNX.
    pub encoder: FileEntry,
    /// text encoder ONNX.
    pub text: FileEntry,
    /// `tokenizer.json`.
    pub tokenizer: FileEntry,
}

impl Files {
    /// `(role, entry)` pairs in a fixed order.
    pub fn iter(&self) -> [(&'static str, &FileEntry); 4] {
        [
            ("embed", &self.embed),
            ("encoder", &self.encoder),
            ("text", &self.text),
            ("tokenizer", &self.tokenizer),
        ]
    }
}

/// One file of the pack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the pack directory.
    pub path: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
}

/// Reference inputs/outputs written by the exporter.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    /// Image files under `reference/`.
    pub images: Vec<String>,
    /// JSON list of prompts.
    pub prompts: String,
    /// safetensors file of reference tensors.
    pub tensors: String,
    /// onnxruntime-vs-torch check done at export time.
    #[serde(default)]
    pub onnxruntime_max_abs_diff: Option<f64>,
}

impl Manifest {
    /// Parse and check a manifest's text. `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let m: Manifest = toml::from_str(text).map_err(|e| Error::Manifest {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        m.check().map_err(|message| Error::Manifest {
            path: path.to_owned(),
            message,
        })?;
        Ok(m)
    }

    fn check(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported by this build (expects {FORMAT_VERSION}); \
                 re-export the pack with this version's models/export.py",
                self.format_version
            ));
        }
        let a = &self.architecture;
        if a.patch_size == 0
            || !a.image_size.is_multiple_of(a.patch_size)
            || a.grid != a.image_size / a.patch_size
        {
            return Err(format!(
                "architecture: grid {} does not match image_size {} / patch_size {}",
                a.grid, a.image_size, a.patch_size
            ));
        }
        if a.tokens != a.grid * a.grid + 1 {
            return Err(format!("architecture: tokens {} != grid² + 1", a.tokens));
        }
        if a.embed_dim == 0 || a.vision_width == 0 || a.context_length == 0 {
            return Err("architecture: zero-sized dimension".into());
        }
        if self.preprocess.resize != "bicubic-antialias" {
            return Err(format!(
                "preprocess.resize = {:?} is not supported (only \"bicubic-antialias\")",
                self.preprocess.resize
            ));
        }
        if self.preprocess.std.iter().any(|s| *s <= 0.0) {
            return Err("preprocess.std must be positive".into());
        }
        for (role, f) in self.files.iter() {
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("files.{role}.sha256 is not a sha256 hex digest"));
            }
            if Path::new(&f.path).is_absolute() || f.path.contains("..") {
                return Err(format!("files.{role}.path must be relative to the pack"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
format_version = 1
[architecture]
image_size = 240
patch_size = 16
grid = 15
tokens = 226
vision_width = 64
vision_layers = 2
vision_heads = 2
embed_dim = 32
text_width = 32
text_layers = 2
text_heads = 2
context_length = 77
vocab_size = 49408
[preprocess]
resize = "bicubic-antialias"
mean = [0.48145466, 0.4578275, 0.40821073]
std = [0.26862954, 0.26130258, 0.27577711]
[source]
model = "winclip-tiny"
pretrained = "none"
seed = 0
[files.embed]
path = "embed.onnx"
sha256 = "978f0ed31928c39ea980028e129ade7e07df983f8efa01a5fff54baa414a7ee3"
bytes = 1
[files.encoder]
path = "encoder.onnx"
sha256 = "978f0ed31928c39ea980028e129ade7e07df983f8efa01a5fff54baa414a7ee3"
bytes = 1
[files.text]
path = "text.onnx"
sha256 = "978f0ed31928c39ea980028e129ade7e07df983f8efa01a5fff54baa414a7ee3"
bytes = 1
[files.tokenizer]
path = "tokenizer.json"
sha256 = "978f0ed31928c39ea980028e129ade7e07df983f8efa01a5fff54baa414a7ee3"
bytes = 1
"#;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(text, Path::new("manifest.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_well_formed_manifest_parses() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.architecture.grid, 15);
        assert_eq!(m.files.encoder.path, "encoder.onnx");
    }

    #[test]
    fn a_newer_format_version_is_refused_with_advice() {
        let err = parse(&GOOD.replace("format_version = 1", "format_version = 2")).unwrap_err();
        assert!(err.contains("format_version 2"), "{err}");
        assert!(err.contains("re-export"), "{err}");
    }

    #[test]
    fn inconsistent_grid_is_refused() {
        let err = parse(&GOOD.replace("grid = 15", "grid = 14")).unwrap_err();
        assert!(err.contains("grid 14"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse(&GOOD.replace("[preprocess]", "[preprocess]\ncrop = true")).unwrap_err();
        assert!(err.contains("crop"), "{err}");
    }

    #[test]
    fn paths_escaping_the_pack_are_refused() {
        let err = parse(&GOOD.replace("path = \"text.onnx\"", "path = \"../text.onnx\"")).unwrap_err();
        assert!(err.contains("files.text.path"), "{err}");
    }
}
