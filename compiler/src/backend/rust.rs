//! The Rust code generator behind `convnextv2!`: the lowered program of one model, for one
//! input size, as statics of the runtime's own types, run by the runtime's one executor.
//!
//! The program (lowered for the logits and pooled features, or a backbone's feature maps,
//! by the one front end, [`crate::frontend`]) is emitted as data: its weight table, slots,
//! steps and phases, each value written by [`RustLiteral`] from its `serde` form. The forward
//! pass is one call, [`cnx_runtime::executor::run_phases`]: the interpreter's loop over the
//! same steps, on the same ops. The emitted code does not grow with the number of blocks (only
//! the step table does), and no step is bound to its op anywhere but in the executor.
//!
//! [`expand`] is the whole macro (arguments in, items or a spanned `compile_error!` out), so
//! the proc-macro crate is a shim and everything here is testable without a proc-macro context.

use std::path::{Path, PathBuf};

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{LitBool, LitInt, LitStr, Token};

use super::literal::RustLiteral;
use crate::builder::{BuildError, BuildOptions};
use crate::config::ConvNextV2Config;
use crate::frontend::{self, Target};
use crate::ir::{outputs, Precision};
use crate::lower::LowerError;
use crate::passes::PassError;
use crate::presets;
use crate::verify::VerifyError;
use cnx_runtime::program::Program;

/// Why a model could not be emitted. The macro turns it into a `compile_error!`.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The input size does not fit the model (a user error).
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("this is a bug in cnx: {0}")]
    Verify(#[from] VerifyError),
    #[error("this is a bug in cnx: {0}")]
    Pass(#[from] PassError),
    #[error("this is a bug in cnx: {0}")]
    Lower(#[from] LowerError),
    #[error("this is a bug in cnx: the graph has no logits")]
    NoLogits,
    #[error("this is a bug in cnx: emitted invalid Rust: {0}")]
    InvalidRust(String),
}

impl EmitError {
    /// Whether the caller's input is at fault (an input size the model cannot take) rather
    /// than cnx.
    pub fn is_user_error(&self) -> bool {
        matches!(self, EmitError::Build(_))
    }
}

/// What to compile: a model config, an input size, fused or not, and what to call it.
#[derive(Debug, Clone)]
pub struct EmitSpec {
    /// The generated type's name.
    pub name: String,
    /// How the user named the model (preset or path), for docs.
    pub model: String,
    pub config: ConvNextV2Config,
    pub input_hw: (usize, usize),
    pub fuse: bool,
    /// A checkpoint to compile into the binary (absolute path).
    pub embedded_weights: Option<PathBuf>,
    /// A `config.json` read from disk (absolute path): tracked so cargo rebuilds on change.
    pub config_path: Option<PathBuf>,
    /// Emit `ConvNextV2Backbone` (its `feature_maps`) instead of the classifier.
    pub backbone: bool,
    /// The products' arithmetic (`precision = "bf16"` or `"int8"`).
    pub precision: Precision,
}

impl EmitSpec {
    /// What the front end compiles for it.
    pub fn target(&self) -> Target {
        Target {
            input_hw: self.input_hw,
            options: BuildOptions {
                backbone: self.backbone,
                ..BuildOptions::default()
            },
            fuse: self.fuse,
            precision: self.precision,
        }
    }
}

/// The macro: parses `args` (`config = "...", name = T, image_size = N, fuse = bool,
/// weights = "..."`), resolving paths against `manifest_dir`, and emits the model's items;
/// any mistake becomes a `compile_error!` pointing at the offending token.
pub fn expand(args: TokenStream, manifest_dir: &Path) -> TokenStream {
    match syn::parse2::<MacroArgs>(args).and_then(|a| a.into_spec(manifest_dir)) {
        Ok(spec) => match emit(&spec) {
            Ok(tokens) => tokens,
            Err(e) => syn::Error::new(Span::call_site(), e.to_string()).to_compile_error(),
        },
        Err(e) => e.to_compile_error(),
    }
}

/// The macro's arguments parsed and resolved (presets, `config.json` read from
/// `manifest_dir`, `image_size` checked), without compiling anything: what [`expand`] does
/// before it emits. Fuzzed (`tests/fuzz`).
pub fn parse_args(args: TokenStream, manifest_dir: &Path) -> syn::Result<EmitSpec> {
    syn::parse2::<MacroArgs>(args).and_then(|a| a.into_spec(manifest_dir))
}

/// The model's items as formatted Rust source (what `cnx compile --emit rust` prints).
pub fn emit_source(spec: &EmitSpec) -> Result<String, EmitError> {
    let tokens = emit(spec)?;
    let file: syn::File = syn::parse2(tokens).map_err(|e| EmitError::InvalidRust(e.to_string()))?;
    Ok(prettyplease::unparse(&file))
}

/// The macro's arguments, as written.
struct MacroArgs {
    config: Option<LitStr>,
    name: Option<Ident>,
    image_size: Option<TokenStream>,
    fuse: Option<LitBool>,
    weights: Option<LitStr>,
    backbone: Option<LitBool>,
    precision: Option<Precision>,
    call_site: Span,
}

const OPTIONS: &str = "config, name, image_size, fuse, weights, backbone, precision";

impl Parse for MacroArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = MacroArgs {
            config: None,
            name: None,
            image_size: None,
            fuse: None,
            weights: None,
            backbone: None,
            precision: None,
            call_site: input.span(),
        };
        let pairs =
            Punctuated::<(Ident, TokenStream), Token![,]>::parse_terminated_with(input, |input| {
                let key: Ident = input.parse()?;
                input
                    .parse::<Token![=]>()
                    .map_err(|e| syn::Error::new(e.span(), format!("expected `{key} = ...`")))?;
                let mut value = TokenStream::new();
                while !input.is_empty() && !input.peek(Token![,]) {
                    value.extend([input.parse::<proc_macro2::TokenTree>()?]);
                }
                Ok((key, value))
            })?;
        for (key, value) in pairs {
            let dup = |set: bool| -> syn::Result<()> {
                if set {
                    Err(syn::Error::new(
                        key.span(),
                        format!("`{key}` is given twice"),
                    ))
                } else {
                    Ok(())
                }
            };
            match key.to_string().as_str() {
                "config" => {
                    dup(args.config.is_some())?;
                    args.config = Some(syn::parse2(value).map_err(|e| {
                        syn::Error::new(e.span(), "`config` takes a string: a preset (\"tiny-1k-224\"), a hub id or a path to config.json")
                    })?);
                }
                "name" => {
                    dup(args.name.is_some())?;
                    let name: Ident = syn::parse2(value).map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "`name` takes a type name, e.g. `name = TinyClassifier`",
                        )
                    })?;
                    // The emitter derives module names from it (`__cnx_<snake>`).
                    if name.to_string().starts_with("r#") {
                        return Err(syn::Error::new(
                            name.span(),
                            "`name` cannot be a raw identifier",
                        ));
                    }
                    args.name = Some(name);
                }
                "image_size" => {
                    dup(args.image_size.is_some())?;
                    args.image_size = Some(value);
                }
                "fuse" => {
                    dup(args.fuse.is_some())?;
                    args.fuse = Some(syn::parse2(value).map_err(|e| {
                        syn::Error::new(e.span(), "`fuse` takes `true` or `false`")
                    })?);
                }
                "backbone" => {
                    dup(args.backbone.is_some())?;
                    args.backbone = Some(syn::parse2(value).map_err(|e| {
                        syn::Error::new(e.span(), "`backbone` takes `true` or `false`")
                    })?);
                }
                "precision" => {
                    dup(args.precision.is_some())?;
                    args.precision = Some(parse_precision(value)?);
                }
                "weights" => {
                    dup(args.weights.is_some())?;
                    args.weights = Some(syn::parse2(value).map_err(|e| {
                        syn::Error::new(e.span(), "`weights` takes a path to a .safetensors file")
                    })?);
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown option `{other}` (options: {OPTIONS})"),
                    ))
                }
            }
        }
        Ok(args)
    }
}

impl MacroArgs {
    fn into_spec(self, manifest_dir: &Path) -> syn::Result<EmitSpec> {
        let Some(config_lit) = self.config else {
            return Err(syn::Error::new(
                self.call_site,
                "missing `config = \"...\"` (a preset such as \"tiny-1k-224\", or a path to config.json)",
            ));
        };
        let model = config_lit.value();
        let err = |message: String| syn::Error::new(config_lit.span(), message);
        let (config, config_path) = if let Some(preset) = presets::find(&model) {
            let config = ConvNextV2Config::from_json(preset.config_json)
                .map_err(|e| err(format!("preset `{model}`: {e}")))?;
            (config, None)
        } else if looks_like_path(&model) {
            let path = manifest_dir.join(&model);
            let path = if path.is_dir() {
                path.join("config.json")
            } else {
                path
            };
            // Messages name the file as the user wrote it.
            let shown = if path.ends_with("config.json") && !model.ends_with(".json") {
                format!("{}/config.json", model.trim_end_matches('/'))
            } else {
                model.clone()
            };
            let text = crate::config::read_text(&path)
                .map_err(|e| err(format!("cannot read {shown}: {e}")))?;
            let config =
                ConvNextV2Config::from_json(&text).map_err(|e| err(format!("{shown}: {e}")))?;
            (config, Some(path))
        } else {
            let close = presets::suggestions(&model);
            let hint = if close.is_empty() {
                String::new()
            } else {
                format!("; did you mean {}?", close.join(", "))
            };
            return Err(err(format!(
                "unknown preset `{model}` (and no such config.json){hint}"
            )));
        };
        let input_hw = match self.image_size {
            Some(tokens) => image_size(tokens, config.patch_size)?,
            None => (config.image_size, config.image_size),
        };
        let embedded_weights = match &self.weights {
            Some(lit) => {
                let path = manifest_dir.join(lit.value());
                if !path.is_file() {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!("no such weights file: {}", lit.value()),
                    ));
                }
                Some(path)
            }
            None => None,
        };
        Ok(EmitSpec {
            name: self
                .name
                .map_or_else(|| "ConvNextV2".to_string(), |n| n.to_string()),
            model,
            config,
            input_hw,
            fuse: self.fuse.is_none_or(|b| b.value),
            embedded_weights,
            config_path,
            backbone: self.backbone.is_some_and(|b| b.value),
            precision: self.precision.unwrap_or_default(),
        })
    }
}

/// `image_size = 384` (square) or `image_size = (97, 75)` (height, width), each side within
/// `patch_size..=4096`.
fn image_size(tokens: TokenStream, patch_size: usize) -> syn::Result<(usize, usize)> {
    let usage = "`image_size` takes an integer or (height, width), e.g. `image_size = 384` or `image_size = (97, 75)`";
    let side = |lit: &LitInt| -> syn::Result<usize> {
        let n: usize = lit.base10_parse()?;
        if n < patch_size || n > 4096 {
            return Err(syn::Error::new(
                lit.span(),
                format!("image_size {n} is out of range ({patch_size}..=4096)"),
            ));
        }
        Ok(n)
    };
    if let Ok(lit) = syn::parse2::<LitInt>(tokens.clone()) {
        let n = side(&lit)?;
        return Ok((n, n));
    }
    let tuple: syn::ExprTuple =
        syn::parse2(tokens).map_err(|e| syn::Error::new(e.span(), usage))?;
    let sides: Vec<&LitInt> = tuple
        .elems
        .iter()
        .filter_map(|e| match e {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(i),
                ..
            }) => Some(i),
            _ => None,
        })
        .collect();
    match sides[..] {
        [h, w] if tuple.elems.len() == 2 => Ok((side(h)?, side(w)?)),
        _ => Err(syn::Error::new_spanned(&tuple, usage)),
    }
}

fn looks_like_path(s: &str) -> bool {
    s.ends_with(".json") || s.starts_with('.') || s.starts_with('/') || s.contains('/')
}

/// Emits the items of one compiled model.
pub fn emit(spec: &EmitSpec) -> Result<TokenStream, EmitError> {
    emit_suffixed(spec).map(unsuffix)
}

/// Integer literals without their `usize` suffix (every integer the emitter writes is a
/// `usize` in a position that infers it): `[96, 3, 4, 4]` reads better than `[96usize, ...]`.
fn unsuffix(tokens: TokenStream) -> TokenStream {
    tokens
        .into_iter()
        .map(|t| match t {
            proc_macro2::TokenTree::Literal(l) => {
                let text = l.to_string();
                match text.strip_suffix("usize").map(str::parse::<usize>) {
                    Some(Ok(n)) => {
                        let mut u = Literal::usize_unsuffixed(n);
                        u.set_span(l.span());
                        proc_macro2::TokenTree::Literal(u)
                    }
                    _ => proc_macro2::TokenTree::Literal(l),
                }
            }
            proc_macro2::TokenTree::Group(g) => {
                let mut ng = proc_macro2::Group::new(g.delimiter(), unsuffix(g.stream()));
                ng.set_span(g.span());
                proc_macro2::TokenTree::Group(ng)
            }
            other => other,
        })
        .collect()
}

pub use crate::frontend::Checkpoint;

/// The model's program (logits and pooled features; a backbone's feature maps) and the
/// checkpoint tensors it is validated against, from the one front end.
pub fn lower_spec(spec: &EmitSpec) -> Result<(Program, Checkpoint), EmitError> {
    frontend::compile(&spec.config, &spec.target())
}

fn emit_suffixed(spec: &EmitSpec) -> Result<TokenStream, EmitError> {
    let (program, checkpoint) = lower_spec(spec)?;
    let program = program.with_read_weights();
    let module = format_ident!("__cnx_{}", to_snake(&spec.name));
    let model_type = model_type(spec, &program, program.weights.len(), &module);
    let tables = program_tables(spec, &program, &checkpoint)?;
    let track_config = spec.config_path.as_ref().map(|p| {
        let p = p.display().to_string();
        quote!(
            const _: &[u8] = include_bytes!(#p);
        )
    });
    Ok(quote! {
        #[doc(hidden)]
        #[allow(unused_imports, clippy::all, clippy::pedantic)]
        mod #module {
            use ::core::ops::Range;
            use ::std::borrow::Cow;
            use ::convnextv2::compiled::{Weights, Workspace};
            use ::convnextv2::ops::{
                Conv2d, LayerNorm, Layout, Linear, NormAxis, OutputNorm, Permute, Precision,
                ValueType,
            };
            use ::convnextv2::program::{AffineParams, Phase, Prepare, Step, StepOp, Value, WeightSlot};
            use ::convnextv2::weights::derive::{DeriveRule, Derivation, ParamSpec};
            use ::convnextv2::Activation;

            #track_config
            #tables

            /// The forward pass: `pixel_values` in the input slot, the outputs in theirs;
            /// the steps run by the runtime's one executor, phase by phase, op- or
            /// image-parallel as it decides from the batch and the threads.
            pub(super) fn forward(w: &Weights, ws: &mut Workspace, batch: usize) {
                debug_assert_eq!(ws.batch(), batch);
                ::convnextv2::executor::run_phases(&STEPS, &PHASES, w, ws);
            }
        }

        #model_type
    })
}

/// The program as statics: the checkpoint it is validated against, its weight table, its
/// slots, its steps and phases (each a literal of the runtime's own types, [`RustLiteral`]).
fn program_tables(
    spec: &EmitSpec,
    program: &Program,
    checkpoint: &Checkpoint,
) -> Result<TokenStream, EmitError> {
    let checkpoint_entries = checkpoint
        .iter()
        .map(|(name, shape)| quote!((#name, &[#(#shape),*])));
    let weights = program.weights.iter().map(RustLiteral);
    let steps = program.steps.iter().map(RustLiteral);
    let phases = program.phases.iter().map(RustLiteral);
    let (n_weights, n_steps, n_phases) = (
        program.weights.len(),
        program.steps.len(),
        program.phases.len(),
    );
    let input_slot = program.input_value.slot;
    let slot_of = |name: &str| {
        program
            .output(name)
            .map(|o| o.value.slot)
            .ok_or(EmitError::NoLogits)
    };
    let output_slots = if spec.backbone {
        let maps: Vec<usize> = program
            .outputs
            .iter()
            .filter(|o| o.name.starts_with("feature_maps_"))
            .map(|o| o.value.slot)
            .collect();
        let n = maps.len();
        quote!(pub(super) const FEATURE_MAP_SLOTS: [usize; #n] = [#(#maps),*];)
    } else {
        let (logits, pooled) = (slot_of(outputs::LOGITS)?, slot_of(outputs::POOLER_OUTPUT)?);
        quote! {
            pub(super) const LOGITS_SLOT: usize = #logits;
            pub(super) const POOLED_SLOT: usize = #pooled;
        }
    };
    let (slot_sizes, sums_sizes) = (&program.slot_sizes, &program.sums_sizes);
    let (n_slots, n_sums) = (slot_sizes.len(), sums_sizes.len());
    Ok(quote! {
        /// The checkpoint tensors the model reads, as Hugging Face names and shapes them.
        pub(super) const CHECKPOINT: &[(&str, &[usize])] = &[#(#checkpoint_entries),*];
        /// Every parameter the steps read: checkpoint tensors and derived ones.
        pub(super) static WEIGHTS: [WeightSlot; #n_weights] = [#(#weights),*];
        pub(super) const INPUT_SLOT: usize = #input_slot;
        #output_slots
        /// f32 per image of each workspace slot, and f64 per image of each sums slot.
        pub(super) const SLOT_SIZES: [usize; #n_slots] = [#(#slot_sizes),*];
        pub(super) const SUMS_SIZES: [usize; #n_sums] = [#(#sums_sizes),*];
        /// The program's steps, as `cnx compile --emit program` lists them.
        pub(super) static STEPS: [Step; #n_steps] = [#(#steps),*];
        /// The steps cut into phases.
        pub(super) static PHASES: [Phase; #n_phases] = [#(#phases),*];
    })
}

/// The public type: constants, loading, forward, classify.
fn model_type(spec: &EmitSpec, program: &Program, n_weights: usize, module: &Ident) -> TokenStream {
    let labels = &spec.config.id2label;
    let n_labels = labels.len();
    let input = program.input;
    let (c, h, w) = (input.channels, input.height, input.width);
    let hidden = &spec.config.hidden_sizes;
    let depths = &spec.config.depths;
    let n_stages = hidden.len();
    let hidden_size = hidden.last().copied().unwrap_or(0);
    let name = format_ident!("{}", spec.name);
    let fused = spec.fuse;
    let model = &spec.model;
    let doc = format!(
        " ConvNeXt V2 classifier `{model}` compiled by cnx for {h}x{w} input ({} graph: {} steps, {} weight slots, {} workspace slots).",
        if fused { "fused" } else { "unfused" },
        program.steps.len(),
        n_weights,
        program.slot_sizes.len()
    );
    let embedded = spec.embedded_weights.as_ref().map(|p| {
        let p = p.display().to_string();
        quote! {
            /// The model with the checkpoint compiled into the binary.
            pub fn embedded() -> ::core::result::Result<Self, ::convnextv2::Error> {
                // 64-byte aligned, so the checkpoint's f32 tensors are used in place.
                #[repr(C, align(64))]
                struct Aligned<B: ?Sized>(B);
                static BYTES: &Aligned<[u8]> = &Aligned(*include_bytes!(#p));
                Self::from_store(::convnextv2::WeightStore::from_static_bytes(&BYTES.0)?)
            }
        }
    });
    let (heads, feature_consts) = if spec.backbone {
        let maps: Vec<TokenStream> = program
            .outputs
            .iter()
            .filter(|o| o.name.starts_with("feature_maps_"))
            .map(|o| {
                let (mc, mh, mw) = (o.ty.channels, o.ty.height, o.ty.width);
                quote!([#mc, #mh, #mw])
            })
            .collect();
        let n = maps.len();
        (
            backbone_methods(module, (c, h, w)),
            quote! {
                /// Each feature map's channels, height and width per image (NCHW), in stage order.
                pub const FEATURE_MAPS: [[usize; 3]; #n] = [#(#maps),*];
            },
        )
    } else {
        (
            classifier_methods(&name, module, (c, h, w), n_labels),
            quote!(),
        )
    };
    let methods = model_methods(module, heads);
    quote! {
        #[doc = #doc]
        pub struct #name {
            weights: ::convnextv2::compiled::Weights,
            workspace: ::convnextv2::compiled::SharedWorkspace,
            threads: usize,
            non_finite: ::convnextv2::program::NonFinite,
        }

        impl #name {
            /// The model named in the macro call.
            pub const MODEL: &'static str = #model;
            /// Input channels, height and width (`pixel_values` is `[batch, C, H, W]`).
            pub const INPUT_CHANNELS: usize = #c;
            pub const INPUT_HEIGHT: usize = #h;
            pub const INPUT_WIDTH: usize = #w;
            /// Channels of each stage.
            pub const HIDDEN_SIZES: [usize; #n_stages] = [#(#hidden),*];
            /// Features of an embedding (`pooler_output`): the last stage's channels.
            pub const HIDDEN_SIZE: usize = #hidden_size;
            /// Blocks of each stage.
            pub const DEPTHS: [usize; #n_stages] = [#(#depths),*];
            pub const NUM_LABELS: usize = #n_labels;
            /// Class names in index order (`id2label`).
            pub const LABELS: [&'static str; #n_labels] = [#(#labels),*];
            /// Whether the fusion passes ran.
            pub const FUSED: bool = #fused;
            #feature_consts

            #embedded
            #methods
        }
    }
}

/// Loading, threads, forward and classify: the same for every model but its constants.
fn model_methods(module: &Ident, heads: TokenStream) -> TokenStream {
    quote! {
        /// Loads a checkpoint (a `.safetensors` file, a sharded index or a model directory;
        /// Hugging Face or timm names), checks it against the model and prepares it.
        pub fn load(path: impl AsRef<::std::path::Path>) -> ::core::result::Result<Self, ::convnextv2::Error> {
            Self::from_store(::convnextv2::WeightStore::open(path.as_ref())?)
        }

        /// As [`Self::load`], from the bytes of a `.safetensors` file.
        pub fn from_bytes(bytes: &[u8]) -> ::core::result::Result<Self, ::convnextv2::Error> {
            Self::from_store(::convnextv2::WeightStore::from_bytes(bytes)?)
        }

        /// As [`Self::load`], from an opened checkpoint (the runtime's one load path:
        /// validate, derive, retain, prepare).
        pub fn from_store(store: ::convnextv2::WeightStore) -> ::core::result::Result<Self, ::convnextv2::Error> {
            Ok(Self {
                weights: ::convnextv2::compiled::Weights::load(store, #module::CHECKPOINT.iter().copied(), &#module::WEIGHTS)?,
                workspace: ::convnextv2::compiled::SharedWorkspace::new(&#module::SLOT_SIZES, &#module::SUMS_SIZES),
                threads: ::convnextv2::pool::available(),
                non_finite: ::convnextv2::program::NonFinite::Refuse,
            })
        }

        /// What forward calls do with NaN or infinite pixel values: refuse them (the default,
        /// `Error::NonFiniteInput` with their count and the first one's index) or, with
        /// `NonFinite::Propagate`, run and let IEEE arithmetic carry them to the logits.
        pub fn with_non_finite(mut self, policy: ::convnextv2::program::NonFinite) -> Self {
            self.non_finite = policy;
            self
        }

        /// Runs on `threads` threads (default: the machine's cores). Results do not
        /// depend on it.
        pub fn with_threads(mut self, threads: usize) -> Self {
            self.threads = threads.max(1);
            self
        }

        #heads
    }
}

/// A classifier's outputs: logits (forward, classify) and pooled features (embed).
fn classifier_methods(
    name: &Ident,
    module: &Ident,
    (c, h, w): (usize, usize, usize),
    n_labels: usize,
) -> TokenStream {
    quote! {
        /// Logits (`batch x NUM_LABELS`, row-major) of `batch` images given as
        /// `pixel_values` in Hugging Face's NCHW layout, preprocessed.
        pub fn forward(&self, pixel_values: &[f32], batch: usize) -> ::core::result::Result<::std::vec::Vec<f32>, ::convnextv2::Error> {
            // Checked first, so that `batch` is the real number of images before it sizes
            // anything.
            ::convnextv2::compiled::check_input(pixel_values, batch, [#c, #h, #w])?;
            let mut logits = ::std::vec![0.0; batch * Self::NUM_LABELS];
            self.forward_into(pixel_values, batch, &mut logits)?;
            Ok(logits)
        }

        /// As [`Self::forward`], into `logits` (`batch x NUM_LABELS`).
        pub fn forward_into(&self, pixel_values: &[f32], batch: usize, logits: &mut [f32]) -> ::core::result::Result<(), ::convnextv2::Error> {
            self.run_into(pixel_values, batch, logits, #module::LOGITS_SLOT, Self::NUM_LABELS, "logits")
        }

        /// Embeddings (`batch x HIDDEN_SIZE`, row-major): transformers' `pooler_output`, the
        /// final LayerNorm of the global average pool, of `batch` images.
        pub fn embed(&self, pixel_values: &[f32], batch: usize) -> ::core::result::Result<::std::vec::Vec<f32>, ::convnextv2::Error> {
            ::convnextv2::compiled::check_input(pixel_values, batch, [#c, #h, #w])?;
            let mut pooled = ::std::vec![0.0; batch * Self::HIDDEN_SIZE];
            self.embed_into(pixel_values, batch, &mut pooled)?;
            Ok(pooled)
        }

        /// As [`Self::embed`], into `pooled` (`batch x HIDDEN_SIZE`).
        pub fn embed_into(&self, pixel_values: &[f32], batch: usize, pooled: &mut [f32]) -> ::core::result::Result<(), ::convnextv2::Error> {
            self.run_into(pixel_values, batch, pooled, #module::POOLED_SLOT, Self::HIDDEN_SIZE, "pooled")
        }

        /// Runs the forward pass and copies workspace slot `slot` (`width` per image) into `out`.
        pub(crate) fn run_into(&self, pixel_values: &[f32], batch: usize, out: &mut [f32], slot: usize, width: usize, what: &str) -> ::core::result::Result<(), ::convnextv2::Error> {
            ::convnextv2::compiled::check_input(pixel_values, batch, [#c, #h, #w])?;
            ::convnextv2::program::check_finite(pixel_values, [#c, #h, #w], self.non_finite)?;
            if Some(out.len()) != batch.checked_mul(width) {
                return Err(::convnextv2::Error::InputShape {
                    what: what.into(),
                    expected: ::std::vec![batch, width],
                    found: ::std::vec![out.len()],
                });
            }
            let weights = &self.weights;
            self.workspace.with(batch, |ws| {
                ws.set(#module::INPUT_SLOT, pixel_values);
                ::convnextv2::pool::install(self.threads, || #module::forward(weights, ws, batch));
                out.copy_from_slice(ws.get(slot));
            });
            Ok(())
        }

        /// The `k` most probable labels of each image, best first.
        pub fn classify(&self, pixel_values: &[f32], batch: usize, k: usize) -> ::core::result::Result<::std::vec::Vec<::std::vec::Vec<::convnextv2::compiled::Prediction>>, ::convnextv2::Error> {
            static LABELS: [&str; #n_labels] = #name::LABELS;
            let logits = self.forward(pixel_values, batch)?;
            Ok(::convnextv2::compiled::top_k(&logits, &LABELS, k))
        }
    }
}

/// A backbone's outputs: its feature maps.
fn backbone_methods(module: &Ident, (c, h, w): (usize, usize, usize)) -> TokenStream {
    quote! {
        /// The feature maps of `batch` images (NCHW `pixel_values`, preprocessed), in stage
        /// order: map `k` is `batch x FEATURE_MAPS[k]` (C x H x W per image, NCHW), each
        /// selected stage through its LayerNorm, as transformers' `ConvNextV2Backbone` returns.
        pub fn feature_maps(&self, pixel_values: &[f32], batch: usize) -> ::core::result::Result<::std::vec::Vec<::std::vec::Vec<f32>>, ::convnextv2::Error> {
            ::convnextv2::compiled::check_input(pixel_values, batch, [#c, #h, #w])?;
            ::convnextv2::program::check_finite(pixel_values, [#c, #h, #w], self.non_finite)?;
            let weights = &self.weights;
            Ok(self.workspace.with(batch, |ws| {
                ws.set(#module::INPUT_SLOT, pixel_values);
                ::convnextv2::pool::install(self.threads, || #module::forward(weights, ws, batch));
                #module::FEATURE_MAP_SLOTS.iter().map(|&slot| ws.get(slot).to_vec()).collect()
            }))
        }
    }
}

/// `precision = "..."`: a name from the one table of precisions.
fn parse_precision(value: TokenStream) -> syn::Result<Precision> {
    let lit: LitStr = syn::parse2(value).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("`precision` takes {}", quoted_precisions()),
        )
    })?;
    Precision::from_name(&lit.value()).ok_or_else(|| {
        let names = Precision::names();
        let message = format!("unknown precision `{}` ({names})", lit.value());
        syn::Error::new(lit.span(), message)
    })
}

/// The precisions' names quoted, for messages: `"f32", "bf16" or "int8"`.
fn quoted_precisions() -> String {
    let names: Vec<String> = Precision::NAMES
        .iter()
        .map(|(_, n)| format!("\"{n}\""))
        .collect();
    let (last, rest) = names.split_last().expect("precisions");
    format!("{} or {last}", rest.join(", "))
}

fn to_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(args: &str, dir: &Path) -> String {
        expand(args.parse().unwrap(), dir).to_string()
    }

    #[test]
    fn mistakes_become_compile_errors_that_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path();
        let cases = [
            ("config = \"tiny-1k-22\"", "unknown preset `tiny-1k-22`"),
            ("config = \"tiny-1k-22\"", "did you mean tiny-1k-224"),
            (
                "config = \"tiny-1k-224\", colour = 3",
                "unknown option `colour`",
            ),
            (
                "config = \"tiny-1k-224\", name = 3",
                "`name` takes a type name",
            ),
            (
                "config = \"tiny-1k-224\", name = r#Tiny",
                "`name` cannot be a raw identifier",
            ),
            (
                "config = \"tiny-1k-224\", fuse = 1",
                "`fuse` takes `true` or `false`",
            ),
            (
                "config = \"tiny-1k-224\", image_size = 2",
                "image_size 2 is out of range",
            ),
            (
                "config = \"tiny-1k-224\", image_size = (97, 2)",
                "image_size 2 is out of range",
            ),
            (
                "config = \"tiny-1k-224\", image_size = (97,)",
                "`image_size` takes an integer or (height, width)",
            ),
            (
                "config = \"tiny-1k-224\", image_size = \"big\"",
                "`image_size` takes an integer or (height, width)",
            ),
            (
                "config = \"tiny-1k-224\", config = \"atto-1k-224\"",
                "`config` is given twice",
            ),
            ("name = Tiny", "missing `config"),
            (
                "config = \"nowhere/config.json\"",
                "cannot read nowhere/config.json",
            ),
            (
                "config = \"tiny-1k-224\", weights = \"w.safetensors\"",
                "no such weights file: w.safetensors",
            ),
        ];
        for (args, message) in cases {
            let out = expand_str(args, here);
            assert!(out.contains("compile_error"), "{args}: {out}");
            assert!(
                out.contains(message),
                "{args}: expected `{message}` in {out}"
            );
        }
        // An invalid config.json names the key.
        std::fs::write(
            here.join("config.json"),
            r#"{"model_type": "convnextv2", "depths": "three"}"#,
        )
        .unwrap();
        let out = expand_str("config = \"./config.json\"", here);
        assert!(
            out.contains("compile_error") && out.contains("depths"),
            "{out}"
        );
    }

    #[test]
    fn emitted_code_does_not_grow_with_the_blocks() {
        let spec = |preset: &str| EmitSpec {
            name: "Model".into(),
            model: preset.into(),
            config: ConvNextV2Config::from_json(presets::find(preset).unwrap().config_json)
                .unwrap(),
            input_hw: (64, 64),
            fuse: true,
            embedded_weights: None,
            config_path: None,
            backbone: false,
            precision: Precision::F32,
        };
        let count = |src: &str, pat: &str| src.matches(pat).count();
        let tiny = emit_source(&spec("tiny-1k-224")).unwrap();
        let huge = emit_source(&spec("huge-1k-224")).unwrap();
        // The program is data: one function, the forward pass, runs every block of every
        // stage through the runtime's executor; no op is called from the emitted code.
        for src in [&tiny, &huge] {
            assert_eq!(count(src, "\n    pub(super) fn "), 1, "{src}");
            assert_eq!(count(src, "\n    fn "), 0);
            assert_eq!(count(src, "run_phases(&STEPS, &PHASES"), 1);
            for call in ["ops::conv2d(", "ops::linear(", "ops::grn_scale(", "ws.run("] {
                assert_eq!(count(src, call), 0, "{call}");
            }
        }
        // tiny: 18 blocks of 2 linear layers, 3 downsamplings, the stem and the head's
        // classifier fused with its pool and norm.
        assert_eq!(count(&tiny, "StepOp::Linear {"), 36);
        assert_eq!(count(&tiny, "StepOp::Conv2d {"), 18 + 3 + 1);
        // huge has 40 blocks to tiny's 18: only the tables grow, the code does not.
        let code = |src: &str| -> usize {
            src.split("\n    pub(super) fn ")
                .skip(1)
                .map(|f| f.split("\n    }\n").next().unwrap().len())
                .sum()
        };
        assert_eq!(code(&tiny), code(&huge));
        assert!(tiny.contains("static STEPS: [Step; "));
        // No weight values in the code: names and shapes only.
        assert!(tiny.contains("\"convnextv2.encoder.stages.2.layers.8.pwconv2.bias\""));
    }

    #[test]
    fn unfused_code_runs_every_hugging_face_module() {
        let spec = EmitSpec {
            name: "Model".into(),
            model: "atto-1k-224".into(),
            config: ConvNextV2Config::from_json(presets::find("atto-1k-224").unwrap().config_json)
                .unwrap(),
            input_hw: (64, 64),
            fuse: false,
            embedded_weights: None,
            config_path: None,
            backbone: false,
            precision: Precision::F32,
        };
        let src = emit_source(&spec).unwrap();
        for step in [
            "StepOp::LayerNorm {",
            "StepOp::Grn {",
            "StepOp::Add {",
            "StepOp::Activation {",
            "StepOp::Permute {",
        ] {
            assert!(src.contains(step), "{step}");
        }
        assert!(!src.contains("StepOp::GrnScale {"));
    }
}
