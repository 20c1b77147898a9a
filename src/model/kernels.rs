//! The linear layers' kernels on this CPU: which there are, a check of each
//! against the portable reference, and a timing of each on the encoder's
//! shapes (`winclip-edge model kernels`).
//!
//! The check is what a new board needs before it judges parts: every int8
//! kernel must give the portable kernel's bits (their sums are exact), every
//! bf16 kernel its value within bf16's rounding.

use std::time::Instant;

use serde::Serialize;

use super::bf16::{self, Bf16Matrix};
use super::dense;
use super::int8::{self, Int8Matrix};

/// One kernel's check.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    /// "int8" or "bf16".
    pub precision: &'static str,
    /// The kernel's name.
    pub kernel: String,
    /// Whether the encoder uses it on this CPU.
    pub chosen: bool,
    /// Products compared.
    pub products: usize,
    /// What differed, if anything did.
    pub failure: Option<String>,
}

/// Pseudo-random values in `[-scale, scale)` (a fixed sequence).
fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Shapes that leave partial blocks, panels and groups, and one of a real
/// encoder's contractions.
const CHECKED: [(usize, usize, usize); 5] = [
    (1, 4, 16),
    (7, 37, 50),
    (13, 64, 192),
    (30, 130, 97),
    (9, 896, 48),
];

/// Check every available kernel against the portable one.
pub fn check() -> Vec<KernelCheck> {
    let mut out = Vec::new();
    for kernel in int8::Kernel::available() {
        let mut failure = None;
        for (i, &(rows, k, n)) in CHECKED.iter().enumerate() {
            let w = values(k * n, 1 + i as u64, 0.5);
            let x = values(rows * k, 100 + i as u64, 3.0);
            let b = values(n, 200 + i as u64, 1.0);
            let Ok(m) = Int8Matrix::quantise(&w, k, n) else {
                failure = Some(format!("{rows} × {k} × {n}: cannot quantise"));
                break;
            };
            let (mut want, mut got) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            m.product_with(int8::Kernel::Portable, rows, &x, Some(&b), &mut want);
            m.product_with(kernel, rows, &x, Some(&b), &mut got);
            if let Some(j) = (0..want.len()).find(|&j| want[j].to_bits() != got[j].to_bits()) {
                failure = Some(format!(
                    "{rows} × {k} × {n}: output {j} is {} where the portable kernel gives {}",
                    got[j], want[j]
                ));
                break;
            }
        }
        out.push(KernelCheck {
            precision: "int8",
            kernel: kernel.to_string(),
            chosen: kernel == int8::Kernel::best(),
            products: CHECKED.len(),
            failure,
        });
    }
    for kernel in bf16::Kernel::available() {
        let mut failure = None;
        for (i, &(rows, k, n)) in CHECKED.iter().enumerate() {
            let w = values(k * n, 1 + i as u64, 0.5);
            let x = values(rows * k, 100 + i as u64, 3.0);
            let m = Bf16Matrix::new(&w, k, n);
            let (mut want, mut got) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            m.product_with(bf16::Kernel::Portable, rows, &x, None, &mut want);
            m.product_with(kernel, rows, &x, None, &mut got);
            // Within f32 rounding of sums of up to k products (the order of
            // the additions may differ by instruction set).
            let bound = |j: usize| 1e-5 * (k as f32) * want[j].abs().max(1.0);
            if let Some(j) = (0..want.len()).find(|&j| (want[j] - got[j]).abs() > bound(j) || got[j].is_nan())
            {
                failure = Some(format!(
                    "{rows} × {k} × {n}: output {j} is {} where the portable kernel gives {}",
                    got[j], want[j]
                ));
                break;
            }
        }
        out.push(KernelCheck {
            precision: "bf16",
            kernel: kernel.to_string(),
            chosen: Some(kernel) == bf16::Kernel::best(),
            products: CHECKED.len(),
            failure,
        });
    }
    out
}

/// One product timed.
#[derive(Debug, Clone, Serialize)]
pub struct KernelTiming {
    /// Rows × contraction × columns.
    pub shape: [usize; 3],
    /// "f32 gemm", "int8 avx512-vnni", …
    pub kernel: String,
    /// Median milliseconds of one product, on one thread.
    pub median_ms: f64,
    /// Multiply-adds per second, × 2 (GOP/s, comparable with GFLOP/s).
    pub gops: f64,
}

/// The linear layers of a window pass of ViT-B-16-plus-240 (98 windows of 5
/// tokens), the full image (226 tokens), and one MLP input layer of the
/// 3 × 3 windows' pass (85 × 10 tokens).
pub const ENCODER_SHAPES: [(usize, usize, usize); 8] = [
    (490, 896, 16),
    (490, 3584, 16),
    (490, 896, 896),
    (490, 896, 3584),
    (490, 3584, 896),
    (226, 896, 896),
    (226, 3584, 896),
    (850, 896, 3584),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Time every available kernel (and f32 `gemm`) on `shapes`, single-threaded,
/// median of `repeats` after a warm-up.
pub fn time(shapes: &[(usize, usize, usize)], repeats: usize) -> Vec<KernelTiming> {
    let mut out = Vec::new();
    let repeats = repeats.max(1);
    tract_linalg::multithread::multithread_tract_scope(
        tract_linalg::multithread::Executor::SingleThread,
        || {
            for &(rows, k, n) in shapes {
                let w = values(k * n, 7, 0.05);
                let x = values(rows * k, 8, 2.0);
                let mut y = vec![0f32; rows * n];
                let mut clock = |kernel: String, f: &mut dyn FnMut(&mut [f32])| {
                    f(&mut y);
                    let times = (0..repeats)
                        .map(|_| {
                            let t = Instant::now();
                            f(&mut y);
                            t.elapsed().as_secs_f64() * 1e3
                        })
                        .collect();
                    let ms = median(times);
                    out.push(KernelTiming {
                        shape: [rows, k, n],
                        kernel,
                        median_ms: ms,
                        gops: 2.0 * (rows * k * n) as f64 / (ms / 1e3) / 1e9,
                    });
                };
                clock("f32 gemm".into(), &mut |y| {
                    dense::product(rows, k, n, &x, &w, y, false)
                });
                if let Ok(m) = Int8Matrix::quantise(&w, k, n) {
                    // The portable kernels are the tests' reference, not contenders.
                    for kernel in int8::Kernel::available().into_iter().filter(|k| !k.is_portable()) {
                        clock(format!("int8 {kernel}"), &mut |y| {
                            m.product_with(kernel, rows, &x, None, y)
                        });
                    }
                }
                let m = Bf16Matrix::new(&w, k, n);
                if let Some(kernel) = bf16::Kernel::best() {
                    clock(format!("bf16 {kernel}"), &mut |y| {
                        m.product_with(kernel, rows, &x, None, y)
                    });
                }
            }
        },
    );
    out
}
