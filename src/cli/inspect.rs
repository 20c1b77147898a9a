//! `winclip-edge inspect`: score images against a bank, print verdicts, write maps and heatmaps.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::bank::Bank;
use crate::heatmap;
use crate::inspector::{Inspection, Inspector};
use crate::model::{ModelPack, VisionModel};
use crate::winclip::upsample;

/// Longest side of heatmap thumbnails.
pub const THUMBNAIL_SIDE: u32 = 256;

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
    pub precision: crate::model::Precision,
}

/// Load a bank file with a message naming it.
pub(crate) fn load_bank(path: &Path) -> anyhow::Result<Bank> {
    let bytes = std::fs::read(path).with_context(|| format!("reading bank {}", path.display()))?;
    Bank::from_bytes(&bytes).with_context(|| format!("loading bank {}", path.display()))
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pack = ModelPack::open(&args.model)
        .with_context(|| format!("opening model pack {}", args.model.display()))?;
    let bank = load_bank(&args.bank)?;
    let vision = VisionModel::load_with(&pack, args.precision)?;
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
        match inspect_one(&inspector, path, stem, &args) {
            Ok(line) => {
                if line["verdict"] == "fail" {
                    failed += 1;
                }
                if args.json {
                    println!("{line}");
                } else {
                    println!(
                        "{:<4} score {:.5} (threshold {:.5})  {:>7.1} ms{}  {}",
                        line["verdict"].as_str().unwrap_or("?").to_uppercase(),
                        line["score"].as_f64().unwrap_or(f64::NAN),
                        line["threshold"].as_f64().unwrap_or(f64::NAN),
                        line["timings_ms"]["total"].as_f64().unwrap_or(f64::NAN),
                        if line["early_exit"] == true {
                            " (early exit)"
                        } else {
                            ""
                        },
                        path.display()
                    );
                }
            }
            Err(e) => {
                errors += 1;
                if args.json {
                    println!("{}", json!({ "image": path, "error": format!("{e:#}") }));
                } else {
                    println!("ERR  {e:#}");
                }
            }
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
fn inspect_one(
    inspector: &Inspector,
    path: &Path,
    stem: &Path,
    args: &Args,
) -> anyhow::Result<serde_json::Value> {
    let t0 = Instant::now();
    let img = crate::imageio::load_rgb(path)?;
    let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let ins = inspector.inspect(&img)?;
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
        let (w, h) = img.dimensions();
        let full = upsample::bilinear(ins.outcome.map.view(), h as usize, w as usize);
        let range = inspector.bank().meta.colour_range;
        let over = heatmap::overlay(&img, full.view(), range, 0.55);
        for (name, picture) in [
            (format!("{stem}.jpg"), over.clone()),
            (
                format!("{stem}.thumb.jpg"),
                heatmap::thumbnail(&over, THUMBNAIL_SIDE),
            ),
        ] {
            let out = dir.join(name);
            create_parent(&out)?;
            let bytes = heatmap::jpeg(&picture, 85)?;
            crate::fsutil::write_atomic(&out, &bytes)
                .with_context(|| format!("writing {}", out.display()))?;
        }
    }
    let output_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(report(path, inspector, &ins, decode_ms, output_ms))
}

/// The JSON line of one inspection.
pub(crate) fn report(
    path: &Path,
    inspector: &Inspector,
    ins: &Inspection,
    decode_ms: f64,
    output_ms: f64,
) -> serde_json::Value {
    let o = &ins.outcome;
    let (mut max, mut arg, mut sum) = (f32::NEG_INFINITY, (0, 0), 0.0f64);
    for ((r, c), v) in ins.map.indexed_iter() {
        sum += f64::from(*v);
        if *v > max {
            max = *v;
            arg = (r, c);
        }
    }
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
    json!({
        "image": path,
        "verdict": ins.verdict,
        "score": o.score,
        "threshold": ins.threshold,
        "image_score": o.image_score,
        "fewshot_max": o.fewshot_max,
        "early_exit": ins.early_exit,
        "score_bound": ins.score_bound,
        "map": {
            "max": max,
            "mean": sum / ins.map.len().max(1) as f64,
            "argmax": [arg.0, arg.1],
            "zero_shot_max": o.zero_shot.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        },
        "shots": inspector.bank().meta.shots,
        "model": inspector.model_id(),
        "bank": inspector.bank_id(),
        "timings_ms": timings,
    })
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
