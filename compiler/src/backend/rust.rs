//! The Rust code generator behind `convnextv2!`: the lowered program of one model, for one
//! input size, as Rust that calls the runtime's ops with every shape a constant.
//!
//! The program (lowered for the logits, [`crate::lower`]) is cut into the Hugging Face modules
//! its steps came from: `embeddings`, each stage's `downsampling_layer`, each `layers.M`
//! block, the head. Blocks whose code is identical once their workspace and weight slots are
//! read from a table (every block of a stage) share one function, called in a loop over a
//! constant table of slots: the emitted code grows with the number of stages, not of blocks.
//! Each step becomes the call [`cnx_runtime::program::execute`] makes for it at run time, with
//! its bindings (taken from the step, never re-derived here) as constants and table slots.
//!
//! [`expand`] is the whole macro (arguments in, items or a spanned `compile_error!` out), so
//! the proc-macro crate is a shim and everything here is testable without a proc-macro context.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{LitBool, LitInt, LitStr, Token};

use crate::builder::{build_graph_with, BuildError, BuildOptions};
use crate::config::ConvNextV2Config;
use crate::ir::{
    outputs, Conv2d, LayerNorm, Layout, Linear, NormAxis, Permute, Precision, ValueType,
};
use crate::lower::{lower_outputs, LowerError};
use crate::passes::{PassError, Pipeline};
use crate::verify::VerifyError;
use crate::{presets, verify};
use cnx_runtime::compiled::Prepare;
use cnx_runtime::program::{Program, Step, StepOp, Value};
use cnx_runtime::weights::derive::{DeriveRule, ParamSpec};
use cnx_runtime::Activation;

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

/// The segment of the HF module tree a step belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Embeddings,
    Downsampling(usize),
    Layer(usize, usize),
    Head,
}

impl Segment {
    fn of(name: &str) -> Segment {
        let rest = name.strip_prefix("convnextv2.").unwrap_or(name);
        if rest.starts_with("embeddings") || rest.starts_with("pixel_values") {
            return Segment::Embeddings;
        }
        let parts: Vec<&str> = rest.split('.').collect();
        match parts.as_slice() {
            ["encoder", "stages", s, "layers", m, ..] => match (s.parse(), m.parse()) {
                (Ok(s), Ok(m)) => Segment::Layer(s, m),
                _ => Segment::Head,
            },
            ["encoder", "stages", s, "downsampling_layer", ..] => {
                s.parse().map_or(Segment::Head, Segment::Downsampling)
            }
            _ => Segment::Head,
        }
    }

    /// The name prefix its steps share.
    fn prefix(&self) -> String {
        match self {
            Segment::Embeddings | Segment::Head => "convnextv2.".into(),
            Segment::Downsampling(s) => {
                format!("convnextv2.encoder.stages.{s}.downsampling_layer.")
            }
            Segment::Layer(s, m) => format!("convnextv2.encoder.stages.{s}.layers.{m}."),
        }
    }

    /// The name of the function that runs it.
    fn function(&self) -> String {
        match self {
            Segment::Embeddings => "embeddings".into(),
            Segment::Downsampling(s) => format!("stage_{s}_downsampling"),
            Segment::Layer(s, _) => format!("stage_{s}_layer"),
            Segment::Head => "head".into(),
        }
    }

    /// The name of its table of slots (a loop's table for blocks).
    fn table(&self) -> String {
        match self {
            Segment::Layer(s, _) => format!("STAGE_{s}_LAYERS"),
            other => other.function().to_uppercase(),
        }
    }
}

/// One run of consecutive steps of a segment, with its slots.
struct Instance {
    segment: Segment,
    /// The program phase its steps belong to.
    phase: usize,
    values: Vec<usize>,
    params: Vec<usize>,
    sums: Vec<usize>,
    body: TokenStream,
}

/// The macro's weight table: the program's slots that its steps read, in first-use order (a
/// program's table covers the whole graph; the macro loads only what the logits need).
#[derive(Default)]
struct ParamTable {
    /// Program weight index of each macro slot.
    slots: Vec<usize>,
    index: HashMap<usize, usize>,
}

impl ParamTable {
    fn slot(&mut self, program_index: usize) -> usize {
        *self.index.entry(program_index).or_insert_with(|| {
            self.slots.push(program_index);
            self.slots.len() - 1
        })
    }
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

/// The checkpoint tensors a model is validated against: Hugging Face names and shapes.
pub type Checkpoint = Vec<(String, Vec<usize>)>;

/// The model's program (logits and pooled features; a backbone's feature maps) and the
/// checkpoint tensors it is validated against.
pub fn lower_spec(spec: &EmitSpec) -> Result<(Program, Checkpoint), EmitError> {
    let options = BuildOptions {
        backbone: spec.backbone,
        ..BuildOptions::default()
    };
    let mut graph = build_graph_with(&spec.config, spec.input_hw, options)?;
    verify::verify(&graph)?;
    let checkpoint: Vec<(String, Vec<usize>)> = graph
        .checkpoint_params()
        .into_iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let pipeline = if spec.fuse {
        Pipeline::default_pipeline()
    } else {
        Pipeline::empty()
    };
    pipeline.with_precision(spec.precision).run(&mut graph)?;
    verify::verify(&graph)?;
    let wanted: Vec<String> = if spec.backbone {
        (0..)
            .map(outputs::feature_map)
            .take_while(|name| graph.output(name).is_some())
            .collect()
    } else {
        vec![outputs::LOGITS.into(), outputs::POOLER_OUTPUT.into()]
    };
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    Ok((lower_outputs(&graph, &wanted)?, checkpoint))
}

fn emit_suffixed(spec: &EmitSpec) -> Result<TokenStream, EmitError> {
    let (program, checkpoint) = lower_spec(spec)?;
    let mut params = ParamTable::default();
    let instances = instances(&program, &mut params);
    let (fn_items, tables, calls) = functions(&instances);
    let phase_arms = calls
        .iter()
        .enumerate()
        .map(|(k, calls)| quote!(#k => { #(#calls)* }));
    let n_phases = program.phases.len();
    let phase_items = program.phases.iter().map(|p| {
        let (start, end, images) = (p.steps.start, p.steps.end, p.images);
        let values = |vs: &[Value]| {
            let vs = vs.iter().map(|v| {
                let (slot, len) = (v.slot, v.len);
                quote!(Value { slot: #slot, len: #len })
            });
            quote!(Cow::Borrowed(&[#(#vs),*]))
        };
        let (live_in, live_out) = (values(&p.live_in), values(&p.live_out));
        quote!(Phase { steps: #start..#end, images: #images, live_in: #live_in, live_out: #live_out })
    });
    let checkpoint_entries = checkpoint
        .iter()
        .map(|(name, shape)| quote!((#name, &[#(#shape),*])));
    let weight_slots = params.slots.iter().map(|&i| {
        let slot = &program.weights[i];
        let p = param_tokens(&slot.param);
        let prepare = match slot.prepare {
            Prepare::Plain => quote!(Prepare::Plain),
            Prepare::Linear(l) => {
                let l = linear_tokens(&l);
                quote!(Prepare::Linear(#l))
            }
            Prepare::Conv(c) => {
                let c = conv_tokens(&c);
                quote!(Prepare::Conv(#c))
            }
        };
        quote!(WeightSlot { param: #p, prepare: #prepare })
    });
    let n_weights = params.slots.len();
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
    let module = format_ident!("__cnx_{}", to_snake(&spec.name));
    let model_type = model_type(spec, &program, n_weights, &module);
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
            use ::std::borrow::Cow;
            use ::convnextv2::compiled::{Prepare, Slots, WeightSlot, Weights, Workspace};
            use ::convnextv2::ops::{
                self, Conv2d, GrnSource, LayerNorm, Layout, Linear, NormAxis, OutputNorm, Permute, Precision,
                ValueType,
            };
            use ::convnextv2::program::{Phase, Value};
            use ::convnextv2::weights::derive::{DeriveRule, ParamSpec};
            use ::convnextv2::Activation;

            #track_config

            /// The checkpoint tensors the model reads, as Hugging Face names and shapes them.
            pub(super) const CHECKPOINT: &[(&str, &[usize])] = &[#(#checkpoint_entries),*];
            /// Every parameter the code reads: checkpoint tensors and derived ones.
            pub(super) static WEIGHTS: [WeightSlot; #n_weights] = [#(#weight_slots),*];
            pub(super) const INPUT_SLOT: usize = #input_slot;
            #output_slots
            /// f32 per image of each workspace slot, and f64 per image of each sums slot.
            pub(super) const SLOT_SIZES: [usize; #n_slots] = [#(#slot_sizes),*];
            pub(super) const SUMS_SIZES: [usize; #n_sums] = [#(#sums_sizes),*];

            /// The steps cut into phases, as the program's (`cnx compile --emit program`).
            pub(super) static PHASES: [Phase; #n_phases] = [#(#phase_items),*];

            /// The forward pass: `pixel_values` in the input slot, logits in the logits slot;
            /// phase by phase, op- or image-parallel as the runtime decides from the batch and
            /// the threads.
            pub(super) fn forward(w: &Weights, ws: &mut Workspace, batch: usize) {
                debug_assert_eq!(ws.batch(), batch);
                // The steps of phase `phase` on `ws` (the whole workspace or a lane), for
                // `batch` images.
                ::convnextv2::phases::run(&PHASES, ws, &|ws: &mut Workspace, batch: usize, phase: usize| {
                    match phase {
                        #(#phase_arms)*
                        _ => {}
                    }
                    true
                });
            }

            #(#tables)*
            #(#fn_items)*
        }

        #model_type
    })
}

/// Cuts the program's steps into segment instances and emits each one's body.
fn instances(program: &Program, params: &mut ParamTable) -> Vec<Instance> {
    // The step that wrote each value a step reads (`None`: the input).
    let mut writer: HashMap<usize, Option<usize>> = HashMap::new();
    writer.insert(program.input_value.slot, None);
    let mut producers: Vec<Vec<Option<usize>>> = Vec::new();
    for (i, step) in program.steps.iter().enumerate() {
        producers.push(step.operands().iter().map(|v| writer[&v.slot]).collect());
        writer.insert(step.out.slot, Some(i));
    }
    let phase_of = |i: usize| {
        program
            .phases
            .iter()
            .position(|p| p.steps.contains(&i))
            .unwrap_or(0)
    };
    let mut instances = Vec::new();
    let mut start = 0;
    for i in 0..program.steps.len() {
        let segment = Segment::of(&program.steps[i].name);
        let next = program.steps.get(i + 1).map(|s| Segment::of(&s.name));
        // An instance ends with its segment or its phase.
        if next.as_ref() != Some(&segment) || phase_of(i + 1) != phase_of(i) {
            let mut inst = instance(program, &producers, params, segment, start..i + 1);
            inst.phase = phase_of(i);
            instances.push(inst);
            start = i + 1;
        }
    }
    instances
}

/// Identical bodies share a function; consecutive instances of one function in one phase, a
/// loop over a table of their slots. Returns the functions, the tables and the calls of each
/// phase.
fn functions(
    instances: &[Instance],
) -> (Vec<TokenStream>, Vec<TokenStream>, Vec<Vec<TokenStream>>) {
    // (name, body, first instance)
    let mut functions: Vec<(String, String, usize)> = Vec::new();
    let mut function_of: Vec<usize> = Vec::new();
    for (n, inst) in instances.iter().enumerate() {
        let key = inst.body.to_string();
        let f = match functions.iter().position(|(_, b, _)| *b == key) {
            Some(f) => f,
            None => {
                let base = inst.segment.function();
                let taken = functions
                    .iter()
                    .filter(|(name, _, _)| name.starts_with(&base))
                    .count();
                let name = if taken == 0 {
                    base
                } else {
                    format!("{base}_{taken}")
                };
                functions.push((name, key, n));
                functions.len() - 1
            }
        };
        function_of.push(f);
    }
    let fn_items = functions
        .iter()
        .map(|(name, _, first)| {
            let f = format_ident!("{}", name);
            let inst = &instances[*first];
            let (v, p, s) = (inst.values.len(), inst.params.len(), inst.sums.len());
            let doc = format!(" `{}*`", inst.segment.prefix());
            let body = &inst.body;
            quote! {
                #[doc = #doc]
                fn #f(w: &Weights, ws: &mut Workspace, batch: usize, s: &Slots<#v, #p, #s>) {
                    #body
                }
            }
        })
        .collect();
    let phases = instances.iter().map(|i| i.phase + 1).max().unwrap_or(0);
    let (mut tables, mut calls) = (Vec::new(), vec![Vec::new(); phases]);
    let mut table_names: HashMap<String, usize> = HashMap::new();
    let mut i = 0;
    while i < instances.len() {
        let (f, phase) = (function_of[i], instances[i].phase);
        let j = (i..instances.len())
            .find(|&j| function_of[j] != f || instances[j].phase != phase)
            .unwrap_or(instances.len());
        let calls = &mut calls[phase];
        let mut table = instances[i].segment.table();
        let seen = table_names.entry(table.clone()).or_insert(0);
        *seen += 1;
        if *seen > 1 {
            table = format!("{table}_{}", *seen - 1);
        }
        let table = format_ident!("{}", table);
        let func = format_ident!("{}", functions[f].0);
        let entries: Vec<TokenStream> = instances[i..j].iter().map(slots_tokens).collect();
        let inst = &instances[i];
        let (v, p, s) = (inst.values.len(), inst.params.len(), inst.sums.len());
        let n = j - i;
        if n == 1 {
            let entry = &entries[0];
            tables.push(quote!(const #table: Slots<#v, #p, #s> = #entry;));
            calls.push(quote!(#func(w, ws, batch, &#table);));
        } else {
            tables.push(quote!(const #table: [Slots<#v, #p, #s>; #n] = [#(#entries),*];));
            calls.push(quote!(for s in &#table { #func(w, ws, batch, s); }));
        }
        i = j;
    }
    (fn_items, tables, calls)
}

/// An instance's slots as the block function reads them: `s.values[i]`, `s.params[i]`,
/// `s.sums[i]` (local numbering: operands from outside first, in order of first use, then the
/// instance's own values).
struct Locals<'a> {
    /// The producing step of each local value (`None`: the input).
    values: Vec<Option<usize>>,
    slots: Vec<usize>,
    params: Vec<usize>,
    sums: Vec<usize>,
    table: &'a mut ParamTable,
}

impl Locals<'_> {
    fn value(&self, producer: Option<usize>) -> TokenStream {
        let i = self
            .values
            .iter()
            .position(|&p| p == producer)
            .expect("numbered");
        quote!(s.values[#i])
    }

    fn param(&mut self, program_index: usize) -> TokenStream {
        let i = self.params.len();
        self.params.push(self.table.slot(program_index));
        quote!(s.params[#i])
    }

    fn sums(&mut self, slot: usize) -> TokenStream {
        let i = match self.sums.iter().position(|&s| s == slot) {
            Some(i) => i,
            None => {
                self.sums.push(slot);
                self.sums.len() - 1
            }
        };
        quote!(s.sums[#i])
    }
}

/// One segment instance (steps `range` of the program): its slots and its body.
fn instance(
    program: &Program,
    producers: &[Vec<Option<usize>>],
    table: &mut ParamTable,
    segment: Segment,
    range: std::ops::Range<usize>,
) -> Instance {
    let mut locals = Locals {
        values: Vec::new(),
        slots: Vec::new(),
        params: Vec::new(),
        sums: Vec::new(),
        table,
    };
    for i in range.clone() {
        for (p, v) in producers[i].iter().zip(program.steps[i].operands().iter()) {
            let outside = p.is_none_or(|p| !range.contains(&p));
            if outside && !locals.values.contains(p) {
                locals.values.push(*p);
                locals.slots.push(v.slot);
            }
        }
    }
    for i in range.clone() {
        locals.values.push(Some(i));
        locals.slots.push(program.steps[i].out.slot);
    }
    let prefix = segment.prefix();
    let mut body = TokenStream::new();
    for i in range {
        body.extend(statement(
            &program.steps[i],
            i,
            &producers[i],
            &prefix,
            &mut locals,
        ));
    }
    Instance {
        segment,
        phase: 0,
        values: locals.slots,
        params: locals.params,
        sums: locals.sums,
        body,
    }
}

/// The constant naming a step's op: its module path under the segment (`PWCONV1`).
fn op_const(step: &Step, prefix: &str) -> Ident {
    let rel = step.name.strip_prefix(prefix).unwrap_or(&step.name);
    let mut name: String = rel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name = format!("{}_{name}", step.kind().to_uppercase());
    }
    format_ident!("{}", name)
}

/// What every step's statement uses: its op's constant name, its output slot and length, its
/// output type and its operands' slots, as tokens.
struct Common {
    op_const: Ident,
    out: TokenStream,
    len: TokenStream,
    out_ty: TokenStream,
    operands: Vec<TokenStream>,
}

/// One step as a call of its runtime op on the workspace (what [`cnx_runtime::program::execute`]
/// does at run time, with every constant written out).
fn statement(
    step: &Step,
    index: usize,
    producers: &[Option<usize>],
    prefix: &str,
    locals: &mut Locals<'_>,
) -> TokenStream {
    let len = step.out.len;
    let c = Common {
        op_const: op_const(step, prefix),
        out: locals.value(Some(index)),
        len: quote!(batch * #len),
        out_ty: value_type_tokens(&step.out_ty),
        operands: producers.iter().map(|&p| locals.value(p)).collect(),
    };
    let Common {
        op_const,
        out,
        len,
        out_ty,
        operands,
    } = &c;
    let x = &operands[0];
    match &step.op {
        StepOp::Conv2d { .. } => conv_statement(step, &c, locals),
        StepOp::LayerNorm { norm, affine, .. } => {
            let affine = match affine {
                Some(a) => {
                    let (g, b) = (locals.param(a.gamma), locals.param(a.beta));
                    quote!(Some(w.affine(#g, #b)))
                }
                None => quote!(None),
            };
            let attrs = layer_norm_tokens(norm);
            quote! {
                const #op_const: LayerNorm = #attrs;
                ws.run([#x], #out, #len, |[x], y, _| {
                    ops::layer_norm(&#op_const, &#out_ty, batch, #affine, x, y)
                });
            }
        }
        StepOp::Linear { .. } => linear_statement(step, &c, locals),
        StepOp::Activation { activation, .. } => {
            let act = activation_tokens(*activation);
            quote! {
                ws.run([#x], #out, #len, |[x], y, _| ops::activation(#act, x, y));
            }
        }
        StepOp::Grn {
            channels,
            gamma,
            beta,
            ..
        } => {
            let (g, b) = (locals.param(*gamma), locals.param(*beta));
            quote! {
                ws.run([#x], #out, #len, |[x], y, _| {
                    ops::grn(#channels, &#out_ty, batch, w.get(#g), w.get(#b), x, y)
                });
            }
        }
        StepOp::GrnScale { .. } => grn_scale_statement(step, &c, locals),
        StepOp::Add { .. } => {
            let b = &operands[1];
            quote! {
                ws.run([#x, #b], #out, #len, |[a, b], y, _| ops::add(a, b, y));
            }
        }
        StepOp::GlobalAvgPool { input, .. } => {
            let in_ty = value_type_tokens(input);
            quote! {
                ws.run([#x], #out, #len, |[x], y, _| ops::global_avg_pool(&#in_ty, batch, x, y));
            }
        }
        StepOp::PoolNormLinear {
            channels,
            classes,
            eps,
            input,
            weight,
            bias,
            ..
        } => {
            let (wt, b) = (locals.param(*weight), locals.param(*bias));
            let (eps, in_ty) = (Literal::f64_suffixed(*eps), value_type_tokens(input));
            quote! {
                ws.run([#x], #out, #len, |[x], y, _| {
                    ops::pool_norm_linear(#channels, #classes, #eps, &#in_ty, batch, w.get(#wt), w.get(#b), x, y)
                });
            }
        }
        StepOp::Permute { permute, .. } => {
            let p = match permute {
                Permute::NchwToNhwc => quote!(Permute::NchwToNhwc),
                Permute::NhwcToNchw => quote!(Permute::NhwcToNchw),
            };
            quote! {
                ws.run([#x], #out, #len, |[x], y, _| ops::permute(#p, &#out_ty, batch, x, y));
            }
        }
    }
}

fn conv_statement(step: &Step, c: &Common, locals: &mut Locals<'_>) -> TokenStream {
    let StepOp::Conv2d {
        conv,
        input,
        weight,
        bias,
        norm,
        ..
    } = &step.op
    else {
        unreachable!("called for convolutions")
    };
    let Common {
        op_const,
        out,
        len,
        out_ty,
        operands,
    } = c;
    let x = &operands[0];
    let (wt, b) = (locals.param(*weight), locals.param(*bias));
    let norm = match norm {
        Some(a) => {
            let (g, be) = (locals.param(a.gamma), locals.param(a.beta));
            quote!(Some((#g, #be)))
        }
        None => quote!(None),
    };
    let (attrs, in_ty) = (conv_tokens(conv), value_type_tokens(input));
    quote! {
        const #op_const: Conv2d = #attrs;
        ws.run([#x], #out, #len, |[x], y, _| {
            ops::conv2d(&#op_const, &#in_ty, &#out_ty, batch, w.conv(#wt, #b, #norm), x, y)
        });
    }
}

fn linear_statement(step: &Step, c: &Common, locals: &mut Locals<'_>) -> TokenStream {
    let StepOp::Linear {
        linear,
        scale,
        residual,
        weight,
        bias,
        sums,
        ..
    } = &step.op
    else {
        unreachable!("called for linear layers")
    };
    let Common {
        op_const,
        out,
        len,
        operands,
        ..
    } = c;
    let (wt, b) = (locals.param(*weight), locals.param(*bias));
    let attrs = linear_tokens(linear);
    let pixels = step.out_ty.pixels();
    let mut names = vec![quote!(x)];
    let scale = scale.map_or(quote!(None), |_| {
        names.push(quote!(scale));
        quote!(Some(scale))
    });
    let residual = residual.map_or(quote!(None), |_| {
        names.push(quote!(residual));
        quote!(Some(residual))
    });
    let (sums_arg, sums_name) = match sums {
        Some(slot) => {
            let slot = locals.sums(*slot);
            let n = linear.out_features;
            (quote!(Some(sums.write(#slot, batch * #n))), quote!(sums))
        }
        None => (quote!(None), quote!(_)),
    };
    quote! {
        const #op_const: Linear = #attrs;
        ws.run([#(#operands),*], #out, #len, |[#(#names),*], y, #sums_name| {
            ops::linear(&#op_const, #pixels, batch, w.linear(#wt, #b), x, #scale, #residual, y, #sums_arg)
        });
    }
}

fn grn_scale_statement(step: &Step, c: &Common, locals: &mut Locals<'_>) -> TokenStream {
    let StepOp::GrnScale {
        channels,
        input,
        gamma,
        sums,
        ..
    } = &step.op
    else {
        unreachable!("called for GRN scales")
    };
    let Common {
        out, len, operands, ..
    } = c;
    let x = &operands[0];
    let g = locals.param(*gamma);
    let in_ty = value_type_tokens(input);
    let (source, read, sums_name) = match sums {
        None => (quote!(GrnSource::Values), quote!(&[]), quote!(_)),
        Some(slot) => {
            let slot = locals.sums(*slot);
            (
                quote!(GrnSource::ProducerSums),
                quote!(sums.read(#slot, batch * #channels)),
                quote!(sums),
            )
        }
    };
    quote! {
        ws.run([#x], #out, #len, |[x], y, #sums_name| {
            ops::grn_scale(#channels, #source, &#in_ty, batch, w.get(#g), x, #read, y)
        });
    }
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

fn slots_tokens(inst: &Instance) -> TokenStream {
    let (v, p, s) = (&inst.values, &inst.params, &inst.sums);
    quote!(Slots { values: [#(#v),*], params: [#(#p),*], sums: [#(#s),*] })
}

fn layout_tokens(l: Layout) -> TokenStream {
    match l {
        Layout::Nchw => quote!(Layout::Nchw),
        Layout::Nhwc => quote!(Layout::Nhwc),
        Layout::Features => quote!(Layout::Features),
    }
}

fn value_type_tokens(t: &ValueType) -> TokenStream {
    let layout = layout_tokens(t.layout);
    let (c, h, w) = (t.channels, t.height, t.width);
    quote!(ValueType { layout: #layout, channels: #c, height: #h, width: #w })
}

fn option_f64(v: Option<f64>) -> TokenStream {
    match v {
        Some(v) => {
            let v = Literal::f64_suffixed(v);
            quote!(Some(#v))
        }
        None => quote!(None),
    }
}

fn conv_tokens(c: &Conv2d) -> TokenStream {
    let (i, o, g) = (c.in_channels, c.out_channels, c.groups);
    let [kh, kw] = c.kernel;
    let [sh, sw] = c.stride;
    let [ph, pw] = c.padding;
    let layout = layout_tokens(c.layout);
    let input_norm = option_f64(c.input_norm);
    let output_norm = match c.output_norm {
        Some(n) => {
            let eps = Literal::f64_suffixed(n.eps);
            let affine = n.affine;
            quote!(Some(OutputNorm { eps: #eps, affine: #affine }))
        }
        None => quote!(None),
    };
    let precision = precision_tokens(c.precision);
    quote!(Conv2d {
        in_channels: #i, out_channels: #o, kernel: [#kh, #kw], stride: [#sh, #sw],
        padding: [#ph, #pw], groups: #g, layout: #layout, input_norm: #input_norm,
        output_norm: #output_norm, precision: #precision,
    })
}

fn linear_tokens(l: &Linear) -> TokenStream {
    let (i, o) = (l.in_features, l.out_features);
    let input_norm = option_f64(l.input_norm);
    let activation = match l.activation {
        Some(a) => {
            let a = activation_tokens(a);
            quote!(Some(#a))
        }
        None => quote!(None),
    };
    let (scale, residual, sums) = (l.input_scale, l.residual, l.sum_squares);
    let precision = precision_tokens(l.precision);
    quote!(Linear {
        in_features: #i, out_features: #o, input_norm: #input_norm, input_scale: #scale,
        activation: #activation, residual: #residual, sum_squares: #sums,
        precision: #precision,
    })
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

fn precision_tokens(p: Precision) -> TokenStream {
    match p {
        Precision::F32 => quote!(Precision::F32),
        Precision::Bf16 => quote!(Precision::Bf16),
        Precision::Int8 => quote!(Precision::Int8),
    }
}

fn layer_norm_tokens(ln: &LayerNorm) -> TokenStream {
    let c = ln.channels;
    let eps = Literal::f64_suffixed(ln.eps);
    let axis = match ln.axis {
        NormAxis::ChannelsFirst => quote!(NormAxis::ChannelsFirst),
        NormAxis::ChannelsLast => quote!(NormAxis::ChannelsLast),
    };
    let affine = ln.affine;
    quote!(LayerNorm { channels: #c, eps: #eps, axis: #axis, affine: #affine })
}

fn activation_tokens(a: Activation) -> TokenStream {
    let name = format_ident!("{}", format!("{a:?}"));
    quote!(Activation::#name)
}

/// A weight-table entry as a literal of borrowed statics (a `const fn` could not nest them).
fn param_tokens(p: &ParamSpec) -> TokenStream {
    let name = &*p.name;
    let shape = &*p.shape;
    let derivation = match &p.derivation {
        Some((rule, inputs)) => {
            let rule = match rule {
                DeriveRule::ScaleInputChannels => quote!(DeriveRule::ScaleInputChannels),
                DeriveRule::AddWeightTimesInput => quote!(DeriveRule::AddWeightTimesInput),
            };
            let inputs = inputs.iter().map(param_tokens);
            quote!(Some((#rule, Cow::Borrowed(&[#(#inputs),*]))))
        }
        None => quote!(None),
    };
    quote!(ParamSpec { name: Cow::Borrowed(#name), shape: Cow::Borrowed(&[#(#shape),*]), derivation: #derivation })
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
    fn blocks_of_a_stage_share_one_function() {
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
        // embeddings, 4 block functions, 3 downsamplings, the head.
        for src in [&tiny, &huge] {
            assert_eq!(count(src, "\n    fn "), 9, "{src}");
            assert_eq!(count(src, "ops::linear("), 8);
            assert_eq!(count(src, "ops::conv2d("), 8);
        }
        // huge has 40 blocks to tiny's 18: only the tables grow, the functions do not.
        let functions = |src: &str| -> usize {
            src.split("\n    fn ")
                .skip(1)
                .map(|f| f.split("\n    }\n").next().unwrap().len())
                .sum()
        };
        let (t, h) = (functions(&tiny), functions(&huge));
        assert!(h < t + t / 10, "functions: huge {h} bytes, tiny {t} bytes");
        assert!(tiny.contains("for s in &STAGE_2_LAYERS"));
        assert!(tiny.contains("const STAGE_2_LAYERS: [Slots<5, 7, 1>; 9]"));
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
        for call in [
            "ops::layer_norm(",
            "ops::grn(",
            "ops::add(",
            "ops::activation(",
            "ops::permute(",
        ] {
            assert!(src.contains(call), "{call}");
        }
        assert!(!src.contains("ops::grn_scale("));
    }
}
