//! `winclip-edge synth`: write synthetic good/defective pictures with masks.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::fsutil::write_atomic;
use crate::synth::{Defect, Generator, Scene};

/// Folder layout: `good/NNN.png`, `bad/NNN.png`, `masks/NNN_mask.png`.
pub(crate) fn run(
    out: &Path,
    scene: Scene,
    good: usize,
    bad: usize,
    size: u32,
    seed: u64,
) -> anyhow::Result<ExitCode> {
    let g = Generator::new(scene, size, seed);
    for sub in ["good", "bad", "masks"] {
        std::fs::create_dir_all(out.join(sub))
            .with_context(|| format!("creating {}", out.join(sub).display()))?;
    }
    let png =
        |img: &dyn Fn(&mut std::io::Cursor<Vec<u8>>) -> image::ImageResult<()>| -> anyhow::Result<Vec<u8>> {
            let mut c = std::io::Cursor::new(Vec::new());
            img(&mut c)?;
            Ok(c.into_inner())
        };
    for i in 0..good {
        let s = g.sample(i as u64, None);
        let bytes = png(&|c| s.image.write_to(c, image::ImageFormat::Png))?;
        write_atomic(&out.join(format!("good/{i:03}.png")), &bytes)?;
    }
    for i in 0..bad {
        let d = Defect::ALL[i % Defect::ALL.len()];
        let s = g.sample(10_000 + i as u64, Some(d));
        let bytes = png(&|c| s.image.write_to(c, image::ImageFormat::Png))?;
        write_atomic(&out.join(format!("bad/{i:03}.png")), &bytes)?;
        let bytes = png(&|c| s.mask.write_to(c, image::ImageFormat::Png))?;
        write_atomic(&out.join(format!("masks/{i:03}_mask.png")), &bytes)?;
    }
    println!(
        "wrote {good} good and {bad} defective {scene} pictures ({size}x{size}, seed {seed}) to {}",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
