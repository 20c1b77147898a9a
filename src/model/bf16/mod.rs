//! The encoder's linear layers in bfloat16 (`precision = "bf16"`).
//!
//! bf16 keeps f32's exponent and 8 bits of its mantissa. The weights are
//! rounded to bf16 once, when the encoder is loaded; the activations at run
//! time; the products of bf16 pairs are exact in f32 and summed in f32. Only
//! CPUs with bf16 dot products run it (AVX-512 BF16's `vdpbf16ps`, Arm's
//! `bfdot`); on others
//! [`Kernel::best`] is `None` and the encoder stays f32 (the caller warns).
//!
//! Packed like [`super::int8`]: panels of [`PANEL`] columns, the contracted
//! axis in pairs (one 32-bit lane holds two bf16), activations in blocks of a
//! kernel's rows.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::fmt;

/// Output columns per packed weight panel.
pub(crate) const PANEL: usize = 16;
/// Values of the contracted axis summed by one lane of `vdpbf16ps`.
pub(crate) const PAIR: usize = 2;

/// f32 → bf16, rounding to nearest, ties to even (NaN stays NaN).
#[inline(always)]
pub(crate) fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// bf16 → f32 (exact).
#[inline(always)]
pub(crate) fn from_bf16(v: u16) -> f32 {
    f32::from_bits(u32::from(v) << 16)
}

/// A `k × n` constant matrix rounded to bf16 and packed.
#[derive(Clone)]
pub(crate) struct Bf16Matrix {
    k: usize,
    n: usize,
    /// `k` in pairs (the last one padded with a zero).
    pairs: usize,
    /// Panels × pairs × [`PANEL`] × [`PAIR`] (columns past `n` are zeros).
    packed: Vec<u16>,
}

impl fmt::Debug for Bf16Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bf16Matrix({} × {})", self.k, self.n)
    }
}

impl Bf16Matrix {
    /// Round `w`, `k × n` row-major, to bf16 and pack it.
    ///
    /// # Panics
    /// If `w` does not hold `k × n` values.
    pub(crate) fn new(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "bf16 matrix of {k} × {n}");
        let pairs = k.div_ceil(PAIR);
        let panels = n.div_ceil(PANEL);
        let mut packed = vec![0u16; panels * pairs * PANEL * PAIR];
        for i in 0..k {
            for j in 0..n {
                let (p, c) = (j / PANEL, j % PANEL);
                packed[((p * pairs + i / PAIR) * PANEL + c) * PAIR + i % PAIR] = to_bf16(w[i * n + j]);
            }
        }
        Self { k, n, pairs, packed }
    }

    /// The contracted length.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// The output columns.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// `y = x · W (+ bias)`: `x` is `rows × k`, `y` `rows × n`, row-major.
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
            "bf16 product: {} inputs and {} outputs for {rows} rows of {} × {}",
            x.len(),
            y.len(),
            self.k,
            self.n
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), self.n, "bf16 product: bias length");
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
        // SAFETY: the kernel's instructions are available and the slices'
        // lengths are as `run` expects (both checked above).
        unsafe { kernel.run(&args, y) }
    }
}

/// One call: the operands of `y = x · W (+ bias)`.
pub(crate) struct Product<'a> {
    matrix: &'a Bf16Matrix,
    rows: usize,
    x: &'a [f32],
    bias: Option<&'a [f32]>,
}

/// One kernel's block of rows by a few panels of columns.
pub(crate) trait Tile {
    /// Rows of a block.
    const ROWS: usize;
    /// Panels of [`PANEL`] columns a tile holds at most.
    const PANELS: usize;

    /// `acc[r · np · PANEL + c] = Σ_p Σ_i x[p][r][i] · w[c / PANEL][p][c % PANEL][i]`
    /// in f32 for `r < ROWS`, `c < np · PANEL`, `np ≤ PANELS`.
    ///
    /// # Safety
    /// Called from a function compiled for the kernel's instructions, on a
    /// CPU that has them; `x` holds one block (`pairs × ROWS × PAIR` values),
    /// `w` `np` panels, `acc` `ROWS · np · PANEL` values.
    unsafe fn tile(np: usize, x: *const u16, w: *const u16, pairs: usize, acc: *mut f32);
}

/// The whole product with kernel `K`, as [`super::int8::run_with`] does it.
///
/// # Safety
/// As [`Tile::tile`]; the operands as [`Bf16Matrix::product_with`] checks.
#[inline(always)]
pub(crate) unsafe fn run_with<K: Tile>(p: &Product<'_>, y: &mut [f32]) {
    let m = p.matrix;
    let block_len = m.pairs * K::ROWS * PAIR;
    let blocks = p.rows.div_ceil(K::ROWS);
    let mut xs = vec![0u16; blocks * block_len];
    for r in 0..p.rows {
        let (block, row) = (r / K::ROWS, r % K::ROWS);
        let out = &mut xs[block * block_len..][..block_len];
        for (i, &v) in p.x[r * m.k..(r + 1) * m.k].iter().enumerate() {
            out[((i / PAIR) * K::ROWS + row) * PAIR + i % PAIR] = to_bf16(v);
        }
    }
    let panel_len = m.pairs * PANEL * PAIR;
    let panels = m.n.div_ceil(PANEL);
    let mut acc = vec![0f32; K::ROWS * K::PANELS * PANEL];
    let mut first = 0;
    while first < panels {
        let np = K::PANELS.min(panels - first);
        let j0 = first * PANEL;
        let cols = (np * PANEL).min(m.n - j0);
        for block in 0..blocks {
            // SAFETY: block `block` and panels `first..first + np` are within
            // their buffers; `acc` holds `ROWS · PANELS · PANEL` values.
            unsafe {
                K::tile(
                    np,
                    xs.as_ptr().add(block * block_len),
                    m.packed.as_ptr().add(first * panel_len),
                    m.pairs,
                    acc.as_mut_ptr(),
                );
            }
            for r in block * K::ROWS..((block + 1) * K::ROWS).min(p.rows) {
                let a = &acc[(r - block * K::ROWS) * np * PANEL..][..cols];
                let out = &mut y[r * m.n + j0..][..cols];
                match p.bias {
                    Some(b) => {
                        for ((o, a), b) in out.iter_mut().zip(a).zip(&b[j0..j0 + cols]) {
                            *o = a + b;
                        }
                    }
                    None => out.copy_from_slice(a),
                }
            }
        }
        first += np;
    }
}

/// A bf16 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernel {
    /// x86-64 AVX-512 BF16: `vdpbf16ps`.
    Avx512Bf16,
    /// 64-bit Arm BF16 (ARMv8.6+): `bfdot`.
    ArmBf16,
    /// Plain Rust (the reference for the tests; never chosen for the encoder).
    Portable,
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kernel::Avx512Bf16 => "avx512-bf16",
            Kernel::ArmBf16 => "arm-bf16",
            Kernel::Portable => "portable",
        })
    }
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512Bf16, Kernel::ArmBf16, Kernel::Portable];

    /// Whether this CPU has the kernel's instructions.
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => x86::has_avx512_bf16(),
            #[cfg(target_arch = "aarch64")]
            Kernel::ArmBf16 => aarch64::has_bf16(),
            Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The kernels this CPU can run, fastest first.
    pub fn available() -> Vec<Kernel> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// The kernel for the encoder: one with bf16 dot products in hardware,
    /// if this CPU has one.
    pub fn best() -> Option<Kernel> {
        Self::available().into_iter().find(|k| *k != Kernel::Portable)
    }

    /// # Safety
    /// The kernel is available; the operands are as [`Bf16Matrix::product_with`] checks.
    unsafe fn run(self, p: &Product<'_>, y: &mut [f32]) {
        // SAFETY (every arm): the caller checked the CPU and the operands.
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Bf16 => x86::run_avx512_bf16(p, y),
                #[cfg(target_arch = "aarch64")]
                Kernel::ArmBf16 => aarch64::run_bf16(p, y),
                _ => run_with::<Portable>(p, y),
            }
        }
    }
}

/// The reference kernel: each pair as `vdpbf16ps` adds it (the odd product
/// first, each product exact in f32, each addition rounded).
struct Portable;

impl Tile for Portable {
    const ROWS: usize = 4;
    const PANELS: usize = 2;

    unsafe fn tile(np: usize, x: *const u16, w: *const u16, pairs: usize, acc: *mut f32) {
        let cols = np * PANEL;
        // SAFETY: the caller passes buffers of these sizes (trait contract).
        let (x, w, acc) = unsafe {
            (
                std::slice::from_raw_parts(x, pairs * Self::ROWS * PAIR),
                std::slice::from_raw_parts(w, np * pairs * PANEL * PAIR),
                std::slice::from_raw_parts_mut(acc, Self::ROWS * cols),
            )
        };
        acc.fill(0.0);
        for p in 0..pairs {
            for r in 0..Self::ROWS {
                let a = &x[(p * Self::ROWS + r) * PAIR..][..PAIR];
                for c in 0..cols {
                    let b = &w[(((c / PANEL) * pairs + p) * PANEL + c % PANEL) * PAIR..][..PAIR];
                    let s = &mut acc[r * cols + c];
                    *s += from_bf16(a[1]) * from_bf16(b[1]);
                    *s += from_bf16(a[0]) * from_bf16(b[0]);
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

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: to the even one, 1.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: up, to the even one.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(1.0 + 1.5 / 256.0), 0x3f81);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(
            from_bf16(to_bf16(f32::MAX)),
            f32::INFINITY,
            "rounds up past the largest bf16"
        );
    }

    #[test]
    fn every_kernel_gives_the_portable_kernels_bits_and_bf16_accuracy() {
        let available = Kernel::available();
        eprintln!("bf16 kernels on this CPU: {available:?}");
        for (rows, k, n) in [(1, 2, 16), (7, 37, 50), (13, 64, 192), (30, 131, 97)] {
            let w = random(k * n, 1, 0.5);
            let x = random(rows * k, 2, 3.0);
            let b = random(n, 3, 1.0);
            let m = Bf16Matrix::new(&w, k, n);
            let mut want = vec![0f32; rows * n];
            m.product_with(Kernel::Portable, rows, &x, Some(&b), &mut want);
            // bf16 keeps 8 bits: each operand within 2⁻⁹ relative.
            for r in 0..rows {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(w[i * n + j]))
                        .sum::<f64>()
                        + f64::from(b[j]);
                    let bound: f64 = (0..k)
                        .map(|i| (f64::from(x[r * k + i]) * f64::from(w[i * n + j])).abs())
                        .sum::<f64>()
                        * 2.0_f64.powi(-8)
                        + 1e-5;
                    let d = (f64::from(want[r * n + j]) - exact).abs();
                    assert!(d <= bound, "{rows} × {k} × {n}: ({r}, {j}) off by {d} > {bound}");
                }
            }
            for &kernel in &available {
                let mut got = vec![f32::NAN; rows * n];
                m.product_with(kernel, rows, &x, Some(&b), &mut got);
                // `vdpbf16ps` adds as the portable kernel does; Arm's `bfdot`
                // rounds its pair sums otherwise (to odd): the last bits differ.
                let same = |a: f32, b: f32| match kernel {
                    Kernel::ArmBf16 => (a - b).abs() <= 1e-5 * k as f32 * a.abs().max(1.0),
                    _ => a.to_bits() == b.to_bits(),
                };
                assert!(
                    want.iter().zip(&got).all(|(a, b)| same(*a, *b)),
                    "{kernel} differs from the portable kernel at {rows} × {k} × {n}"
                );
            }
        }
    }
}
