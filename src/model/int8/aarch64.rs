//! The 64-bit Arm int8 kernel: the dot-product extension (ARMv8.2+: Jetson
//! Orin's Cortex-A78AE, Cortex-A76 and later, Neoverse).
//!
//! Rust's intrinsics for `sdot` are not stable yet; the instruction is
//! written as inline assembly, one instruction per call, which the compiler
//! schedules like an intrinsic.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{run_with, Product, Tile, TileArgs, GROUP, PANEL};

pub(super) fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// # Safety
/// The CPU has the dot-product extension; the operands are checked.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn run_dotprod(p: &Product<'_>, y: &mut [f32]) {
    // SAFETY: this function has the instructions `Dot` uses.
    unsafe { run_with::<Dot>(p, y) }
}

/// 4 rows × 1 panel: 16 accumulators of 4 i32 lanes, 4 weight registers and
/// the 4 rows' bytes in one register. `sdot` multiplies signed bytes by
/// signed bytes, so the activations (0…255) are read as `q − 128` (their top
/// bit flipped) and the epilogue adds `128 · Σ w` back ([`Tile::BIAS`]).
struct Dot;

impl Tile for Dot {
    const ROWS: usize = 4;
    const PANELS: usize = 1;
    const BIAS: i32 = 128;

    #[inline(always)]
    unsafe fn tile(t: &TileArgs) {
        // SAFETY: called from `run_dotprod` (the trait's contract).
        unsafe { dot_tile(t) }
    }
}

/// `acc + Σ_b w[c][b] · a[L][b]` for the 4 columns `c` of `w`, with the
/// 4 bytes of row `L` of `a`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot<const L: i32>(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: a register-only instruction of the dot-product extension,
    // which this function is compiled for.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn dot_tile(t: &TileArgs) {
    const ROWS: usize = Dot::ROWS;
    let (x, w, acc, groups) = (t.x, t.w, t.acc, t.groups);
    let flip = vdupq_n_u8(0x80);
    let mut c = [[vdupq_n_s32(0); 4]; ROWS];
    // SAFETY: `x` holds `groups × ROWS × GROUP` bytes and `w` one panel of
    // `groups × PANEL × GROUP` (the trait's contract); every read is within them.
    unsafe {
        for g in 0..groups {
            let a = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x.add(g * ROWS * GROUP)), flip));
            let wg = w.add(g * PANEL * GROUP);
            let b = [
                vld1q_s8(wg),
                vld1q_s8(wg.add(16)),
                vld1q_s8(wg.add(32)),
                vld1q_s8(wg.add(48)),
            ];
            for q in 0..4 {
                c[0][q] = sdot::<0>(c[0][q], b[q], a);
                c[1][q] = sdot::<1>(c[1][q], b[q], a);
                c[2][q] = sdot::<2>(c[2][q], b[q], a);
                c[3][q] = sdot::<3>(c[3][q], b[q], a);
            }
        }
        for (r, c) in c.iter().enumerate() {
            for (q, c) in c.iter().enumerate() {
                let at = acc.add(r * PANEL + q * 4);
                let c = if t.accumulate {
                    vaddq_s32(*c, vld1q_s32(at))
                } else {
                    *c
                };
                vst1q_s32(at, c);
            }
        }
    }
}
