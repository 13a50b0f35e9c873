//! The Rust code generator behind `convnextv2!`: the optimised graph of one model, for one
//! input size, as Rust that calls the runtime's ops with every shape a constant.
//!
//! The graph (pruned to what the logits need) is cut into the Hugging Face modules it came
//! from: `embeddings`, each stage's `downsampling_layer`, each `layers.M` block, the head.
//! Blocks whose code is identical once their workspace and weight slots are read from a table
//! (every block of a stage) share one function, called in a loop over a constant table of
//! slots: the emitted code grows with the number of stages, not of blocks. Values live in the
//! slots of the static [`MemoryPlan`]; weights in the slots of a parameter table whose entries
//! carry their Hugging Face name, shape, derivation recipe and kernel preparation.
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

use crate::builder::{build_graph_with, BuildOptions};
use crate::config::ConvNextV2Config;
use crate::ir::{
    outputs, Conv2d, Graph, GrnSource, LayerNorm, Layout, Linear, NodeId, NormAxis, Op, Param,
    Permute, ValueType,
};
use crate::memory_plan::MemoryPlan;
use crate::passes::Pipeline;
use crate::{presets, verify};
use cnx_runtime::weights::derive::DeriveRule;
use cnx_runtime::Activation;

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
}

/// The macro: parses `args` (`config = "...", name = T, image_size = N, fuse = bool,
/// weights = "..."`), resolving paths against `manifest_dir`, and emits the model's items;
/// any mistake becomes a `compile_error!` pointing at the offending token.
pub fn expand(args: TokenStream, manifest_dir: &Path) -> TokenStream {
    match syn::parse2::<MacroArgs>(args).and_then(|a| a.into_spec(manifest_dir)) {
        Ok(spec) => match emit(&spec) {
            Ok(tokens) => tokens,
            Err(message) => syn::Error::new(Span::call_site(), message).to_compile_error(),
        },
        Err(e) => e.to_compile_error(),
    }
}

/// The model's items as formatted Rust source (what `cnx compile --emit rust` prints).
pub fn emit_source(spec: &EmitSpec) -> Result<String, String> {
    let tokens = emit(spec)?;
    let file: syn::File = syn::parse2(tokens).map_err(|e| format!("emitted invalid Rust: {e}"))?;
    Ok(prettyplease::unparse(&file))
}

/// The macro's arguments, as written.
struct MacroArgs {
    config: Option<LitStr>,
    name: Option<Ident>,
    image_size: Option<LitInt>,
    fuse: Option<LitBool>,
    weights: Option<LitStr>,
    call_site: Span,
}

const OPTIONS: &str = "config, name, image_size, fuse, weights";

impl Parse for MacroArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = MacroArgs {
            config: None,
            name: None,
            image_size: None,
            fuse: None,
            weights: None,
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
                    args.name = Some(syn::parse2(value).map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "`name` takes a type name, e.g. `name = TinyClassifier`",
                        )
                    })?);
                }
                "image_size" => {
                    dup(args.image_size.is_some())?;
                    args.image_size = Some(syn::parse2(value).map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "`image_size` takes an integer, e.g. `image_size = 384`",
                        )
                    })?);
                }
                "fuse" => {
                    dup(args.fuse.is_some())?;
                    args.fuse = Some(syn::parse2(value).map_err(|e| {
                        syn::Error::new(e.span(), "`fuse` takes `true` or `false`")
                    })?);
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
            let text = std::fs::read_to_string(&path)
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
        let size = match &self.image_size {
            Some(lit) => {
                let n: usize = lit.base10_parse()?;
                if n < config.patch_size || n > 4096 {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "image_size {n} is out of range ({}..=4096)",
                            config.patch_size
                        ),
                    ));
                }
                n
            }
            None => config.image_size,
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
            input_hw: (size, size),
            fuse: self.fuse.is_none_or(|b| b.value),
            embedded_weights,
            config_path,
        })
    }
}

fn looks_like_path(s: &str) -> bool {
    s.ends_with(".json") || s.starts_with('.') || s.starts_with('/') || s.contains('/')
}

/// The segment of the HF module tree a node belongs to.
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

    /// The name prefix its nodes share.
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

/// One run of consecutive nodes of a segment, with its slots.
struct Instance {
    segment: Segment,
    values: Vec<usize>,
    params: Vec<usize>,
    sums: Vec<usize>,
    body: TokenStream,
}

/// The parameter table: one slot per distinct parameter, in first-use order.
#[derive(Default)]
struct ParamTable {
    slots: Vec<(Param, TokenStream)>,
    index: HashMap<String, usize>,
}

impl ParamTable {
    fn slot(&mut self, graph: &Graph, id: NodeId, role: &str) -> Result<usize, String> {
        let node = graph.node(id);
        let p = node
            .param(role)
            .ok_or_else(|| format!("`{}` has no {role}", node.name))?;
        if let Some(&i) = self.index.get(&p.name) {
            return Ok(i);
        }
        let prepare = match (role, &node.op) {
            ("weight", Op::Linear(l)) => {
                let l = linear_tokens(l);
                quote!(Prepare::Linear(#l))
            }
            ("weight", Op::Conv2d(c)) => {
                let c = conv_tokens(c);
                quote!(Prepare::Conv(#c))
            }
            _ => quote!(Prepare::Plain),
        };
        self.index.insert(p.name.clone(), self.slots.len());
        self.slots.push((p.clone(), prepare));
        Ok(self.slots.len() - 1)
    }
}

/// Emits the items of one compiled model.
pub fn emit(spec: &EmitSpec) -> Result<TokenStream, String> {
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

fn emit_suffixed(spec: &EmitSpec) -> Result<TokenStream, String> {
    let mut graph = build_graph_with(
        &spec.config,
        spec.input_hw,
        BuildOptions { classifier: true },
    )
    .map_err(|e| e.to_string())?;
    verify::verify(&graph).map_err(|e| e.to_string())?;
    let checkpoint: Vec<(String, Vec<usize>)> = graph
        .checkpoint_params()
        .into_iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    if spec.fuse {
        Pipeline::default_pipeline()
            .run(&mut graph)
            .map_err(|e| e.to_string())?;
        verify::verify(&graph).map_err(|e| e.to_string())?;
    }
    let logits = graph
        .output(outputs::LOGITS)
        .ok_or("the graph has no logits")?;
    let plan = MemoryPlan::new(&graph, &[logits])?;

    // Cut the evaluation order into segment instances and emit each one's body.
    let mut params = ParamTable::default();
    let mut instances: Vec<Instance> = Vec::new();
    let mut run: Vec<NodeId> = Vec::new();
    let nodes: Vec<NodeId> = plan
        .order
        .iter()
        .copied()
        .filter(|&id| !matches!(graph.node(id).op, Op::Input))
        .collect();
    for (i, &id) in nodes.iter().enumerate() {
        run.push(id);
        let segment = Segment::of(&graph.node(id).name);
        let next = nodes.get(i + 1).map(|&n| Segment::of(&graph.node(n).name));
        if next.as_ref() != Some(&segment) {
            instances.push(instance(&graph, &plan, &mut params, segment, &run)?);
            run.clear();
        }
    }

    // Identical bodies share a function; consecutive instances of one function, a loop.
    // (name, body, first instance)
    let mut functions: Vec<(String, TokenStream, usize)> = Vec::new();
    let mut function_of: Vec<usize> = Vec::new();
    for (n, inst) in instances.iter().enumerate() {
        let key = inst.body.to_string();
        let f = match functions.iter().position(|(_, b, _)| b.to_string() == key) {
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
                functions.push((name, inst.body.clone(), n));
                functions.len() - 1
            }
        };
        function_of.push(f);
    }
    let mut fn_items = Vec::new();
    for (name, body, first) in &functions {
        let f = format_ident!("{}", name);
        let inst = &instances[*first];
        let (v, p, s) = (inst.values.len(), inst.params.len(), inst.sums.len());
        let doc = format!(" `{}*`", inst.segment.prefix());
        fn_items.push(quote! {
            #[doc = #doc]
            fn #f(w: &Weights, ws: &mut Workspace, batch: usize, s: &Slots<#v, #p, #s>) {
                #body
            }
        });
    }
    let mut tables = Vec::new();
    let mut calls = Vec::new();
    let mut table_names: HashMap<String, usize> = HashMap::new();
    let mut i = 0;
    while i < instances.len() {
        let f = function_of[i];
        let mut j = i + 1;
        while j < instances.len() && function_of[j] == f {
            j += 1;
        }
        let mut table = instances[i].segment.table();
        let seen = table_names.entry(table.clone()).or_insert(0);
        *seen += 1;
        if *seen > 1 {
            table = format!("{table}_{}", *seen - 1);
        }
        let table = format_ident!("{}", table);
        let func = format_ident!("{}", functions[f].0);
        let entries: Vec<TokenStream> = instances[i..j].iter().map(slots_tokens).collect();
        let (v, p, s) = (
            instances[i].values.len(),
            instances[i].params.len(),
            instances[i].sums.len(),
        );
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

    let checkpoint_entries = checkpoint
        .iter()
        .map(|(name, shape)| quote!((#name, &[#(#shape),*])));
    let weight_slots = params.slots.iter().map(|(p, prepare)| {
        let p = param_tokens(p);
        quote!(WeightSlot { param: #p, prepare: #prepare })
    });
    let n_weights = params.slots.len();
    let labels = &spec.config.id2label;
    let n_labels = labels.len();
    let input = graph.input_type();
    let (c, h, w) = (input.channels, input.height, input.width);
    let input_slot = plan.slot[&graph.input()];
    let logits_slot = plan.slot[&logits];
    let n_slots = plan.slots();
    let hidden = &spec.config.hidden_sizes;
    let depths = &spec.config.depths;
    let n_stages = hidden.len();
    let name = format_ident!("{}", spec.name);
    let module = format_ident!("__cnx_{}", to_snake(&spec.name));
    let fused = spec.fuse;
    let model = &spec.model;
    let doc = format!(
        " ConvNeXt V2 classifier `{model}` compiled by cnx for {h}x{w} input ({} graph: {} ops, {} weight slots, {} workspace slots).",
        if fused { "fused" } else { "unfused" },
        nodes.len(),
        n_weights,
        n_slots
    );
    let track_config = spec.config_path.as_ref().map(|p| {
        let p = p.display().to_string();
        quote!(
            const _: &[u8] = include_bytes!(#p);
        )
    });
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

    Ok(quote! {
        #[doc(hidden)]
        #[allow(unused_imports, clippy::all, clippy::pedantic)]
        mod #module {
            use ::convnextv2::compiled::{Prepare, Slots, WeightSlot, Weights, Workspace};
            use ::convnextv2::ops::{
                self, Conv2d, GrnSource, LayerNorm, Layout, Linear, NormAxis, OutputNorm, Permute,
                ValueType,
            };
            use ::convnextv2::weights::derive::{DeriveRule, ParamSpec};
            use ::convnextv2::Activation;

            #track_config

            /// The checkpoint tensors the model reads, as Hugging Face names and shapes them.
            pub(super) const CHECKPOINT: &[(&str, &[usize])] = &[#(#checkpoint_entries),*];
            /// Every parameter the code reads: checkpoint tensors and derived ones.
            pub(super) static WEIGHTS: [WeightSlot; #n_weights] = [#(#weight_slots),*];
            pub(super) const INPUT_SLOT: usize = #input_slot;
            pub(super) const LOGITS_SLOT: usize = #logits_slot;
            pub(super) const WORKSPACE_SLOTS: usize = #n_slots;

            /// The forward pass: `pixel_values` in the input slot, logits in the logits slot.
            pub(super) fn forward(w: &Weights, ws: &mut Workspace, batch: usize) {
                #(#calls)*
            }

            #(#tables)*
            #(#fn_items)*
        }

        #[doc = #doc]
        pub struct #name {
            weights: ::convnextv2::compiled::Weights,
            workspace: ::convnextv2::compiled::SharedWorkspace,
            threads: usize,
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
            /// Blocks of each stage.
            pub const DEPTHS: [usize; #n_stages] = [#(#depths),*];
            pub const NUM_LABELS: usize = #n_labels;
            /// Class names in index order (`id2label`).
            pub const LABELS: [&'static str; #n_labels] = [#(#labels),*];
            /// Whether the fusion passes ran.
            pub const FUSED: bool = #fused;

            /// Loads a checkpoint (a `.safetensors` file, a sharded index or a model directory;
            /// Hugging Face or timm names), checks it against the model and prepares it.
            pub fn load(path: impl AsRef<::std::path::Path>) -> ::core::result::Result<Self, ::convnextv2::Error> {
                Self::from_store(::convnextv2::WeightStore::open(path.as_ref())?)
            }

            /// As [`Self::load`], from the bytes of a `.safetensors` file.
            pub fn from_bytes(bytes: &[u8]) -> ::core::result::Result<Self, ::convnextv2::Error> {
                Self::from_store(::convnextv2::WeightStore::from_bytes(bytes)?)
            }

            #embedded

            /// As [`Self::load`], from an opened checkpoint.
            pub fn from_store(store: ::convnextv2::WeightStore) -> ::core::result::Result<Self, ::convnextv2::Error> {
                Ok(Self {
                    weights: ::convnextv2::compiled::Weights::load(store, #module::CHECKPOINT, &#module::WEIGHTS)?,
                    workspace: ::convnextv2::compiled::SharedWorkspace::new(#module::WORKSPACE_SLOTS),
                    threads: ::convnextv2::pool::available(),
                })
            }

            /// Runs on `threads` threads (default: the machine's cores). Results do not
            /// depend on it.
            pub fn with_threads(mut self, threads: usize) -> Self {
                self.threads = threads.max(1);
                self
            }

            /// Logits (`batch x NUM_LABELS`, row-major) of `batch` images given as
            /// `pixel_values` in Hugging Face's NCHW layout, preprocessed.
            pub fn forward(&self, pixel_values: &[f32], batch: usize) -> ::core::result::Result<::std::vec::Vec<f32>, ::convnextv2::Error> {
                let mut logits = ::std::vec![0.0; batch * Self::NUM_LABELS];
                self.forward_into(pixel_values, batch, &mut logits)?;
                Ok(logits)
            }

            /// As [`Self::forward`], into `logits` (`batch x NUM_LABELS`).
            pub fn forward_into(&self, pixel_values: &[f32], batch: usize, logits: &mut [f32]) -> ::core::result::Result<(), ::convnextv2::Error> {
                ::convnextv2::compiled::check_input(pixel_values, batch, [#c, #h, #w])?;
                if logits.len() != batch * Self::NUM_LABELS {
                    return Err(::convnextv2::Error::InputShape {
                        what: "logits".into(),
                        expected: ::std::vec![batch, Self::NUM_LABELS],
                        found: ::std::vec![logits.len()],
                    });
                }
                let weights = &self.weights;
                self.workspace.with(|ws| {
                    ws.set(#module::INPUT_SLOT, pixel_values);
                    ::convnextv2::pool::install(self.threads, || #module::forward(weights, ws, batch));
                    logits.copy_from_slice(ws.get(#module::LOGITS_SLOT));
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
    })
}

/// One segment instance: its slots and its body (reading every slot through `s`).
fn instance(
    graph: &Graph,
    plan: &MemoryPlan,
    params: &mut ParamTable,
    segment: Segment,
    nodes: &[NodeId],
) -> Result<Instance, String> {
    // Local value numbering: operands from outside first (in order of first use), then the
    // outputs of the instance's nodes.
    let mut local: Vec<NodeId> = Vec::new();
    for &id in nodes {
        for i in graph.inputs(id) {
            if !nodes.contains(&i) && !local.contains(&i) {
                local.push(i);
            }
        }
    }
    local.extend_from_slice(nodes);
    let value = |id: NodeId| {
        let i = local.iter().position(|&x| x == id).expect("numbered");
        quote!(s.values[#i])
    };
    let mut inst_params: Vec<usize> = Vec::new();
    let mut param = |id: NodeId, role: &str| -> Result<TokenStream, String> {
        let slot = params.slot(graph, id, role)?;
        let i = inst_params.len();
        inst_params.push(slot);
        Ok(quote!(s.params[#i]))
    };
    let mut sums: Vec<usize> = Vec::new();
    let mut sums_slot = |producer: NodeId| -> Result<TokenStream, String> {
        let slot = *plan
            .sums_slot
            .get(&producer)
            .ok_or_else(|| format!("`{}` accumulates no sums", graph.node(producer).name))?;
        let i = match sums.iter().position(|&s| s == slot) {
            Some(i) => i,
            None => {
                sums.push(slot);
                sums.len() - 1
            }
        };
        Ok(quote!(s.sums[#i]))
    };
    let prefix = segment.prefix();
    let mut body = TokenStream::new();
    for &id in nodes {
        let node = graph.node(id);
        let rel = node.name.strip_prefix(&prefix).unwrap_or(&node.name);
        let mut const_name = rel
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect::<String>();
        if !const_name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            const_name = format!("{}_{const_name}", node.op.kind().to_uppercase());
        }
        let op_const = format_ident!("{}", const_name);
        let inputs = graph.inputs(id);
        let in_ty = inputs.first().map(|&i| graph.node(i).ty);
        let out = value(id);
        let len = node.ty.numel();
        let len = quote!(batch * #len);
        let out_ty = value_type_tokens(&node.ty);
        let operands: Vec<TokenStream> = inputs.iter().map(|&i| value(i)).collect();
        let in_ty_tokens = in_ty.map(|t| value_type_tokens(&t));
        let stmt = match node.op {
            Op::Input => continue,
            Op::Conv2d(c) => {
                let (wt, b) = (param(id, "weight")?, param(id, "bias")?);
                let norm = if c.output_norm.is_some_and(|n| n.affine) {
                    let (g, be) = (param(id, "norm_weight")?, param(id, "norm_bias")?);
                    quote!(Some((#g, #be)))
                } else {
                    quote!(None)
                };
                let attrs = conv_tokens(&c);
                let x = &operands[0];
                quote! {
                    const #op_const: Conv2d = #attrs;
                    ws.run([#x], #out, #len, |[x], y, _| {
                        ops::conv2d(&#op_const, &#in_ty_tokens, &#out_ty, batch, w.conv(#wt, #b, #norm), x, y)
                    });
                }
            }
            Op::LayerNorm(ln) => {
                let affine = if ln.affine {
                    let (g, b) = (param(id, "weight")?, param(id, "bias")?);
                    quote!(Some(w.affine(#g, #b)))
                } else {
                    quote!(None)
                };
                let attrs = layer_norm_tokens(&ln);
                let x = &operands[0];
                quote! {
                    const #op_const: LayerNorm = #attrs;
                    ws.run([#x], #out, #len, |[x], y, _| {
                        ops::layer_norm(&#op_const, &#out_ty, batch, #affine, x, y)
                    });
                }
            }
            Op::Linear(l) => {
                let (wt, b) = (param(id, "weight")?, param(id, "bias")?);
                let attrs = linear_tokens(&l);
                let pixels = node.ty.pixels();
                let mut names = vec![quote!(x)];
                let scale = if l.input_scale {
                    names.push(quote!(scale));
                    quote!(Some(scale))
                } else {
                    quote!(None)
                };
                let residual = if l.residual {
                    names.push(quote!(residual));
                    quote!(Some(residual))
                } else {
                    quote!(None)
                };
                let (sums_arg, sums_name) = if l.sum_squares {
                    let slot = sums_slot(id)?;
                    let n = l.out_features;
                    (quote!(Some(sums.write(#slot, batch * #n))), quote!(sums))
                } else {
                    (quote!(None), quote!(_))
                };
                quote! {
                    const #op_const: Linear = #attrs;
                    ws.run([#(#operands),*], #out, #len, |[#(#names),*], y, #sums_name| {
                        ops::linear(&#op_const, #pixels, batch, w.linear(#wt, #b), x, #scale, #residual, y, #sums_arg)
                    });
                }
            }
            Op::Activation(act) => {
                let act = activation_tokens(act);
                let x = &operands[0];
                quote! {
                    ws.run([#x], #out, #len, |[x], y, _| ops::activation(#act, x, y));
                }
            }
            Op::Grn { channels } => {
                let (g, b) = (param(id, "weight")?, param(id, "bias")?);
                let x = &operands[0];
                quote! {
                    ws.run([#x], #out, #len, |[x], y, _| {
                        ops::grn(#channels, &#out_ty, batch, w.get(#g), w.get(#b), x, y)
                    });
                }
            }
            Op::GrnScale { channels, source } => {
                let g = param(id, "weight")?;
                let x = &operands[0];
                let (source_tokens, read, sums_name) = match source {
                    GrnSource::Values => (quote!(GrnSource::Values), quote!(&[]), quote!(_)),
                    GrnSource::ProducerSums => {
                        let slot = sums_slot(inputs[0])?;
                        (
                            quote!(GrnSource::ProducerSums),
                            quote!(sums.read(#slot)),
                            quote!(sums),
                        )
                    }
                };
                quote! {
                    ws.run([#x], #out, #len, |[x], y, #sums_name| {
                        ops::grn_scale(#channels, #source_tokens, &#in_ty_tokens, batch, w.get(#g), x, #read, y)
                    });
                }
            }
            Op::Add => {
                let (a, b) = (&operands[0], &operands[1]);
                quote! {
                    ws.run([#a, #b], #out, #len, |[a, b], y, _| ops::add(a, b, y));
                }
            }
            Op::GlobalAvgPool => {
                let x = &operands[0];
                quote! {
                    ws.run([#x], #out, #len, |[x], y, _| ops::global_avg_pool(&#in_ty_tokens, batch, x, y));
                }
            }
            Op::PoolNormLinear {
                channels,
                classes,
                eps,
            } => {
                let (wt, b) = (param(id, "weight")?, param(id, "bias")?);
                let eps = Literal::f64_suffixed(eps);
                let x = &operands[0];
                quote! {
                    ws.run([#x], #out, #len, |[x], y, _| {
                        ops::pool_norm_linear(#channels, #classes, #eps, &#in_ty_tokens, batch, w.get(#wt), w.get(#b), x, y)
                    });
                }
            }
            Op::Permute(p) => {
                let p = match p {
                    Permute::NchwToNhwc => quote!(Permute::NchwToNhwc),
                    Permute::NhwcToNchw => quote!(Permute::NhwcToNchw),
                };
                let x = &operands[0];
                quote! {
                    ws.run([#x], #out, #len, |[x], y, _| ops::permute(#p, &#out_ty, batch, x, y));
                }
            }
        };
        body.extend(stmt);
    }
    Ok(Instance {
        segment,
        values: local.iter().map(|id| plan.slot[id]).collect(),
        params: inst_params,
        sums,
        body,
    })
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
    quote!(Conv2d {
        in_channels: #i, out_channels: #o, kernel: [#kh, #kw], stride: [#sh, #sw],
        padding: [#ph, #pw], groups: #g, layout: #layout, input_norm: #input_norm,
        output_norm: #output_norm,
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
    quote!(Linear {
        in_features: #i, out_features: #o, input_norm: #input_norm, input_scale: #scale,
        activation: #activation, residual: #residual, sum_squares: #sums,
    })
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

fn param_tokens(p: &Param) -> TokenStream {
    let name = &p.name;
    let shape = &p.shape;
    let derivation = match &p.derivation {
        Some(d) => {
            let rule = match d.rule {
                DeriveRule::ScaleInputChannels => quote!(DeriveRule::ScaleInputChannels),
                DeriveRule::AddWeightTimesInput => quote!(DeriveRule::AddWeightTimesInput),
            };
            let inputs = d.inputs.iter().map(param_tokens);
            quote!(Some((#rule, &[#(#inputs),*])))
        }
        None => quote!(None),
    };
    quote!(ParamSpec { name: #name, shape: &[#(#shape),*], derivation: #derivation })
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
                "config = \"tiny-1k-224\", fuse = 1",
                "`fuse` takes `true` or `false`",
            ),
            (
                "config = \"tiny-1k-224\", image_size = 2",
                "image_size 2 is out of range",
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
