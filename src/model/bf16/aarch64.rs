//! The 64-bit Arm bf16 kernel: ARMv8.6's BF16 extension (`bfdot`; Neoverse
//! V1 and later, Cortex-X2 / A710 and later; not Jetson Orin's A78AE).
//!
//! Rust's intrinsics for `bfdot` are not stable yet; the instruction is
//! written as inline assembly, one per call, scheduled like an intrinsic.
//! Its sums are not rounded as IEEE additions are (Arm's BFDOT rounds its
//! pair sum to odd unless the CPU has FEAT_EBF16), so its results differ
//! from the portable kernel's in the last bits; the check allows for that.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{run_with, Product, Tile, PAIR, PANEL};

pub(super) fn has_bf16() -> bool {
    std::arch::is_aarch64_feature_detected!("bf16")
}

/// # Safety
/// The CPU has the BF16 extension; the operands are checked.
#[target_feature(enable = "neon,bf16")]
pub(super) unsafe fn run_bf16(p: &Product<'_>, y: &mut [f32]) {
    // SAFETY: this function has the instructions `Dot` uses.
    unsafe { run_with::<Dot>(p, y) }
}

/// 4 rows × 1 panel: 16 accumulators of 4 f32 lanes, 4 weight registers
/// (4 columns × a pair each) and the 4 rows' pairs in one register.
struct Dot;

impl Tile for Dot {
    const ROWS: usize = 4;
    const PANELS: usize = 1;

    #[inline(always)]
    unsafe fn tile(_np: usize, x: *const u16, w: *const u16, pairs: usize, acc: *mut f32) {
        // SAFETY: called from `run_bf16` (the trait's contract).
        unsafe { dot_tile(x, w, pairs, acc) }
    }
}

/// `acc + w[c][0] · a[L][0] + w[c][1] · a[L][1]` for the 4 columns `c` of `w`.
#[target_feature(enable = "neon,bf16")]
#[inline]
unsafe fn bfdot<const L: i32>(mut acc: float32x4_t, w: uint16x8_t, a: uint16x8_t) -> float32x4_t {
    // SAFETY: a register-only instruction of the BF16 extension, which this
    // function is compiled for.
    unsafe {
        asm!(
            "bfdot {acc:v}.4s, {w:v}.8h, {a:v}.2h[{l}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

#[target_feature(enable = "neon,bf16")]
#[inline]
unsafe fn dot_tile(x: *const u16, w: *const u16, pairs: usize, acc: *mut f32) {
    const ROWS: usize = Dot::ROWS;
    let mut c = [[vdupq_n_f32(0.0); 4]; ROWS];
    // SAFETY: `x` holds `pairs × ROWS × PAIR` values and `w` one panel of
    // `pairs × PANEL × PAIR` (the trait's contract); every read is within them.
    unsafe {
        for p in 0..pairs {
            let a = vld1q_u16(x.add(p * ROWS * PAIR));
            let wp = w.add(p * PANEL * PAIR);
            let b = [
                vld1q_u16(wp),
                vld1q_u16(wp.add(8)),
                vld1q_u16(wp.add(16)),
                vld1q_u16(wp.add(24)),
            ];
            for q in 0..4 {
                c[0][q] = bfdot::<0>(c[0][q], b[q], a);
                c[1][q] = bfdot::<1>(c[1][q], b[q], a);
                c[2][q] = bfdot::<2>(c[2][q], b[q], a);
                c[3][q] = bfdot::<3>(c[3][q], b[q], a);
            }
        }
        for (r, c) in c.iter().enumerate() {
            for (q, c) in c.iter().enumerate() {
                vst1q_f32(acc.add(r * PANEL + q * 4), *c);
            }
        }
    }
}
