//! Parity against the torch reference outputs that the exporter stores in a pack.
//!
//! `models/export.py` runs open_clip's own modules on fixed images and prompts
//! and saves the results under `reference/`. [`verify`] recomputes everything
//! with this crate (preprocessing, token map, encoder, windows, tokenizer, text
//! encoder) and reports the worst differences, so a pack can be checked on
//! the device it will run on.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, Ix2, Ix3};
use serde::Serialize;

use super::{Error, ModelPack, TextModel, VisionModel};
use crate::winclip::WindowSet;

/// How one computed quantity compares with its reference.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// What was compared, e.g. `image 1 windows.3`.
    pub name: String,
    /// Number of values compared.
    pub values: usize,
    /// Largest absolute difference.
    pub max_abs_diff: f32,
    /// Largest absolute reference value (for scale).
    pub max_abs_ref: f32,
    /// Smallest cosine similarity between corresponding rows (vectors).
    pub min_cosine: f64,
}

/// Everything [`verify`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct ParityReport {
    /// Preprocessing: Rust resize + normalise vs torchvision.
    pub preprocess: Vec<Comparison>,
    /// Vision outputs from the reference's own pixels (isolates the model).
    pub vision: Vec<Comparison>,
    /// Vision outputs from Rust-preprocessed pixels (end to end).
    pub vision_end_to_end: Vec<Comparison>,
    /// Text embeddings of the reference prompts.
    pub text: Vec<Comparison>,
    /// Prompts whose token ids equal open_clip's.
    pub tokens_identical: usize,
    /// Prompts checked.
    pub prompts: usize,
    /// Prompts whose ids differ (at most 5 listed).
    pub token_mismatches: Vec<String>,
}

impl ParityReport {
    /// Worst (max abs diff, min cosine) over a group.
    pub fn worst(group: &[Comparison]) -> (f32, f64) {
        // Two separate reductions: a fused (f32 max, f64 min) fold crashes LLVM 22's
        // x86 vector legaliser (WidenVecOp_SETCC) in release builds of rustc 1.95.
        let diff = group.iter().map(|x| x.max_abs_diff).fold(0.0f32, f32::max);
        let cos = group.iter().map(|x| x.min_cosine).fold(1.0f64, f64::min);
        (diff, cos)
    }
}

/// Failures while reading the reference data.
fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Manifest {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Recompute the pack's reference outputs and compare.
pub fn verify(pack: &ModelPack) -> Result<ParityReport, Error> {
    verify_on(pack, super::Backend::Cpu)
}

/// [`verify`] with the token encoder on `backend`.
pub fn verify_on(pack: &ModelPack, backend: super::Backend) -> Result<ParityReport, Error> {
    let reference = pack.manifest().reference.clone().ok_or_else(|| {
        bad(
            &pack.dir().join("manifest.toml"),
            "the pack has no [reference] section (exported with --no-reference)",
        )
    })?;
    let tensors_path = pack.dir().join(&reference.tensors);
    let bytes = std::fs::read(&tensors_path).map_err(|source| Error::Io {
        path: tensors_path.clone(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(&tensors_path, e.to_string()))?;
    let get = |name: &str| load_f32(&st, name, &tensors_path);

    let vision = VisionModel::load_on(pack, &super::Numerics::default(), backend)?;
    let grid = pack.architecture().grid;
    let sets = [WindowSet::new(grid, 2, 1), WindowSet::new(grid, 3, 1)];
    let mut report = ParityReport {
        preprocess: vec![],
        vision: vec![],
        vision_end_to_end: vec![],
        text: vec![],
        tokens_identical: 0,
        prompts: 0,
        token_mismatches: vec![],
    };
    for (i, name) in reference.images.iter().enumerate() {
        let img_path: PathBuf = pack.dir().join("reference").join(name);
        let img = crate::imageio::load_rgb(&img_path).map_err(|e| bad(&img_path, e.to_string()))?;
        let ref_pixels = get(&format!("image.{i}.pixels"))?;
        let ours = vision.preprocess(&img);
        report.preprocess.push(compare(
            &format!("{name} pixels"),
            &ours.view().into_dyn(),
            &ref_pixels,
            2,
        ));

        for (pixels, out) in [
            (
                ref_pixels
                    .clone()
                    .into_dimensionality::<Ix3>()
                    .map_err(|e| bad(&tensors_path, e.to_string()))?,
                &mut report.vision,
            ),
            (ours, &mut report.vision_end_to_end),
        ] {
            let f = vision.image_features(&pixels)?;
            out.push(compare(
                &format!("{name} token_map"),
                &f.token_map.view().into_dyn(),
                &get(&format!("image.{i}.token_map"))?,
                2,
            ));
            out.push(compare(
                &format!("{name} embedding"),
                &f.embedding.view().into_dyn(),
                &get(&format!("image.{i}.embedding"))?,
                1,
            ));
            let ref_tokens = get(&format!("image.{i}.tokens"))?;
            let ref_patches = ref_tokens.slice_axis(Axis(0), (1..).into()).to_owned();
            out.push(compare(
                &format!("{name} patch_features"),
                &f.patch_features().into_dyn(),
                &ref_patches,
                2,
            ));
            for set in sets.iter().flatten() {
                let key = format!("windows.{}", set.scale());
                let w = vision.window_embeddings(&f.token_map, set)?;
                out.push(compare(
                    &format!("{name} {key}"),
                    &w.view().into_dyn(),
                    &get(&format!("image.{i}.{key}"))?,
                    2,
                ));
            }
        }
    }

    let prompts_path = pack.dir().join(&reference.prompts);
    let text = std::fs::read_to_string(&prompts_path).map_err(|source| Error::Io {
        path: prompts_path.clone(),
        source,
    })?;
    let prompts: Vec<String> = serde_json::from_str(&text).map_err(|e| bad(&prompts_path, e.to_string()))?;
    let text_model = TextModel::load(pack)?;
    let ids = text_model.tokenize(&prompts)?;
    let ref_ids = load_i64(&st, "text.ids", &tensors_path)?;
    report.prompts = prompts.len();
    for (i, p) in prompts.iter().enumerate() {
        if ids.row(i).iter().eq(ref_ids.row(i).iter()) {
            report.tokens_identical += 1;
        } else if report.token_mismatches.len() < 5 {
            report.token_mismatches.push(p.clone());
        }
    }
    let emb = text_model.embed(&prompts)?;
    report.text.push(compare(
        "text embeddings",
        &emb.view().into_dyn(),
        &get("text.embeddings")?,
        2,
    ));
    Ok(report)
}

fn load_f32(st: &safetensors::SafeTensors<'_>, name: &str, path: &Path) -> Result<ArrayD<f32>, Error> {
    let t = st.tensor(name).map_err(|e| bad(path, format!("{name}: {e}")))?;
    if t.dtype() != safetensors::Dtype::F32 {
        return Err(bad(path, format!("{name}: expected F32, found {:?}", t.dtype())));
    }
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    ArrayD::from_shape_vec(t.shape().to_vec(), data).map_err(|e| bad(path, format!("{name}: {e}")))
}

fn load_i64(
    st: &safetensors::SafeTensors<'_>,
    name: &str,
    path: &Path,
) -> Result<ndarray::Array2<i64>, Error> {
    let t = st.tensor(name).map_err(|e| bad(path, format!("{name}: {e}")))?;
    if t.dtype() != safetensors::Dtype::I64 {
        return Err(bad(path, format!("{name}: expected I64, found {:?}", t.dtype())));
    }
    let data: Vec<i64> = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    ArrayD::from_shape_vec(t.shape().to_vec(), data)
        .and_then(|a| a.into_dimensionality::<Ix2>())
        .map_err(|e| bad(path, format!("{name}: {e}")))
}

/// Compare two arrays of equal shape; cosines are taken over the last axis
/// (`vector_rank` = 1: the whole array is one vector).
pub fn compare(
    name: &str,
    ours: &ndarray::ArrayViewD<'_, f32>,
    reference: &ArrayD<f32>,
    vector_rank: usize,
) -> Comparison {
    let shape_ok = ours.shape() == reference.shape();
    let mut max_abs_diff = if shape_ok { 0.0f32 } else { f32::INFINITY };
    let mut max_abs_ref = 0.0f32;
    let mut min_cosine = if shape_ok { 1.0f64 } else { f64::NEG_INFINITY };
    if shape_ok {
        for (a, b) in ours.iter().zip(reference.iter()) {
            max_abs_diff = max_abs_diff.max((a - b).abs());
            max_abs_ref = max_abs_ref.max(b.abs());
        }
        if vector_rank == 1 || ours.ndim() < 2 {
            min_cosine = cosine(ours.iter(), reference.iter());
        } else {
            let last = Axis(ours.ndim() - 1);
            for (x, y) in ours.lanes(last).into_iter().zip(reference.lanes(last)) {
                min_cosine = min_cosine.min(cosine(x.iter(), y.iter()));
            }
        }
    }
    Comparison {
        name: name.into(),
        values: ours.len(),
        max_abs_diff,
        max_abs_ref,
        min_cosine,
    }
}

fn cosine<'a>(a: impl Iterator<Item = &'a f32>, b: impl Iterator<Item = &'a f32>) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else {
        ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
    }
}
