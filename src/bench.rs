//! Benchmark arithmetic: how much work each stage is (FLOPs), robust summary
//! statistics, and the process's memory high-water mark.
//!
//! The timing loop itself lives in `cli::bench`; this module holds the parts
//! that can be unit-tested without running a model.

use crate::model::{Architecture, Outputs};

/// CLIP's ViT MLP hidden width is 4 × the model width (open_clip's default
/// `mlp_ratio`, used by every pack the exporter writes).
const MLP_RATIO: f64 = 4.0;

/// Floating-point operations (multiply and add counted separately) of one token
/// encoder pass over `batch` sequences of `seq` tokens: per layer and token the
/// q/k/v and output projections (8·w²), the MLP (2·2·w·4w) and attention
/// (2·2·seq·w); then the class-token projection. Layer norms, softmax and GELU
/// are left out (well under 1 %). A pass computing the class embedding alone
/// ([`Outputs::First`]) needs only the keys and values (4·w²) of the other
/// tokens in the last layer.
pub fn encoder_flops(arch: &Architecture, batch: usize, seq: usize, outputs: Outputs) -> f64 {
    let (w, l, b, t) = (
        arch.vision_width as f64,
        arch.vision_layers as f64,
        batch as f64,
        seq as f64,
    );
    let per_token_layer = 8.0 * w * w + 4.0 * MLP_RATIO * w * w + 4.0 * t * w;
    let per_sequence = match outputs {
        Outputs::All => t * l * per_token_layer,
        Outputs::First => t * (l - 1.0) * per_token_layer + per_token_layer + (t - 1.0) * 4.0 * w * w,
    };
    b * per_sequence + b * 2.0 * w * arch.embed_dim as f64
}

/// FLOPs of the patch embedding (a strided convolution) of one image.
pub fn embed_flops(arch: &Architecture) -> f64 {
    let k = 3.0 * (arch.patch_size * arch.patch_size) as f64;
    2.0 * k * arch.vision_width as f64 * (arch.grid * arch.grid) as f64
}

/// Median of `samples` (mean of the middle two for an even count); `None` when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Resident-set figures of this process, from `/proc/self/status` (Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Current resident set, bytes (`VmRSS`).
    pub rss: u64,
    /// Highest resident set since start or the last [`reset_peak`], bytes (`VmHWM`).
    pub peak: u64,
}

/// Read [`Memory`]; `None` where `/proc` is not available.
pub fn memory() -> Option<Memory> {
    parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// Reset the peak-RSS counter to the current RSS (writes `5` to
/// `/proc/self/clear_refs`), so that set-up work (e.g. the text encoder, which
/// the station never loads) does not count. Returns false where unsupported.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vit_b16_plus_240() -> Architecture {
        Architecture {
            image_size: 240,
            patch_size: 16,
            grid: 15,
            tokens: 226,
            vision_width: 896,
            vision_layers: 12,
            vision_heads: 14,
            embed_dim: 640,
            text_width: 640,
            text_layers: 12,
            text_heads: 10,
            context_length: 77,
            vocab_size: 49408,
        }
    }

    #[test]
    fn winclip_image_is_about_two_thirds_of_a_teraflop() {
        // The figure: ≈ 0.67 TFLOP per image, windows ≈ 90 %.
        let a = vit_b16_plus_240();
        let image = encoder_flops(&a, 1, 226, Outputs::All) + embed_flops(&a);
        let windows = |o| encoder_flops(&a, 196, 5, o) + encoder_flops(&a, 169, 10, o);
        let total = image + windows(Outputs::All);
        assert!((0.6e12..0.75e12).contains(&total), "{total:e}");
        assert!(windows(Outputs::All) / total > 0.85);
        // The class embedding alone skips most of the last layer for all
        // tokens but one: 6–7 % of the windows' work.
        let saved = 1.0 - windows(Outputs::First) / windows(Outputs::All);
        assert!((0.055..0.07).contains(&saved), "{saved}");
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn status_fields_are_read_in_bytes() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(
            parse_status(s),
            Some(Memory {
                rss: 1024 * 1024,
                peak: 2048 * 1024
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let m = memory().expect("/proc/self/status on Linux");
        assert!(m.rss > 0 && m.peak >= m.rss);
    }
}
