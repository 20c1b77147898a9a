//! The text side: CLIP BPE tokenisation (`tokenizers` crate) and the text encoder.
//!
//! Only `winclip-edge bank` uses this: text prototypes are computed once and
//! stored in the bank, so an inspecting station never runs the text encoder.

use std::path::PathBuf;

use ndarray::Array2;

use super::runtime::{tensor, Graph};
use super::{Error, ModelPack};

/// Prompts per text-encoder call: bounds the activation memory of big ensembles.
const BATCH: usize = 64;

/// Tokenizer + text encoder of a pack.
pub struct TextModel {
    tokenizer: tokenizers::Tokenizer,
    tokenizer_path: PathBuf,
    context_length: usize,
    embed_dim: usize,
    encoder: Graph,
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextModel")
            .field("tokenizer", &self.tokenizer_path)
            .field("encoder", &self.encoder)
            .finish()
    }
}

impl TextModel {
    /// Load the tokenizer and the text encoder of `pack`.
    pub fn load(pack: &ModelPack) -> Result<Self, Error> {
        let files = &pack.manifest().files;
        let tokenizer_path = pack.path_of(&files.tokenizer);
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::Tokenizer {
            path: tokenizer_path.clone(),
            message: e.to_string(),
        })?;
        let arch = pack.architecture();
        Ok(Self {
            tokenizer,
            tokenizer_path,
            context_length: arch.context_length,
            embed_dim: arch.embed_dim,
            encoder: Graph::load("text", &pack.path_of(&files.text))?,
        })
    }

    /// Token ids `[N, context_length]`: start token, BPE ids, end token, zero padding;
    /// over-long prompts are truncated so that the end token stays last.
    pub fn tokenize(&self, prompts: &[String]) -> Result<Array2<i64>, Error> {
        let fail = |message: String| Error::Tokenizer {
            path: self.tokenizer_path.clone(),
            message,
        };
        let inputs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| fail(e.to_string()))?;
        let mut ids = Array2::<i64>::zeros((prompts.len(), self.context_length));
        for (i, enc) in encodings.iter().enumerate() {
            if enc.get_ids().len() != self.context_length {
                return Err(fail(format!(
                    "prompt {:?} gave {} tokens, expected {} (tokenizer.json without padding/truncation?)",
                    prompts[i],
                    enc.get_ids().len(),
                    self.context_length
                )));
            }
            for (j, id) in enc.get_ids().iter().enumerate() {
                ids[[i, j]] = i64::from(*id);
            }
        }
        Ok(ids)
    }

    /// Un-normalised text embeddings `[N, D]` of `prompts`.
    pub fn embed(&self, prompts: &[String]) -> Result<Array2<f32>, Error> {
        let ids = self.tokenize(prompts)?;
        let mut out = Array2::<f32>::zeros((prompts.len(), self.embed_dim));
        for start in (0..prompts.len()).step_by(BATCH) {
            let end = (start + BATCH).min(prompts.len());
            let chunk = ids.slice(ndarray::s![start..end, ..]).to_owned();
            let res = self.encoder.run(vec![tensor(chunk)])?;
            let emb = res
                .into_iter()
                .next()
                .and_then(|a| a.into_dimensionality::<ndarray::Ix2>().ok())
                .filter(|a| a.dim() == (end - start, self.embed_dim))
                .ok_or_else(|| Error::Shape {
                    role: "text",
                    message: format!("expected output [{}, {}]", end - start, self.embed_dim),
                })?;
            out.slice_mut(ndarray::s![start..end, ..]).assign(&emb);
        }
        Ok(out)
    }
}
