//! `winclip-edge bank`: text prototypes + few-shot references + threshold → one file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::bank::{FileRef, MIN_CALIBRATION_IMAGES};
use crate::inspector::{self, BankSpec};
use crate::model::{ModelPack, TextModel, VisionModel};

/// Arguments of `bank`, already parsed.
pub(crate) struct Args {
    pub model: PathBuf,
    pub numerics: crate::model::Numerics,
    pub spec: BankSpec,
    /// The mask picture (`--roi-mask`).
    pub roi_mask: Option<PathBuf>,
    pub shots: Vec<PathBuf>,
    pub calibrate: Option<PathBuf>,
    pub uncalibrated: bool,
    pub output: Output,
}

/// Where the bank goes.
pub(crate) enum Output {
    /// One bank file.
    File(PathBuf),
    /// A new recipe directory (version 1: the bank, the shots and the calibration pictures).
    RecipeDir(PathBuf),
}

pub(crate) fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let pack = ModelPack::open(&args.model)
        .with_context(|| format!("opening model pack {}", args.model.display()))?;
    if let Some(path) = &args.roi_mask {
        let bytes = crate::imageio::read_limited(path, &crate::imageio::Limits::DEFAULT)?;
        let picture = image::load_from_memory(&bytes)
            .with_context(|| format!("--roi-mask {}: not a picture", path.display()))?
            .to_luma8();
        let mask = crate::roi::PatchMask::from_picture(
            &picture,
            args.spec.roi,
            pack.architecture().grid,
            FileRef::of("", &bytes).sha256,
        )
        .map_err(|e| anyhow::anyhow!("--roi-mask {}: {e}", path.display()))?;
        args.spec.mask = Some(mask);
    }
    let shot_files = crate::fsutil::image_files(&args.shots).context("listing --shots")?;
    if !args.shots.is_empty() && shot_files.is_empty() {
        bail!("--shots: no image files found in {:?}", args.shots);
    }
    // A WinCLIP+ bank needs a threshold fitted to its scores: the zero-shot
    // default would pass every defect without a word.
    if !shot_files.is_empty()
        && args.calibrate.is_none()
        && args.spec.threshold.is_none()
        && !args.uncalibrated
    {
        bail!(
            "a WinCLIP+ bank needs a threshold: few-shot scores are not probabilities (good and \
             defective parts alike score far below the zero-shot default 0.5, which would pass every \
             defect). Add --calibrate DIR with at least {MIN_CALIBRATION_IMAGES} more pictures of good \
             parts (not the shots), or --threshold T; --uncalibrated builds it anyway (the daemon then \
             needs model.threshold)"
        );
    }
    let mut shots = Vec::with_capacity(shot_files.len());
    // The files as read, for a recipe directory.
    let mut shot_bytes = Vec::new();
    let mut calibration_bytes = Vec::new();
    for p in &shot_files {
        let bytes = std::fs::read(p).with_context(|| format!("reading shot {}", p.display()))?;
        let img = crate::imageio::decode_rgb(&bytes, p)?;
        let file = file_ref(p, &bytes);
        if shot_bytes.iter().any(|(n, _)| n == &file.name) {
            bail!(
                "--shots: two pictures are named {}: a recipe directory keeps them by name",
                file.name
            );
        }
        shot_bytes.push((file.name.clone(), bytes));
        shots.push((file, img));
    }
    let calibration = match &args.calibrate {
        None => Vec::new(),
        Some(dir) => {
            let files = crate::fsutil::image_files(std::slice::from_ref(dir))
                .with_context(|| format!("listing --calibrate {}", dir.display()))?;
            if files.len() < MIN_CALIBRATION_IMAGES {
                bail!(
                    "--calibrate {}: {} good pictures found, at least {MIN_CALIBRATION_IMAGES} are needed \
                     (the threshold is fitted to how far good parts' scores spread)",
                    dir.display(),
                    files.len()
                );
            }
            let mut images = Vec::with_capacity(files.len());
            for p in &files {
                let bytes = crate::imageio::read_limited(p, &crate::imageio::Limits::DEFAULT)?;
                let sha = file_ref(p, &bytes).sha256;
                if let Some((shot, _)) = shots.iter().find(|(s, _)| s.sha256 == sha) {
                    bail!(
                        "--calibrate: {} is the same picture as the shot {}: a shot scores near 0 against \
                         itself, so the threshold would be fitted too low and fail new good parts; \
                         calibrate on other good pictures",
                        p.display(),
                        shot.name
                    );
                }
                images.push(crate::imageio::decode_rgb(&bytes, p)?);
                calibration_bytes.push((file_ref(p, &bytes).name, bytes));
            }
            images
        }
    };
    let vision = VisionModel::load_with(&pack, &args.numerics)?;
    let text = TextModel::load(&pack)?;
    let bank = inspector::build_bank(&pack, &vision, &text, &args.spec, &shots, &calibration)?;
    let bytes = bank.to_bytes()?;
    let shown = match &args.output {
        Output::File(path) => {
            crate::fsutil::write_atomic(path, &bytes)
                .with_context(|| format!("writing bank {}", path.display()))?;
            path.display().to_string()
        }
        Output::RecipeDir(dir) => {
            crate::recipe_dir::RecipeDir::create(dir, &bytes, &shot_bytes, &calibration_bytes)
                .context("making the recipe directory")?;
            format!(
                "{} (recipe directory, version 1: {} shots, {} calibration pictures)",
                dir.display(),
                shot_bytes.len(),
                calibration_bytes.len()
            )
        }
    };

    let m = &bank.meta;
    let kind = if m.shots == 0 {
        "zero-shot (WinCLIP)".to_string()
    } else {
        format!("{}-shot (WinCLIP+)", m.shots)
    };
    println!("bank         {shown} (id {})", bank.id());
    println!("model pack   {} ({})", m.model.id, m.model.name);
    println!("encoder      {}", m.encoder);
    println!(
        "object       {:?}, prompt set {}, {} normal + {} anomalous prompts",
        m.object, m.prompt_set, m.normal_prompts, m.anomalous_prompts
    );
    println!(
        "mode         {kind}, tau {}, scales {:?}, stride {}",
        m.tau, m.scales, m.stride
    );
    match &m.calibration {
        Some(c) => println!(
            "calibration  {} images: score mean {:.5} std {:.5} min {:.5} max {:.5}",
            c.images, c.mean, c.std, c.min, c.max
        ),
        None => println!("calibration  none"),
    }
    println!("threshold    {:.5} ({:?})", m.threshold, m.threshold_source);
    match &m.roi {
        Some(roi) => println!(
            "roi          {roi} (x,y,width,height): the shots, the calibration pictures and every picture judged are cropped to it"
        ),
        None => println!("roi          the whole picture"),
    }
    if let Some(mask) = &m.mask {
        println!(
            "mask         {} of {} patches inspected (white in the mask picture); the zero-shot image score sees the whole crop",
            mask.inspected(),
            mask.grid * mask.grid
        );
    }
    if m.uncalibrated_few_shot() {
        eprintln!(
            "warning: UNCALIBRATED WinCLIP+ bank: its threshold {:.2} passes every defect; give one where \
             it is used (inspect --threshold, the daemon's model.threshold)",
            m.threshold
        );
    } else if m.calibration.is_none() && m.threshold_source == crate::bank::ThresholdSource::Default {
        println!(
            "             uncalibrated: the probability scale's 0.5; --calibrate DIR ({MIN_CALIBRATION_IMAGES}+ good \
             pictures) fits it to this part"
        );
    }
    println!(
        "colour scale [{:.5}, {:.5}]",
        m.colour_range[0], m.colour_range[1]
    );
    println!(
        "size         {:.2} MB, built in {:.1} s",
        bytes.len() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn file_ref(path: &Path, bytes: &[u8]) -> FileRef {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    FileRef::of(&name, bytes)
}
