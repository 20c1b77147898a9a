//! Offline evaluation: metrics, dataset readers, and the `eval` runner that
//! reproduces the paper's protocol on MVTec-AD, VisA or a folder of parts.
//!
//! Protocol: per category, text prototypes from the object name; K-shot
//! references drawn from the category's normal training images with recorded
//! seeds (K = 0 is run once); every test image scored; image metrics on the
//! image scores, pixel metrics on the anomaly maps at the model input
//! resolution (240×240; masks resized with nearest neighbour).
//!
//! The expensive part — the vision encoder on every image — does not depend on
//! K or the seed, so features are computed once per image and cached on disk
//! (`<out>/cache/`); scored runs are saved per (category, K, seed)
//! (`<out>/runs/`). A killed run continues where it stopped.

pub mod dataset;
pub mod metrics;
pub mod plot;
pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ndarray::{Array1, Array2};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::inspector;
use crate::model::{ModelPack, Numerics, TextModel, VisionModel};
use crate::winclip::{self, upsample, Config, Features, References, Scorer, TemplateSet, TextPrototypes};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Dataset and layout.
    pub dataset: dataset::Spec,
    /// Categories (empty = all).
    pub categories: Vec<String>,
    /// Shot counts; 0 = zero-shot.
    pub shots: Vec<usize>,
    /// Seeds per K > 0.
    pub seeds: u64,
    /// Output directory (report, cache, runs).
    pub out: PathBuf,
    /// Template set.
    pub prompt_set: TemplateSet,
    /// Algorithm settings.
    pub config: Config,
    /// Decode the test pictures (not the shots) at reduced JPEG DCT scale,
    /// as the station does with `station.jpeg_dct_scaling`.
    pub jpeg_dct_scaling: bool,
    /// The token encoder's arithmetic.
    pub numerics: Numerics,
}

/// Metrics of one scored run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// Image AUROC.
    pub image_auroc: Option<f64>,
    /// Image average precision.
    pub image_aupr: Option<f64>,
    /// Image F1-max.
    pub image_f1_max: Option<f64>,
    /// Pixel AUROC.
    pub pixel_auroc: Option<f64>,
    /// PRO up to FPR 0.3, normalised.
    pub pixel_pro: Option<f64>,
    /// Pixel F1-max.
    pub pixel_f1_max: Option<f64>,
}

/// One (category, K, seed) run, as saved for resuming and reporting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// Category.
    pub category: String,
    /// K.
    pub shots: usize,
    /// Seed of the reference draw (0 for K = 0).
    pub seed: u64,
    /// Reference images used.
    pub references: Vec<String>,
    /// Metrics.
    pub metrics: Metrics,
    /// Per test image: file, anomalous?, score.
    pub images: Vec<(String, bool, f32)>,
    /// Why a metric is missing, if one is.
    pub notes: Vec<String>,
}

/// Progress callbacks (a bar in the CLI, nothing in tests): one total for
/// the whole evaluation, so that its ETA is the evaluation's.
pub trait Progress {
    /// The evaluation has `total` steps (pictures to extract, runs to score).
    fn start(&self, total: u64);
    /// What is being done now.
    fn phase(&self, what: &str);
    /// One step done.
    fn step(&self);
}

/// No progress output.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: u64) {}
    fn phase(&self, _: &str) {}
    fn step(&self) {}
}

/// The cache key of an image's features for this model, arithmetic and configuration.
fn cache_key(pack: &ModelPack, numerics: &Numerics, config: &Config, image: &Path, reduced: bool) -> String {
    let mut h = Sha256::new();
    h.update(pack.id().as_str().as_bytes());
    h.update(format!("{:?}|{}", config.scales, config.stride).as_bytes());
    if reduced {
        h.update(b"|jpeg-dct-scaling");
    }
    // Only when not f32, so that the features cached before it existed still match.
    if *numerics != Numerics::default() {
        h.update(format!("|{numerics:?}").as_bytes());
    }
    h.update(image.to_string_lossy().as_bytes());
    if let Ok(m) = std::fs::metadata(image) {
        h.update(m.len().to_le_bytes());
        if let Ok(t) = m.modified() {
            h.update(format!("{t:?}").as_bytes());
        }
    }
    hex::encode(&h.finalize()[..12])
}

fn save_features(path: &Path, f: &Features) -> anyhow::Result<()> {
    use safetensors::tensor::TensorView;
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        (
            "embedding".into(),
            vec![f.embedding.len()],
            f.embedding.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (
            "patches".into(),
            f.patches.shape().to_vec(),
            f.patches.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    for (i, w) in f.windows.iter().enumerate() {
        named.push((
            format!("windows.{i}"),
            w.shape().to_vec(),
            w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let views = named
        .iter()
        .map(|(n, s, d)| TensorView::new(safetensors::Dtype::F32, s.clone(), d).map(|v| (n.as_str(), v)))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, None)?;
    crate::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

fn load_features(path: &Path, scales: usize) -> Option<Features> {
    let bytes = std::fs::read(path).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let get = |n: &str| -> Option<(Vec<usize>, Vec<f32>)> {
        let t = st.tensor(n).ok()?;
        Some((
            t.shape().to_vec(),
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    };
    let (_, e) = get("embedding")?;
    let mat = |n: &str| -> Option<Array2<f32>> {
        let (s, d) = get(n)?;
        Array2::from_shape_vec((s[0], s[1]), d).ok()
    };
    let windows = (0..scales)
        .map(|i| mat(&format!("windows.{i}")))
        .collect::<Option<Vec<_>>>()?;
    Some(Features {
        embedding: Array1::from(e),
        patches: mat("patches")?,
        windows,
    })
}

/// Features of `image`, from the cache or computed (and cached); `reduced`:
/// a JPEG decoded at reduced DCT scale, as the station does with
/// `station.jpeg_dct_scaling`.
#[allow(clippy::too_many_arguments)]
fn features(
    pack: &ModelPack,
    numerics: &Numerics,
    vision: &VisionModel,
    sets: &[winclip::WindowSet],
    config: &Config,
    cache: &Path,
    image: &Path,
    reduced: bool,
) -> anyhow::Result<Features> {
    let path = cache.join(format!(
        "{}.safetensors",
        cache_key(pack, numerics, config, image, reduced)
    ));
    if let Some(f) = load_features(&path, sets.len()) {
        return Ok(f);
    }
    let img = if reduced {
        use crate::imageio::{self, Limits};
        let bytes = imageio::read_limited(image, &Limits::DEFAULT)?;
        let input = vision.architecture().image_size as u32;
        imageio::decode_rgb_reduced(&bytes, image, &Limits::DEFAULT, input)?.image
    } else {
        crate::imageio::load_rgb(image)?
    };
    let (f, _) =
        inspector::extract(vision, sets, &img).with_context(|| format!("features of {}", image.display()))?;
    save_features(&path, &f)?;
    Ok(f)
}

/// A mask resized (nearest neighbour) to `size`×`size`, as booleans.
fn load_mask(path: &Path, size: usize) -> anyhow::Result<Vec<bool>> {
    let img = image::open(path)
        .with_context(|| format!("mask {}", path.display()))?
        .to_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![false; size * size];
    for y in 0..size {
        for x in 0..size {
            let (sx, sy) = ((x * w) / size, (y * h) / size);
            out[y * size + x] = img.get_pixel(sx as u32, sy as u32).0[0] > 127;
        }
    }
    Ok(out)
}

/// Evaluate; returns every run (loaded from earlier runs where present).
pub fn run(
    pack: &ModelPack,
    vision: &VisionModel,
    text: &TextModel,
    spec: &Spec,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<Run>> {
    let categories = dataset::load(&spec.dataset, &spec.categories)?;
    let grid = pack.architecture().grid;
    let size = pack.architecture().image_size;
    let sets = spec.config.window_sets(grid)?;
    let cache = spec.out.join("cache").join(pack.id().as_str());
    std::fs::create_dir_all(&cache)?;
    check_settings(pack, spec)?;
    let units: Vec<(usize, u64)> = spec
        .shots
        .iter()
        .flat_map(|&k| {
            if k == 0 {
                vec![(0, 0)]
            } else {
                (0..spec.seeds).map(|s| (k, s)).collect()
            }
        })
        .collect();
    let pending_of = |cat: &dataset::Category| -> Vec<(usize, u64)> {
        let runs_dir = spec.out.join("runs").join(&cat.name);
        units
            .iter()
            .copied()
            .filter(|(k, s)| !runs_dir.join(format!("k{k}-s{s}.json")).is_file())
            .collect()
    };
    let total: usize = categories
        .iter()
        .map(|c| match pending_of(c).len() {
            0 => 0,
            n => c.test.len() + n,
        })
        .sum();
    progress.start(total as u64);
    for cat in &categories {
        for &k in spec.shots.iter().filter(|&&k| k > 0 && spec.seeds > 1) {
            if k >= cat.train.len() {
                log::warn!(
                    "{}: K = {k} takes every one of its {} training images: all {} seeds draw the same \
                     references, so their spread (± 0.0) says nothing",
                    cat.name,
                    cat.train.len(),
                    spec.seeds
                );
            }
        }
    }
    let mut all = Vec::new();
    for cat in &categories {
        let runs_dir = spec.out.join("runs").join(&cat.name);
        std::fs::create_dir_all(&runs_dir)?;
        let pending = pending_of(cat);
        if !pending.is_empty() {
            if let Some(k) = pending.iter().map(|(k, _)| *k).max() {
                if k > cat.train.len() {
                    anyhow::bail!(
                        "{}: {k} shots asked, only {} training images",
                        cat.name,
                        cat.train.len()
                    );
                }
            }
            let ens = winclip::ensemble(&cat.object_name(), spec.prompt_set, &[]);
            let prototypes =
                TextPrototypes::from_embeddings(&text.embed(&ens.normal)?, &text.embed(&ens.anomalous)?)?;
            progress.phase(&format!("{}: features", cat.name));
            let mut test_feats = Vec::with_capacity(cat.test.len());
            for s in &cat.test {
                let reduced = spec.jpeg_dct_scaling;
                test_feats.push(features(
                    pack,
                    &spec.numerics,
                    vision,
                    &sets,
                    &spec.config,
                    &cache,
                    &s.image,
                    reduced,
                )?);
                progress.step();
            }
            let masks: Vec<Option<Vec<bool>>> = cat
                .test
                .iter()
                .map(|s| s.mask.as_ref().map(|m| load_mask(m, size)).transpose())
                .collect::<anyhow::Result<_>>()?;
            progress.phase(&format!("{}: scoring", cat.name));
            let mut train_cache: HashMap<PathBuf, Features> = HashMap::new();
            for &(k, seed) in &pending {
                let mut idx: Vec<usize> = (0..cat.train.len()).collect();
                idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
                let chosen: Vec<PathBuf> = idx[..k].iter().map(|&i| cat.train[i].clone()).collect();
                let mut shot_feats = Vec::new();
                for p in &chosen {
                    if !train_cache.contains_key(p) {
                        // Shots as in a bank: decoded in full.
                        let f = features(
                            pack,
                            &spec.numerics,
                            vision,
                            &sets,
                            &spec.config,
                            &cache,
                            p,
                            false,
                        )?;
                        train_cache.insert(p.clone(), f);
                    }
                    shot_feats.push(train_cache[p].clone());
                }
                let refs = if k > 0 {
                    Some(References::from_features(&shot_feats)?)
                } else {
                    None
                };
                let scorer = Scorer::new(spec.config.clone(), grid, &prototypes, refs.as_ref())?;
                let mut run = score_run(cat, k, seed, &chosen, &scorer, &test_feats, &masks, size)?;
                if k > 0 && k >= cat.train.len() && spec.seeds > 1 {
                    run.notes.push(format!(
                        "K = {k} takes all {} training images: every seed draws the same references (± 0.0 says nothing)",
                        cat.train.len()
                    ));
                }
                let json = serde_json::to_vec_pretty(&run)?;
                crate::fsutil::write_atomic(&runs_dir.join(format!("k{k}-s{seed}.json")), &json)?;
                progress.step();
            }
        }
        for &(k, s) in &units {
            let path = runs_dir.join(format!("k{k}-s{s}.json"));
            let bytes = std::fs::read(&path)?;
            all.push(
                serde_json::from_slice::<Run>(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
        }
    }
    Ok(all)
}

/// Saved runs are only reused with the settings that made them: the first run
/// records them in `runs/settings.json`, later runs must match.
fn check_settings(pack: &ModelPack, spec: &Spec) -> anyhow::Result<()> {
    let mut settings = serde_json::json!({
        "model": pack.id().as_str(),
        "dataset": spec.dataset.root.canonicalize().unwrap_or_else(|_| spec.dataset.root.clone()),
        "prompt_set": format!("{:?}", spec.prompt_set),
        "tau": spec.config.tau,
        "scales": spec.config.scales,
        "stride": spec.config.stride,
    });
    // Only when on, so that the runs saved before the option existed still match.
    if spec.jpeg_dct_scaling {
        settings["jpeg_dct_scaling"] = true.into();
    }
    if spec.numerics != Numerics::default() {
        settings["precision"] = spec.numerics.precision.to_string().into();
        settings["f32_layers"] = spec.numerics.f32_layers.patterns().into();
    }
    let path = spec.out.join("runs/settings.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let saved: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
            if saved != settings {
                anyhow::bail!(
                    "{} holds runs made with other settings ({saved}, now {settings}); \
                     use another --out directory or delete that one",
                    spec.out.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(spec.out.join("runs"))?;
            crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&settings)?)?;
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

#[allow(clippy::too_many_arguments)]
fn score_run(
    cat: &dataset::Category,
    k: usize,
    seed: u64,
    chosen: &[PathBuf],
    scorer: &Scorer,
    feats: &[Features],
    masks: &[Option<Vec<bool>>],
    size: usize,
) -> anyhow::Result<Run> {
    let mut scores = Vec::with_capacity(feats.len());
    let mut maps: Vec<Vec<f32>> = Vec::with_capacity(feats.len());
    for f in feats {
        let o = scorer.score(f)?;
        scores.push(o.score);
        maps.push(
            upsample::bilinear(o.map.view(), size, size)
                .into_raw_vec_and_offset()
                .0,
        );
    }
    let labels: Vec<bool> = cat.test.iter().map(|s| s.anomalous).collect();
    let mut notes = Vec::new();
    let mut note = |r: Result<f64, metrics::Error>| match r {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.to_string();
            if !notes.contains(&msg) {
                notes.push(msg);
            }
            None
        }
    };
    let mut m = Metrics {
        image_auroc: note(metrics::auroc(&scores, &labels)),
        image_aupr: note(metrics::average_precision(&scores, &labels)),
        image_f1_max: note(metrics::f1_max(&scores, &labels).map(|(f, _)| f)),
        ..Metrics::default()
    };
    // Pixel metrics over every test image: normal images count with empty masks;
    // anomalous images without a mask are left out.
    let empty = vec![false; size * size];
    let mut px_scores = Vec::new();
    let mut px_labels = Vec::new();
    let mut masked = Vec::new();
    for ((s, map), mask) in cat.test.iter().zip(&maps).zip(masks) {
        let mask = match (s.anomalous, mask) {
            (false, _) => &empty,
            (true, Some(m)) => m,
            (true, None) => continue,
        };
        px_scores.extend_from_slice(map);
        px_labels.extend_from_slice(mask);
        masked.push((map, mask));
    }
    if masks.iter().any(Option::is_some) {
        m.pixel_auroc = note(metrics::auroc(&px_scores, &px_labels));
        m.pixel_f1_max = note(metrics::f1_max(&px_scores, &px_labels).map(|(f, _)| f));
        let ims: Vec<metrics::MaskedMap<'_>> = masked
            .iter()
            .map(|(map, mask)| metrics::MaskedMap {
                map,
                mask,
                height: size,
                width: size,
            })
            .collect();
        m.pixel_pro = note(metrics::pro(&ims));
    } else {
        notes.push("pixel metrics: no ground-truth masks".into());
    }
    Ok(Run {
        category: cat.name.clone(),
        shots: k,
        seed,
        references: chosen.iter().map(|p| p.display().to_string()).collect(),
        metrics: m,
        images: cat
            .test
            .iter()
            .zip(&scores)
            .map(|(s, sc)| (s.image.display().to_string(), s.anomalous, *sc))
            .collect(),
        notes,
    })
}

/// Convenience for tests and the CLI: open, load models, evaluate.
pub fn evaluate(model: &Path, spec: &Spec, progress: &dyn Progress) -> anyhow::Result<Vec<Run>> {
    let pack = ModelPack::open(model).with_context(|| format!("model pack {}", model.display()))?;
    let vision = VisionModel::load_with(&pack, &spec.numerics)?;
    let text = TextModel::load(&pack)?;
    run(&pack, &vision, &text, spec, progress)
}
