//! Naming a model: a preset, a `config.json`, or a directory laid out as a hub snapshot; and
//! loading it with its weights into a verified graph.

use std::path::{Path, PathBuf};

use cnx_runtime::weights::{SHARD_INDEX, SINGLE_FILE};
use std::collections::HashMap;

use cnx_runtime::kernels::gemm::Isa;
use cnx_runtime::kernels::PreparedWeights;
use cnx_runtime::ops;
use cnx_runtime::{NamingScheme, WeightSource, WeightStore};

use crate::builder::{build_graph_with, BuildOptions};
use crate::config::ConvNextV2Config;
use crate::ir::Graph;
use crate::passes::{derive, Pipeline};
use crate::{hub, presets, verify, Error};

/// A resolved model reference.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// How the user named it (preset name or path), for messages.
    pub name: String,
    pub config: ConvNextV2Config,
    /// The `config.json` text the config was read from.
    pub config_json: String,
    /// The directory holding `config.json`, where weights are looked for by default.
    pub dir: Option<PathBuf>,
    /// `preprocessor_config.json` text, when known.
    pub preprocessor_json: Option<String>,
    /// The hub id whose checkpoint this is (presets and hub ids), for fetching its weights.
    pub hub_id: Option<String>,
}

impl ModelSpec {
    /// Resolves `model`: an existing directory (holding `config.json`), an existing
    /// `config.json` file, or a preset (`tiny-1k-224`, `facebook/convnextv2-tiny-1k-224`).
    pub fn resolve(model: &str) -> Result<ModelSpec, Error> {
        let path = Path::new(model);
        if path.is_dir() {
            let config_path = path.join("config.json");
            if !config_path.is_file() {
                return Err(Error::Io {
                    path: config_path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the model directory has no config.json",
                    ),
                });
            }
            return Self::from_config_file(model, &config_path);
        }
        if path.is_file() {
            return Self::from_config_file(model, path);
        }
        // A hub id or preset already in the Hugging Face cache is that snapshot directory.
        let hub_id = match presets::find(model) {
            Some(preset) => Some(preset.hub_id()),
            None if hub::is_hub_id(model) => Some(model.to_string()),
            None => None,
        };
        if let Some(id) = &hub_id {
            if let Some(dir) = hub::cached_snapshot(&hub::cache_dir(), id, "main") {
                let mut spec = Self::from_config_file(id, &dir.join("config.json"))?;
                spec.hub_id = Some(id.clone());
                return Ok(spec);
            }
        }
        if let Some(preset) = presets::find(model) {
            let config = ConvNextV2Config::from_json(preset.config_json).map_err(|source| {
                Error::Config {
                    path: preset.hub_id(),
                    source,
                }
            })?;
            return Ok(ModelSpec {
                name: preset.hub_id(),
                config,
                config_json: preset.config_json.to_string(),
                dir: None,
                preprocessor_json: Some(preset.preprocessor_json.to_string()),
                hub_id,
            });
        }
        // Any other hub id: its config must come from the hub.
        if let Some(id) = hub_id {
            let dir = hub::resolve(&id)?;
            let mut spec = Self::from_config_file(&id, &dir.join("config.json"))?;
            spec.hub_id = Some(id);
            return Ok(spec);
        }
        let looks_like_path = model.ends_with(".json")
            || model.starts_with('.')
            || model.starts_with('/')
            || model.contains('/');
        if looks_like_path {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
        Err(Error::UnknownModel {
            name: model.to_string(),
            suggestions: presets::suggestions(model),
        })
    }

    fn from_config_file(name: &str, config_path: &Path) -> Result<ModelSpec, Error> {
        let config_json = std::fs::read_to_string(config_path).map_err(|source| Error::Io {
            path: config_path.to_path_buf(),
            source,
        })?;
        let config = ConvNextV2Config::from_json(&config_json).map_err(|source| Error::Config {
            path: config_path.display().to_string(),
            source,
        })?;
        let dir = config_path.parent().map(Path::to_path_buf);
        let preprocessor_json = dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("preprocessor_config.json")).ok());
        Ok(ModelSpec {
            name: name.to_string(),
            config,
            config_json,
            dir,
            preprocessor_json,
            hub_id: None,
        })
    }

    /// The checkpoint to load when none is given: the one beside `config.json`, else (for a
    /// preset or hub id) the hub's, from the cache or downloaded.
    pub fn checkpoint(&self) -> Result<PathBuf, Error> {
        if let Some(path) = self.default_weights() {
            return Ok(path);
        }
        match &self.hub_id {
            Some(id) => {
                let dir = hub::resolve(id)?;
                [SINGLE_FILE, SHARD_INDEX]
                    .iter()
                    .map(|f| dir.join(f))
                    .find(|p| p.is_file())
                    .ok_or_else(|| Error::NoWeights {
                        model: self.name.clone(),
                    })
            }
            None => Err(Error::NoWeights {
                model: self.name.clone(),
            }),
        }
    }

    /// The checkpoint beside `config.json` (`model.safetensors`, or a sharded index), if any.
    pub fn default_weights(&self) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        [SINGLE_FILE, SHARD_INDEX]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
    }
}

/// A model ready to run: its config, its optimised graph for one input size, the validated
/// checkpoint and the parameters the passes derived from it (computed once, here).
pub struct LoadedModel {
    pub spec: ModelSpec,
    pub graph: Graph,
    pub checkpoint: WeightStore,
    derived: HashMap<String, Vec<f32>>,
    /// Weights prepared for the optimised kernels (empty: reference kernels only).
    packed: HashMap<String, PreparedWeights>,
    /// Rewrites made by each pass.
    pub pass_report: Vec<(&'static str, usize)>,
}

impl WeightSource for LoadedModel {
    fn tensor(&self, name: &str) -> Option<&[f32]> {
        match self.derived.get(name) {
            Some(v) => Some(v),
            None => self.checkpoint.tensor(name),
        }
    }

    fn prepared(&self, name: &str) -> Option<&PreparedWeights> {
        self.packed.get(name)
    }
}

impl LoadedModel {
    /// Opens the checkpoint (`weights`, else the one beside the config), builds the graph for
    /// `input_hw`, checks the checkpoint against it (all problems in one error) and optimises
    /// it with the default pipeline.
    pub fn load(
        spec: ModelSpec,
        weights: Option<&Path>,
        input_hw: (usize, usize),
    ) -> Result<Self, Error> {
        Self::load_with(spec, weights, input_hw, &Pipeline::default_pipeline())
    }

    /// [`LoadedModel::load`] with a chosen pipeline (`Pipeline::empty()`: the unfused graph).
    pub fn load_with(
        spec: ModelSpec,
        weights: Option<&Path>,
        input_hw: (usize, usize),
        pipeline: &Pipeline,
    ) -> Result<Self, Error> {
        let weights_path = match weights {
            Some(p) => p.to_path_buf(),
            None => spec.checkpoint()?,
        };
        let store = WeightStore::open(&weights_path)?;
        Self::with_weights(spec, store, input_hw, pipeline)
    }

    /// As [`LoadedModel::load_with`], with an already opened checkpoint.
    pub fn with_weights(
        spec: ModelSpec,
        mut store: WeightStore,
        input_hw: (usize, usize),
        pipeline: &Pipeline,
    ) -> Result<Self, Error> {
        // A bare `ConvNextV2Model` checkpoint has no classifier: its logits are the pooled
        // features, as `nn.Identity()` gives with zero labels.
        let options = BuildOptions {
            classifier: store.scheme() != NamingScheme::HuggingFaceBare,
        };
        let mut graph = build_graph_with(&spec.config, input_hw, options)?;
        verify::verify(&graph)?;
        // Validate against the graph as Hugging Face defines it: messages name HF tensors.
        store.validate(
            graph
                .checkpoint_params()
                .into_iter()
                .map(|p| (p.name.as_str(), p.shape.as_slice())),
        )?;
        let pass_report = pipeline.run(&mut graph)?;
        verify::verify(&graph)?;
        let derived = derive::materialize(&graph, &store)?.derived;
        // Dead weights: checkpoint tensors that only fed derivations are not needed to run.
        let live: std::collections::HashSet<String> =
            graph.params().into_iter().map(|p| p.name.clone()).collect();
        store.retain(|name| live.contains(name));
        let mut model = LoadedModel {
            spec,
            graph,
            checkpoint: store,
            derived,
            packed: HashMap::new(),
            pass_report,
        };
        model.pack_weights(Isa::detect());
        Ok(model)
    }

    /// Prepares weights once for the optimised kernels: Linear weights and kernel == stride
    /// convs (stem, downsampling) packed for `isa`'s GEMM, depthwise weights tap-major. The
    /// interpreter then runs those ops on the optimised kernels, with the same prologues and
    /// epilogues; every other op keeps its reference kernel.
    pub fn pack_weights(&mut self, isa: Isa) {
        use crate::ir::Op;
        let mut packed = HashMap::new();
        for id in self.graph.topo_order().expect("verified") {
            let node = self.graph.node(id);
            let Some(p) = node.param("weight") else {
                continue;
            };
            let w = self.tensor(&p.name).expect("validated and derived");
            let prepared = match node.op {
                Op::Linear(l) => Some(ops::prepare_linear(&l, w, isa)),
                Op::Conv2d(c) => ops::prepare_conv(&c, w, isa),
                _ => None,
            };
            if let Some(prepared) = prepared {
                packed.insert(p.name.clone(), prepared);
            }
        }
        self.packed = packed;
    }

    /// Drops the packed weights: every op then runs on the plain reference kernels.
    pub fn use_reference_kernels(mut self) -> Self {
        self.packed.clear();
        self
    }
}
