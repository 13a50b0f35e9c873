//! `build_graph`: the graph of `ConvNextV2ForImageClassification`, module by module.
//!
//! The functions below mirror transformers' `modeling_convnextv2.py` one to one
//! (`ConvNextV2Embeddings`, `ConvNextV2Encoder`, `ConvNextV2Stage`, `ConvNextV2Layer`,
//! `ConvNextV2Model`, the classifier), so the two can be read side by side.

use crate::config::{ConvNextV2Config, BLOCK_LAYER_NORM_EPS};
use crate::ir::{
    outputs, Conv2d, Graph, GraphError, LayerNorm, Linear, NodeId, NormAxis, Op, Param, Permute,
    ValueType,
};

/// The input does not fit the model (e.g. an image smaller than the patch or a downsample).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot build the graph for a {height}x{width} input: {reason}")]
pub struct BuildError {
    pub height: usize,
    pub width: usize,
    pub reason: GraphError,
}

/// Options that change which modules exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    /// Build the classifier head. `false` for a bare `ConvNextV2Model`; with 0 labels there is
    /// none either way. Without it, `logits` are the pooled features, as in transformers.
    pub classifier: bool,
    /// Build `ConvNextV2Backbone` instead: embeddings, encoder, and one channels-first
    /// LayerNorm per stage of `out_features` (outputs `feature_maps_<k>`); no pooling, no head.
    pub backbone: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            classifier: true,
            backbone: false,
        }
    }
}

/// Builds the graph of `ConvNextV2ForImageClassification(config)` for `input_hw` = (H, W).
pub fn build_graph(
    config: &ConvNextV2Config,
    input_hw: (usize, usize),
) -> Result<Graph, BuildError> {
    build_graph_with(config, input_hw, BuildOptions::default())
}

/// [`build_graph`] with options.
pub fn build_graph_with(
    config: &ConvNextV2Config,
    input_hw: (usize, usize),
    options: BuildOptions,
) -> Result<Graph, BuildError> {
    let (height, width) = input_hw;
    let input = ValueType::nchw(config.num_channels, height, width);
    let mut b = Builder {
        graph: Graph::new(input),
        config,
    };
    b.image_classification(options)
        .map_err(|reason| BuildError {
            height,
            width,
            reason,
        })?;
    Ok(b.graph)
}

struct Builder<'a> {
    graph: Graph,
    config: &'a ConvNextV2Config,
}

type Built = Result<NodeId, GraphError>;

impl Builder<'_> {
    /// Adds module `name` with its `weight` and `bias` named `{name}.weight` / `{name}.bias`.
    fn module(&mut self, name: String, op: Op, input: NodeId) -> Built {
        let params = op
            .param_shapes()
            .into_iter()
            .map(|(role, shape)| Param::checkpoint(role, format!("{name}.{role}"), shape))
            .collect();
        self.graph.add(name, op, &[input], params)
    }

    fn conv(&mut self, name: String, input: NodeId, conv: Conv2d) -> Built {
        self.module(name, Op::Conv2d(conv), input)
    }

    fn layer_norm(&mut self, name: String, input: NodeId, axis: NormAxis, eps: f64) -> Built {
        let channels = self.graph.node(input).ty.channels;
        self.module(
            name,
            Op::LayerNorm(LayerNorm {
                channels,
                eps,
                axis,
                affine: true,
            }),
            input,
        )
    }

    fn linear(
        &mut self,
        name: String,
        input: NodeId,
        in_features: usize,
        out_features: usize,
    ) -> Built {
        self.module(
            name,
            Op::Linear(Linear::new(in_features, out_features)),
            input,
        )
    }

    /// `ConvNextV2ForImageClassification.forward`.
    fn image_classification(&mut self, options: BuildOptions) -> Result<(), GraphError> {
        if options.backbone {
            return self.backbone("convnextv2");
        }
        let pixel_values = self.graph.input();
        let pooled = self.model("convnextv2", pixel_values)?;
        let logits = if options.classifier && self.config.num_labels() > 0 {
            let c = *self
                .config
                .hidden_sizes
                .last()
                .expect("validated: num_stages > 0");
            self.linear("classifier".into(), pooled, c, self.config.num_labels())?
        } else {
            pooled // `nn.Identity()`
        };
        self.graph.set_output(outputs::LOGITS, logits);
        Ok(())
    }

    /// `ConvNextV2Model.forward`: embeddings, encoder, mean pool, final LayerNorm.
    fn model(&mut self, prefix: &str, pixel_values: NodeId) -> Built {
        let embedding_output = self.embeddings(&format!("{prefix}.embeddings"), pixel_values)?;
        let last_hidden_state = self.encoder(&format!("{prefix}.encoder"), embedding_output)?;
        self.graph
            .set_output(outputs::LAST_HIDDEN_STATE, last_hidden_state);
        // `last_hidden_state.mean([-2, -1])`, then `self.layernorm` (eps = layer_norm_eps).
        let mean = self.graph.add(
            format!("{prefix}.mean_pool"),
            Op::GlobalAvgPool,
            &[last_hidden_state],
            vec![],
        )?;
        let eps = self.config.layer_norm_eps;
        let pooled = self.layer_norm(
            format!("{prefix}.layernorm"),
            mean,
            NormAxis::ChannelsLast,
            eps,
        )?;
        self.graph.set_output(outputs::POOLER_OUTPUT, pooled);
        Ok(pooled)
    }

    /// `ConvNextV2Backbone.forward`: the encoder's hidden states of the stages in
    /// `out_features`, in stage order, each through `hidden_states_norms[stage]` (a
    /// channels-first LayerNorm, eps 1e-6). Named under `prefix` as the bare model is, so a
    /// backbone checkpoint (`embeddings.*`, `encoder.*`, `hidden_states_norms.*`) reads as one.
    fn backbone(&mut self, prefix: &str) -> Result<(), GraphError> {
        let pixel_values = self.graph.input();
        let embedding_output = self.embeddings(&format!("{prefix}.embeddings"), pixel_values)?;
        let last_hidden_state = self.encoder(&format!("{prefix}.encoder"), embedding_output)?;
        self.graph
            .set_output(outputs::LAST_HIDDEN_STATE, last_hidden_state);
        let names = self.config.stage_names();
        let mut selected = self.config.out_indices.clone();
        selected.sort_unstable();
        selected.dedup();
        for (k, i) in selected.into_iter().enumerate() {
            let hidden_state = self
                .graph
                .output(&outputs::hidden_state(i))
                .expect("the encoder records every hidden state");
            let norm = self.layer_norm(
                format!("{prefix}.hidden_states_norms.{}", names[i]),
                hidden_state,
                NormAxis::ChannelsFirst,
                BLOCK_LAYER_NORM_EPS,
            )?;
            self.graph.set_output(outputs::feature_map(k), norm);
        }
        Ok(())
    }

    /// `ConvNextV2Embeddings`: patchify conv (kernel = stride = patch_size), channels-first LN.
    fn embeddings(&mut self, prefix: &str, pixel_values: NodeId) -> Built {
        let p = self.config.patch_size;
        let patch_embeddings = self.conv(
            format!("{prefix}.patch_embeddings"),
            pixel_values,
            Conv2d::nchw(
                self.config.num_channels,
                self.config.hidden_sizes[0],
                p,
                p,
                0,
                1,
            ),
        )?;
        self.layer_norm(
            format!("{prefix}.layernorm"),
            patch_embeddings,
            NormAxis::ChannelsFirst,
            BLOCK_LAYER_NORM_EPS,
        )
    }

    /// `ConvNextV2Encoder`: the stages; records every hidden state (embeddings output first).
    fn encoder(&mut self, prefix: &str, embedding_output: NodeId) -> Built {
        self.graph
            .set_output(outputs::hidden_state(0), embedding_output);
        let mut hidden_states = embedding_output;
        let mut prev_channels = self.config.hidden_sizes[0];
        for i in 0..self.config.num_stages {
            let out_channels = self.config.hidden_sizes[i];
            let stride = if i > 0 { 2 } else { 1 };
            hidden_states = self.stage(
                &format!("{prefix}.stages.{i}"),
                hidden_states,
                prev_channels,
                out_channels,
                stride,
                self.config.depths[i],
            )?;
            self.graph
                .set_output(outputs::hidden_state(i + 1), hidden_states);
            prev_channels = out_channels;
        }
        Ok(hidden_states)
    }

    /// `ConvNextV2Stage`: an optional downsampling layer (LN + 2x2 stride-2 conv), then blocks.
    fn stage(
        &mut self,
        prefix: &str,
        input: NodeId,
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        depth: usize,
    ) -> Built {
        let mut x = input;
        // `if in_channels != out_channels or stride > 1`, else `nn.Identity()`.
        if in_channels != out_channels || stride > 1 {
            let norm = self.layer_norm(
                format!("{prefix}.downsampling_layer.0"),
                x,
                NormAxis::ChannelsFirst,
                BLOCK_LAYER_NORM_EPS,
            )?;
            x = self.conv(
                format!("{prefix}.downsampling_layer.1"),
                norm,
                Conv2d::nchw(in_channels, out_channels, 2, stride, 0, 1),
            )?;
        }
        for j in 0..depth {
            x = self.layer(&format!("{prefix}.layers.{j}"), x, out_channels)?;
        }
        Ok(x)
    }

    /// `ConvNextV2Layer`: dwconv 7x7, permute to NHWC, LN, pwconv1, act, GRN, pwconv2, permute
    /// back, residual add (drop path is the identity at inference).
    fn layer(&mut self, prefix: &str, input: NodeId, dim: usize) -> Built {
        let dwconv = self.conv(
            format!("{prefix}.dwconv"),
            input,
            Conv2d::nchw(dim, dim, 7, 1, 3, dim),
        )?;
        let nhwc = self.graph.add(
            format!("{prefix}.permute_to_nhwc"),
            Op::Permute(Permute::NchwToNhwc),
            &[dwconv],
            vec![],
        )?;
        let norm = self.layer_norm(
            format!("{prefix}.layernorm"),
            nhwc,
            NormAxis::ChannelsLast,
            BLOCK_LAYER_NORM_EPS,
        )?;
        let pwconv1 = self.linear(format!("{prefix}.pwconv1"), norm, dim, 4 * dim)?;
        let act = self.graph.add(
            format!("{prefix}.act"),
            Op::Activation(self.config.hidden_act),
            &[pwconv1],
            vec![],
        )?;
        let grn = self.module(format!("{prefix}.grn"), Op::Grn { channels: 4 * dim }, act)?;
        let pwconv2 = self.linear(format!("{prefix}.pwconv2"), grn, 4 * dim, dim)?;
        let nchw = self.graph.add(
            format!("{prefix}.permute_to_nchw"),
            Op::Permute(Permute::NhwcToNchw),
            &[pwconv2],
            vec![],
        )?;
        self.graph.add(
            format!("{prefix}.residual"),
            Op::Add,
            &[input, nchw],
            vec![],
        )
    }
}
