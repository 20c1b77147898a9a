//! `winclip-edge bench`: time every stage of an inspection on this machine and
//! print median milliseconds, achieved GFLOP/s and peak memory, for zero-shot
//! classification, zero-shot with maps, and WinCLIP+ with K shots; optionally
//! the early-exit cascade on a stream ([`stream`]) and f16 against f32
//! ([`precision`]).
//!
//! Pictures are synthetic (a fixed seed), so runs are comparable across
//! machines and commits. Timing happens here, never in tests.

mod picture_size;
mod precision;
mod stream;

pub(crate) use picture_size::PictureSize;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::bench::{self, median};
use crate::inspector::{self, ms};
use crate::model::{
    Backend, Device, EncoderNumerics, ModelPack, Numerics, Outputs, PlanSummary, Precision, TextModel,
    VisionModel,
};
use crate::synth::{Defect, Generator, Scene};
use crate::winclip::{self, upsample, Config, Outcome, References, Scorer, TemplateSet, TextPrototypes};

/// Arguments of `bench`.
pub(crate) struct Args {
    pub model: PathBuf,
    pub images: usize,
    pub shots: Vec<usize>,
    pub threads: usize,
    pub json: Option<PathBuf>,
    /// Pictures in the early-exit stream (0: no stream run).
    pub stream: usize,
    /// Good pictures the stream's bank is calibrated on.
    pub calibration: usize,
    /// Token encoder arithmetic.
    pub numerics: Numerics,
    /// Where the token encoder runs.
    pub device: Device,
    /// Camera picture sizes to time decode, preprocess and heatmap at.
    pub picture_sizes: Vec<PictureSize>,
    /// Pictures of the verdict stream judged by both encoders (with any
    /// precision but f32, or another device); 0 skips it.
    pub verdicts: usize,
}

/// One timed stage.
#[derive(Debug, Serialize)]
struct Stage {
    name: String,
    median_ms: f64,
    gflop: f64,
}

/// One end-to-end mode.
#[derive(Debug, Serialize)]
struct Mode {
    name: String,
    shots: Option<usize>,
    median_ms: f64,
    gflop: f64,
}

/// Everything `bench` measured, as written by `--json`.
#[derive(Debug, Serialize)]
struct Report {
    model: String,
    pack_id: String,
    threads: usize,
    images: usize,
    cpu: String,
    load_ms: f64,
    /// Encoder plans and how they hold their weights.
    encoder_plans: Vec<PlanSummary>,
    load_peak_rss_bytes: Option<u64>,
    rss_loaded_bytes: Option<u64>,
    peak_rss_bytes: Option<u64>,
    stages: Vec<Stage>,
    modes: Vec<Mode>,
    precision: Precision,
    /// What the encoder ran in on this CPU: the kernel, the layers kept f32.
    numerics: Option<EncoderNumerics>,
    /// Median of every forward pass of a picture (preprocessing, the full
    /// image, the windows): what the precision changes.
    picture_ms: f64,
    /// Where the token encoder ran.
    device: Backend,
    /// GPU memory in use (every process) after inspecting, bytes.
    gpu_memory_used_bytes: Option<u64>,
    precision_check: Option<precision::PrecisionReport>,
    stream: Option<stream::StreamReport>,
    /// Decode, preprocess and heatmap at camera resolution.
    pictures: Vec<picture_size::PictureReport>,
}

/// The object the bench's prompts name, for the main run and the stream's bank
/// alike (the synthetic parts are generic; the name only sets the prompts).
const OBJECT: &str = "bottle";

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("CPU part"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.images > 0, "--images must be at least 1");
    let pack =
        ModelPack::open(&args.model).with_context(|| format!("model pack {}", args.model.display()))?;
    let arch = pack.architecture().clone();
    let config = Config::default();
    let max_k = args.shots.iter().copied().max().unwrap_or(0);

    // Set-up the station never does at run time: text prototypes (from the bank
    // in production). The text encoder is dropped before memory is measured.
    let prototypes = {
        let text = TextModel::load(&pack)?;
        let ens = winclip::ensemble(OBJECT, TemplateSet::Paper, &[]);
        TextPrototypes::from_embeddings(&text.embed(&ens.normal)?, &text.embed(&ens.anomalous)?)?
    };
    // glibc keeps the text encoder's freed memory otherwise, and it would count
    // as the vision side's.
    crate::model::release_freed_memory();
    let peak_reset = bench::reset_peak();

    // CUDA is opened (and NVRTC compiles its kernels) before the clock starts:
    // reported on its own as the first-use time.
    let backend = args.device.resolve()?;
    let t = Instant::now();
    let vision = VisionModel::load_on(&pack, &args.numerics, backend.clone())?;
    let load_ms = ms(t);
    let loaded = bench::memory();
    let load_peak = loaded.map(|m| m.peak).filter(|_| peak_reset);
    let rss_loaded = loaded.map(|m| m.rss);
    let peak_reset = peak_reset && bench::reset_peak();

    let gen = Generator::new(Scene::Object, 256, 1);
    let queries: Vec<_> = (0..args.images as u64)
        .map(|i| {
            let defect = (i % 2 == 1).then(|| Defect::ALL[(i as usize / 2) % Defect::ALL.len()]);
            gen.sample(100 + i, defect).image
        })
        .collect();
    let zero = Scorer::new(config.clone(), arch.grid, &prototypes, None)?;
    let sets = zero.window_sets();

    eprintln!("extracting {max_k} reference picture(s) and one warm-up...");
    let mut ref_feats = Vec::with_capacity(max_k);
    for i in 0..max_k {
        ref_feats.push(inspector::extract(&vision, sets, &gen.sample(i as u64, None).image)?.0);
    }
    let few: Vec<(usize, Scorer)> = args
        .shots
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| {
            let refs = References::from_features(&ref_feats[..k])?;
            Ok((
                k,
                Scorer::new(config.clone(), arch.grid, &prototypes, Some(&refs))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    inspector::extract(&vision, sets, &queries[0])?;

    // Per image: every stage once, every scorer once.
    let mut pre = Vec::new();
    let mut image = Vec::new();
    let mut windows: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    let mut cls = Vec::new();
    let mut score0 = Vec::new();
    let mut up = Vec::new();
    let mut score_k: Vec<Vec<f64>> = vec![Vec::new(); few.len()];
    // With reduced precision, the outcomes of the largest bank (zero-shot
    // without one) are kept for the comparison with f32.
    let compared = few
        .iter()
        .enumerate()
        .max_by_key(|(_, (k, _))| *k)
        .map(|(i, _)| i);
    let mut kept: Vec<Outcome> = Vec::new();
    let checked = args.numerics.precision != Precision::F32 || backend != Backend::Cpu;
    for (i, q) in queries.iter().enumerate() {
        eprintln!("image {}/{}", i + 1, queries.len());
        let (f, timings) = inspector::extract(&vision, sets, q)?;
        pre.push(timings.preprocess_ms);
        image.push(timings.image_ms);
        for (w, (_, t)) in windows.iter_mut().zip(&timings.windows_ms) {
            w.push(*t);
        }
        let t = Instant::now();
        std::hint::black_box(zero.image_score(f.embedding.view()));
        cls.push(ms(t));
        let t = Instant::now();
        let o = zero.score(&f)?;
        score0.push(ms(t));
        let t = Instant::now();
        std::hint::black_box(upsample::bilinear(o.map.view(), arch.image_size, arch.image_size));
        up.push(ms(t));
        for (j, (s, (_, scorer))) in score_k.iter_mut().zip(&few).enumerate() {
            let t = Instant::now();
            let o = std::hint::black_box(scorer.score(&f)?);
            s.push(ms(t));
            if checked && compared == Some(j) {
                kept.push(o);
            }
        }
        if checked && compared.is_none() {
            kept.push(o);
        }
    }
    let peak = bench::memory().map(|m| m.peak).filter(|_| peak_reset);

    let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    let sum_per_image = |parts: &[&[f64]]| -> Vec<f64> {
        (0..queries.len())
            .map(|i| parts.iter().map(|p| p[i]).sum())
            .collect()
    };
    let g = 1e-9;
    let image_gflop =
        (bench::embed_flops(&arch) + bench::encoder_flops(&arch, 1, arch.tokens, Outputs::All)) * g;
    let window_gflop: Vec<f64> = sets
        .iter()
        .map(|s| bench::encoder_flops(&arch, s.len(), s.seq_len(), Outputs::First) * g)
        .collect();
    let mut stages = vec![
        Stage {
            name: "preprocess".into(),
            median_ms: med(&pre),
            gflop: 0.0,
        },
        Stage {
            name: format!("image: embed + encoder (1 × {})", arch.tokens),
            median_ms: med(&image),
            gflop: image_gflop,
        },
    ];
    for ((s, w), gf) in sets.iter().zip(&windows).zip(&window_gflop) {
        stages.push(Stage {
            name: format!("windows {0}×{0} ({1} × {2})", s.scale(), s.len(), s.seq_len()),
            median_ms: med(w),
            gflop: *gf,
        });
    }
    stages.push(Stage {
        name: "scoring: class score only".into(),
        median_ms: med(&cls),
        gflop: 0.0,
    });
    stages.push(Stage {
        name: "scoring: zero-shot maps".into(),
        median_ms: med(&score0),
        gflop: 0.0,
    });
    for ((k, _), s) in few.iter().zip(&score_k) {
        stages.push(Stage {
            name: format!("scoring: WinCLIP+ K={k}"),
            median_ms: med(s),
            gflop: 0.0,
        });
    }
    stages.push(Stage {
        name: "upsample map".into(),
        median_ms: med(&up),
        gflop: 0.0,
    });

    let all_windows: Vec<&[f64]> = windows.iter().map(Vec::as_slice).collect();
    let maps_gflop = image_gflop + window_gflop.iter().sum::<f64>();
    let mut modes = vec![Mode {
        name: "zero-shot classification (one forward)".into(),
        shots: None,
        median_ms: med(&sum_per_image(&[&pre, &image, &cls])),
        gflop: image_gflop,
    }];
    let with_maps = |score: &[f64]| {
        let mut parts: Vec<&[f64]> = vec![&pre, &image, &up];
        parts.extend(all_windows.iter().copied());
        parts.push(score);
        med(&sum_per_image(&parts))
    };
    modes.push(Mode {
        name: "zero-shot with maps".into(),
        shots: Some(0),
        median_ms: with_maps(&score0),
        gflop: maps_gflop,
    });
    for ((k, _), s) in few.iter().zip(&score_k) {
        modes.push(Mode {
            name: format!("WinCLIP+ K={k}"),
            shots: Some(*k),
            median_ms: with_maps(s),
            gflop: maps_gflop,
        });
    }

    let gpu_memory = crate::model::gpu_memory_used();
    let precision_check = match checked {
        false => None,
        true => {
            let shots = compared.map_or(0, |j| few[j].0);
            let shots: Vec<_> = (0..shots as u64).map(|i| gen.sample(i, None).image).collect();
            let f32_vision = VisionModel::load(&pack)?;
            let mut report = precision::compare(
                &f32_vision,
                format!("{} on {}", args.numerics, backend.name()),
                &kept,
                &config,
                &prototypes,
                &shots,
                &queries,
            )?;
            if args.verdicts > 0 {
                report.verdicts = Some(precision::verdicts(
                    &pack,
                    &vision,
                    &f32_vision,
                    &prototypes,
                    args.verdicts,
                    max_k,
                    args.calibration,
                )?);
            }
            Some(report)
        }
    };
    let stream = match args.stream {
        0 => None,
        n => Some(stream::run(
            &pack,
            &vision,
            &prototypes,
            n,
            max_k.max(1),
            args.calibration,
        )?),
    };
    let pictures = picture_size::run(&vision, &zero, &args.picture_sizes, args.images)?;
    let report = Report {
        model: pack.manifest().source.model.clone(),
        pack_id: pack.id().to_string(),
        threads: args.threads,
        images: queries.len(),
        cpu: cpu_name(),
        load_ms,
        encoder_plans: vision.encoder_plans(),
        load_peak_rss_bytes: load_peak,
        rss_loaded_bytes: rss_loaded,
        peak_rss_bytes: peak,
        stages,
        modes,
        precision: args.numerics.precision,
        numerics: vision.encoder_numerics(),
        picture_ms: {
            let mut parts: Vec<&[f64]> = vec![&pre, &image];
            parts.extend(all_windows.iter().copied());
            med(&sum_per_image(&parts))
        },
        device: backend,
        gpu_memory_used_bytes: gpu_memory,
        precision_check,
        stream,
        pictures,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        crate::fsutil::write_atomic(path, &serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn gflops(gflop: f64, ms: f64) -> String {
    if gflop > 0.0 && ms > 0.0 {
        format!("{:.1}", gflop / (ms / 1e3))
    } else {
        "–".into()
    }
}

fn gb(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| format!("{:.2} GB", b as f64 / 1e9))
}

fn print_report(r: &Report) {
    println!(
        "winclip-edge bench: {} (pack {}), {} encoder on {}, {} thread(s), {} picture(s) after one warm-up, {}",
        r.model, r.pack_id, r.precision, r.device, r.threads, r.images, r.cpu
    );
    if let Some(n) = &r.numerics {
        if n.asked.lowers_linear_layers() {
            println!(
                "encoder arithmetic: {} linear layers in {} ({} kernel), kept f32: {}",
                n.lowered.len(),
                n.running,
                n.kernel.as_deref().unwrap_or("none"),
                n.kept.join(", ")
            );
        }
        if let Some(w) = &n.warning {
            println!("WARNING: {w}");
        }
    }
    if let Backend::Cuda(gpu) = &r.device {
        println!(
            "CUDA first use (drivers opened, tract's kernels compiled by NVRTC or read from its cache): {:.2} s; \
             GPU memory in use after inspecting: {} (every process on the GPU); stage times below are \
             wall-clock, the GPU's work included",
            gpu.first_use_seconds,
            gb(r.gpu_memory_used_bytes)
        );
    }
    println!(
        "\n{:<40} {:>11} {:>9} {:>9}",
        "stage", "median ms", "GFLOP", "GFLOP/s"
    );
    for s in &r.stages {
        println!(
            "{:<40} {:>11.2} {:>9.1} {:>9}",
            s.name,
            s.median_ms,
            s.gflop,
            gflops(s.gflop, s.median_ms)
        );
    }
    println!(
        "\n{:<40} {:>11} {:>9} {:>9}",
        "mode (per picture)", "median ms", "pics/s", "GFLOP/s"
    );
    for m in &r.modes {
        println!(
            "{:<40} {:>11.2} {:>9.2} {:>9}",
            m.name,
            m.median_ms,
            1e3 / m.median_ms,
            gflops(m.gflop, m.median_ms)
        );
    }
    println!(
        "\nvision graphs loaded and planned in {:.0} ms (peak RSS while loading {}); RSS after loading {}; \
         peak RSS while inspecting with every bank above loaded {}",
        r.load_ms,
        gb(r.load_peak_rss_bytes),
        gb(r.rss_loaded_bytes),
        gb(r.peak_rss_bytes)
    );
    println!("(the text encoder is not counted: on a station the prototypes come from the bank)");
    for p in &r.encoder_plans {
        let outputs = match p.outputs {
            Outputs::All => String::new(),
            Outputs::First => format!(", class token only ({} nodes on its rows alone)", p.narrowed),
        };
        println!(
            "encoder plan for {:?}{outputs}: {} dense products (matrices shared by every plan), \
             {} packed weight matrices ({} shared with an earlier plan)",
            p.shape, p.dense, p.packed, p.shared
        );
    }
    if let Some(p) = &r.precision_check {
        let stages: Vec<(String, f64)> = r.stages.iter().map(|s| (s.name.clone(), s.median_ms)).collect();
        precision::print(p, &stages, r.picture_ms, r.precision);
    }
    if let Some(s) = &r.stream {
        stream::print(s);
    }
    if !r.pictures.is_empty() {
        picture_size::print(&r.pictures);
    }
}
