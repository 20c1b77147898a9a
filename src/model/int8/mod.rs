//! The encoder's linear layers in 8-bit integers (`precision = "int8"`).
//!
//! Weights are quantised once, when the encoder is loaded: symmetric, one
//! scale per output column, to −127…127. Activations are quantised at run
//! time, one scale and zero point per row (asymmetric, 0…255), so that every
//! token row uses the whole 8-bit range whatever its magnitude (dynamic
//! quantisation). The products are summed exactly in 32-bit integers, then
//!
//! `y[r][j] = s_r · s_j · (Σ_i q_r[i] · q_j[i] − z_r · Σ_i q_j[i]) + b[j]`
//!
//! with `s_r`, `z_r` the row's scale and zero point and `s_j` the column's
//! scale. The sums are exact and the rest is the same sequence of f32
//! operations everywhere, so every kernel gives the same bits: AVX-512 VNNI
//! (`vpdpbusd`) and AVX2 on x86-64, the dot-product extension (`sdot`) on
//! 64-bit Arm, and a portable one; the best the CPU has is chosen at run
//! time, as the f32 kernels are.
//!
//! Weights are packed in panels of [`PANEL`] columns, the contracted axis in
//! groups of [`GROUP`] bytes: panel `p`, group `g` holds `PANEL × GROUP` bytes,
//! column after column (one 512-bit register: 16 columns × 4 bytes). The
//! activations are packed in blocks of a kernel's rows the same way (row after
//! row within a group), so a kernel reads both operands in order.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::fmt;
use std::sync::OnceLock;

/// Output columns per packed weight panel.
pub(crate) const PANEL: usize = 16;
/// Bytes of the contracted axis summed by one lane of a dot-product instruction.
pub(crate) const GROUP: usize = 4;
/// The longest contraction whose sums cannot overflow an i32
/// (`k · 255 · 127 < 2³¹`).
pub(crate) const MAX_K: usize = 66_000;

/// A `k × n` constant matrix quantised for int8 products.
#[derive(Clone)]
pub(crate) struct Int8Matrix {
    k: usize,
    n: usize,
    /// `k` in groups of [`GROUP`] (the last one padded with zeros).
    groups: usize,
    /// Panels × groups × [`PANEL`] × [`GROUP`] (columns past `n` are zeros).
    packed: Vec<i8>,
    /// Per column: the scale (NaN where the column has a non-finite weight).
    scales: Vec<f32>,
    /// Per column: the sum of its quantised weights (for the zero points).
    sums: Vec<i32>,
}

impl fmt::Debug for Int8Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Int8Matrix({} × {})", self.k, self.n)
    }
}

/// Why a matrix cannot be quantised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QuantiseError {
    /// The contraction is too long for exact i32 sums.
    #[error("a contraction of {0} is longer than int8's {MAX_K}")]
    TooLong(usize),
    /// The slice does not hold `k × n` values.
    #[error("{got} values for a {k} × {n} matrix")]
    Size { k: usize, n: usize, got: usize },
}

impl Int8Matrix {
    /// Quantise `w`, `k × n` row-major: per column, `scale = max |w| / 127`
    /// and `q = round(w / scale)`.
    pub(crate) fn quantise(w: &[f32], k: usize, n: usize) -> Result<Self, QuantiseError> {
        if k > MAX_K {
            return Err(QuantiseError::TooLong(k));
        }
        if w.len() != k * n {
            return Err(QuantiseError::Size { k, n, got: w.len() });
        }
        let groups = k.div_ceil(GROUP);
        let panels = n.div_ceil(PANEL);
        // Row by row (the matrix is row-major): each column's largest
        // magnitude and whether it is all finite, then the values.
        let mut max = vec![0f32; n];
        let mut finite = vec![true; n];
        for row in w.chunks_exact(n.max(1)) {
            for ((m, f), &v) in max.iter_mut().zip(&mut finite).zip(row) {
                *m = m.max(v.abs());
                *f &= v.is_finite();
            }
        }
        let scales: Vec<f32> = max
            .iter()
            .zip(&finite)
            .map(|(&m, &f)| match (f, m > 0.0) {
                (false, _) => f32::NAN,
                // An all-zero column: any scale, every q is 0.
                (true, false) => 1.0,
                (true, true) => m / 127.0,
            })
            .collect();
        let inverse: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
        let mut sums = vec![0i32; n];
        let mut packed = vec![0i8; panels * groups * PANEL * GROUP];
        for (i, row) in w.chunks_exact(n.max(1)).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let q = if finite[j] {
                    (v * inverse[j]).round_ties_even().clamp(-127.0, 127.0) as i8
                } else {
                    0
                };
                sums[j] += i32::from(q);
                let (p, c) = (j / PANEL, j % PANEL);
                packed[((p * groups + i / GROUP) * PANEL + c) * GROUP + i % GROUP] = q;
            }
        }
        Ok(Self {
            k,
            n,
            groups,
            packed,
            scales,
            sums,
        })
    }

    /// The contracted length.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// The output columns.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// The weight matrix as the products see it: every value dequantised, `k × n`.
    #[cfg(test)]
    pub(crate) fn dequantised(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.k * self.n];
        for i in 0..self.k {
            for j in 0..self.n {
                let (p, c) = (j / PANEL, j % PANEL);
                let q = self.packed[((p * self.groups + i / GROUP) * PANEL + c) * GROUP + i % GROUP];
                w[i * self.n + j] = f32::from(q) * self.scales[j];
            }
        }
        w
    }

    /// `y = x · W (+ bias)`: `x` is `rows × k`, `y` `rows × n`, row-major,
    /// with the best kernel of this CPU.
    pub(crate) fn product(&self, rows: usize, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        self.product_with(Kernel::best(), rows, x, bias, y)
    }

    /// [`Self::product`] with a given kernel (one of [`Kernel::available`]).
    pub(crate) fn product_with(
        &self,
        kernel: Kernel,
        rows: usize,
        x: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        assert!(
            x.len() == rows * self.k && y.len() == rows * self.n,
            "int8 product: {} inputs and {} outputs for {rows} rows of {} × {}",
            x.len(),
            y.len(),
            self.k,
            self.n
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), self.n, "int8 product: bias length");
        }
        assert!(kernel.is_available(), "the {kernel} kernel on a CPU without it");
        if rows == 0 || self.n == 0 {
            return;
        }
        let args = Product {
            matrix: self,
            rows,
            x,
            bias,
        };
        // SAFETY: the kernel's instructions are available (asserted above);
        // the slices' lengths are checked above, and `run` addresses no more.
        unsafe { kernel.run(&args, y) }
    }
}

/// One call: the operands of `y = x · W (+ bias)`.
pub(crate) struct Product<'a> {
    matrix: &'a Int8Matrix,
    rows: usize,
    x: &'a [f32],
    bias: Option<&'a [f32]>,
}

/// One kernel's block of rows by a few panels of columns.
///
/// # Safety
/// `tile` may use instructions the CPU must have: call it only from a
/// function compiled with them, on a CPU that has them.
pub(crate) trait Tile {
    /// Rows of a block (the activations' interleaving).
    const ROWS: usize;
    /// Panels of [`PANEL`] columns a tile holds at most.
    const PANELS: usize;
    /// What the kernel adds to every activation byte before multiplying
    /// (128 for signed × signed instructions, which read `q − 128`).
    const BIAS: i32;

    /// `acc[r · np · PANEL + c] (+)= Σ_g Σ_b x[g][r][b] · w[c / PANEL][g][c % PANEL][b]`
    /// over `t.groups` groups, for `r < ROWS`, `c < np · PANEL`, `np ≤ PANELS`
    /// ([`TileArgs`]).
    ///
    /// # Safety
    /// The pointers address what [`TileArgs`] says.
    unsafe fn tile(t: &TileArgs);

    /// Quantise one row `xs` into its place `row` of a block `out` (groups ×
    /// `per_block` × [`GROUP`] bytes); return its zero point and scale
    /// ([`row_scale`], [`quantised`]: the same bits on every CPU).
    ///
    /// # Safety
    /// As [`Tile::tile`]'s first condition.
    #[inline(always)]
    unsafe fn quantise_row(xs: &[f32], out: &mut [u8], per_block: usize, row: usize) -> (i32, f32) {
        quantise_row_portable(xs, out, per_block, row)
    }
}

/// What one tile reads and writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileArgs {
    /// Panels of [`PANEL`] columns, at most [`Tile::PANELS`].
    pub np: usize,
    /// The block of quantised rows at the first group summed: `groups ×
    /// ROWS × GROUP` bytes, row after row within a group.
    pub x: *const u8,
    /// The first panel's weights at the first group summed (`groups ×
    /// PANEL × GROUP` bytes); the next panel's `stride` bytes further.
    pub w: *const i8,
    /// Bytes from one panel to the next.
    pub stride: usize,
    /// Groups summed.
    pub groups: usize,
    /// `ROWS · np · PANEL` sums, row after row.
    pub acc: *mut i32,
    /// Add to `acc` (a later slice of the contraction) rather than overwrite it.
    pub accumulate: bool,
}

/// Groups of the contraction per pass over a group of panels: 64 groups
/// (256 values) of 4 panels are 16 KB of weights, which stay in the L1 cache
/// while every block of rows reads them (whole panels were read from L2 for
/// each block: 10–20 % slower in `model kernels --time`).
const K_BLOCK: usize = 64;

/// The whole product with kernel `K`: quantise the rows, then for each group
/// of panels, slice by slice of the contraction, every block of rows; the
/// sums turned into f32 once the group of panels is done.
///
/// `#[inline(always)]`: each kernel calls it from a function compiled for
/// its instructions, so the quantisation and the conversions are vectorised
/// for them too.
///
/// # Safety
/// As [`Tile::tile`]; `y` holds `rows × n` values and the operands are as
/// [`Int8Matrix::product_with`] checks.
#[inline(always)]
pub(crate) unsafe fn run_with<K: Tile>(p: &Product<'_>, y: &mut [f32]) {
    let m = p.matrix;
    let rows = quantise_rows::<K>(p.x, p.rows, m.k, m.groups);
    let block_bytes = m.groups * K::ROWS * GROUP;
    let panel_bytes = m.groups * PANEL * GROUP;
    let most = K::ROWS * K::PANELS * PANEL;
    let mut acc = vec![0i32; rows.blocks * most];
    let panels = m.panels();
    let mut first = 0;
    while first < panels {
        let np = K::PANELS.min(panels - first);
        let tile = K::ROWS * np * PANEL;
        let mut g0 = 0;
        while g0 < m.groups {
            let groups = K_BLOCK.min(m.groups - g0);
            for block in 0..rows.blocks {
                // SAFETY: block `block` from group `g0` on, panels
                // `first..first + np` from group `g0` on, `groups` groups of
                // each, are within their buffers (sizes set above and by
                // `quantise`); `acc` holds `blocks × most` ≥ `(block + 1) × tile`.
                unsafe {
                    K::tile(&TileArgs {
                        np,
                        x: rows.data.as_ptr().add(block * block_bytes + g0 * K::ROWS * GROUP),
                        w: m.packed.as_ptr().add(first * panel_bytes + g0 * PANEL * GROUP),
                        stride: panel_bytes,
                        groups,
                        acc: acc.as_mut_ptr().add(block * tile),
                        accumulate: g0 > 0,
                    });
                }
            }
            g0 += groups;
        }
        for block in 0..rows.blocks {
            store(
                m,
                &rows,
                K::BIAS,
                block * K::ROWS,
                K::ROWS,
                first,
                np,
                &acc[block * tile..(block + 1) * tile],
                p.bias,
                y,
            );
        }
        first += np;
    }
}

/// Activations quantised per row, interleaved in blocks for a kernel.
struct QuantisedRows {
    rows: usize,
    blocks: usize,
    /// Blocks × groups × rows per block × [`GROUP`]; rows past the last are zeros.
    data: Vec<u8>,
    /// Per row: zero point and scale (NaN where the row has a non-finite value).
    zero: Vec<i32>,
    scale: Vec<f32>,
}

/// Quantise `rows × k` values row by row with `K`'s [`Tile::quantise_row`].
#[inline(always)]
fn quantise_rows<K: Tile>(x: &[f32], rows: usize, k: usize, groups: usize) -> QuantisedRows {
    let per_block = K::ROWS;
    let blocks = rows.div_ceil(per_block);
    let mut q = QuantisedRows {
        rows,
        blocks,
        data: vec![0u8; blocks * groups * per_block * GROUP],
        zero: vec![0; rows],
        scale: vec![0.0; rows],
    };
    let block_bytes = groups * per_block * GROUP;
    for r in 0..rows {
        let (block, row) = (r / per_block, r % per_block);
        let out = &mut q.data[block * block_bytes..][..block_bytes];
        // SAFETY: `run_with`'s caller compiled it for `K`'s instructions.
        let (zero, scale) = unsafe { K::quantise_row(&x[r * k..(r + 1) * k], out, per_block, row) };
        q.zero[r] = zero;
        q.scale[r] = scale;
    }
    q
}

/// The scale and zero point of a row whose range (widened to hold 0) is
/// `lo..=hi`: 255 steps, 0 exactly on a step. NaN scale: a non-finite value.
#[inline(always)]
pub(crate) fn row_scale(lo: f32, hi: f32, finite: bool) -> (i32, f32) {
    let step = (hi - lo) / 255.0;
    if !finite || !step.is_finite() {
        (0, f32::NAN)
    } else if step > 0.0 {
        ((-lo / step).round_ties_even() as i32, step)
    } else {
        // All zeros (or too small to resolve): every q is the zero point.
        (0, 1.0)
    }
}

/// One activation quantised: `round(v / scale) + zero`, within 0…255.
#[inline(always)]
pub(crate) fn quantised(v: f32, inverse: f32, zero: f32) -> u8 {
    ((v * inverse).round_ties_even() + zero).clamp(0.0, 255.0) as u8
}

/// The portable [`Tile::quantise_row`].
#[inline(always)]
fn quantise_row_portable(xs: &[f32], out: &mut [u8], per_block: usize, row: usize) -> (i32, f32) {
    // Sixteen independent lanes: the compiler may turn them into vector
    // minima and maxima (a reduction in one variable stays scalar).
    const LANES: usize = 16;
    let mut lo = [0f32; LANES];
    let mut hi = [0f32; LANES];
    let mut bad = [false; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
            bad[l] |= !c[l].is_finite();
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        lo[l] = if v < lo[l] { v } else { lo[l] };
        hi[l] = if v > hi[l] { v } else { hi[l] };
        bad[l] |= !v.is_finite();
    }
    let lo = lo.iter().fold(0f32, |a, &b| if b < a { b } else { a });
    let hi = hi.iter().fold(0f32, |a, &b| if b > a { b } else { a });
    let (zero, scale) = row_scale(lo, hi, !bad.contains(&true));
    if scale.is_nan() {
        return (zero, scale);
    }
    let (inverse, z) = (1.0 / scale, zero as f32);
    for (g, c) in xs.chunks(GROUP).enumerate() {
        let o = (g * per_block + row) * GROUP;
        for (b, &v) in c.iter().enumerate() {
            out[o + b] = quantised(v, inverse, z);
        }
    }
    (zero, scale)
}

/// Turn one tile's sums into outputs: rows `first_row..first_row + per_block`
/// (those that exist), columns of panels `first..first + np` (those within `n`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn store(
    m: &Int8Matrix,
    q: &QuantisedRows,
    bias_in_kernel: i32,
    first_row: usize,
    per_block: usize,
    first: usize,
    np: usize,
    acc: &[i32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let j0 = first * PANEL;
    let cols = (np * PANEL).min(m.n - j0);
    let sums = &m.sums[j0..j0 + cols];
    let scales = &m.scales[j0..j0 + cols];
    for r in first_row..(first_row + per_block).min(q.rows) {
        let a = &acc[(r - first_row) * np * PANEL..][..cols];
        let out = &mut y[r * m.n + j0..][..cols];
        let correction = bias_in_kernel - q.zero[r];
        let s = q.scale[r];
        match bias {
            Some(b) => {
                let b = &b[j0..j0 + cols];
                for c in 0..cols {
                    out[c] = (a[c] + correction * sums[c]) as f32 * (s * scales[c]) + b[c];
                }
            }
            None => {
                for c in 0..cols {
                    out[c] = (a[c] + correction * sums[c]) as f32 * (s * scales[c]);
                }
            }
        }
    }
}

/// An int8 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernel {
    /// x86-64 AVX-512 VNNI: `vpdpbusd` on 512-bit registers.
    Avx512Vnni,
    /// x86-64 AVX-VNNI: `vpdpbusd` on 256-bit registers (Alder Lake and
    /// later, Intel N100-class industrial PCs).
    AvxVnni,
    /// x86-64 AVX2: bytes widened to 16 bits, `vpmaddwd` (slower than f32's
    /// `gemm`: a fallback that keeps int8's numbers, not a speed-up).
    Avx2,
    /// 64-bit Arm dot product (ARMv8.2+, e.g. Jetson Orin): `sdot`.
    ArmDot,
    /// Plain Rust, for any CPU (slow: it is the reference).
    Portable,
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::ArmDot => "arm-dotprod",
            Kernel::Portable => "portable",
        })
    }
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 5] = [
        Kernel::Avx512Vnni,
        Kernel::AvxVnni,
        Kernel::Avx2,
        Kernel::ArmDot,
        Kernel::Portable,
    ];

    /// Whether this CPU has the kernel's instructions.
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => x86::has_avx512_vnni(),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => x86::has_avx_vnni(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86::has_avx2(),
            #[cfg(target_arch = "aarch64")]
            Kernel::ArmDot => aarch64::has_dotprod(),
            Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The kernels this CPU can run, fastest first.
    pub fn available() -> Vec<Kernel> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// The kernel products use: the fastest available, or the one named by
    /// `WINCLIP_INT8_KERNEL` (for measurements; a name this CPU cannot run
    /// is ignored with a warning).
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let fastest = Self::available()[0];
            let Ok(name) = std::env::var("WINCLIP_INT8_KERNEL") else {
                return fastest;
            };
            match Self::ALL.into_iter().find(|k| k.to_string() == name) {
                Some(k) if k.is_available() => k,
                _ => {
                    log::warn!("WINCLIP_INT8_KERNEL={name}: not a kernel this CPU runs; using {fastest}");
                    fastest
                }
            }
        })
    }

    /// Whether the kernel is the plain-Rust fallback.
    pub fn is_portable(self) -> bool {
        self == Kernel::Portable
    }

    /// Whether int8 with this kernel is slower than f32 on the same CPU (no
    /// int8 dot product instruction): it keeps int8's numbers, not its speed.
    pub fn is_slower_than_f32(self) -> bool {
        matches!(self, Kernel::Portable | Kernel::Avx2)
    }

    /// # Safety
    /// The kernel is available; the operands are as [`Int8Matrix::product_with`] checks.
    unsafe fn run(self, p: &Product<'_>, y: &mut [f32]) {
        // SAFETY (every arm): the caller checked that the CPU has the
        // kernel's instructions, and the operands.
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => x86::run_avx512_vnni(p, y),
                #[cfg(target_arch = "x86_64")]
                Kernel::AvxVnni => x86::run_avx_vnni(p, y),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => x86::run_avx2(p, y),
                #[cfg(target_arch = "aarch64")]
                Kernel::ArmDot => aarch64::run_dotprod(p, y),
                _ => run_with::<Portable>(p, y),
            }
        }
    }
}

/// The reference kernel: plain loops over the same layout.
struct Portable;

impl Tile for Portable {
    const ROWS: usize = 4;
    const PANELS: usize = 2;
    const BIAS: i32 = 0;

    unsafe fn tile(t: &TileArgs) {
        let (groups, cols) = (t.groups, t.np * PANEL);
        let span = (t.np - 1) * t.stride + groups * PANEL * GROUP;
        // SAFETY: the caller passes buffers of these sizes (trait contract);
        // the panels lie `stride` apart within one buffer.
        let (x, w, acc) = unsafe {
            (
                std::slice::from_raw_parts(t.x, groups * Self::ROWS * GROUP),
                std::slice::from_raw_parts(t.w, span),
                std::slice::from_raw_parts_mut(t.acc, Self::ROWS * cols),
            )
        };
        if !t.accumulate {
            acc.fill(0);
        }
        for g in 0..groups {
            for r in 0..Self::ROWS {
                let a = &x[(g * Self::ROWS + r) * GROUP..][..GROUP];
                for c in 0..cols {
                    let b = &w[(c / PANEL) * t.stride + (g * PANEL + c % PANEL) * GROUP..][..GROUP];
                    let dot: i32 = a.iter().zip(b).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                    acc[r * cols + c] += dot;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-scale..scale)).collect()
    }

    /// `x · w (+ b)` in f64.
    fn reference(rows: usize, k: usize, n: usize, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let mut y = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[i * n + j]))
                    .sum();
                y[r * n + j] = (s + b.map_or(0.0, |b| f64::from(b[j]))) as f32;
            }
        }
        y
    }

    #[test]
    fn every_kernel_gives_the_portable_kernels_bits() {
        let available = Kernel::available();
        assert!(available.contains(&Kernel::Portable));
        eprintln!("int8 kernels on this CPU: {available:?}");
        // Shapes that leave partial blocks, panels, panel groups and groups.
        for (rows, k, n) in [
            (1, 4, 16),
            (7, 37, 50),
            (13, 64, 192),
            (30, 130, 97),
            (5, 896, 64),
        ] {
            let w = random(k * n, 1, 0.5);
            let mut x = random(rows * k, 2, 3.0);
            // One row of zeros, one all positive (zero point 0).
            x[..k].fill(0.0);
            if rows > 2 {
                for v in &mut x[k..2 * k] {
                    *v = v.abs();
                }
            }
            let b = random(n, 3, 1.0);
            let m = Int8Matrix::quantise(&w, k, n).unwrap();
            let mut want = vec![0f32; rows * n];
            m.product_with(Kernel::Portable, rows, &x, Some(&b), &mut want);
            for &kernel in &available {
                let mut got = vec![f32::NAN; rows * n];
                m.product_with(kernel, rows, &x, Some(&b), &mut got);
                let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{kernel} differs from the portable kernel at {rows} × {k} × {n}"
                );
            }
        }
    }

    #[test]
    fn the_product_is_the_dequantised_product_within_the_rows_step() {
        // k > K_BLOCK · GROUP: the sums are accumulated over two slices.
        let (rows, k, n) = (9, 300, 40);
        let w = random(k * n, 4, 0.2);
        let x = random(rows * k, 5, 2.0);
        let m = Int8Matrix::quantise(&w, k, n).unwrap();
        let mut y = vec![0f32; rows * n];
        m.product(rows, &x, None, &mut y);
        // Against the exact product with the quantised weights: only the
        // activations' rounding is left, at most half a step per value.
        let wq = m.dequantised();
        let exact = reference(rows, k, n, &x, &wq, None);
        for r in 0..rows {
            let row = &x[r * k..(r + 1) * k];
            let (lo, hi) = row.iter().fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let step = (hi - lo) / 255.0;
            for j in 0..n {
                let bound: f32 = (0..k).map(|i| wq[i * n + j].abs()).sum::<f32>() * step * 0.5 + 1e-4;
                let d = (y[r * n + j] - exact[r * n + j]).abs();
                assert!(d <= bound, "row {r} column {j}: {d} > {bound}");
            }
        }
        // And close to the f32 product overall.
        let full = reference(rows, k, n, &x, &w, None);
        let range = full.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = y
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst > 0.0 && worst < 0.02 * range, "worst {worst} of {range}");
    }

    #[test]
    fn weights_are_symmetric_per_column_and_exact_where_they_can_be() {
        // Column 0: multiples of 1/127 up to 1, exact; column 1: zeros; column 2: a NaN.
        let k = 5;
        let w = [
            1.0,
            0.0,
            1.0, //
            -0.5,
            0.0,
            f32::NAN, //
            0.25,
            0.0,
            0.0, //
            -1.0,
            0.0,
            0.0, //
            2.0 / 127.0,
            0.0,
            0.0,
        ];
        let m = Int8Matrix::quantise(&w, k, 3).unwrap();
        assert_eq!(m.scales[0], 1.0 / 127.0);
        let d = m.dequantised();
        let column = |j: usize| (0..k).map(|i| d[i * 3 + j]).collect::<Vec<_>>();
        let c0 = column(0);
        assert_eq!(c0[0], 1.0);
        assert_eq!(c0[3], -1.0);
        assert!((c0[1] + 0.5).abs() <= 0.5 / 127.0 && (c0[4] - 2.0 / 127.0).abs() < 1e-7);
        assert!(column(1).iter().all(|&v| v == 0.0));
        // A non-finite weight makes its column's outputs NaN, as f32 would.
        let mut y = [0f32; 3];
        m.product(1, &[1.0, 1.0, 1.0, 1.0, 1.0], None, &mut y);
        assert!(y[0].is_finite() && y[1] == 0.0 && y[2].is_nan(), "{y:?}");
        // A non-finite activation makes its row NaN.
        m.product(1, &[1.0, f32::INFINITY, 1.0, 1.0, 1.0], None, &mut y);
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert_eq!(
            Int8Matrix::quantise(&[0.0; 6], 2, 4).unwrap_err(),
            QuantiseError::Size { k: 2, n: 4, got: 6 }
        );
        assert!(matches!(
            Int8Matrix::quantise(&[], MAX_K + 1, 0),
            Err(QuantiseError::TooLong(_))
        ));
    }
}
