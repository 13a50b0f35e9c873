//! Naming a model: a preset, a hub id, a `config.json`, or a directory laid out as a hub
//! snapshot; and loading it with its weights (`ModelSpec::load`).

use std::path::{Path, PathBuf};

use cnx_compiler::passes::Pipeline;
use cnx_compiler::{presets, ConvNextV2Config, LoadedModel};
use cnx_runtime::weights::{SHARD_INDEX, SINGLE_FILE};
use cnx_runtime::WeightStore;

use crate::{hub, Error};

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
            let config = ConvNextV2Config::from_json_with(preset.config_json, crate::limits())
                .map_err(|source| Error::Config {
                    path: preset.hub_id(),
                    source,
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
        let config_json = read_json(config_path)?;
        let config =
            ConvNextV2Config::from_json_with(&config_json, crate::limits()).map_err(|source| {
                Error::Config {
                    path: config_path.display().to_string(),
                    source,
                }
            })?;
        let dir = config_path.parent().map(Path::to_path_buf);
        let preprocessor_json = dir
            .as_ref()
            .map(|d| d.join("preprocessor_config.json"))
            .filter(|p| p.exists())
            .map(|p| read_json(&p))
            .transpose()?;
        Ok(ModelSpec {
            name: name.to_string(),
            config,
            config_json,
            dir,
            preprocessor_json,
            hub_id: None,
        })
    }

    /// Checks a run of `batch` images of `input_hw` against the limits (input sides; weights
    /// plus workspace against the memory limit) before anything is allocated for it.
    pub fn check_run(&self, batch: usize, input_hw: (usize, usize)) -> Result<(), Error> {
        Ok(crate::limits().check_run(&self.config, batch, input_hw)?)
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

/// Loading a named model with its checkpoint into a [`LoadedModel`].
impl ModelSpec {
    /// Opens the checkpoint (`weights`, else the model's own: beside its config, or the hub's),
    /// builds the graph for `input_hw`, checks the checkpoint against it (all problems in one
    /// error) and optimises it with the default pipeline.
    pub fn load(
        self,
        weights: Option<&Path>,
        input_hw: (usize, usize),
    ) -> Result<LoadedModel, Error> {
        self.load_with(weights, input_hw, &Pipeline::default_pipeline())
    }

    /// [`ModelSpec::load`] with a chosen pipeline (`Pipeline::empty()`: the unfused graph).
    pub fn load_with(
        self,
        weights: Option<&Path>,
        input_hw: (usize, usize),
        pipeline: &Pipeline,
    ) -> Result<LoadedModel, Error> {
        let path = match weights {
            Some(p) => p.to_path_buf(),
            None => self.checkpoint()?,
        };
        let store = WeightStore::open(&path)?;
        self.with_weights(store, input_hw, pipeline)
    }

    /// As [`ModelSpec::load_with`], with an already opened checkpoint.
    pub fn with_weights(
        self,
        store: WeightStore,
        input_hw: (usize, usize),
        pipeline: &Pipeline,
    ) -> Result<LoadedModel, Error> {
        Ok(LoadedModel::new(
            self.name,
            self.config,
            store,
            input_hw,
            pipeline,
        )?)
    }
}

/// A JSON file of the model's (`config.json`, `preprocessor_config.json`), read with the
/// config's size cap.
fn read_json(path: &Path) -> Result<String, Error> {
    cnx_compiler::config::read_text(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
