//! The activations Hugging Face's `ACT2FN` offers that ConvNeXt V2 configs use.

use std::fmt;

/// An elementwise activation, as named by `hidden_act` in a Hugging Face config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `gelu`, `gelu_python`: exact, `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: `x sigmoid(1.702 x)`.
    QuickGelu,
    Relu,
    Relu6,
    /// `silu`, `swish`: `x sigmoid(x)`.
    Silu,
    /// `mish`: `x tanh(softplus(x))`.
    Mish,
    Tanh,
    Sigmoid,
    /// `linear`: the identity.
    Identity,
}

impl Activation {
    /// Every name accepted in `hidden_act`, with its activation.
    pub const NAMES: &'static [(&'static str, Activation)] = &[
        ("gelu", Activation::Gelu),
        ("gelu_python", Activation::Gelu),
        ("gelu_new", Activation::GeluTanh),
        ("gelu_pytorch_tanh", Activation::GeluTanh),
        ("gelu_fast", Activation::GeluTanh),
        ("quick_gelu", Activation::QuickGelu),
        ("relu", Activation::Relu),
        ("relu6", Activation::Relu6),
        ("silu", Activation::Silu),
        ("swish", Activation::Silu),
        ("mish", Activation::Mish),
        ("tanh", Activation::Tanh),
        ("sigmoid", Activation::Sigmoid),
        ("linear", Activation::Identity),
    ];

    /// Looks up a `hidden_act` name.
    pub fn from_hf_name(name: &str) -> Option<Activation> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, act)| act)
    }

    /// The canonical Hugging Face name.
    pub fn hf_name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, a)| *a == self)
            .map(|&(n, _)| n)
            .expect("every activation has a name")
    }

    /// The activation in f64, straight from its definition.
    pub fn apply_f64(self, x: f64) -> f64 {
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        match self {
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::QuickGelu => x * sigmoid(1.702 * x),
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Silu => x * sigmoid(x),
            Activation::Mish => {
                // softplus as PyTorch computes it: linear above 20 to avoid overflow.
                let softplus = if x > 20.0 { x } else { x.exp().ln_1p() };
                x * softplus.tanh()
            }
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => sigmoid(x),
            Activation::Identity => x,
        }
    }
}

impl Activation {
    /// The activation as a plain `fn(f32) -> f32` (evaluated through [`Activation::apply_f64`]),
    /// for kernel epilogues.
    pub fn f32_fn(self) -> fn(f32) -> f32 {
        match self {
            Activation::Gelu => gelu_f32,
            Activation::GeluTanh => |x| Activation::GeluTanh.apply_f64(x as f64) as f32,
            Activation::QuickGelu => |x| Activation::QuickGelu.apply_f64(x as f64) as f32,
            Activation::Relu => |x| x.max(0.0),
            Activation::Relu6 => |x| x.clamp(0.0, 6.0),
            Activation::Silu => |x| Activation::Silu.apply_f64(x as f64) as f32,
            Activation::Mish => |x| Activation::Mish.apply_f64(x as f64) as f32,
            Activation::Tanh => |x| Activation::Tanh.apply_f64(x as f64) as f32,
            Activation::Sigmoid => |x| Activation::Sigmoid.apply_f64(x as f64) as f32,
            Activation::Identity => |x| x,
        }
    }
}

impl Activation {
    /// The activation over a slice, in place, for kernel epilogues; exact GELU is vectorised
    /// ([`gelu_slice`]).
    pub fn f32_slice_fn(self) -> fn(&mut [f32]) {
        macro_rules! each {
            ($act:expr) => {
                |v: &mut [f32]| {
                    let f = $act.f32_fn();
                    v.iter_mut().for_each(|x| *x = f(*x));
                }
            };
        }
        match self {
            Activation::Gelu => gelu_slice,
            Activation::GeluTanh => each!(Activation::GeluTanh),
            Activation::QuickGelu => each!(Activation::QuickGelu),
            Activation::Relu => each!(Activation::Relu),
            Activation::Relu6 => each!(Activation::Relu6),
            Activation::Silu => each!(Activation::Silu),
            Activation::Mish => each!(Activation::Mish),
            Activation::Tanh => each!(Activation::Tanh),
            Activation::Sigmoid => each!(Activation::Sigmoid),
            Activation::Identity => |_| {},
        }
    }
}

/// An activation applied in place by a kernel's epilogue: the runtime's own vectorised
/// function, or one generated at run time (the JIT's, which owns the activations of the
/// code it compiles).
#[derive(Clone, Copy)]
pub struct ActivationKernel(KernelFn);

#[derive(Clone, Copy)]
enum KernelFn {
    Runtime(fn(&mut [f32])),
    Generated(unsafe extern "C" fn(*mut f32, usize)),
}

impl ActivationKernel {
    /// The runtime's kernel for `act`.
    pub fn of(act: Activation) -> ActivationKernel {
        ActivationKernel(KernelFn::Runtime(act.f32_slice_fn()))
    }

    /// A generated kernel `f(ptr, len)` that applies an activation to the `len` floats at
    /// `ptr`, in place.
    ///
    /// # Safety
    /// `f` must read and write only those `len` floats, be callable from any thread, and stay
    /// valid (its code mapped) for as long as the returned value is used.
    pub unsafe fn generated(f: unsafe extern "C" fn(*mut f32, usize)) -> ActivationKernel {
        ActivationKernel(KernelFn::Generated(f))
    }

    /// Applies the activation to `values` in place.
    #[inline]
    pub fn apply(&self, values: &mut [f32]) {
        match self.0 {
            KernelFn::Runtime(f) => f(values),
            // SAFETY: `generated`'s contract: `f` touches only the `len` floats at the
            // pointer, which `values` owns exclusively here.
            KernelFn::Generated(f) => unsafe { f(values.as_mut_ptr(), values.len()) },
        }
    }
}

impl fmt::Debug for ActivationKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            KernelFn::Runtime(_) => "ActivationKernel(runtime)",
            KernelFn::Generated(_) => "ActivationKernel(generated)",
        })
    }
}

/// `exp_f32`'s constants (the generated code's GELU uses the same).
pub const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two (Cody and Waite) so that `n ln 2` subtracts exactly.
pub const LN2_HI: f32 = 0.693_145_75;
pub const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer with plain arithmetic.
pub const ROUND: f32 = 12_582_912.0;
/// `exp_f32`'s input range (its result stays a normal float).
pub const EXP_MIN: f32 = -87.0;
pub const EXP_MAX: f32 = 88.0;

/// `e^x` in f32 from arithmetic only (vectorisable): `x = n ln2 + r`, `|r| <= ln2 / 2`, a
/// degree-7 Taylor polynomial for `e^r` (truncation error < 1e-8), `2^n` built in the
/// exponent bits. Inputs are clamped to the normal range.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    // `n` as an integer, read from the mantissa of `shifted` (whose exponent is that of
    // 1.5 * 2^23): bit arithmetic, which vectorises, unlike a float-to-int cast (scalarised
    // for its saturation). Exact for the clamped range.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Horner in fused multiply-adds: half the instructions, and the same bits as the
    // generated code's vector `fma` (one rounding per step).
    let p = EXP_POLY[1..]
        .iter()
        .fold(EXP_POLY[0], |acc: f32, &c| acc.mul_add(r, c));
    f32::from_bits(((n_int + 127) as u32) << 23) * p
}

/// The coefficients of `erfcc`'s polynomial in `t`, highest degree first (Horner order).
pub const GELU_ERFC_POLY: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_9,
    -1.135_204,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];

/// `exp_f32`'s Taylor coefficients `1/k!`, highest degree first (Horner order).
pub const EXP_POLY: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// Exact (erf) GELU in f32 through erfc (Numerical Recipes' `erfcc`, fractional error
/// < 1.2e-7 for `z >= 0`): `GELU(x) = 0.5 x erfc(-x / sqrt 2)`, evaluated as
/// `x (1 - erfc(z) / 2)` for `x >= 0` and `x erfc(z) / 2` for `x < 0`, `z = |x| / sqrt 2`, so
/// the relative error stays ~1e-7 in the negative tail too.
#[inline(always)]
pub fn gelu_f32(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = GELU_ERFC_POLY[1..]
        .iter()
        .fold(GELU_ERFC_POLY[0], |acc: f32, &c| acc.mul_add(t, c));
    let erfc = t * exp_f32((-z).mul_add(z, poly));
    if x >= 0.0 {
        x * (1.0 - 0.5 * erfc)
    } else {
        0.5 * x * erfc
    }
}

#[inline(always)]
fn gelu_lanes(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = gelu_f32(*x));
}

/// Exact GELU over a slice, in place: the same arithmetic as [`gelu_f32`], compiled for the
/// widest vector unit the CPU has (identical results: the scalar form's `mul_add` is the
/// same single-rounding fma, in hardware or in libm).
pub fn gelu_slice(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX-512F and FMA (just checked).
            return unsafe { gelu_avx512(v) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (just checked).
            return unsafe { gelu_avx2(v) };
        }
    }
    gelu_lanes(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn gelu_avx512(v: &mut [f32]) {
    gelu_lanes(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(v: &mut [f32]) {
    gelu_lanes(v)
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hf_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 epilogue forms stay within ~1e-6 relative of the f64 definitions (absolute
    /// near zero, where GELU's output vanishes).
    #[test]
    fn vectorised_gelu_equals_the_scalar_one() {
        let mut v: Vec<f32> = (-20000..20000).map(|i| i as f32 * 0.0007 - 0.01).collect();
        let want: Vec<f32> = v.iter().map(|&x| gelu_f32(x)).collect();
        gelu_slice(&mut v);
        assert_eq!(v, want);
        let mut extremes = [f32::MAX, -f32::MAX, 100.0, -100.0, 0.0, -0.0, 1e-30, -1e-30];
        gelu_slice(&mut extremes);
        // Far tails: x itself, and (exp's input clamped at -87) a negligible negative value.
        assert_eq!(extremes[..3], [f32::MAX, -0.0, 100.0]);
        assert!(
            extremes[3] <= 0.0 && extremes[3] > -1e-30,
            "{}",
            extremes[3]
        );
        assert!(extremes[4..].iter().all(|v| v.abs() < 1e-29));
    }

    #[test]
    fn f32_activations_track_the_f64_definitions() {
        for &(_, act) in Activation::NAMES {
            let f = act.f32_fn();
            for i in -4000..4000 {
                let x = i as f32 * 0.0025 + 0.00037;
                let want = act.apply_f64(x as f64);
                let got = f(x) as f64;
                let tol = 1e-6 * want.abs() + 1e-7;
                assert!((got - want).abs() <= tol, "{act} at {x}: {got} vs {want}");
            }
        }
    }
}
