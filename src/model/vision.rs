//! The vision side: image → token map → encoder, on the full image and on windows.

use std::sync::Arc;

use image::RgbImage;
use ndarray::{s, Array1, Array2, Array3, ArrayView2, Axis};

use super::runtime::{tensor, Graph, Precision, ShapedGraph};
use super::{Architecture, Error, ModelPack, Preprocessor};
use crate::winclip::WindowSet;

/// The vision encoder of a pack: loaded once, used for every image.
#[derive(Debug, Clone)]
pub struct VisionModel {
    arch: Architecture,
    preprocessor: Preprocessor,
    embed: Graph,
    encoder: Arc<ShapedGraph>,
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
        Self::load_with(pack, Precision::F32)
    }

    /// [`VisionModel::load`] with the token encoder in `precision` (the
    /// image embedding stays f32: it is 1 % of the work).
    pub fn load_with(pack: &ModelPack, precision: Precision) -> Result<Self, Error> {
        let files = &pack.manifest().files;
        let arch = pack.architecture().clone();
        // Window plans first: they share one copy of the packed weights, and
        // building them before the full-image plan (which, having fewer rows
        // than most weights have columns, packs those the other way round and
        // so shares only the rest) keeps the loading peak lower.
        let mut shapes: Vec<Vec<usize>> = crate::winclip::DEFAULT_SCALES
            .iter()
            .filter_map(|&k| WindowSet::new(arch.grid, k, 1))
            .map(|set| vec![set.len(), set.seq_len(), arch.vision_width])
            .collect();
        shapes.push(vec![1, arch.tokens, arch.vision_width]);
        let model = Self {
            preprocessor: pack.preprocessor(),
            embed: Graph::load("embed", &pack.path_of(&files.embed))?,
            encoder: Arc::new(ShapedGraph::load(
                "encoder",
                &pack.path_of(&files.encoder),
                &shapes,
                precision,
            )?),
            arch,
        };
        Ok(model)
    }

    /// The token encoder's plans so far, in build order: (input shape, packed
    /// weight matrices, of them shared with an earlier plan rather than copied).
    pub fn encoder_plans(&self) -> Vec<(Vec<usize>, usize, usize)> {
        self.encoder.sharing()
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
        let mut out = self.encoder.run(tensor(tokens))?.into_iter();
        let (Some(cls), Some(toks)) = (out.next(), out.next()) else {
            return Err(Error::Shape {
                role: "encoder",
                message: "expected two outputs".into(),
            });
        };
        let cls = cls
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|e| shape_error("encoder", e))?;
        let toks = toks
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| shape_error("encoder", e))?;
        expect_shape("encoder", cls.shape(), &[b, self.arch.embed_dim])?;
        expect_shape("encoder", toks.shape(), &[b, t, w])?;
        Ok((cls, toks))
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
        let (n, t, w) = (windows.len(), windows.seq_len(), self.arch.vision_width);
        let mut batch = Array3::<f32>::zeros((n, t, w));
        for (i, mut seq) in batch.outer_iter_mut().enumerate() {
            for (j, row) in windows.token_rows(i).enumerate() {
                seq.row_mut(j).assign(&token_map.row(row));
            }
        }
        Ok(self.encode(batch)?.0)
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
