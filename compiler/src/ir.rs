//! The IR: a petgraph `StableGraph` of typed ops, one node per Hugging Face module.
//!
//! Every node carries the HF module path it stands for (`convnextv2.encoder.stages.2.layers.5.
//! pwconv1`), its output type and the HF names and shapes of its parameters. Edges carry the
//! operand index. Types are per image: the batch size is chosen at run time.

use std::fmt;

use cnx_runtime::Activation;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

pub type NodeId = NodeIndex;

pub use cnx_runtime::ops::{
    Conv2d, GrnSource, LayerNorm, Layout, Linear, NormAxis, OutputNorm, Permute, Precision,
    ValueType,
};
pub use cnx_runtime::weights::derive::DeriveRule;

/// Why a graph cannot be built or ordered. Raised while building (operands that do not fit an
/// op, e.g. an input smaller than a kernel) and by any pass or lowering that meets a cycle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Operands whose types do not fit the op.
    #[error("{node}: {reason}")]
    Operands { node: String, reason: OperandError },
    #[error("the graph has a cycle through `{0}`")]
    Cycle(String),
}

/// Operand types that do not fit an op: what the op expected and what it got.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OperandError(pub String);

/// An operation. Parameters live on the node (see [`Node::params`]), named as HF names them.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The graph input, `pixel_values` (NCHW).
    Input,
    Conv2d(Conv2d),
    LayerNorm(LayerNorm),
    Linear(Linear),
    Activation(Activation),
    /// `ConvNextV2GRN` over an NHWC value: a whole-image reduction (every pixel of an image is
    /// needed before any output pixel), then a per-channel affine map.
    Grn {
        channels: usize,
    },
    /// The whole-image half of GRN, once its affine part is folded into the next Linear:
    /// `s = 1 + gamma * N` per sample and channel, `N = ||x_c|| / (mean_c ||x_c|| + 1e-6)`.
    /// A barrier: it needs every pixel of an image. Output `[N, channels]`.
    GrnScale {
        channels: usize,
        source: GrnSource,
    },
    /// Elementwise sum of two values of the same type (the residual connection).
    Add,
    /// Mean over the spatial axes of an image value, giving a feature vector.
    GlobalAvgPool,
    /// The head in one op: global average pool, LayerNorm without affine (folded into the
    /// weights), classifier.
    PoolNormLinear {
        channels: usize,
        classes: usize,
        eps: f64,
    },
    Permute(Permute),
}

impl Op {
    /// Short name for listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "Input",
            Op::Conv2d(c) if c.is_depthwise() => "DepthwiseConv2d",
            Op::Conv2d(_) => "Conv2d",
            Op::LayerNorm(_) => "LayerNorm",
            Op::Linear(_) => "Linear",
            Op::Activation(_) => "Activation",
            Op::Grn { .. } => "GRN",
            Op::GrnScale { .. } => "GrnScale",
            Op::Add => "Add",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::PoolNormLinear { .. } => "PoolNormLinear",
            Op::Permute(_) => "Permute",
        }
    }

    /// Number of operands.
    pub fn arity(&self) -> usize {
        match self {
            Op::Input => 0,
            Op::Add => 2,
            Op::Linear(l) => 1 + usize::from(l.input_scale) + usize::from(l.residual),
            _ => 1,
        }
    }

    /// The parameters the op needs: `(role, shape)`, in HF's shapes.
    pub fn param_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        match *self {
            Op::Conv2d(c) => {
                let mut p = vec![
                    (
                        "weight",
                        vec![
                            c.out_channels,
                            c.in_channels / c.groups,
                            c.kernel[0],
                            c.kernel[1],
                        ],
                    ),
                    ("bias", vec![c.out_channels]),
                ];
                if c.output_norm.is_some_and(|n| n.affine) {
                    p.push(("norm_weight", vec![c.out_channels]));
                    p.push(("norm_bias", vec![c.out_channels]));
                }
                p
            }
            Op::LayerNorm(ln) if ln.affine => {
                vec![("weight", vec![ln.channels]), ("bias", vec![ln.channels])]
            }
            Op::Linear(l) => vec![
                ("weight", vec![l.out_features, l.in_features]),
                ("bias", vec![l.out_features]),
            ],
            Op::Grn { channels } => vec![
                ("weight", vec![1, 1, 1, channels]),
                ("bias", vec![1, 1, 1, channels]),
            ],
            Op::GrnScale { channels, .. } => vec![("weight", vec![1, 1, 1, channels])],
            Op::PoolNormLinear {
                channels, classes, ..
            } => vec![("weight", vec![classes, channels]), ("bias", vec![classes])],
            _ => vec![],
        }
    }

    /// Output type from operand types, or why the operands do not fit.
    pub fn infer(&self, inputs: &[ValueType]) -> Result<ValueType, OperandError> {
        self.infer_types(inputs).map_err(OperandError)
    }

    fn infer_types(&self, inputs: &[ValueType]) -> Result<ValueType, String> {
        if inputs.len() != self.arity() {
            return Err(format!(
                "{} takes {} operand(s), got {}",
                self.kind(),
                self.arity(),
                inputs.len()
            ));
        }
        let expect_layout = |t: &ValueType, layouts: &[Layout]| self.expect_layout(t, layouts);
        let expect_channels = |t: &ValueType, c: usize| self.expect_channels(t, c);
        const IMAGE: &[Layout] = &[Layout::Nchw, Layout::Nhwc];
        match *self {
            Op::Input => Err("Input has no operands; its type is declared".into()),
            Op::Conv2d(c) => self.infer_conv(&c, inputs[0]),
            Op::LayerNorm(ln) => {
                let t = inputs[0];
                match ln.axis {
                    NormAxis::ChannelsFirst => expect_layout(&t, &[Layout::Nchw])?,
                    NormAxis::ChannelsLast => expect_layout(&t, &[Layout::Nhwc, Layout::Features])?,
                }
                expect_channels(&t, ln.channels)?;
                Ok(t)
            }
            Op::Linear(l) => self.infer_linear(&l, inputs),
            Op::Activation(_) => Ok(inputs[0]),
            Op::Grn { channels } => {
                expect_layout(&inputs[0], &[Layout::Nhwc])?;
                expect_channels(&inputs[0], channels)?;
                Ok(inputs[0])
            }
            Op::GrnScale { channels, .. } => {
                expect_layout(&inputs[0], &[Layout::Nhwc])?;
                expect_channels(&inputs[0], channels)?;
                Ok(ValueType::features(channels))
            }
            Op::Add => {
                if inputs[0] != inputs[1] {
                    return Err(format!("Add of {} and {}", inputs[0], inputs[1]));
                }
                Ok(inputs[0])
            }
            Op::GlobalAvgPool => {
                expect_layout(&inputs[0], IMAGE)?;
                Ok(ValueType::features(inputs[0].channels))
            }
            Op::PoolNormLinear {
                channels, classes, ..
            } => {
                expect_layout(&inputs[0], IMAGE)?;
                expect_channels(&inputs[0], channels)?;
                Ok(ValueType::features(classes))
            }
            Op::Permute(p) => {
                let t = inputs[0];
                match p {
                    Permute::NchwToNhwc => {
                        expect_layout(&t, &[Layout::Nchw])?;
                        Ok(ValueType::nhwc(t.channels, t.height, t.width))
                    }
                    Permute::NhwcToNchw => {
                        expect_layout(&t, &[Layout::Nhwc])?;
                        Ok(ValueType::nchw(t.channels, t.height, t.width))
                    }
                }
            }
        }
    }

    fn expect_layout(&self, t: &ValueType, layouts: &[Layout]) -> Result<(), String> {
        if layouts.contains(&t.layout) {
            Ok(())
        } else {
            Err(format!(
                "{} expects {layouts:?} input, got {t}",
                self.kind()
            ))
        }
    }

    fn expect_channels(&self, t: &ValueType, c: usize) -> Result<(), String> {
        if t.channels == c {
            Ok(())
        } else {
            Err(format!("{} expects {c} channels, got {t}", self.kind()))
        }
    }

    /// A convolution's output type (PyTorch's floor for strided convs).
    fn infer_conv(&self, c: &Conv2d, t: ValueType) -> Result<ValueType, String> {
        self.expect_layout(&t, &[c.layout])?;
        self.expect_channels(&t, c.in_channels)?;
        if c.groups == 0
            || !c.in_channels.is_multiple_of(c.groups)
            || !c.out_channels.is_multiple_of(c.groups)
        {
            return Err(format!(
                "groups {} must divide the channel counts",
                c.groups
            ));
        }
        let out = |size: usize, k: usize, s: usize, p: usize, axis: &str| {
            if s == 0 || size + 2 * p < k {
                Err(format!(
                    "input {axis} {size} is smaller than the {k}-wide kernel (padding {p})"
                ))
            } else {
                Ok((size + 2 * p - k) / s + 1)
            }
        };
        Ok(ValueType {
            layout: c.layout,
            channels: c.out_channels,
            height: out(t.height, c.kernel[0], c.stride[0], c.padding[0], "height")?,
            width: out(t.width, c.kernel[1], c.stride[1], c.padding[1], "width")?,
        })
    }

    /// A linear layer's output type; its scale and residual operands checked.
    fn infer_linear(&self, l: &Linear, inputs: &[ValueType]) -> Result<ValueType, String> {
        let t = inputs[0];
        self.expect_layout(&t, &[Layout::Nhwc, Layout::Features])?;
        self.expect_channels(&t, l.in_features)?;
        let out = ValueType {
            channels: l.out_features,
            ..t
        };
        let mut next = 1;
        if l.input_scale {
            let s = inputs[next];
            if s != ValueType::features(l.in_features) {
                return Err(format!(
                    "Linear's input scale must be [N,{}], got {s}",
                    l.in_features
                ));
            }
            next += 1;
        }
        if l.residual && inputs[next] != out {
            return Err(format!(
                "Linear's residual {} does not match its output {out}",
                inputs[next]
            ));
        }
        Ok(out)
    }

    /// Multiply-accumulates per image, given the output type.
    pub fn macs(&self, out: &ValueType) -> u64 {
        match *self {
            Op::Conv2d(c) => {
                (out.numel() * (c.in_channels / c.groups) * c.kernel[0] * c.kernel[1]) as u64
            }
            Op::Linear(l) => (out.pixels() * l.in_features * l.out_features) as u64,
            Op::PoolNormLinear {
                channels, classes, ..
            } => (channels * classes) as u64,
            _ => 0,
        }
    }

    /// How many times the op reads each operand in full (GRN needs a pass for its norms before
    /// it can write anything); used for activation-traffic statistics.
    pub fn operand_passes(&self) -> usize {
        match self {
            Op::Grn { .. } => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Conv2d(c) => {
                write!(
                    f,
                    "{}({}->{}, k={}x{}, s={}, p={}, g={}",
                    self.kind(),
                    c.in_channels,
                    c.out_channels,
                    c.kernel[0],
                    c.kernel[1],
                    c.stride[0],
                    c.padding[0],
                    c.groups
                )?;
                if c.layout == Layout::Nhwc {
                    write!(f, ", nhwc")?;
                }
                if let Some(eps) = c.input_norm {
                    write!(f, ", norm-in eps={eps:e}")?;
                }
                if let Some(n) = c.output_norm {
                    let affine = if n.affine { "+affine" } else { "" };
                    write!(f, ", norm-out{affine} eps={:e}", n.eps)?;
                }
                if c.precision != Precision::F32 {
                    write!(f, ", {}", c.precision.name())?;
                }
                write!(f, ")")
            }
            Op::LayerNorm(ln) => {
                let axis = match ln.axis {
                    NormAxis::ChannelsFirst => "channels_first",
                    NormAxis::ChannelsLast => "channels_last",
                };
                let affine = if ln.affine { "" } else { ", no affine" };
                write!(
                    f,
                    "LayerNorm({}, {axis}, eps={:e}{affine})",
                    ln.channels, ln.eps
                )
            }
            Op::Linear(l) => {
                write!(f, "Linear({}->{}", l.in_features, l.out_features)?;
                if let Some(eps) = l.input_norm {
                    write!(f, ", norm-in eps={eps:e}")?;
                }
                if l.input_scale {
                    write!(f, ", scale-in")?;
                }
                if let Some(a) = l.activation {
                    write!(f, ", {a}")?;
                }
                if l.residual {
                    write!(f, ", +residual")?;
                }
                if l.sum_squares {
                    write!(f, ", sum-squares")?;
                }
                if l.precision != Precision::F32 {
                    write!(f, ", {}", l.precision.name())?;
                }
                write!(f, ")")
            }
            Op::Activation(a) => write!(f, "Activation({a})"),
            Op::Grn { channels } => write!(f, "GRN({channels})"),
            Op::GrnScale {
                channels,
                source: GrnSource::Values,
            } => write!(f, "GrnScale({channels})"),
            Op::GrnScale {
                channels,
                source: GrnSource::ProducerSums,
            } => write!(f, "GrnScale({channels}, from producer's sums)"),
            Op::PoolNormLinear {
                channels,
                classes,
                eps,
            } => write!(f, "PoolNormLinear({channels}->{classes}, eps={eps:e})"),
            Op::Permute(Permute::NchwToNhwc) => write!(f, "Permute(NCHW->NHWC)"),
            Op::Permute(Permute::NhwcToNchw) => write!(f, "Permute(NHWC->NCHW)"),
            _ => f.write_str(self.kind()),
        }
    }
}

/// A derived parameter's recipe: the rule and the parameters it reads (which may themselves
/// be derived). It records what the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    pub rule: DeriveRule,
    pub inputs: Vec<Param>,
}

/// A named parameter of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// `weight`, `bias`, `norm_weight` or `norm_bias`.
    pub role: &'static str,
    /// The Hugging Face tensor name (`convnextv2.embeddings.layernorm.weight`) or, for a derived
    /// parameter, a name that says how it was derived.
    pub name: String,
    pub shape: Vec<usize>,
    /// `None` for a checkpoint tensor; the recipe for a derived one.
    pub derivation: Option<Box<Derivation>>,
}

impl Param {
    /// A tensor read from the checkpoint.
    pub fn checkpoint(role: &'static str, name: impl Into<String>, shape: Vec<usize>) -> Param {
        Param {
            role,
            name: name.into(),
            shape,
            derivation: None,
        }
    }

    /// A tensor computed from `inputs` by `rule`.
    pub fn derived(
        role: &'static str,
        name: impl Into<String>,
        shape: Vec<usize>,
        rule: DeriveRule,
        inputs: Vec<Param>,
    ) -> Param {
        Param {
            role,
            name: name.into(),
            shape,
            derivation: Some(Box::new(Derivation { rule, inputs })),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The checkpoint tensors this parameter is, or is derived from.
    pub fn leaves(&self) -> Vec<&Param> {
        match &self.derivation {
            None => vec![self],
            Some(d) => d.inputs.iter().flat_map(Param::leaves).collect(),
        }
    }

    /// The same parameter under another role.
    pub fn with_role(mut self, role: &'static str) -> Param {
        self.role = role;
        self
    }
}

/// A node: one Hugging Face module (or one inline tensor operation of a `forward`).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The HF module path, e.g. `convnextv2.encoder.stages.0.layers.1.dwconv`.
    pub name: String,
    pub op: Op,
    /// Output type.
    pub ty: ValueType,
    pub params: Vec<Param>,
}

impl Node {
    pub fn param(&self, role: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.role == role)
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(Param::numel).sum()
    }
}

/// The names under which a graph exposes values, in the order HF returns them.
pub mod outputs {
    pub const LOGITS: &str = "logits";
    pub const POOLER_OUTPUT: &str = "pooler_output";
    pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";

    /// `hidden_states_<i>`: the embeddings output (`i = 0`) and each stage's output.
    pub fn hidden_state(i: usize) -> String {
        format!("hidden_states_{i}")
    }

    /// `feature_maps_<k>`: a backbone's k-th feature map (of the stages in `out_features`, in
    /// stage order), through its `hidden_states_norms` LayerNorm.
    pub fn feature_map(k: usize) -> String {
        format!("feature_maps_{k}")
    }

    /// Every output of a model with `num_stages` stages: logits, pooler_output,
    /// last_hidden_state, then the `num_stages + 1` hidden states.
    pub fn all(num_stages: usize) -> Vec<String> {
        [LOGITS, POOLER_OUTPUT, LAST_HIDDEN_STATE]
            .map(String::from)
            .into_iter()
            .chain((0..=num_stages).map(hidden_state))
            .collect()
    }
}

/// A model graph: nodes, operand edges (weight = operand index), the input and named outputs.
#[derive(Debug, Clone)]
pub struct Graph {
    pub(crate) g: StableDiGraph<Node, usize>,
    pub(crate) input: NodeId,
    pub(crate) outputs: Vec<(String, NodeId)>,
}

impl Graph {
    /// A graph holding only its input, of type `input`.
    pub fn new(input: ValueType) -> Graph {
        let mut g = StableDiGraph::new();
        let input = g.add_node(Node {
            name: "pixel_values".into(),
            op: Op::Input,
            ty: input,
            params: vec![],
        });
        Graph {
            g,
            input,
            outputs: vec![],
        }
    }

    /// Adds a node fed by `inputs` (operand order), inferring its type.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: &[NodeId],
        params: Vec<Param>,
    ) -> Result<NodeId, GraphError> {
        let name = name.into();
        let types: Vec<ValueType> = inputs.iter().map(|&i| self.g[i].ty).collect();
        let ty = match op.infer(&types) {
            Ok(ty) => ty,
            Err(reason) => return Err(GraphError::Operands { node: name, reason }),
        };
        let id = self.g.add_node(Node {
            name,
            op,
            ty,
            params,
        });
        for (port, &src) in inputs.iter().enumerate() {
            self.g.add_edge(src, id, port);
        }
        Ok(id)
    }

    /// Exposes `node` under `name` (replacing an output of that name).
    pub fn set_output(&mut self, name: impl Into<String>, node: NodeId) {
        let name = name.into();
        match self.outputs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = node,
            None => self.outputs.push((name, node)),
        }
    }

    pub fn input(&self) -> NodeId {
        self.input
    }

    pub fn input_type(&self) -> ValueType {
        self.g[self.input].ty
    }

    /// Named outputs, in HF order.
    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, id)| id)
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// A node by HF module path.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.g.node_indices().find(|&i| self.g[i].name == name)
    }

    /// Operands of `id`, in operand order.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, src)| src).collect()
    }

    /// Nodes that read `id`.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Nodes in an order where every operand comes before its users (ties by insertion
    /// order, so the order is deterministic).
    pub fn topo_order(&self) -> Result<Vec<NodeId>, GraphError> {
        petgraph::algo::toposort(&self.g, None)
            .map_err(|cycle| GraphError::Cycle(self.g[cycle.node_id()].name.clone()))
    }

    /// All parameters, in topological order.
    pub fn params(&self) -> Vec<&Param> {
        self.topo_order()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|id| self.g[id].params.iter())
            .collect()
    }

    /// The checkpoint tensors the graph reads, directly or through derivations, each once.
    pub fn checkpoint_params(&self) -> Vec<&Param> {
        let mut seen = std::collections::HashSet::new();
        self.params()
            .into_iter()
            .flat_map(Param::leaves)
            .filter(|p| seen.insert(p.name.as_str()))
            .collect()
    }

    /// Total parameter count.
    pub fn num_params(&self) -> usize {
        self.g.node_weights().map(Node::num_params).sum()
    }

    /// Total multiply-accumulates per image.
    pub fn macs(&self) -> u64 {
        self.g.node_weights().map(|n| n.op.macs(&n.ty)).sum()
    }

    /// Redirects every use of `old` (operand edges and named outputs) to `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<(NodeId, usize, petgraph::stable_graph::EdgeIndex)> = self
            .g
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight(), e.id()))
            .collect();
        for (user, port, edge) in uses {
            self.g.remove_edge(edge);
            self.g.add_edge(new, user, port);
        }
        for (_, id) in self.outputs.iter_mut() {
            if *id == old {
                *id = new;
            }
        }
    }

    /// Whether `id` is a named output.
    pub fn is_output(&self, id: NodeId) -> bool {
        self.outputs.iter().any(|&(_, o)| o == id)
    }

    /// Removes `id` if nothing uses it (no user, not an output, not the input), then its
    /// operands if that leaves them unused. Returns how many nodes were removed.
    pub fn remove_if_dead(&mut self, id: NodeId) -> usize {
        if id == self.input
            || self.g.node_weight(id).is_none()
            || self.is_output(id)
            || self
                .g
                .neighbors_directed(id, Direction::Outgoing)
                .next()
                .is_some()
        {
            return 0;
        }
        let operands = self.inputs(id);
        self.g.remove_node(id);
        1 + operands
            .into_iter()
            .map(|o| self.remove_if_dead(o))
            .sum::<usize>()
    }

    /// Whether `id` is (still) a node of the graph.
    pub fn contains(&self, id: NodeId) -> bool {
        self.g.node_weight(id).is_some()
    }

    /// Nodes that some named output in `wanted` depends on.
    pub fn needed_for(&self, wanted: &[NodeId]) -> std::collections::HashSet<NodeId> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = wanted.to_vec();
        while let Some(id) = stack.pop() {
            if seen.insert(id) {
                stack.extend(self.inputs(id));
            }
        }
        seen
    }

    /// The underlying petgraph graph (for rendering and analysis).
    pub fn petgraph(&self) -> &StableDiGraph<Node, usize> {
        &self.g
    }
}
