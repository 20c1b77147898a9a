//! `winclip-edge model features`: dump what the vision encoder sees in one image.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use ndarray::ArrayD;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::model::{ModelPack, VisionModel};
use crate::winclip::WindowSet;

pub(crate) fn run(dir: &Path, image: &Path, output: &Path, scales: &[usize]) -> anyhow::Result<ExitCode> {
    let pack = ModelPack::open(dir).with_context(|| format!("opening model pack {}", dir.display()))?;
    let t0 = Instant::now();
    let vision = VisionModel::load(&pack)?;
    log::info!("loaded vision model in {:.2} s", t0.elapsed().as_secs_f64());
    let grid = pack.architecture().grid;

    let img = crate::imageio::load_rgb(image)?;
    let pixels = vision.preprocess(&img);
    let t1 = Instant::now();
    let feats = vision.image_features(&pixels)?;
    let mut tensors: Vec<(String, ArrayD<f32>)> = vec![
        ("pixels".into(), pixels.into_dyn()),
        ("embedding".into(), feats.embedding.clone().into_dyn()),
        ("token_map".into(), feats.token_map.clone().into_dyn()),
        (
            "patch_features".into(),
            feats.patch_features().to_owned().into_dyn(),
        ),
        ("tokens".into(), feats.tokens.clone().into_dyn()),
    ];
    for &k in scales {
        let Some(set) = WindowSet::new(grid, k, 1) else {
            bail!("window scale {k} does not fit the {grid}x{grid} patch grid");
        };
        tensors.push((
            format!("windows.{k}"),
            vision.window_embeddings(&feats.token_map, &set)?.into_dyn(),
        ));
    }
    log::info!("features in {:.2} s", t1.elapsed().as_secs_f64());

    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, a)| {
            let data = a.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), a.shape().to_vec(), data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([
        ("image".to_string(), image.display().to_string()),
        ("model_pack".to_string(), pack.id().to_string()),
    ]);
    safetensors::serialize_to_file(views, Some(metadata), output)
        .with_context(|| format!("writing {}", output.display()))?;
    for (name, a) in &tensors {
        println!("{name:<16} {:?}", a.shape());
    }
    println!("wrote {}", output.display());
    Ok(ExitCode::SUCCESS)
}
