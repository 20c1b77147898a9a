//! The vision side: image → token map → encoder, on the full image and on windows.

use std::sync::Arc;

use image::RgbImage;
use ndarray::{s, Array1, Array2, Array3, ArrayView2, Axis};

use super::precision::{EncoderNumerics, Numerics};
use super::runtime::{concurrently, tensor, workers, Graph, Outputs, PlanSummary, ShapedGraph};
use super::{Architecture, Backend, Error, ModelPack, Preprocessor};
use crate::winclip::WindowSet;

/// The vision encoder of a pack: loaded once, used for every image.
#[derive(Debug, Clone)]
pub struct VisionModel {
    arch: Architecture,
    preprocessor: Preprocessor,
    embed: Graph,
    encoder: Arc<ShapedGraph>,
    backend: Backend,
}

/// How many token rows one window pass may hold so that its plan packs the
/// weights like the full-image plan, and one copy serves both.
///
/// tract puts the larger of (rows, weight columns) on the packed "A" side of
/// each matrix product. The full image (`tokens` rows) has fewer rows than
/// the `width` columns of most weights of a full-size ViT, so its plan packs
/// those as A; a window pass of more rows would pack them as B, a second
/// copy (≈ 300 MB for ViT-B-16-plus-240). Passes of fewer than `width` rows
/// pack them as A too; measured: same speed. Where the full image already has
/// at least `width` rows (small test models) there is nothing to gain.
fn window_rows_limit(tokens: usize, width: usize) -> usize {
    if tokens < width {
        width - 1
    } else {
        usize::MAX
    }
}

/// How window batches are split into passes: (rows per pass at most,
/// passes run at once). On the CPU, as [`window_rows_limit`] and the
/// executor's threads say; on a GPU, one pass per window scale: a GPU plan
/// holds its own copy of the weights (one plan per pass shape), and large
/// batches are what keep a GPU busy.
fn pass_layout(backend: &Backend, arch: &Architecture) -> (usize, usize) {
    match backend {
        Backend::Cpu => (window_rows_limit(arch.tokens, arch.vision_width), workers()),
        Backend::Cuda(_) => (usize::MAX, 1),
    }
}

/// Split `n` windows of `t` tokens into passes of at most `max_rows` rows,
/// as even as possible: the window counts per pass. The fewest passes that
/// fit, rounded up to a multiple of `workers` (so that every worker gets an
/// equal share, see [`concurrently`]) where there are windows enough.
fn pass_sizes(n: usize, t: usize, max_rows: usize, workers: usize) -> Vec<usize> {
    let per = (max_rows / t.max(1)).clamp(1, n.max(1));
    let fewest = n.div_ceil(per).max(1);
    let passes = (fewest.div_ceil(workers.max(1)) * workers.max(1)).min(n.max(1));
    (0..passes)
        .map(|i| n / passes + usize::from(i < n % passes))
        .filter(|&c| c > 0)
        .collect()
}

/// Everything WinCLIP needs from one full-image forward pass.
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// Token map F: class token + patches with positional embedding, `[T, D_w]`.
    pub token_map: Array2<f32>,
    /// Image embedding f(x): projected class token, `[D]`.
    pub embedding: Array1<f32>,
    /// All `ln_post` tokens, class token first, `[T, D_w]`; patch features are rows 1..
    pub tokens: Array2<f32>,
}

impl ImageFeatures {
    /// Patch features R_p: the last-layer patch tokens after `ln_post`, `[grid², D_w]`.
    pub fn patch_features(&self) -> ArrayView2<'_, f32> {
        self.tokens.slice(s![1.., ..])
    }
}

impl VisionModel {
    /// Load the image-embedding and token-encoder graphs of `pack`, with
    /// encoder plans for the full image and the default window scales
    /// (other scales are planned on first use).
    pub fn load(pack: &ModelPack) -> Result<Self, Error> {
        Self::load_with(pack, &Numerics::default())
    }

    /// [`VisionModel::load`] with the token encoder in `numerics` (the
    /// image embedding stays f32: it is 1 % of the work).
    pub fn load_with(pack: &ModelPack, numerics: &Numerics) -> Result<Self, Error> {
        Self::load_on(pack, numerics, Backend::Cpu)
    }

    /// [`VisionModel::load_with`] with the token encoder on `backend`
    /// ([`super::Device::resolve`] gives it).
    pub fn load_on(pack: &ModelPack, numerics: &Numerics, backend: Backend) -> Result<Self, Error> {
        let files = &pack.manifest().files;
        let arch = pack.architecture().clone();
        // One plan per window pass shape of the default scales, computing
        // the class embedding only, then the full image; all share one copy
        // of each weight (f16 plans: where they pack it alike, see
        // `window_rows_limit`).
        let (max_rows, workers) = pass_layout(&backend, &arch);
        let mut plans: Vec<(Vec<usize>, Outputs)> = Vec::new();
        for set in crate::winclip::DEFAULT_SCALES
            .iter()
            .filter_map(|&k| WindowSet::new(arch.grid, k, 1))
        {
            for count in pass_sizes(set.len(), set.seq_len(), max_rows, workers) {
                let plan = (vec![count, set.seq_len(), arch.vision_width], Outputs::First);
                if !plans.contains(&plan) {
                    plans.push(plan);
                }
            }
        }
        plans.push((vec![1, arch.tokens, arch.vision_width], Outputs::All));
        let model = Self {
            preprocessor: pack.preprocessor(),
            embed: Graph::load("embed", &pack.path_of(&files.embed))?,
            encoder: Arc::new(ShapedGraph::load(
                "encoder",
                &pack.path_of(&files.encoder),
                &plans,
                numerics,
                backend.clone(),
            )?),
            arch,
            backend,
        };
        Ok(model)
    }

    /// The token encoder's plans so far, in build order: what each computes
    /// and how it holds its weights.
    pub fn encoder_plans(&self) -> Vec<PlanSummary> {
        self.encoder.plans()
    }

    /// What the token encoder computes in, as this CPU runs it (`None`
    /// only for a model whose encoder was not read yet).
    pub fn encoder_numerics(&self) -> Option<EncoderNumerics> {
        self.encoder.numerics()
    }

    /// Where the token encoder runs.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The network's shapes.
    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// Resize + normalise an image to the encoder's `[3, S, S]` input.
    pub fn preprocess(&self, img: &RgbImage) -> Array3<f32> {
        self.preprocessor.run(img)
    }

    /// Token map of a preprocessed image: `[3, S, S]` → `[T, D_w]`.
    pub fn token_map(&self, pixels: &Array3<f32>) -> Result<Array2<f32>, Error> {
        let a = &self.arch;
        if pixels.shape() != [3, a.image_size, a.image_size] {
            return Err(Error::Shape {
                role: "embed",
                message: format!("input {:?}, expected [3, {1}, {1}]", pixels.shape(), a.image_size),
            });
        }
        let input = pixels.clone().insert_axis(Axis(0));
        let out = self.embed.run(vec![tensor(input)])?;
        let map = first(out, "embed")?;
        let map = map
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| shape_error("embed", e))?;
        expect_shape("embed", map.shape(), &[1, a.tokens, a.vision_width])?;
        Ok(map.index_axis_move(Axis(0), 0))
    }

    /// Run the token encoder on a batch of token sequences `[B, T, D_w]`.
    /// Returns the projected class tokens `[B, D]` and all `ln_post` tokens `[B, T, D_w]`.
    pub fn encode(&self, tokens: Array3<f32>) -> Result<(Array2<f32>, Array3<f32>), Error> {
        let (b, t, w) = self.encoder_input(&tokens)?;
        let mut out = self.encoder.run(tensor(tokens), Outputs::All)?.into_iter();
        let (Some(cls), Some(toks)) = (out.next(), out.next()) else {
            return Err(Error::Shape {
                role: "encoder",
                message: "expected two outputs".into(),
            });
        };
        let toks = toks
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| shape_error("encoder", e))?;
        expect_shape("encoder", toks.shape(), &[b, t, w])?;
        Ok((self.class_embeddings(cls, b)?, toks))
    }

    /// [`VisionModel::encode`]'s projected class tokens `[B, D]` alone, by a
    /// plan that computes the last layer for the class token only.
    pub fn encode_classes(&self, tokens: Array3<f32>) -> Result<Array2<f32>, Error> {
        let (b, _, _) = self.encoder_input(&tokens)?;
        let out = self.encoder.run(tensor(tokens), Outputs::First)?;
        self.class_embeddings(first(out, "encoder")?, b)
    }

    fn encoder_input(&self, tokens: &Array3<f32>) -> Result<(usize, usize, usize), Error> {
        let (b, t, w) = tokens.dim();
        if w != self.arch.vision_width || t == 0 || b == 0 {
            return Err(Error::Shape {
                role: "encoder",
                message: format!(
                    "input [{b}, {t}, {w}], expected [B, T, {}]",
                    self.arch.vision_width
                ),
            });
        }
        Ok((b, t, w))
    }

    fn class_embeddings(&self, cls: ndarray::ArrayD<f32>, b: usize) -> Result<Array2<f32>, Error> {
        let cls = cls
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|e| shape_error("encoder", e))?;
        expect_shape("encoder", cls.shape(), &[b, self.arch.embed_dim])?;
        Ok(cls)
    }

    /// Full-image features from a preprocessed image.
    pub fn image_features(&self, pixels: &Array3<f32>) -> Result<ImageFeatures, Error> {
        let token_map = self.token_map(pixels)?;
        let (cls, toks) = self.encode(token_map.clone().insert_axis(Axis(0)))?;
        Ok(ImageFeatures {
            token_map,
            embedding: cls.index_axis_move(Axis(0), 0),
            tokens: toks.index_axis_move(Axis(0), 0),
        })
    }

    /// Window embeddings `[n_windows, D]`: every window's class row + patch rows of
    /// the token map, run as one batch.
    pub fn window_embeddings(
        &self,
        token_map: &Array2<f32>,
        windows: &WindowSet,
    ) -> Result<Array2<f32>, Error> {
        if windows.grid() != self.arch.grid {
            return Err(Error::Shape {
                role: "encoder",
                message: format!(
                    "window grid {} on a model with grid {}",
                    windows.grid(),
                    self.arch.grid
                ),
            });
        }
        let (max_rows, workers) = pass_layout(&self.backend, &self.arch);
        self.window_passes(token_map, windows, max_rows, workers)
    }

    /// The window batch as passes of at most `max_rows` token rows each, run
    /// [`concurrently`] on `workers` threads.
    fn window_passes(
        &self,
        token_map: &Array2<f32>,
        windows: &WindowSet,
        max_rows: usize,
        workers: usize,
    ) -> Result<Array2<f32>, Error> {
        let (n, t, w) = (windows.len(), windows.seq_len(), self.arch.vision_width);
        let mut passes = Vec::new();
        let mut start = 0;
        for count in pass_sizes(n, t, max_rows, workers) {
            passes.push(start..start + count);
            start += count;
        }
        let embeddings = concurrently(workers, &passes, |pass| {
            let mut batch = Array3::<f32>::zeros((pass.len(), t, w));
            for (mut seq, window) in batch.outer_iter_mut().zip(pass.clone()) {
                for (j, row) in windows.token_rows(window).enumerate() {
                    seq.row_mut(j).assign(&token_map.row(row));
                }
            }
            self.encode_classes(batch)
        });
        let mut out = Array2::<f32>::zeros((n, self.arch.embed_dim));
        for (pass, cls) in passes.iter().zip(embeddings) {
            out.slice_mut(s![pass.clone(), ..]).assign(&cls?);
        }
        Ok(out)
    }
}

fn first(out: Vec<ndarray::ArrayD<f32>>, role: &'static str) -> Result<ndarray::ArrayD<f32>, Error> {
    out.into_iter().next().ok_or(Error::Shape {
        role,
        message: "graph has no output".into(),
    })
}

fn shape_error(role: &'static str, e: ndarray::ShapeError) -> Error {
    Error::Shape {
        role,
        message: e.to_string(),
    }
}

fn expect_shape(role: &'static str, got: &[usize], want: &[usize]) -> Result<(), Error> {
    if got != want {
        return Err(Error::Shape {
            role,
            message: format!("output shape {got:?}, manifest implies {want:?}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_passes_stay_under_the_row_limit_and_cover_every_window() {
        // ViT-B-16-plus-240: 226 tokens, width 896.
        assert_eq!(window_rows_limit(226, 896), 895);
        assert_eq!(pass_sizes(196, 5, 895, 1), vec![98, 98]);
        assert_eq!(pass_sizes(169, 10, 895, 1), vec![85, 84]);
        assert_eq!(pass_sizes(196, 5, 895, 2), vec![98, 98]);
        assert_eq!(pass_sizes(196, 5, 895, 4), vec![49; 4]);
        assert_eq!(pass_sizes(169, 10, 895, 3), vec![57, 56, 56]);
        // The tiny model (width 64): one pass per scale for one worker.
        assert_eq!(window_rows_limit(226, 64), usize::MAX);
        assert_eq!(pass_sizes(196, 5, usize::MAX, 1), vec![196]);
        assert_eq!(pass_sizes(196, 5, usize::MAX, 2), vec![98, 98]);
        // Never more passes than windows.
        assert_eq!(pass_sizes(3, 5, usize::MAX, 8), vec![1, 1, 1]);
        for (n, t, rows, workers) in [(7, 3, 10, 1), (1, 5, 1, 2), (169, 10, 9, 4), (50, 4, 200, 3)] {
            let sizes = pass_sizes(n, t, rows, workers);
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n} {t} {rows}: {sizes:?}");
            assert!(
                sizes.iter().all(|&c| c > 0 && (c * t <= rows || c == 1)),
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn window_embeddings_are_the_same_in_one_pass_or_several() {
        let pack = ModelPack::open(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/tiny"
        )))
        .unwrap();
        let model = VisionModel::load(&pack).unwrap();
        let pixels = Array3::from_shape_fn((3, 240, 240), |(c, y, x)| {
            ((c + y * 3 + x * 7) % 13) as f32 / 13.0 - 0.5
        });
        let map = model.token_map(&pixels).unwrap();
        let set = WindowSet::new(model.arch.grid, 2, 1).unwrap();
        let one = model.window_passes(&map, &set, usize::MAX, 1).unwrap();
        // At most 20 windows per pass: 10 passes of 19–20 in turn, or 12 of
        // 16–17 three at a time.
        for workers in [1, 3] {
            let several = model.window_passes(&map, &set, 101, workers).unwrap();
            let diff = one
                .iter()
                .zip(&several)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "{workers} worker(s): max diff {diff}");
        }
    }
}
