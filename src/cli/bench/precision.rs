//! `bench --precision int8|bf16|f16` / `--device cuda`: what reduced
//! precision or another device does, measured against the f32 CPU encoder in
//! the same run: the same pictures and bank through both (score and map
//! differences, the f32 stage times beside the measured ones), and a stream
//! of pictures judged by a bank built and calibrated with each (verdicts).

use image::RgbImage;
use serde::Serialize;

use crate::bank::FileRef;
use crate::bench::median;
use crate::eval::metrics;
use crate::inspector::{self, BankSpec, Inspector, Timings, Verdict};
use crate::model::{ModelPack, Precision, VisionModel};
use crate::synth::{Defect, Generator, Scene};
use crate::winclip::{Config, Outcome, References, Scorer, TextPrototypes};

/// Largest differences between the two encoders over the bench pictures,
/// and the f32 encoder's stage times on them.
#[derive(Debug, Serialize)]
pub(super) struct PrecisionReport {
    /// The encoder measured: "int8 on cpu", "f32 on cuda".
    pub measured: String,
    pub pictures: usize,
    pub shots: usize,
    /// Final image score.
    pub max_score_diff: f32,
    /// Zero-shot image score `s_img`.
    pub max_image_score_diff: f32,
    /// Final anomaly map on the patch grid.
    pub max_map_diff: f32,
    /// Spread (max − min) of the f32 maps, to read the difference against.
    pub map_range: f32,
    /// Pearson correlation of every map value, both encoders.
    pub map_pearson_r: f64,
    /// The f32 CPU encoder's median milliseconds on the same pictures, by
    /// stage (named as the bench's stages), timed after the measured one.
    pub f32_stages: Vec<(String, f64)>,
    /// Its median of every forward pass of a picture (preprocessing, the
    /// full image and the windows).
    pub f32_picture_ms: f64,
    /// A stream judged with each encoder's own bank.
    pub verdicts: Option<VerdictReport>,
}

/// The f32 encoder's outcomes and stage times on the bench pictures.
struct Reference {
    outcomes: Vec<Outcome>,
    timings: Vec<Timings>,
}

fn outcomes(
    vision: &VisionModel,
    config: &Config,
    prototypes: &TextPrototypes,
    shots: &[RgbImage],
    queries: &[RgbImage],
) -> anyhow::Result<Reference> {
    let grid = vision.architecture().grid;
    let zero = Scorer::new(config.clone(), grid, prototypes, None)?;
    let sets = zero.window_sets();
    let refs = shots
        .iter()
        .map(|img| Ok(inspector::extract(vision, sets, img)?.0))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let refs = if refs.is_empty() {
        None
    } else {
        Some(References::from_features(&refs)?)
    };
    let scorer = Scorer::new(config.clone(), grid, prototypes, refs.as_ref())?;
    // A warm-up, as the measured encoder had.
    if let Some(q) = queries.first() {
        inspector::extract(vision, sets, q)?;
    }
    let mut out = Reference {
        outcomes: Vec::new(),
        timings: Vec::new(),
    };
    for img in queries {
        let (f, t) = inspector::extract(vision, sets, img)?;
        out.outcomes.push(scorer.score(&f)?);
        out.timings.push(t);
    }
    Ok(out)
}

/// Compare `ours`, the outcomes of `queries` against a bank of `shots`
/// (none: zero-shot) from the timed run of the encoder `measured`, with the
/// same pictures and bank through `f32_vision`, the f32 CPU encoder; report
/// the largest differences and the f32 stage times.
#[allow(clippy::too_many_arguments)]
pub(super) fn compare(
    f32_vision: &VisionModel,
    measured: String,
    ours: &[Outcome],
    config: &Config,
    prototypes: &TextPrototypes,
    shots: &[RgbImage],
    queries: &[RgbImage],
) -> anyhow::Result<PrecisionReport> {
    eprintln!("{measured}: scoring and timing the pictures again with the f32 encoder on the CPU...");
    let reference = outcomes(f32_vision, config, prototypes, shots, queries)?;
    let mut r = PrecisionReport {
        measured,
        pictures: queries.len(),
        shots: shots.len(),
        max_score_diff: 0.0,
        max_image_score_diff: 0.0,
        max_map_diff: 0.0,
        map_range: 0.0,
        map_pearson_r: f64::NAN,
        f32_stages: Vec::new(),
        f32_picture_ms: f64::NAN,
        verdicts: None,
    };
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (a, b) in ours.iter().zip(&reference.outcomes) {
        xs.extend(a.map.iter().map(|&v| f64::from(v)));
        ys.extend(b.map.iter().map(|&v| f64::from(v)));
        r.max_score_diff = r.max_score_diff.max((a.score - b.score).abs());
        r.max_image_score_diff = r.max_image_score_diff.max((a.image_score - b.image_score).abs());
        for (x, y) in a.map.iter().zip(&b.map) {
            r.max_map_diff = r.max_map_diff.max((x - y).abs());
            lo = lo.min(*y);
            hi = hi.max(*y);
        }
    }
    r.map_range = hi - lo;
    r.map_pearson_r = metrics::pearson(&xs, &ys);
    let med = |f: &dyn Fn(&Timings) -> f64| {
        median(&reference.timings.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    let grid = f32_vision.architecture().grid;
    let arch = f32_vision.architecture();
    r.f32_stages
        .push(("preprocess".into(), med(&|t| t.preprocess_ms)));
    r.f32_stages.push((
        format!("image: embed + encoder (1 × {})", arch.tokens),
        med(&|t| t.image_ms),
    ));
    let sets = config.window_sets(grid)?;
    for (i, s) in sets.iter().enumerate() {
        r.f32_stages.push((
            format!("windows {0}×{0} ({1} × {2})", s.scale(), s.len(), s.seq_len()),
            med(&|t| t.windows_ms.get(i).map_or(f64::NAN, |w| w.1)),
        ));
    }
    r.f32_picture_ms = med(&|t| t.preprocess_ms + t.image_ms + t.windows_ms.iter().map(|w| w.1).sum::<f64>());
    Ok(r)
}

/// Every this many pictures of the verdict stream one is defective (5 %).
const DEFECT_EVERY: usize = 20;

/// Verdicts on a stream, each encoder with a bank of its own built from the
/// same shots and calibrated on the same good pictures, as a station running
/// that precision would have it.
#[derive(Debug, Serialize)]
pub(super) struct VerdictReport {
    pub pictures: usize,
    pub defective: usize,
    pub shots: usize,
    pub calibration_images: usize,
    /// The calibrated thresholds: f32's, the measured encoder's.
    pub threshold_f32: f32,
    pub threshold_measured: f32,
    /// Pictures judged alike.
    pub agreeing: usize,
    /// Pictures each failed.
    pub fails_f32: usize,
    pub fails_measured: usize,
    /// Defective pictures each passed.
    pub missed_f32: usize,
    pub missed_measured: usize,
    pub max_score_diff: f32,
    /// Image AUROC on the stream's labels.
    pub auroc_f32: Option<f64>,
    pub auroc_measured: Option<f64>,
    /// The pictures judged differently: (index, defective, f32 score, measured score).
    pub differing: Vec<(usize, bool, f32, f32)>,
}

/// Judge `n` synthetic pictures with a `shots`-shot bank calibrated on
/// `calibration` good pictures, built with each encoder.
pub(super) fn verdicts(
    pack: &ModelPack,
    measured: &VisionModel,
    f32_vision: &VisionModel,
    prototypes: &TextPrototypes,
    n: usize,
    shots: usize,
    calibration: usize,
) -> anyhow::Result<VerdictReport> {
    eprintln!(
        "verdicts: judging {n} pictures with each encoder's own bank (`--verdicts 0` skips this; \
         with the full-size pack it takes minutes)"
    );
    let gen = Generator::new(Scene::Object, 256, 11);
    let refs: Vec<_> = (0..shots as u64)
        .map(|i| {
            let file = FileRef {
                name: format!("good-{i}.png"),
                sha256: String::new(),
            };
            (file, gen.sample(i, None).image)
        })
        .collect();
    let good: Vec<_> = (0..calibration as u64)
        .map(|i| gen.sample(1000 + i, None).image)
        .collect();
    let pictures: Vec<_> = (0..n)
        .map(|i| {
            let defect = (i % DEFECT_EVERY == DEFECT_EVERY - 1)
                .then(|| Defect::ALL[(i / DEFECT_EVERY) % Defect::ALL.len()]);
            (defect.is_some(), gen.sample(2000 + i as u64, defect).image)
        })
        .collect();
    let spec = BankSpec::new(super::OBJECT);
    let judge = |vision: &VisionModel, label: &str| -> anyhow::Result<(f32, Vec<(Verdict, f32)>)> {
        eprintln!("verdicts: {label}: a {shots}-shot bank calibrated on {calibration} good pictures...");
        let bank =
            inspector::build_bank_from_prototypes(pack, vision, prototypes.clone(), &spec, &refs, &good)?;
        let inspector = Inspector::new(pack, vision.clone(), bank)?;
        let mut out = Vec::with_capacity(n);
        for (i, (_, img)) in pictures.iter().enumerate() {
            if i % 20 == 0 {
                eprintln!("verdicts: {label} {}/{n}", i + 1);
            }
            let r = inspector.inspect(img)?;
            out.push((r.verdict, r.outcome.score));
        }
        Ok((inspector.threshold(), out))
    };
    let (threshold_measured, ours) = judge(measured, "measured encoder")?;
    let (threshold_f32, theirs) = judge(f32_vision, "f32 encoder")?;
    let labels: Vec<bool> = pictures.iter().map(|(d, _)| *d).collect();
    let scores = |v: &[(Verdict, f32)]| v.iter().map(|(_, s)| *s).collect::<Vec<_>>();
    let fails = |v: &[(Verdict, f32)]| v.iter().filter(|(v, _)| *v == Verdict::Fail).count();
    let missed = |v: &[(Verdict, f32)]| {
        v.iter()
            .zip(&labels)
            .filter(|((v, _), &d)| d && *v == Verdict::Pass)
            .count()
    };
    let differing: Vec<_> = ours
        .iter()
        .zip(&theirs)
        .enumerate()
        .filter(|(_, (a, b))| a.0 != b.0)
        .map(|(i, (a, b))| (i, labels[i], b.1, a.1))
        .collect();
    Ok(VerdictReport {
        pictures: n,
        defective: labels.iter().filter(|&&d| d).count(),
        shots,
        calibration_images: calibration,
        threshold_f32,
        threshold_measured,
        agreeing: n - differing.len(),
        fails_f32: fails(&theirs),
        fails_measured: fails(&ours),
        missed_f32: missed(&theirs),
        missed_measured: missed(&ours),
        max_score_diff: ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a.1 - b.1).abs())
            .fold(0.0, f32::max),
        auroc_f32: metrics::auroc(&scores(&theirs), &labels).ok(),
        auroc_measured: metrics::auroc(&scores(&ours), &labels).ok(),
        differing,
    })
}

/// Print the precision section of the bench report: `stages` and
/// `picture_ms` are the measured encoder's.
pub(super) fn print(r: &PrecisionReport, stages: &[(String, f64)], picture_ms: f64, precision: Precision) {
    println!(
        "\n{} vs f32 on the cpu, the same {} picture(s), {}-shot bank: max |score diff| {:.2e}, \
         max |s_img diff| {:.2e}, max |map diff| {:.2e} (f32 maps span {:.3}: {:.3} % of it), map Pearson r {:.6}",
        r.measured,
        r.pictures,
        r.shots,
        r.max_score_diff,
        r.max_image_score_diff,
        r.max_map_diff,
        r.map_range,
        100.0 * r.max_map_diff / r.map_range,
        r.map_pearson_r
    );
    println!(
        "\n{:<40} {:>11} {:>11} {:>9}",
        "stage (median ms)",
        "f32",
        precision.to_string(),
        "speed-up"
    );
    for (name, f32_ms) in &r.f32_stages {
        if let Some((_, ms)) = stages.iter().find(|(n, _)| n == name) {
            println!("{name:<40} {f32_ms:>11.2} {ms:>11.2} {:>8.2}x", f32_ms / ms);
        }
    }
    println!(
        "{:<40} {:>11.2} {:>11.2} {:>8.2}x",
        "every forward pass of a picture",
        r.f32_picture_ms,
        picture_ms,
        r.f32_picture_ms / picture_ms
    );
    if let Some(v) = &r.verdicts {
        let auroc = |a: Option<f64>| a.map_or("n/a".to_string(), |a| format!("{a:.4}"));
        println!(
            "\nverdicts on a stream of {} pictures ({} defective), each encoder with its own {}-shot bank \
             calibrated on {} good pictures (thresholds: f32 {:.5}, {} {:.5}):",
            v.pictures,
            v.defective,
            v.shots,
            v.calibration_images,
            v.threshold_f32,
            precision,
            v.threshold_measured
        );
        println!(
            "  verdicts agree on {} of {} ({:.1} %); failed: f32 {}, {precision} {}; defective passed: f32 {}, {precision} {}; \
             max |score diff| {:.2e}; image AUROC f32 {}, {precision} {}",
            v.agreeing,
            v.pictures,
            100.0 * v.agreeing as f64 / v.pictures.max(1) as f64,
            v.fails_f32,
            v.fails_measured,
            v.missed_f32,
            v.missed_measured,
            v.max_score_diff,
            auroc(v.auroc_f32),
            auroc(v.auroc_measured)
        );
        for (i, defective, a, b) in &v.differing {
            println!(
                "  differs on picture {i} ({}): f32 score {a:.5}, {precision} score {b:.5}",
                if *defective { "defective" } else { "good" }
            );
        }
    }
}
