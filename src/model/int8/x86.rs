//! The x86-64 int8 kernels: AVX-512 VNNI, AVX-VNNI (the same instruction on
//! 256-bit registers: Alder Lake and later clients, Atom-class N100 / N97
//! industrial PCs) and AVX2.

use std::arch::x86_64::*;

use super::{row_scale, run_with, Product, Tile, TileArgs, GROUP, PANEL};

pub(super) fn has_avx512_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("fma")
}

pub(super) fn has_avx_vnni() -> bool {
    has_avx2() && is_x86_feature_detected!("avxvnni")
}

pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI; the operands are checked.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn run_avx512_vnni(p: &Product<'_>, y: &mut [f32]) {
    // SAFETY: this function has the instructions `Vnni` uses.
    unsafe { run_with::<Vnni>(p, y) }
}

/// # Safety
/// The CPU has AVX2, FMA and AVX-VNNI; the operands are checked.
#[target_feature(enable = "avx2,fma,avxvnni")]
pub(super) unsafe fn run_avx_vnni(p: &Product<'_>, y: &mut [f32]) {
    // SAFETY: this function has the instructions `AvxVnni` uses.
    unsafe { run_with::<AvxVnni>(p, y) }
}

/// # Safety
/// The CPU has AVX2 and FMA; the operands are checked.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn run_avx2(p: &Product<'_>, y: &mut [f32]) {
    // SAFETY: this function has the instructions `Avx2` uses.
    unsafe { run_with::<Avx2>(p, y) }
}

/// 6 rows × up to 4 panels (64 columns): 24 accumulators of 16 i32 lanes,
/// 4 weight registers and one broadcast row, of the 32 registers. Per group
/// of 4 bytes: 4 loads, 6 broadcasts and 24 `vpdpbusd` (u8 × i8, summed
/// in fours into i32: the activations are the unsigned side).
struct Vnni;

impl Tile for Vnni {
    const ROWS: usize = 6;
    const PANELS: usize = 4;
    const BIAS: i32 = 0;

    #[inline(always)]
    unsafe fn tile(t: &TileArgs) {
        // SAFETY: called from `run_avx512_vnni` (the trait's contract).
        unsafe {
            match t.np {
                4 => vnni_tile::<4>(t),
                3 => vnni_tile::<3>(t),
                2 => vnni_tile::<2>(t),
                _ => vnni_tile::<1>(t),
            }
        }
    }

    #[inline(always)]
    unsafe fn quantise_row(xs: &[f32], out: &mut [u8], per_block: usize, row: usize) -> (i32, f32) {
        // SAFETY: called from `run_avx512_vnni` (the trait's contract).
        unsafe { quantise_row_avx512(xs, out, per_block, row) }
    }
}

/// [`Tile::quantise_row`] sixteen values at a time, with the portable
/// version's operations in the same order (the same bits).
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn quantise_row_avx512(xs: &[f32], out: &mut [u8], per_block: usize, row: usize) -> (i32, f32) {
    const LANES: usize = 16;
    let k = xs.len();
    let p = xs.as_ptr();
    let tail = k % LANES;
    let tail_mask: __mmask16 = (1u16 << tail).wrapping_sub(1);
    let zero = _mm512_setzero_ps();
    let (mut lo, mut hi) = (zero, zero);
    let mut bad: __mmask16 = 0;
    // SAFETY: every load is within `xs` (the tail's is masked).
    unsafe {
        let mut i = 0;
        while i + LANES <= k {
            let v = _mm512_loadu_ps(p.add(i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            // v − v is NaN exactly where v is infinite or NaN.
            let d = _mm512_sub_ps(v, v);
            bad |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(d, d);
            i += LANES;
        }
        if tail > 0 {
            // Zeros in the other lanes: the range holds 0 anyway.
            let v = _mm512_maskz_loadu_ps(tail_mask, p.add(i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            let d = _mm512_sub_ps(v, v);
            bad |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(d, d);
        }
    }
    let (zero_point, scale) = row_scale(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi), bad == 0);
    if scale.is_nan() {
        return (zero_point, scale);
    }
    let inverse = _mm512_set1_ps(1.0 / scale);
    let z = _mm512_set1_ps(zero_point as f32);
    let (floor, ceiling) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    let groups = k.div_ceil(GROUP);
    // SAFETY: loads as above; every store is at a group `g < groups` of row
    // `row`, within `out` (groups × per_block × GROUP bytes).
    unsafe {
        let mut i = 0;
        while i < k {
            let v = if i + LANES <= k {
                _mm512_loadu_ps(p.add(i))
            } else {
                _mm512_maskz_loadu_ps(tail_mask, p.add(i))
            };
            let q = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
                v, inverse,
            ));
            let q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, z), floor), ceiling);
            let bytes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q));
            let quads: [u32; 4] = std::mem::transmute(bytes);
            let g0 = i / GROUP;
            for (j, quad) in quads.iter().enumerate().take(groups - g0) {
                out.as_mut_ptr()
                    .add(((g0 + j) * per_block + row) * GROUP)
                    .cast::<u32>()
                    .write_unaligned(*quad);
            }
            i += LANES;
        }
    }
    (zero_point, scale)
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn vnni_tile<const NP: usize>(t: &TileArgs) {
    const ROWS: usize = Vnni::ROWS;
    let (x, w, acc) = (t.x, t.w, t.acc);
    let mut c = [[_mm512_setzero_si512(); NP]; ROWS];
    // SAFETY: `x` holds `groups × ROWS × GROUP` bytes, `w` `NP` panels of
    // `groups × PANEL × GROUP` `stride` apart, `acc` `ROWS × NP × PANEL`
    // sums (the trait's contract); every access below is within them.
    unsafe {
        for g in 0..t.groups {
            let mut b = [_mm512_setzero_si512(); NP];
            for (p, b) in b.iter_mut().enumerate() {
                *b = _mm512_loadu_si512(w.add(p * t.stride + g * PANEL * GROUP).cast());
            }
            let xg = x.add(g * ROWS * GROUP);
            for (r, c) in c.iter_mut().enumerate() {
                let a = _mm512_set1_epi32(xg.add(r * GROUP).cast::<i32>().read_unaligned());
                for (c, b) in c.iter_mut().zip(&b) {
                    *c = _mm512_dpbusd_epi32(*c, a, *b);
                }
            }
        }
        for (r, c) in c.iter().enumerate() {
            for (p, c) in c.iter().enumerate() {
                let at = acc.add((r * NP + p) * PANEL);
                let c = if t.accumulate {
                    _mm512_add_epi32(*c, _mm512_loadu_si512(at.cast()))
                } else {
                    *c
                };
                _mm512_storeu_si512(at.cast(), c);
            }
        }
    }
}

/// 6 rows × 1 panel on 256-bit registers: 12 accumulators of 8 i32 lanes,
/// 2 weight registers and a broadcast row, of the 16 registers. Per group:
/// 2 loads, 6 broadcasts, 12 `vpdpbusd`.
struct AvxVnni;

impl Tile for AvxVnni {
    const ROWS: usize = 6;
    const PANELS: usize = 1;
    const BIAS: i32 = 0;

    #[inline(always)]
    unsafe fn tile(t: &TileArgs) {
        // SAFETY: called from `run_avx_vnni` (the trait's contract).
        unsafe { avx_vnni_tile(t) }
    }

    #[inline(always)]
    unsafe fn quantise_row(xs: &[f32], out: &mut [u8], per_block: usize, row: usize) -> (i32, f32) {
        // SAFETY: called from `run_avx_vnni`, which has AVX2.
        unsafe { quantise_row_avx2(xs, out, per_block, row) }
    }
}

#[target_feature(enable = "avx2,fma,avxvnni")]
#[inline]
unsafe fn avx_vnni_tile(t: &TileArgs) {
    const ROWS: usize = AvxVnni::ROWS;
    let (x, w, acc) = (t.x, t.w, t.acc);
    let mut c = [[_mm256_setzero_si256(); 2]; ROWS];
    // SAFETY: as in `vnni_tile`, for one panel.
    unsafe {
        for g in 0..t.groups {
            let wg = w.add(g * PANEL * GROUP);
            let b = [
                _mm256_loadu_si256(wg.cast()),
                _mm256_loadu_si256(wg.add(32).cast()),
            ];
            let xg = x.add(g * ROWS * GROUP);
            for (r, c) in c.iter_mut().enumerate() {
                let a = _mm256_set1_epi32(xg.add(r * GROUP).cast::<i32>().read_unaligned());
                c[0] = _mm256_dpbusd_avx_epi32(c[0], a, b[0]);
                c[1] = _mm256_dpbusd_avx_epi32(c[1], a, b[1]);
            }
        }
        for (r, c) in c.iter().enumerate() {
            for (h, c) in c.iter().enumerate() {
                store_sums(acc.add(r * PANEL + 8 * h), *c, t.accumulate);
            }
        }
    }
}

/// [`Tile::quantise_row`] eight values at a time, with the portable
/// version's operations in the same order (the same bits).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn quantise_row_avx2(xs: &[f32], out: &mut [u8], per_block: usize, row: usize) -> (i32, f32) {
    const LANES: usize = 8;
    let k = xs.len();
    let p = xs.as_ptr();
    let whole = k - k % LANES;
    let zero = _mm256_setzero_ps();
    let (mut lo, mut hi) = (zero, zero);
    let mut bad = 0;
    // SAFETY: every load is within `xs`.
    unsafe {
        let mut i = 0;
        while i < whole {
            let v = _mm256_loadu_ps(p.add(i));
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
            // v − v is NaN exactly where v is infinite or NaN.
            let d = _mm256_sub_ps(v, v);
            bad |= _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(d, d));
            i += LANES;
        }
    }
    let lanes = |v: __m256| -> [f32; LANES] {
        // SAFETY: a register reinterpreted as its eight lanes.
        unsafe { std::mem::transmute(v) }
    };
    let mut lo = lanes(lo).into_iter().fold(0f32, |a, b| if b < a { b } else { a });
    let mut hi = lanes(hi).into_iter().fold(0f32, |a, b| if b > a { b } else { a });
    let mut finite = bad == 0;
    for &v in &xs[whole..] {
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
        finite &= v.is_finite();
    }
    let (zero_point, scale) = row_scale(lo, hi, finite);
    if scale.is_nan() {
        return (zero_point, scale);
    }
    let inverse = 1.0 / scale;
    let (vinverse, z) = (_mm256_set1_ps(inverse), _mm256_set1_ps(zero_point as f32));
    let (floor, ceiling) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
    // Bytes 0, 4, 8 and 12 of each 128-bit half: one group of four each.
    let low_bytes = _mm256_setr_epi8(
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    // SAFETY: loads as above; every store is at group `g < k / GROUP` of row
    // `row`, within `out` (groups × per_block × GROUP bytes).
    unsafe {
        let mut i = 0;
        while i < whole {
            let v = _mm256_loadu_ps(p.add(i));
            let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                v, vinverse,
            ));
            let q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, z), floor), ceiling);
            let bytes = _mm256_shuffle_epi8(_mm256_cvtps_epi32(q), low_bytes);
            let g = i / GROUP;
            let o = out.as_mut_ptr();
            o.add((g * per_block + row) * GROUP)
                .cast::<i32>()
                .write_unaligned(_mm256_extract_epi32::<0>(bytes));
            o.add(((g + 1) * per_block + row) * GROUP)
                .cast::<i32>()
                .write_unaligned(_mm256_extract_epi32::<4>(bytes));
            i += LANES;
        }
    }
    for (i, &v) in xs.iter().enumerate().skip(whole) {
        out[((i / GROUP) * per_block + row) * GROUP + i % GROUP] =
            super::quantised(v, inverse, zero_point as f32);
    }
    (zero_point, scale)
}

/// 2 rows × 1 panel without VNNI: each group's 4 weight bytes per column
/// widened to 16 bits, the row's 4 bytes too, `vpmaddwd` sums them in
/// pairs; the pair sums are added at the end. 8 accumulators, 4 weight
/// registers and a row, of the 16 registers.
struct Avx2;

impl Tile for Avx2 {
    const ROWS: usize = 2;
    const PANELS: usize = 1;
    const BIAS: i32 = 0;

    #[inline(always)]
    unsafe fn tile(t: &TileArgs) {
        // SAFETY: called from `run_avx2` (the trait's contract).
        unsafe { avx2_tile(t) }
    }

    #[inline(always)]
    unsafe fn quantise_row(xs: &[f32], out: &mut [u8], per_block: usize, row: usize) -> (i32, f32) {
        // SAFETY: called from `run_avx2`, which has AVX2.
        unsafe { quantise_row_avx2(xs, out, per_block, row) }
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_tile(t: &TileArgs) {
    const ROWS: usize = Avx2::ROWS;
    let (x, w, acc, groups) = (t.x, t.w, t.acc, t.groups);
    // Per row, four registers of 4 columns × 2 pair sums.
    let mut c = [[_mm256_setzero_si256(); 4]; ROWS];
    // SAFETY: as in `vnni_tile`, for one panel.
    unsafe {
        for g in 0..groups {
            let wg = w.add(g * PANEL * GROUP);
            let mut b = [_mm256_setzero_si256(); 4];
            for (q, b) in b.iter_mut().enumerate() {
                *b = _mm256_cvtepi8_epi16(_mm_loadu_si128(wg.add(q * 16).cast()));
            }
            let xg = x.add(g * ROWS * GROUP);
            for (r, c) in c.iter_mut().enumerate() {
                let quad = xg.add(r * GROUP).cast::<i32>().read_unaligned();
                let a = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(quad)));
                for (c, b) in c.iter_mut().zip(&b) {
                    *c = _mm256_add_epi32(*c, _mm256_madd_epi16(a, *b));
                }
            }
        }
        for (r, c) in c.iter().enumerate() {
            // [c0 c0' c1 c1' | c2 c2' c3 c3'] and the next four columns:
            // pairwise sums, then the 64-bit halves back in column order.
            for half in 0..2 {
                let s = _mm256_hadd_epi32(c[2 * half], c[2 * half + 1]);
                let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(s);
                store_sums(acc.add(r * PANEL + half * 8), s, t.accumulate);
            }
        }
    }
}

/// Store 8 sums at `at`, or add them to those there.
///
/// # Safety
/// `at` addresses 8 i32.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_sums(at: *mut i32, sums: __m256i, accumulate: bool) {
    // SAFETY: the caller's contract.
    unsafe {
        let sums = if accumulate {
            _mm256_add_epi32(sums, _mm256_loadu_si256(at.cast()))
        } else {
            sums
        };
        _mm256_storeu_si256(at.cast(), sums);
    }
}
