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
            Activation::Gelu => |x| Activation::Gelu.apply_f64(x as f64) as f32,
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

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hf_name())
    }
}
