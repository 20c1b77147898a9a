//! `winclip-edge model info`: what a pack is, and whether its files are intact.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::model::ModelPack;

pub(crate) fn run(dir: &Path, verify: bool, json: bool) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let pack = if verify {
        ModelPack::open(dir)
    } else {
        ModelPack::open_unverified(dir)
    }
    .with_context(|| format!("opening model pack {}", dir.display()))?;
    let elapsed = t0.elapsed();
    let m = pack.manifest();
    let a = &m.architecture;
    let total: u64 = m.files.iter().iter().map(|(_, f)| f.bytes).sum();
    if json {
        let summary = serde_json::json!({
            "dir": dir,
            "id": pack.id().as_str(),
            "source": {
                "model": m.source.model,
                "pretrained": m.source.pretrained,
                "seed": m.source.seed,
                "checkpoint_sha256": m.source.checkpoint_sha256,
                "exported": m.source.exported,
            },
            "architecture": a,
            "linear_layers": crate::model::linear_layers(a.vision_layers),
            "files": m.files.iter().iter().map(|(role, f)| serde_json::json!({
                "role": role, "path": f.path, "bytes": f.bytes, "sha256": f.sha256,
            })).collect::<Vec<_>>(),
            "bytes": total,
            "verified": verify,
        });
        println!("{summary}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("model pack   {}", dir.display());
    println!("id           {}", pack.id());
    let weights = match (m.source.pretrained.as_str(), m.source.seed) {
        ("none", Some(seed)) => format!("random (seed {seed}) — for tests only, not for inspection"),
        ("none", None) => "random — for tests only, not for inspection".to_string(),
        ("checkpoint", _) => format!(
            "checkpoint {} (sha256 {})",
            m.source.checkpoint.as_deref().unwrap_or("?"),
            m.source.checkpoint_sha256.as_deref().unwrap_or("?")
        ),
        (tag, _) => tag.to_string(),
    };
    println!("model        {} / {weights}", m.source.model);
    println!(
        "vision       {0}x{0} px, patch {1}, grid {2}x{2}, width {3}, {4} layers, {5} heads",
        a.image_size, a.patch_size, a.grid, a.vision_width, a.vision_layers, a.vision_heads
    );
    println!(
        "text         width {}, {} layers, {} heads, context {}, vocab {}",
        a.text_width, a.text_layers, a.text_heads, a.context_length, a.vocab_size
    );
    println!("embedding    {}", a.embed_dim);
    println!(
        "linear       blocks.N.attn.in_proj, .attn.out_proj, .mlp.c_fc, .mlp.c_proj for N = 0…{}, and proj \
         (the names model.f32_layers and --f32-layers take)",
        a.vision_layers.saturating_sub(1)
    );
    let p = &m.preprocess;
    println!(
        "preprocess   {} to {}x{}, mean {:?}, std {:?}",
        p.resize, a.image_size, a.image_size, p.mean, p.std
    );
    if let Some(e) = &m.source.exported {
        println!(
            "exported     {e} (open_clip {}, torch {})",
            m.source.open_clip_version.as_deref().unwrap_or("?"),
            m.source.torch_version.as_deref().unwrap_or("?")
        );
    }
    for (role, f) in m.files.iter() {
        println!(
            "  {role:<10} {:<16} {:>12} bytes  sha256 {}",
            f.path,
            f.bytes,
            &f.sha256[..16]
        );
    }
    let state = if verify {
        "sha256 verified"
    } else {
        "sizes checked, hashes not verified"
    };
    println!(
        "files        {:.1} MB, {state} in {:.2} s",
        total as f64 / 1e6,
        elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
