//! `winclip-edge synth`: write synthetic good/defective pictures with masks,
//! as a plain folder or as an MVTec-AD-layout dataset.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::{SynthArgs, SynthLayout};
use crate::fsutil::write_atomic;
use crate::synth::{Defect, Generator, Scene};

/// Index offsets keep train, good-test and defective-test pictures distinct.
const GOOD_TEST_OFFSET: u64 = 5_000;
const BAD_OFFSET: u64 = 10_000;

pub(crate) fn run(a: &SynthArgs) -> anyhow::Result<ExitCode> {
    match a.layout {
        SynthLayout::Folder => folder(a),
        SynthLayout::Mvtec => mvtec(a),
    }
}

/// Encode `img` as PNG and write it atomically, creating the directory.
fn save_png<P, C>(path: &Path, img: &image::ImageBuffer<P, C>) -> anyhow::Result<()>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)?;
    write_atomic(path, bytes.get_ref())?;
    Ok(())
}

/// Folder layout: `good/NNN.png`, `bad/NNN.png`, `masks/NNN_mask.png`.
fn folder(a: &SynthArgs) -> anyhow::Result<ExitCode> {
    let g = Generator::new(a.scene, a.size, a.seed);
    for i in 0..a.good {
        save_png(
            &a.out.join(format!("good/{i:03}.png")),
            &g.sample(i as u64, None).image,
        )?;
    }
    for i in 0..a.bad {
        let s = g.sample(BAD_OFFSET + i as u64, Some(Defect::ALL[i % Defect::ALL.len()]));
        save_png(&a.out.join(format!("bad/{i:03}.png")), &s.image)?;
        save_png(&a.out.join(format!("masks/{i:03}_mask.png")), &s.mask)?;
    }
    println!(
        "wrote {} good and {} defective {} pictures ({s}x{s}, seed {}) to {}",
        a.good,
        a.bad,
        a.scene,
        a.seed,
        a.out.display(),
        s = a.size
    );
    Ok(ExitCode::SUCCESS)
}

/// MVTec-AD layout: `<cat>/train/good`, `<cat>/test/good`, `<cat>/test/<defect>`,
/// `<cat>/ground_truth/<defect>/NNN_mask.png`, one category per `name=scene`.
fn mvtec(a: &SynthArgs) -> anyhow::Result<ExitCode> {
    for (ci, spec) in a.categories.iter().enumerate() {
        let (name, scene) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--categories {spec:?}: expected name=object or name=texture"))?;
        let scene: Scene = scene.parse().map_err(anyhow::Error::msg)?;
        let g = Generator::new(scene, a.size, a.seed.wrapping_add(ci as u64 * 1_000_003));
        let dir = a.out.join(name);
        for i in 0..a.train {
            save_png(
                &dir.join(format!("train/good/{i:03}.png")),
                &g.sample(i as u64, None).image,
            )?;
        }
        for i in 0..a.good {
            let s = g.sample(GOOD_TEST_OFFSET + i as u64, None);
            save_png(&dir.join(format!("test/good/{i:03}.png")), &s.image)?;
        }
        for i in 0..a.bad {
            let d = Defect::ALL[i % Defect::ALL.len()];
            let s = g.sample(BAD_OFFSET + i as u64, Some(d));
            save_png(
                &dir.join("test").join(d.name()).join(format!("{i:03}.png")),
                &s.image,
            )?;
            save_png(
                &dir.join("ground_truth")
                    .join(d.name())
                    .join(format!("{i:03}_mask.png")),
                &s.mask,
            )?;
        }
        println!(
            "{name}: {} train, {} good + {} defective test pictures ({scene})",
            a.train, a.good, a.bad
        );
    }
    println!("MVTec-AD layout written to {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
