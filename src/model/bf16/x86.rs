//! The x86-64 bf16 kernel: AVX-512 BF16.

use std::arch::x86_64::*;

use super::{run_with, Product, Tile, PAIR, PANEL};

pub(super) fn has_avx512_bf16() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16")
}

/// # Safety
/// The CPU has AVX-512 F, BW, VL and BF16; the operands are checked.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn run_avx512_bf16(p: &Product<'_>, y: &mut [f32]) {
    // SAFETY: this function has the instructions `Bf16` uses.
    unsafe { run_with::<Bf16>(p, y) }
}

/// 6 rows × up to 4 panels: 24 accumulators of 16 f32 lanes; per pair of
/// the contracted axis, 4 loads, 6 broadcasts and 24 `vdpbf16ps`.
struct Bf16;

impl Tile for Bf16 {
    const ROWS: usize = 6;
    const PANELS: usize = 4;

    #[inline(always)]
    unsafe fn tile(np: usize, x: *const u16, w: *const u16, pairs: usize, acc: *mut f32) {
        // SAFETY: called from `run_avx512_bf16` (the trait's contract).
        unsafe {
            match np {
                4 => bf16_tile::<4>(x, w, pairs, acc),
                3 => bf16_tile::<3>(x, w, pairs, acc),
                2 => bf16_tile::<2>(x, w, pairs, acc),
                _ => bf16_tile::<1>(x, w, pairs, acc),
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn bf16_tile<const NP: usize>(x: *const u16, w: *const u16, pairs: usize, acc: *mut f32) {
    const ROWS: usize = Bf16::ROWS;
    let panel = pairs * PANEL * PAIR;
    let mut c = [[_mm512_setzero_ps(); NP]; ROWS];
    // SAFETY: `x` holds `pairs × ROWS × PAIR` values and `w` `NP` panels of
    // `pairs × PANEL × PAIR` (the trait's contract); every read is within them.
    unsafe {
        for p in 0..pairs {
            let mut b = [_mm512_setzero_si512(); NP];
            for (q, b) in b.iter_mut().enumerate() {
                *b = _mm512_loadu_si512(w.add(q * panel + p * PANEL * PAIR).cast());
            }
            let xp = x.add(p * ROWS * PAIR);
            for (r, c) in c.iter_mut().enumerate() {
                let a = _mm512_set1_epi32(xp.add(r * PAIR).cast::<i32>().read_unaligned());
                for (c, b) in c.iter_mut().zip(&b) {
                    *c = _mm512_dpbf16_ps(
                        *c,
                        std::mem::transmute::<__m512i, __m512bh>(a),
                        std::mem::transmute::<__m512i, __m512bh>(*b),
                    );
                }
            }
        }
        for (r, c) in c.iter().enumerate() {
            for (q, c) in c.iter().enumerate() {
                _mm512_storeu_ps(acc.add((r * NP + q) * PANEL), *c);
            }
        }
    }
}
