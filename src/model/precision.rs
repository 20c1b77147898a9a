//! The arithmetic the token encoder runs in, and which linear layers keep f32.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Arithmetic precision of the token encoder's plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// As exported: the reference numbers (the default).
    #[default]
    F32,
    /// Half precision weights and activations (tract's `f32_to_f16`): native
    /// f16 kernels on ARMv8.2+ (Jetson Orin, Cortex-A76 and later); elsewhere
    /// tract emulates it, slower than f32. Maps move slightly (`bench --precision f16` measures it).
    F16,
    /// The linear layers in 8-bit integers: weights per output channel,
    /// activations per row at run time, exact i32 sums (AVX-512 VNNI,
    /// AVX-VNNI, Arm dot product; AVX2 is slower than f32). Layer norms,
    /// softmax, GELU, attention and the final projection stay f32, and so do
    /// the layers `f32_layers` names.
    Int8,
    /// The linear layers in bfloat16 with f32 sums, where the CPU has bf16
    /// dot products (AVX-512 BF16, Arm BF16); f32 elsewhere, with a warning.
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// Whether the linear layers are lowered from f32 by this crate's own
    /// kernels ([`super::int8`], [`super::bf16`]), layer by layer.
    pub fn lowers_linear_layers(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Bf16)
    }
}

/// How the token encoder computes: its precision and, for int8 and bf16,
/// the linear layers kept in f32.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Numerics {
    /// The precision.
    pub precision: Precision,
    /// Linear layers kept in f32 (int8 and bf16 only).
    pub f32_layers: F32Layers,
}

impl From<Precision> for Numerics {
    fn from(precision: Precision) -> Self {
        Self {
            precision,
            f32_layers: F32Layers::default(),
        }
    }
}

impl fmt::Display for Numerics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.precision)?;
        if self.precision.lowers_linear_layers() && !self.f32_layers.patterns().is_empty() {
            write!(f, " (f32: {})", self.f32_layers)?;
        }
        Ok(())
    }
}

/// What a loaded encoder runs in: the numerics asked for and what this CPU
/// made of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncoderNumerics {
    /// The precision asked for.
    pub asked: Precision,
    /// The precision the linear layers run in (bf16 on a CPU without bf16
    /// dot products runs f32).
    pub running: Precision,
    /// The kernel of the int8 or bf16 layers ("avx512-vnni", "arm-dotprod", …).
    pub kernel: Option<String>,
    /// Linear layers (by name, once each) in the reduced precision.
    pub lowered: Vec<String>,
    /// Linear layers kept in f32.
    pub kept: Vec<String>,
    /// A warning for the operator: what was asked for and could not be given,
    /// or will be slow.
    pub warning: Option<String>,
}

impl fmt::Display for EncoderNumerics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.running)?;
        if self.running.lowers_linear_layers() {
            write!(
                f,
                " ({} kernel): {} linear layers in {}, f32: {}",
                self.kernel.as_deref().unwrap_or("no"),
                self.lowered.len(),
                self.running,
                self.kept.join(", ")
            )?;
        }
        if self.asked != self.running {
            write!(f, " ({} asked)", self.asked)?;
        }
        Ok(())
    }
}

/// The layer that always stays f32: the final projection into the joint
/// embedding space, whose outputs are compared with the text prototypes.
pub const PROJECTION: &str = "proj";

/// The linear layers an int8 or bf16 encoder keeps in f32, by name
/// ([`layer_name`]) or glob pattern (`blocks.11.*`, `*.mlp.c_proj`); the
/// final projection always.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct F32Layers {
    patterns: Vec<String>,
}

/// A pattern in `f32_layers` that is not a valid glob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("f32 layer pattern {pattern:?}: {message}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// What is wrong with it.
    pub message: String,
}

impl F32Layers {
    /// The layers matching any of `patterns` (checked: each a valid glob).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.as_ref().trim().to_string()).collect();
        for p in &patterns {
            glob::Pattern::new(p).map_err(|e| PatternError {
                pattern: p.clone(),
                message: e.to_string(),
            })?;
            if p.is_empty() {
                return Err(PatternError {
                    pattern: p.clone(),
                    message: "empty".into(),
                });
            }
        }
        Ok(Self { patterns })
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether layer `name` stays f32.
    pub fn keeps(&self, name: &str) -> bool {
        name == PROJECTION || self.matching(name).is_some()
    }

    /// The first pattern matching `name`.
    fn matching(&self, name: &str) -> Option<&str> {
        self.patterns
            .iter()
            .find(|p| glob::Pattern::new(p).is_ok_and(|g| g.matches(name)))
            .map(String::as_str)
    }

    /// The patterns that match none of `layers` (a typo would otherwise
    /// leave a layer the user meant to protect in int8, silently).
    pub fn unmatched<'a>(&'a self, layers: &[String]) -> Vec<&'a str> {
        self.patterns
            .iter()
            .filter(|p| glob::Pattern::new(p).is_ok_and(|g| !layers.iter().any(|l| g.matches(l))))
            .map(String::as_str)
            .collect()
    }
}

impl fmt::Display for F32Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PROJECTION)?;
        for p in &self.patterns {
            write!(f, ", {p}")?;
        }
        Ok(())
    }
}

/// The linear layers of an exported encoder with `layers` transformer
/// blocks, by name ([`layer_name`]), in graph order: the names
/// `f32_layers` takes.
pub fn linear_layers(layers: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..layers)
        .flat_map(|i| {
            ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"].map(|l| format!("blocks.{i}.{l}"))
        })
        .collect();
    names.push(PROJECTION.to_string());
    names
}

/// The name of a linear layer of an exported encoder, from its ONNX node's
/// name: the PyTorch module's path, as open_clip names it
/// (`blocks.3.attn.in_proj`, `blocks.3.attn.out_proj`, `blocks.3.mlp.c_fc`,
/// `blocks.3.mlp.c_proj`, `proj`). tract's suffixes (`.split-…`) and the
/// operator's own name are dropped; a name of another shape is kept whole.
pub fn layer_name(node: &str) -> String {
    let Some(at) = node.find("/MatMul") else {
        return node.trim_start_matches('/').to_string();
    };
    let module = node[..at].trim_start_matches('/').replace('/', ".");
    if module.is_empty() {
        PROJECTION.to_string()
    } else if module.ends_with(".attn") {
        // nn.MultiheadAttention's input projection (queries, keys and values).
        format!("{module}.in_proj")
    } else {
        module
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_named_after_their_modules() {
        assert_eq!(layer_name("/blocks.0/attn/MatMul"), "blocks.0.attn.in_proj");
        assert_eq!(
            layer_name("/blocks.0/attn/MatMul.split-1-over-3"),
            "blocks.0.attn.in_proj"
        );
        assert_eq!(
            layer_name("/blocks.11/attn/out_proj/MatMul"),
            "blocks.11.attn.out_proj"
        );
        assert_eq!(layer_name("/blocks.2/mlp/c_fc/MatMul"), "blocks.2.mlp.c_fc");
        assert_eq!(
            layer_name("/blocks.2/mlp/c_proj/MatMul.fix-a"),
            "blocks.2.mlp.c_proj"
        );
        assert_eq!(layer_name("/MatMul"), "proj");
        assert_eq!(layer_name("something_else"), "something_else");
    }

    #[test]
    fn the_projection_always_stays_f32_and_patterns_add_layers() {
        let none = F32Layers::default();
        assert!(none.keeps("proj"));
        assert!(!none.keeps("blocks.0.mlp.c_fc"));
        let some = F32Layers::new(&["blocks.1.*", "*.c_proj"]).unwrap();
        assert!(some.keeps("blocks.1.attn.in_proj"));
        assert!(some.keeps("blocks.0.mlp.c_proj"));
        assert!(!some.keeps("blocks.0.mlp.c_fc"));
        assert!(!some.keeps("blocks.11.mlp.c_fc"), "blocks.1.* is not blocks.11");
        assert_eq!(some.to_string(), "proj, blocks.1.*, *.c_proj");
        let layers = vec!["blocks.0.mlp.c_proj".to_string(), "proj".to_string()];
        assert_eq!(some.unmatched(&layers), vec!["blocks.1.*"]);
        assert!(F32Layers::new(&["blocks.[1"]).is_err());
        assert!(F32Layers::new(&[" "]).is_err());
    }
}
