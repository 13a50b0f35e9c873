//! The activations Hugging Face's `ACT2FN` offers that ConvNeXt V2 configs use.

use std::fmt;

/// An elementwise activation, as named by `hidden_act` in a Hugging Face config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

/// An activation applied in place by a kernel's epilogue, over a whole tile at a time (the
/// runtime's vectorised function for it).
#[derive(Clone, Copy)]
pub struct ActivationKernel {
    slice: fn(&mut [f32]),
    activation: Activation,
}

impl ActivationKernel {
    /// The runtime's kernel for `act`.
    pub fn of(act: Activation) -> ActivationKernel {
        ActivationKernel {
            slice: act.f32_slice_fn(),
            activation: act,
        }
    }

    /// Which activation it computes (a GEMM epilogue evaluates some in registers, with the
    /// same arithmetic).
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Applies the activation to `values` in place.
    #[inline]
    pub fn apply(&self, values: &mut [f32]) {
        (self.slice)(values)
    }
}

impl fmt::Debug for ActivationKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ActivationKernel")
    }
}

/// `erf(x / sqrt 2) ~= x P(x^2) / Q(x^2)`: `P`'s coefficients, of `x^1, x^3 .. x^11` (lowest
/// first). Fitted by `tools/fit_gelu_erf.py` (minimax on `[0, 5.2]`; 6e-9 in f64).
pub const GELU_ERF_NUMERATOR: [f32; 6] = [
    0.797_884_5,
    0.065_088_25,
    0.009_217_24,
    0.000_313_714_6,
    1.281_574_1e-5,
    4.946_310_7e-8,
];

/// `Q`'s coefficients, of `x^0, x^2 .. x^10` (lowest first).
pub const GELU_ERF_DENOMINATOR: [f32; 6] = [
    1.0,
    0.248_242_36,
    0.027_926_447,
    0.001_817_178_6,
    7.049_477_4e-5,
    1.258_879_5e-6,
];

/// Where the f32 rational reaches 1: inputs are clamped to `[-GELU_ERF_CLAMP, GELU_ERF_CLAMP]`.
pub const GELU_ERF_CLAMP: f32 = 5.1898;

/// Exact (erf) GELU in f32, `0.5 x (1 + erf(x / sqrt 2))`, PyTorch's formula, with
/// `erf(x / sqrt 2)` a rational function of `x` (odd numerator over even denominator, each a
/// Horner chain of fused multiply-adds, one division): 18 vector instructions, no `exp`.
/// Error of `erf` in f32 <= 2.7e-7 absolute (PyTorch's own f32 `erf` is ~1 ulp, 6e-8 near 1);
/// of GELU <= 1.8e-7 max(1, |x|) (measured by the fit script over `[-10, 10]`).
#[inline(always)]
pub fn gelu_f32(x: f32) -> f32 {
    let c = x.clamp(-GELU_ERF_CLAMP, GELU_ERF_CLAMP);
    let c2 = c * c;
    let erf = c * horner(&GELU_ERF_NUMERATOR, c2) / horner(&GELU_ERF_DENOMINATOR, c2);
    (0.5 * x) * (erf + 1.0)
}

/// `sum_k coefs[k] t^k` by Horner from the highest coefficient, each step one fused
/// multiply-add (the generated code's `fma`, step for step).
#[inline(always)]
fn horner(coefs: &[f32; 6], t: f32) -> f32 {
    coefs[..5]
        .iter()
        .rev()
        .fold(coefs[5], |acc, &k| acc.mul_add(t, k))
}

#[inline(always)]
fn gelu_lanes(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = gelu_f32(*x));
}

/// Exact GELU over a slice, in place: the same arithmetic as [`gelu_f32`], compiled for the
/// widest vector unit the CPU has (identical results: the scalar form's `mul_add` is the
/// same single-rounding fma, in hardware or in libm).
pub fn gelu_slice(v: &mut [f32]) {
    match super::Isa::detect().width() {
        // SAFETY: `Isa::detect` names only an ISA the CPU supports (AVX-512F with FMA, AVX2
        // with FMA).
        #[cfg(target_arch = "x86_64")]
        super::Width::Avx512 => unsafe { gelu_avx512(v) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        super::Width::Avx2 => unsafe { gelu_avx2(v) },
        super::Width::Portable => gelu_lanes(v),
    }
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
        // Far tails: x itself, and zero (erf is exactly -1 from the clamp on).
        assert_eq!(extremes[..4], [f32::MAX, -0.0, 100.0, -0.0]);
        assert!(extremes[4..].iter().all(|v| v.abs() < 1e-29));
    }

    /// The rational erf never passes -1 below zero, so GELU of a negative input is never
    /// positive: every f32 from -4 to past the clamp.
    #[test]
    fn gelu_of_a_negative_input_is_not_positive() {
        let mut x = -4.0f32;
        while x > -(GELU_ERF_CLAMP + 0.01) {
            assert!(gelu_f32(x) <= 0.0, "gelu({x}) = {}", gelu_f32(x));
            x = f32::from_bits(x.to_bits() + 1);
        }
    }

    #[test]
    fn f32_activations_track_the_f64_definitions() {
        for &(_, act) in Activation::NAMES {
            let f = act.f32_fn();
            for i in -4000..4000 {
                let x = i as f32 * 0.0025 + 0.00037;
                let want = act.apply_f64(x as f64);
                let got = f(x) as f64;
                let mut tol = 1e-6 * want.abs() + 1e-7;
                if act == Activation::Gelu {
                    // The rational erf's f32 error, 1.8e-7 max(1, |x|) as fitted (PyTorch's
                    // own f32 formula, with a correctly rounded erf, reaches 1e-7 max(1, |x|)).
                    tol = tol.max(2e-7 * x.abs().max(1.0) as f64);
                }
                assert!((got - want).abs() <= tol, "{act} at {x}: {got} vs {want}");
            }
        }
    }
}
