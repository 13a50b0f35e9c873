//! The int8 scheme: how weights and activations become integers, and how a product of
//! integers becomes an f32 again. Every int8 kernel, optimised or reference, goes through
//! these functions, so they all see the same integers; the products are then exact (i32), and
//! the dequantisation is the same f32 operations in the same order everywhere: the kernels
//! agree bit for bit.
//!
//! - **Weights**: symmetric, one scale per output channel: `s_w[n] = max_k |W[n, k]| / q_max`,
//!   `q_w[n, k] = round(W[n, k] / s_w[n])` in `[-q_max, q_max]` (`q_max` 127, or 63 for the
//!   AVX2 kernel without VNNI; see [`weight_max`]). Quantised once, at load, in f64.
//! - **Activations**: asymmetric, one scale and zero point per row (pixel), computed while the
//!   row is packed (after the prologue's LayerNorm or GRN scale): the row's range, widened to
//!   hold 0, is cut into 255 steps: `s_a = (max - min) / 255`, `z = round(-min / s_a)`,
//!   `q_a = clamp(round(x / s_a) + z, 0, 255)` as u8. Finer than the per-tensor scales ONNX
//!   Runtime and fbgemm use: one outlier pixel costs only its own row's resolution.
//! - **Product**: `acc[r, n] = sum_k q_a[r, k] q_w[n, k]` in i32 (no overflow: `K * 255 * 127`
//!   stays below 2^31 for `K` < 66,000), then
//!   `y[r, n] = f32(acc[r, n] - z[r] * colsum[n]) * (s_a[r] * s_w[n])` with
//!   `colsum[n] = sum_k q_w[n, k]`: the zero point's share taken out exactly in integers.
//!   The f32 epilogue (bias, activation, residual, GRN's sums) follows as in the f32 path.
//!
//! Error: each activation is off by at most `s_a / 2` and each weight by `s_w / 2`, so
//! `|y - x.W| <= sum_k (|x_k| s_w / 2 + |W_k| s_a / 2 + s_a s_w / 4)` plus f32 rounding of the
//! result ([`error_bound`]). The largest weight level each kernel takes is the kernel
//! table's ([`super::matmul::weight_max`]).

/// Activations take the full u8 range.
pub const ACTIVATION_LEVELS: f32 = 255.0;

/// A weight matrix `[n, k]` quantised per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantisedWeights {
    pub n: usize,
    pub k: usize,
    /// `[n, k]`, each in `[-q_max, q_max]`.
    pub q: Vec<i8>,
    /// `s_w`, per output channel.
    pub scales: Vec<f32>,
    /// `sum_k q[n, k]`, per output channel.
    pub col_sums: Vec<i32>,
    pub q_max: i32,
}

impl QuantisedWeights {
    /// Quantises `weight` (`[n, k]`, row-major) with magnitudes up to `q_max`.
    pub fn new(weight: &[f32], n: usize, k: usize, q_max: i32) -> QuantisedWeights {
        assert_eq!(weight.len(), n * k);
        assert!((1..=127).contains(&q_max));
        let mut q = vec![0i8; n * k];
        let mut scales = vec![0f32; n];
        let mut col_sums = vec![0i32; n];
        for (o, row) in weight.chunks_exact(k.max(1)).take(n).enumerate() {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            // An all-zero channel: any scale; its integers are all 0.
            let scale = if amax > 0.0 && amax.is_finite() {
                amax / q_max as f32
            } else {
                1.0
            };
            scales[o] = scale;
            let mut sum = 0i32;
            for (d, &v) in q[o * k..(o + 1) * k].iter_mut().zip(row) {
                let level = (v as f64 / scale as f64)
                    .round_ties_even()
                    .clamp(-q_max as f64, q_max as f64) as i32;
                *d = level as i8;
                sum += level;
            }
            col_sums[o] = sum;
        }
        QuantisedWeights {
            n,
            k,
            q,
            scales,
            col_sums,
            q_max,
        }
    }
}

/// One quantised row's scale and zero point.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RowQuant {
    pub scale: f32,
    pub zero: i32,
}

/// `round(x)` to the nearest integer, ties to even, for `|x| < 2^22`: the f32 addition of
/// 1.5 * 2^23 rounds away the fraction as the FPU's default mode does (vectorisable: no
/// rounding instruction needed).
#[inline(always)]
fn round_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

/// The scale and zero point of `row` (its range widened to hold 0).
#[inline(always)]
pub fn row_quant(row: &[f32]) -> RowQuant {
    // Eight independent lanes (vectorisable); min and max are exact, so the order is moot.
    let (mut lo, mut hi) = ([0f32; 8], [0f32; 8]);
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    let (mut min, mut max) = (0f32, 0f32);
    for &v in chunks.remainder().iter().chain(&lo) {
        min = if v < min { v } else { min };
    }
    for &v in chunks.remainder().iter().chain(&hi) {
        max = if v > max { v } else { max };
    }
    let scale = (max - min) / ACTIVATION_LEVELS;
    if !(scale > 0.0 && scale.is_finite()) {
        // All zeros (or non-finite values, which have no meaningful integers): every level 0.
        return RowQuant {
            scale: if scale > 0.0 { scale } else { 1.0 },
            zero: 0,
        };
    }
    let zero = round_small(-min / scale).clamp(0.0, ACTIVATION_LEVELS) as i32;
    RowQuant { scale, zero }
}

/// `q[i] = clamp(round(row[i] / s) + z, 0, 255)` for `row`'s [`RowQuant`]; `out` may be
/// longer than `row` (padding to a multiple of 4): its tail is set to 0. On the widest
/// vectors the CPU has (the same exact operations, so the same bytes, on every one).
pub fn quantise_row(row: &[f32], out: &mut [u8]) -> RowQuant {
    match super::Isa::detect().width() {
        // SAFETY: `Isa::detect` names only an instruction set the CPU supports.
        #[cfg(target_arch = "x86_64")]
        super::Width::Avx512 => unsafe { quantise_row_avx512(row, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        super::Width::Avx2 => unsafe { quantise_row_avx2(row, out) },
        super::Width::Portable => quantise_row_lanes(row, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn quantise_row_avx512(row: &[f32], out: &mut [u8]) -> RowQuant {
    quantise_row_lanes(row, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantise_row_avx2(row: &[f32], out: &mut [u8]) -> RowQuant {
    quantise_row_lanes(row, out)
}

#[inline(always)]
fn quantise_row_lanes(row: &[f32], out: &mut [u8]) -> RowQuant {
    let rq = row_quant(row);
    let inv = 1.0 / rq.scale;
    let zero = rq.zero as f32;
    let (head, tail) = out.split_at_mut(row.len());
    for (d, &v) in head.iter_mut().zip(row) {
        // Clamped to 0..=255 by comparisons (`maxps` / `minps`); NaN fails the first and
        // becomes 0.
        let t = round_small(v * inv) + zero;
        let t = if t > 0.0 { t } else { 0.0 };
        let t = if t < ACTIVATION_LEVELS {
            t
        } else {
            ACTIVATION_LEVELS
        };
        // SAFETY: `t` is finite and in 0..=255 (the comparisons above), so it converts to an
        // i32 (and that to a u8) exactly; the unchecked conversion vectorises, where `as`
        // (saturating, NaN-checking) would be one element at a time.
        *d = unsafe { t.to_int_unchecked::<i32>() } as u8;
    }
    tail.fill(0);
    rq
}

/// The f32 value of one integer product: `f32(acc - z * colsum) * (s_a * s_w)`.
#[inline(always)]
pub fn dequantise(acc: i32, row: RowQuant, col_sum: i32, col_scale: f32) -> f32 {
    (acc.wrapping_sub(row.zero.wrapping_mul(col_sum))) as f32 * (row.scale * col_scale)
}

/// A bound on `|int8 product - exact product|` for one output of a row `x` (after the
/// prologue) and one weight row `w` quantised with `col_scale`: the quantisation errors
/// (each `q_a` within `s_a / 2` of `x / s_a`, each `q_w` within `s_w / 2`) plus the f32
/// rounding of the conversion and the scale product (3 ulps of the result's bound).
pub fn error_bound(x: &[f32], w: &[f32], col_scale: f32) -> f64 {
    let rq = row_quant(x);
    let (sa, sw) = (rq.scale as f64, col_scale as f64);
    let mut bound = 0f64;
    let mut magnitude = 0f64;
    for (&a, &b) in x.iter().zip(w) {
        bound += (a as f64).abs() * sw / 2.0 + (b as f64).abs() * sa / 2.0 + sa * sw / 4.0;
        magnitude += ((a as f64).abs() + sa) * ((b as f64).abs() + sw);
    }
    bound + 3.0 * f32::EPSILON as f64 * magnitude
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_quantise_within_half_a_step() {
        let row: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.37).sin() * 3.0 - 0.5)
            .collect();
        let mut q = vec![9u8; 40];
        let rq = quantise_row(&row, &mut q);
        assert_eq!(&q[37..], &[0, 0, 0]);
        for (&v, &l) in row.iter().zip(&q) {
            let back = (l as i32 - rq.zero) as f32 * rq.scale;
            assert!(
                (back - v).abs() <= rq.scale * 0.5001,
                "{v} -> {l} -> {back}"
            );
        }
        // The extremes use the whole range.
        assert!(q[..37].contains(&0) || q[..37].contains(&255));
        // Zero is exact.
        let zeros = [0f32; 5];
        let mut q = [1u8; 5];
        let rq = quantise_row(&zeros, &mut q);
        assert_eq!((q, rq.zero), ([0; 5], 0));
    }

    #[test]
    fn weights_quantise_per_channel() {
        let w = [0.5f32, -1.0, 0.25, 0.0, 0.0, 0.0, 2.0, 1.0, -0.01];
        let q = QuantisedWeights::new(&w, 3, 3, 127);
        assert_eq!(&q.q[..3], &[64, -127, 32]);
        assert_eq!(&q.q[3..6], &[0, 0, 0]);
        assert_eq!(q.col_sums, [64 - 127 + 32, 0, 127 + 64 - 1]);
        assert_eq!(q.scales[0], 1.0 / 127.0);
        let q63 = QuantisedWeights::new(&w, 3, 3, 63);
        assert!(q63.q.iter().all(|&v| (-63..=63).contains(&(v as i32))));
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        for (x, r) in [
            (0.5f32, 0.0f32),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, 0.0),
            (-1.5, -2.0),
        ] {
            assert_eq!(round_small(x), r, "{x}");
            assert_eq!(round_small(x), x.round_ties_even());
        }
    }
}
