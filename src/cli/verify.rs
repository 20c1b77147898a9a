//! `winclip-edge model verify`: recompute the pack's torch reference outputs here.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::model::reference::{self, Comparison, ParityReport};
use crate::model::{Device, ModelPack};

/// Model outputs must agree to 1e-4 (scaled up for references larger than 1)…
const MAX_ABS: f32 = 1e-4;
/// …and point the same way.
const MIN_COSINE: f64 = 0.99999;
/// Preprocessing: torchvision and this crate accumulate in different orders.
const MAX_ABS_PIXELS: f32 = 1e-4;

pub(crate) fn run(dir: &Path, json: bool, device: Device) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let pack = ModelPack::open(dir).with_context(|| format!("opening model pack {}", dir.display()))?;
    let backend = device.resolve()?;
    let on = backend.to_string();
    let report =
        reference::verify_on(&pack, backend).with_context(|| format!("verifying {}", dir.display()))?;
    let ok = passes(&report);
    if json {
        println!(
            "{}",
            serde_json::json!({ "ok": ok, "device": on, "report": report })
        );
    } else {
        println!("token encoder on {on}");
        print_group("preprocess (Rust vs torchvision)", &report.preprocess);
        print_group("vision (reference pixels)", &report.vision);
        print_group(
            "vision (end to end, Rust preprocessing)",
            &report.vision_end_to_end,
        );
        print_group("text", &report.text);
        println!(
            "tokenizer: {}/{} prompts give open_clip's ids{}",
            report.tokens_identical,
            report.prompts,
            if report.token_mismatches.is_empty() {
                String::new()
            } else {
                format!("; differ: {:?}", report.token_mismatches)
            }
        );
        println!(
            "{} in {:.1} s (tolerance: |diff| <= {MAX_ABS:e}·max(1,|ref|), cosine >= {MIN_COSINE})",
            if ok { "PASS" } else { "FAIL" },
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The pass rule of `model verify`.
pub(crate) fn passes(r: &ParityReport) -> bool {
    let within = |c: &Comparison, tol: f32| {
        c.max_abs_diff <= tol * c.max_abs_ref.max(1.0) && c.min_cosine >= MIN_COSINE
    };
    r.preprocess.iter().all(|c| c.max_abs_diff <= MAX_ABS_PIXELS)
        && r.vision
            .iter()
            .chain(&r.vision_end_to_end)
            .chain(&r.text)
            .all(|c| within(c, MAX_ABS))
        && r.tokens_identical == r.prompts
}

fn print_group(title: &str, group: &[Comparison]) {
    let (d, c) = ParityReport::worst(group);
    println!("{title}: worst max|diff| {d:.2e}, worst min cosine {c:.8}");
    for x in group {
        println!(
            "  {:<34} {:>8} values  max|diff| {:.2e}  max|ref| {:>8.3}  min cos {:.8}",
            x.name, x.values, x.max_abs_diff, x.max_abs_ref, x.min_cosine
        );
    }
}
