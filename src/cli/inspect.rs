//! `winclip-edge inspect`: score images against a bank, print verdicts, write maps and heatmaps.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::bank::Bank;
use crate::heatmap;
use crate::inspector::Inspector;
use crate::model::{ModelPack, VisionModel};
use crate::record::{Identity, Record, Verdict};

/// Longest side of heatmap thumbnails (`<stem>.thumb.jpg`; `<stem>.jpg` is
/// at the picture's size).
pub const THUMBNAIL_SIDE: u32 = 128;

/// Arguments of `inspect`, already parsed.
pub(crate) struct Args {
    pub model: PathBuf,
    pub bank: PathBuf,
    pub images: Vec<PathBuf>,
    pub json: bool,
    pub maps: Option<PathBuf>,
    pub heatmaps: Option<PathBuf>,
    pub threshold: Option<f32>,
    pub early_exit: bool,
    pub numerics: crate::model::Numerics,
    pub device: crate::model::Device,
}

/// Load a bank file (or a recipe directory's current bank) with a message naming it.
pub(crate) fn load_bank(path: &Path) -> anyhow::Result<Bank> {
    let file = crate::recipe_dir::bank_file(path);
    let bytes = std::fs::read(&file).with_context(|| format!("reading bank {}", file.display()))?;
    Bank::from_bytes(&bytes).with_context(|| format!("loading bank {}", file.display()))
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pack = ModelPack::open(&args.model)
        .with_context(|| format!("opening model pack {}", args.model.display()))?;
    let bank = load_bank(&args.bank)?;
    let vision = VisionModel::load_on(&pack, &args.numerics, args.device.resolve()?)?;
    let mut inspector =
        Inspector::new(&pack, vision, bank).with_context(|| format!("using bank {}", args.bank.display()))?;
    if let Some(t) = args.threshold {
        inspector.set_threshold(t);
    } else if inspector.bank().meta.uncalibrated_few_shot() {
        eprintln!(
            "warning: {} is an UNCALIBRATED WinCLIP+ bank: its threshold {} passes every defect; \
             give --threshold, or rebuild the bank with --calibrate",
            args.bank.display(),
            inspector.threshold()
        );
    }
    inspector
        .set_early_exit(args.early_exit)
        .with_context(|| format!("--early-exit with bank {}", args.bank.display()))?;
    for dir in [&args.maps, &args.heatmaps].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let found = crate::fsutil::find_images(&args.images).context("listing images")?;
    if !found.skipped.is_empty() {
        let shown: Vec<String> = found
            .skipped
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        eprintln!(
            "skipped {} file(s) that are not pictures this build reads ({}): {}{}",
            found.skipped.len(),
            crate::fsutil::IMAGE_EXTENSIONS.join(", "),
            shown.join(", "),
            if found.skipped.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    let files = found.files;
    if files.is_empty() {
        anyhow::bail!(
            "no pictures found in {} (looked for {})",
            args.images
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            crate::fsutil::IMAGE_EXTENSIONS.join(", ")
        );
    }
    let stems = crate::fsutil::output_stems(&files);
    let (mut failed, mut errors) = (0usize, 0usize);
    for (path, stem) in files.iter().zip(&stems) {
        let rec = match inspect_one(&inspector, path, stem, &args) {
            Ok(rec) => rec,
            Err(e) => {
                let mut rec = Record::error(format!("{e:#}"), &Identity::of(&inspector));
                rec.file = Some(path.display().to_string());
                rec
            }
        };
        match rec.verdict {
            Verdict::Fail => failed += 1,
            Verdict::Error => errors += 1,
            Verdict::Pass => {}
        }
        if args.json {
            println!("{}", serde_json::to_string(&rec)?);
        } else {
            let ms = rec
                .timings_ms
                .as_ref()
                .and_then(|t| t["total"].as_f64())
                .map_or(String::new(), |t| format!("{t:>7.1} ms  "));
            println!("{}  {ms}{}", rec.summary(), path.display());
        }
    }
    log::info!(
        "{} images: {} pass, {failed} fail, {errors} errors",
        files.len(),
        files.len() - failed - errors
    );
    Ok(if errors > 0 {
        ExitCode::from(super::EXIT_UNINSPECTED)
    } else if failed > 0 {
        ExitCode::from(super::EXIT_FAIL)
    } else {
        ExitCode::SUCCESS
    })
}

/// Inspect `path`; outputs go to `<dir>/<stem>.*`.
fn inspect_one(inspector: &Inspector, path: &Path, stem: &Path, args: &Args) -> anyhow::Result<Record> {
    let t0 = Instant::now();
    let img = crate::imageio::load_rgb(path)?;
    let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let ins = inspector.inspect(&img)?;
    let mut rec = Record::inspected(inspector, &ins, img.width(), img.height());
    rec.file = Some(path.display().to_string());
    let t1 = Instant::now();
    let stem = stem.display();
    if let Some(dir) = &args.maps {
        // The map at model input resolution, and the patch-grid map it was upsampled from.
        for (name, map) in [
            (format!("{stem}.npy"), &ins.map),
            (format!("{stem}.grid.npy"), &ins.outcome.map),
        ] {
            let out = dir.join(name);
            create_parent(&out)?;
            let bytes = npy_bytes(map)?;
            crate::fsutil::write_atomic(&out, &bytes)
                .with_context(|| format!("writing {}", out.display()))?;
        }
    }
    if let Some(dir) = &args.heatmaps {
        let range = inspector.bank().meta.colour_range;
        let boxes = rec.boxes();
        let legend = rec.legend(&boxes);
        let whole = img.width().max(img.height());
        for (name, side) in [
            (format!("{stem}.jpg"), whole),
            (format!("{stem}.thumb.jpg"), THUMBNAIL_SIDE),
        ] {
            let picture = heatmap::explained(&img, ins.outcome.map.view(), range, &legend, side);
            let out = dir.join(name);
            create_parent(&out)?;
            let bytes = heatmap::jpeg(&picture, 85)?;
            crate::fsutil::write_atomic(&out, &bytes)
                .with_context(|| format!("writing {}", out.display()))?;
        }
    }
    let output_ms = t1.elapsed().as_secs_f64() * 1e3;
    let t = &ins.timings;
    let mut timings = json!({
        "decode": round3(decode_ms),
        "preprocess": round3(t.preprocess_ms),
        "image": round3(t.image_ms),
        "scoring": round3(t.scoring_ms),
        "upsample": round3(t.upsample_ms),
        "outputs": round3(output_ms),
        "total": round3(decode_ms + t.total_ms() + output_ms),
    });
    for (k, ms) in &t.windows_ms {
        timings[format!("windows_{k}")] = json!(round3(*ms));
    }
    rec.timings_ms = Some(timings);
    Ok(rec)
}

fn create_parent(out: &Path) -> anyhow::Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// A float32 `.npy` file of a 2-D map.
pub(crate) fn npy_bytes(map: &ndarray::Array2<f32>) -> anyhow::Result<Vec<u8>> {
    use ndarray_npy::WriteNpyExt;
    let mut out = Vec::new();
    map.write_npy(&mut out).context("encoding .npy")?;
    Ok(out)
}
