//! Ops over the kernels: the layer every backend's schedule calls.
//!
//! The attribute types of the fused ops (a [`Linear`] with its prologue and epilogue, a
//! [`Conv2d`] with its LayerNorm epilogue, ...) live here, beside the functions that run them,
//! so that the compiler's IR, the interpreter, the JIT and the code the `convnextv2!` macro
//! emits all describe and run an op the same way. Each function splits its work over the
//! current thread pool (see [`crate::pool`]) so that every output element is computed exactly
//! as on one thread: results do not depend on the thread count.

use std::fmt;

use crate::Activation;

/// How a value is laid out in memory, per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    /// Channels, then rows, then columns (PyTorch's default for images).
    Nchw,
    /// Rows, columns, then channels ("channels last").
    Nhwc,
    /// A feature vector per image.
    Features,
}

/// The type of a value, per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ValueType {
    pub layout: Layout,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ValueType {
    pub fn nchw(channels: usize, height: usize, width: usize) -> Self {
        ValueType {
            layout: Layout::Nchw,
            channels,
            height,
            width,
        }
    }

    pub fn nhwc(channels: usize, height: usize, width: usize) -> Self {
        ValueType {
            layout: Layout::Nhwc,
            channels,
            height,
            width,
        }
    }

    pub fn features(channels: usize) -> Self {
        ValueType {
            layout: Layout::Features,
            channels,
            height: 1,
            width: 1,
        }
    }

    /// Per-image dimensions in memory order.
    pub fn dims(&self) -> Vec<usize> {
        match self.layout {
            Layout::Nchw => vec![self.channels, self.height, self.width],
            Layout::Nhwc => vec![self.height, self.width, self.channels],
            Layout::Features => vec![self.channels],
        }
    }

    /// Spatial positions per image.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    /// Elements per image.
    pub fn numel(&self) -> usize {
        self.channels * self.pixels()
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, h, w) = (self.channels, self.height, self.width);
        match self.layout {
            Layout::Nchw => write!(f, "[N,{c},{h},{w}] NCHW"),
            Layout::Nhwc => write!(f, "[N,{h},{w},{c}] NHWC"),
            Layout::Features => write!(f, "[N,{c}]"),
        }
    }
}

/// Which axis a LayerNorm normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum NormAxis {
    /// The channel axis of an NCHW value (`ConvNextV2LayerNorm(data_format="channels_first")`).
    ChannelsFirst,
    /// The last axis of an NHWC or feature value (`nn.LayerNorm`).
    ChannelsLast,
}

/// The arithmetic of a GEMM-shaped op (a linear layer, a conv over patches).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// Weights and the activations (after the prologue) rounded to bf16 (nearest even), the
    /// products accumulated in f32 ([`crate::kernels::bf16`]), the f32 epilogue.
    Bf16,
    /// Weights quantised per output channel and activations per row (pixel) to 8 bits, exact
    /// integer products, the result dequantised to f32 before the epilogue
    /// ([`crate::kernels::quantize`]).
    Int8,
}

impl Precision {
    /// Every precision and its name: the one table the command line, the `convnextv2!`
    /// macro, the C header and the Python package read.
    pub const NAMES: [(Precision, &'static str); 3] = [
        (Precision::F32, "f32"),
        (Precision::Bf16, "bf16"),
        (Precision::Int8, "int8"),
    ];

    /// `f32`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        crate::names::name_of(&Self::NAMES, &self)
    }

    pub fn from_name(name: &str) -> Option<Precision> {
        crate::names::value_of(&Self::NAMES, name)
    }

    /// `f32, bf16 or int8`, for messages.
    pub fn names() -> String {
        crate::names::listed(&Self::NAMES)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub groups: usize,
    /// Layout of both input and output: NCHW as Hugging Face, NHWC after the layout pass.
    pub layout: Layout,
    /// Prologue: every input pixel's channel vector is normalised (a LayerNorm without affine
    /// part, this eps) as it is read.
    pub input_norm: Option<f64>,
    /// Epilogue: every output pixel's channel vector is layer-normalised before it is written.
    pub output_norm: Option<OutputNorm>,
    /// The product's arithmetic (bf16 or int8 for a conv over non-overlapping patches in NHWC
    /// only).
    #[serde(default)]
    pub precision: Precision,
}

impl Conv2d {
    /// A plain NCHW convolution, as `nn.Conv2d` defines it.
    pub fn nchw(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Conv2d {
        Conv2d {
            in_channels,
            out_channels,
            kernel: [kernel, kernel],
            stride: [stride, stride],
            padding: [padding, padding],
            groups,
            layout: Layout::Nchw,
            input_norm: None,
            output_norm: None,
            precision: Precision::F32,
        }
    }

    /// Depthwise: one filter per channel.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }
}

/// A LayerNorm applied in an op's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutputNorm {
    pub eps: f64,
    /// With gamma and beta (parameters `norm_weight`, `norm_bias`).
    pub affine: bool,
}

/// A LayerNorm; with `affine`, parameters `weight` (gamma) and `bias` (beta).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerNorm {
    pub channels: usize,
    pub eps: f64,
    pub axis: NormAxis,
    /// `false` once a pass has folded gamma and beta into the consumer.
    pub affine: bool,
}

/// `nn.Linear` over the last axis, with the fusions the optimiser adds. Operands: the input,
/// then a per-sample channel scale if `input_scale`, then the residual if `residual`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    /// Prologue: each input row is normalised (LayerNorm without affine part, this eps).
    pub input_norm: Option<f64>,
    /// Prologue: each input row is multiplied, channel by channel, by its sample's row of the
    /// `[N, in_features]` scale operand (GRN folded into the consumer).
    pub input_scale: bool,
    /// Epilogue: activation after the bias.
    pub activation: Option<Activation>,
    /// Epilogue: the residual operand is added last.
    pub residual: bool,
    /// Epilogue: the per-sample, per-output-channel sum of squares of the output (after the
    /// activation) is accumulated as a side result, for a GRN that reads this Linear with
    /// [`GrnSource::ProducerSums`]. Reduced in a fixed order, whatever the thread count.
    pub sum_squares: bool,
    /// The product's arithmetic.
    #[serde(default)]
    pub precision: Precision,
}

impl Linear {
    /// A plain `nn.Linear`.
    pub fn new(in_features: usize, out_features: usize) -> Linear {
        Linear {
            in_features,
            out_features,
            input_norm: None,
            input_scale: false,
            activation: None,
            residual: false,
            sum_squares: false,
            precision: Precision::F32,
        }
    }
}

/// Where `GrnScale` gets its per-channel sums of squares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum GrnSource {
    /// It reads its operand's values (a full pass over them).
    Values,
    /// Its operand is a Linear with `sum_squares`, which accumulated them in its epilogue.
    ProducerSums,
}

/// Permutations between the two image layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Permute {
    /// `x.permute(0, 2, 3, 1)`.
    NchwToNhwc,
    /// `x.permute(0, 3, 1, 2)`.
    NhwcToNchw,
}
mod execute;

pub use execute::*;
