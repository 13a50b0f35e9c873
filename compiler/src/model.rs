//! A model ready to run: its config, its optimised graph for one input size, and its weights
//! loaded through the runtime's one load path ([`Weights::load`]: validate, derive, retain,
//! prepare), indexed by the graph's weight table.

use cnx_runtime::compiled::Weights;
use cnx_runtime::kernels::Isa;
use cnx_runtime::program::Program;
use cnx_runtime::{NamingScheme, WeightSource, WeightStore};

use crate::builder::BuildOptions;
use crate::config::ConvNextV2Config;
use crate::frontend::{self, Optimised};
use crate::ir::Graph;
use crate::lower::{lower_outputs, weight_table};
use crate::passes::Pipeline;
use crate::Error;

/// A model ready to run: config, optimised graph, weights.
pub struct LoadedModel {
    /// How the user named it (preset, hub id or path), for messages.
    pub name: String,
    pub config: ConvNextV2Config,
    pub graph: Graph,
    /// The graph's weight table, loaded: every program lowered from `graph` indexes it.
    pub weights: Weights,
    /// Rewrites made by each pass.
    pub pass_report: Vec<(&'static str, usize)>,
}

impl WeightSource for LoadedModel {
    fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.weights.by_name(name)
    }
}

impl LoadedModel {
    /// Builds the graph of `config` for `input_hw`, checks the checkpoint `store` against it
    /// (all problems in one error, naming Hugging Face tensors), optimises it with `pipeline`
    /// and loads the weights the optimised graph reads, prepared for this CPU's kernels.
    pub fn new(
        name: impl Into<String>,
        config: ConvNextV2Config,
        store: WeightStore,
        input_hw: (usize, usize),
        pipeline: &Pipeline,
    ) -> Result<Self, Error> {
        Self::new_for(name, config, store, input_hw, pipeline, Some(Isa::detect()))
    }

    /// [`LoadedModel::new`] with weights prepared for `isa`'s kernels (`None`: none, every op
    /// on its plain reference kernel).
    pub fn new_for(
        name: impl Into<String>,
        config: ConvNextV2Config,
        store: WeightStore,
        input_hw: (usize, usize),
        pipeline: &Pipeline,
        isa: Option<Isa>,
    ) -> Result<Self, Error> {
        // A bare `ConvNextV2Model` checkpoint has no classifier: its logits are the pooled
        // features, as `nn.Identity()` gives with zero labels. A `ConvNextV2Backbone` one is
        // known by its `hidden_states_norms`: feature maps, no pooling, no head.
        let options = BuildOptions {
            classifier: store.scheme() != NamingScheme::HuggingFaceBare,
            backbone: store.names().any(|n| n.contains("hidden_states_norms.")),
        };
        let optimised: Optimised =
            frontend::optimise::<Error>(&config, input_hw, options, pipeline)?;
        let Optimised {
            graph,
            checkpoint,
            pass_report,
        } = optimised;
        let (table, _) = weight_table(&graph)?;
        let weights = Weights::load_for(
            store,
            checkpoint.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
            &table,
            isa,
        )?;
        Ok(LoadedModel {
            name: name.into(),
            config,
            graph,
            weights,
            pass_report,
        })
    }

    /// Whether this is a `ConvNextV2Backbone` (outputs `feature_maps_<k>`, no logits).
    pub fn is_backbone(&self) -> bool {
        self.graph
            .output(&crate::ir::outputs::feature_map(0))
            .is_some()
    }

    /// The program computing the outputs `names` (`["logits"]`, ...).
    pub fn program(&self, names: &[&str]) -> Result<Program, Error> {
        Ok(lower_outputs(&self.graph, names)?)
    }

    /// Drops the prepared weights: every op then runs on the plain reference kernels.
    pub fn use_reference_kernels(mut self) -> Self {
        self.weights.drop_prepared();
        self
    }

    /// The validated checkpoint tensors the weights read directly (those that only fed
    /// derived weights are dropped at load).
    pub fn checkpoint(&self) -> &WeightStore {
        self.weights.checkpoint()
    }
}
