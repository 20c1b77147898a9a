//! `winclip-edge bank`: text prototypes + few-shot references + threshold → one file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::bank::FileRef;
use crate::inspector::{self, BankSpec};
use crate::model::{ModelPack, TextModel, VisionModel};

/// Arguments of `bank`, already parsed.
pub(crate) struct Args {
    pub model: PathBuf,
    pub spec: BankSpec,
    pub shots: Vec<PathBuf>,
    pub calibrate: Option<PathBuf>,
    pub output: PathBuf,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let pack = ModelPack::open(&args.model)
        .with_context(|| format!("opening model pack {}", args.model.display()))?;
    let shot_files = crate::fsutil::image_files(&args.shots).context("listing --shots")?;
    if !args.shots.is_empty() && shot_files.is_empty() {
        bail!("--shots: no image files found in {:?}", args.shots);
    }
    let mut shots = Vec::with_capacity(shot_files.len());
    for p in &shot_files {
        let bytes = std::fs::read(p).with_context(|| format!("reading shot {}", p.display()))?;
        let img = crate::imageio::decode_rgb(&bytes, p)?;
        shots.push((file_ref(p, &bytes), img));
    }
    let calibration = match &args.calibrate {
        None => Vec::new(),
        Some(dir) => {
            let files = crate::fsutil::image_files(std::slice::from_ref(dir))
                .with_context(|| format!("listing --calibrate {}", dir.display()))?;
            if files.is_empty() {
                bail!("--calibrate {}: no image files found", dir.display());
            }
            files
                .iter()
                .map(|p| crate::imageio::load_rgb(p))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let vision = VisionModel::load(&pack)?;
    let text = TextModel::load(&pack)?;
    let bank = inspector::build_bank(&pack, &vision, &text, &args.spec, &shots, &calibration)?;
    let bytes = bank.to_bytes()?;
    crate::fsutil::write_atomic(&args.output, &bytes)
        .with_context(|| format!("writing bank {}", args.output.display()))?;

    let m = &bank.meta;
    let kind = if m.shots == 0 {
        "zero-shot (WinCLIP)".to_string()
    } else {
        format!("{}-shot (WinCLIP+)", m.shots)
    };
    println!("bank         {} (id {})", args.output.display(), bank.id());
    println!("model pack   {} ({})", m.model.id, m.model.name);
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
    use sha2::Digest;
    FileRef {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
    }
}
