//! `bench --stream N`: the early-exit cascade on a production-like stream of
//! synthetic pictures, 95 % good and 5 % defective, against the full pipeline
//! on the same pictures: throughput and verdict agreement.

use std::time::Instant;

use serde::Serialize;

use crate::bank::FileRef;
use crate::inspector::{self, BankSpec, Inspector, Verdict};
use crate::model::{ModelPack, VisionModel};
use crate::synth::{Defect, Generator, Scene};
use crate::winclip::TextPrototypes;

/// Every this many pictures one is defective (5 %).
const DEFECT_EVERY: usize = 20;

/// One picture on which the cascade and the full pipeline disagree.
#[derive(Debug, Serialize)]
pub(super) struct Disagreement {
    index: usize,
    defective: bool,
    full: Verdict,
    cascade: Verdict,
    full_score: f32,
    cascade_score: f32,
}

/// One picture of the stream.
#[derive(Debug, Serialize)]
pub(super) struct Picture {
    defective: bool,
    full_score: f32,
    /// The cascade's score bound.
    bound: Option<f32>,
    early_exit: bool,
}

/// What the stream run measured.
#[derive(Debug, Serialize)]
pub(super) struct StreamReport {
    pub images: usize,
    pub defective: usize,
    pub shots: usize,
    pub calibration_images: usize,
    pub threshold: f32,
    pub rule: String,
    /// Mean milliseconds per picture, decode excluded.
    pub full_ms: f64,
    pub cascade_ms: f64,
    pub early_exits: usize,
    pub full_fails: usize,
    pub agreeing: usize,
    pub disagreements: Vec<Disagreement>,
    pub pictures: Vec<Picture>,
}

/// Build a `shots`-shot bank calibrated on `calibration` good pictures, then
/// inspect `n` pictures with and without early exit. `prototypes` are the
/// text prototypes for [`super::OBJECT`] with the paper's prompts.
pub(super) fn run(
    pack: &ModelPack,
    vision: &VisionModel,
    prototypes: &TextPrototypes,
    n: usize,
    shots: usize,
    calibration: usize,
) -> anyhow::Result<StreamReport> {
    let gen = Generator::new(Scene::Object, 256, 7);
    let refs: Vec<_> = (0..shots as u64)
        .map(|i| {
            let file = FileRef {
                name: format!("good-{i}.png"),
                sha256: String::new(),
            };
            (file, gen.sample(i, None).image)
        })
        .collect();
    let calibration_images = calibration;
    let calibration: Vec<_> = (0..calibration_images as u64)
        .map(|i| gen.sample(1000 + i, None).image)
        .collect();
    eprintln!("stream: building a {shots}-shot bank calibrated on {calibration_images} good pictures...");
    let spec = BankSpec::new(super::OBJECT);
    let bank =
        inspector::build_bank_from_prototypes(pack, vision, prototypes.clone(), &spec, &refs, &calibration)?;
    let full = Inspector::new(pack, vision.clone(), bank.clone())?;
    let mut cascade = Inspector::new(pack, vision.clone(), bank)?;
    cascade.set_early_exit(true)?;
    let rule = cascade
        .early_exit_rule()
        .map_or_else(|| "none".to_string(), |r| r.to_string());

    let pictures: Vec<_> = (0..n)
        .map(|i| {
            let defect = (i % DEFECT_EVERY == DEFECT_EVERY - 1)
                .then(|| Defect::ALL[(i / DEFECT_EVERY) % Defect::ALL.len()]);
            (defect.is_some(), gen.sample(2000 + i as u64, defect).image)
        })
        .collect();
    let run_all = |inspector: &Inspector, label: &str| -> anyhow::Result<(f64, Vec<_>)> {
        let t = Instant::now();
        let mut out = Vec::with_capacity(n);
        for (i, (_, img)) in pictures.iter().enumerate() {
            if i % 10 == 0 {
                eprintln!("stream: {label} {}/{n}", i + 1);
            }
            out.push(inspector.inspect(img)?);
        }
        Ok((t.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64, out))
    };
    let (full_ms, full_runs) = run_all(&full, "full pipeline")?;
    let (cascade_ms, cascade_runs) = run_all(&cascade, "cascade")?;

    let mut disagreements = Vec::new();
    for (i, ((f, c), (defective, _))) in full_runs.iter().zip(&cascade_runs).zip(&pictures).enumerate() {
        if f.verdict != c.verdict {
            disagreements.push(Disagreement {
                index: i,
                defective: *defective,
                full: f.verdict,
                cascade: c.verdict,
                full_score: f.outcome.score,
                cascade_score: c.outcome.score,
            });
        }
    }
    Ok(StreamReport {
        images: n,
        defective: pictures.iter().filter(|(d, _)| *d).count(),
        shots,
        calibration_images,
        threshold: full.threshold(),
        rule,
        full_ms,
        cascade_ms,
        early_exits: cascade_runs.iter().filter(|r| r.early_exit).count(),
        full_fails: full_runs.iter().filter(|r| r.verdict == Verdict::Fail).count(),
        agreeing: n - disagreements.len(),
        disagreements,
        pictures: full_runs
            .iter()
            .zip(&cascade_runs)
            .zip(&pictures)
            .map(|((f, c), (defective, _))| Picture {
                defective: *defective,
                full_score: f.outcome.score,
                bound: c.score_bound,
                early_exit: c.early_exit,
            })
            .collect(),
    })
}

/// Print the stream section of the bench report.
pub(super) fn print(r: &StreamReport) {
    println!(
        "\nearly-exit cascade on a stream of {} pictures ({} defective), {}-shot bank calibrated on {} good pictures \
         (threshold {:.5}; bound {}):",
        r.images, r.defective, r.shots, r.calibration_images, r.threshold, r.rule
    );
    println!(
        "  full pipeline {:.1} ms/picture ({:.2} pics/s); cascade {:.1} ms/picture ({:.2} pics/s), {:.2}x",
        r.full_ms,
        1e3 / r.full_ms,
        r.cascade_ms,
        1e3 / r.cascade_ms,
        r.full_ms / r.cascade_ms
    );
    println!(
        "  {} of {} passed early; full pipeline failed {}; verdicts agree on {} of {}",
        r.early_exits, r.images, r.full_fails, r.agreeing, r.images
    );
    for d in &r.disagreements {
        println!(
            "  differs on picture {} ({}): full {:?} (score {:.5}), cascade {:?} (score {:.5})",
            d.index,
            if d.defective { "defective" } else { "good" },
            d.full,
            d.full_score,
            d.cascade,
            d.cascade_score
        );
    }
}
