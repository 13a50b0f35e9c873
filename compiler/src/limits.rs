//! Resource limits, checked against a config before anything is built or allocated.
//!
//! A `config.json` is a file from the internet: `hidden_sizes: [1048576, ...]` or
//! `depths: [100000, ...]` must be refused with one line naming the key and the figure, not
//! found out by an allocator abort or a graph of 400,000 nodes. Everything here is arithmetic on
//! the config ([`Footprint`]), so a check costs nothing whatever the figures are (all
//! saturating: no overflow on hostile sizes).
//!
//! The defaults sit far outside every published ConvNeXt V2 (the largest, huge, has widths up
//! to 2816, 27 blocks in a stage and 660 M parameters) and every limit can be raised
//! (`cnx --limit KEY=N`, [`Limits::set`]).

/// The figures of a model config that limits are checked against and a [`Footprint`] is
/// computed from, as the config has them (`ConvNextV2Config` implements it). A trait, so that
/// the config can be checked here while it is read without this module depending on it.
pub trait ConfigFigures {
    /// `num_stages`.
    fn num_stages(&self) -> usize;
    /// `depths`: blocks per stage.
    fn depths(&self) -> &[usize];
    /// `hidden_sizes`: the width of each stage.
    fn hidden_sizes(&self) -> &[usize];
    /// `num_channels` of the input.
    fn num_channels(&self) -> usize;
    /// `patch_size`.
    fn patch_size(&self) -> usize;
    /// `image_size`.
    fn image_size(&self) -> usize;
    /// Classifier outputs (0: no classifier).
    fn num_labels(&self) -> usize;
}

/// A figure over its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is {figure}, over the limit of {limit} (raise it with --limit {name}=N)", self.subject())]
pub struct LimitError {
    /// The config key the figure comes from, if it comes from one.
    pub key: Option<&'static str>,
    /// What was measured, for the message (`entry 0`, `the input height`).
    pub what: String,
    pub figure: u64,
    pub limit: u64,
    /// The limit's name, as `--limit` takes it.
    pub name: &'static str,
}

impl LimitError {
    /// What is over the limit, in words: "config key `depths`: entry 0", "the input height".
    fn subject(&self) -> String {
        match (self.key, self.what.is_empty()) {
            (Some(k), true) => format!("config key `{k}`"),
            (Some(k), false) => format!("config key `{k}`: {}", self.what),
            (None, _) => self.what.clone(),
        }
    }
}

/// A `--limit` setting that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitSettingError {
    #[error("--limit {name}={value}: at most {max}")]
    AboveMaximum { name: String, value: u64, max: u64 },
    #[error("unknown limit `{name}` (limits: {known})")]
    Unknown { name: String, known: String },
    #[error("--limit `{0}`: expected NAME=N, e.g. width=32768")]
    NotAnAssignment(String),
    #[error("--limit `{assignment}`: `{value}` is not a whole number")]
    NotANumber { assignment: String, value: String },
}

/// Every limit, with its `--limit` name and default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `num_stages`.
    pub stages: u64,
    /// Each entry of `depths`.
    pub stage_depth: u64,
    /// Each entry of `hidden_sizes`.
    pub width: u64,
    /// `num_channels` of the input.
    pub channels: u64,
    /// `patch_size`.
    pub patch_size: u64,
    /// Classifier outputs (`num_labels` / `id2label`).
    pub labels: u64,
    /// Height and width of the model's input (`image_size`, `--input-size`, a .npy's shape).
    pub input_side: u64,
    /// Parameters of the model.
    pub parameters: u64,
    /// Nodes of the unfused graph.
    pub graph_nodes: u64,
    /// Pixels of one decoded image (the image is refused, not the run).
    pub image_pixels: u64,
    /// Bytes for weights and workspace of one run; `None`: the memory the machine has
    /// available now (`MemAvailable`), unlimited where that cannot be read.
    pub memory_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stages: 16,
            stage_depth: 512,
            width: 16384,
            channels: 1024,
            patch_size: 1024,
            labels: 1 << 20,
            input_side: 16384,
            parameters: 4_000_000_000,
            graph_nodes: 100_000,
            // PIL's decompression-bomb error threshold (2 x 89,478,485), which is also the
            // `image` crate's default 512 MiB allocation limit in RGB8 pixels.
            image_pixels: 178_956_970,
            memory_bytes: None,
        }
    }
}

/// Every limit by its `--limit` name, with the most it can be raised to: every size product
/// the compiler forms (a width times four, a stage's values times the batch, parameters times
/// eight bytes) then stays far from `u64::MAX`.
pub const HARD_MAXIMA: &[(&str, u64)] = &[
    ("stages", 1 << 10),
    ("stage-depth", 1 << 20),
    ("width", 1 << 24),
    ("channels", 1 << 20),
    ("patch-size", 1 << 20),
    ("labels", 1 << 32),
    ("input-side", 1 << 20),
    ("parameters", 1 << 40),
    ("graph-nodes", 1 << 32),
    ("image-pixels", 1 << 40),
    ("memory-mb", 1 << 30),
];

impl Limits {
    /// Every limit at its [`HARD_MAXIMA`] figure: the most `--limit` allows.
    pub fn hard_maxima() -> Limits {
        let mut limits = Limits::default();
        for (name, max) in HARD_MAXIMA {
            limits
                .set(name, *max)
                .expect("a known name within its maximum");
        }
        limits
    }

    /// Sets the limit `name` (one of [`HARD_MAXIMA`]'s) to `value`, at most its maximum there:
    /// past those, sizes would overflow the builder's own arithmetic.
    pub fn set(&mut self, name: &str, value: u64) -> Result<(), LimitSettingError> {
        if let Some(&(_, max)) = HARD_MAXIMA.iter().find(|(n, _)| *n == name) {
            if value > max {
                let name = name.to_string();
                return Err(LimitSettingError::AboveMaximum { name, value, max });
            }
        }
        let slot = match name {
            "stages" => &mut self.stages,
            "stage-depth" => &mut self.stage_depth,
            "width" => &mut self.width,
            "channels" => &mut self.channels,
            "patch-size" => &mut self.patch_size,
            "labels" => &mut self.labels,
            "input-side" => &mut self.input_side,
            "parameters" => &mut self.parameters,
            "graph-nodes" => &mut self.graph_nodes,
            "image-pixels" => &mut self.image_pixels,
            "memory-mb" => {
                self.memory_bytes = Some(value.saturating_mul(1 << 20));
                return Ok(());
            }
            other => {
                let names: Vec<&str> = HARD_MAXIMA.iter().map(|(n, _)| *n).collect();
                return Err(LimitSettingError::Unknown {
                    name: other.to_string(),
                    known: names.join(", "),
                });
            }
        };
        *slot = value;
        Ok(())
    }

    /// Parses `NAME=N` (as `--limit` takes it) into these limits.
    pub fn apply(&mut self, assignment: &str) -> Result<(), LimitSettingError> {
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| LimitSettingError::NotAnAssignment(assignment.to_string()))?;
        let value: u64 = value
            .trim()
            .parse()
            .map_err(|_| LimitSettingError::NotANumber {
                assignment: assignment.to_string(),
                value: value.to_string(),
            })?;
        self.set(name.trim(), value)
    }

    fn check(&self, what: impl Into<String>, figure: u64, limit: u64, name: &'static str) -> Check {
        self.check_key(None, what, figure, limit, name)
    }

    fn check_key(
        &self,
        key: Option<&'static str>,
        what: impl Into<String>,
        figure: u64,
        limit: u64,
        name: &'static str,
    ) -> Check {
        if figure > limit {
            Err(LimitError {
                key,
                what: what.into(),
                figure,
                limit,
                name,
            })
        } else {
            Ok(())
        }
    }

    /// `num_stages`, checked as soon as it is read (before anything per stage is made).
    pub fn check_stages(&self, stages: u64) -> Check {
        self.check_key(Some("num_stages"), "", stages, self.stages, "stages")
    }

    /// The number of labels a config asks for, checked before the label list is made.
    pub fn check_labels(&self, labels: u64) -> Check {
        self.check_key(
            Some("num_labels"),
            "the number of labels",
            labels,
            self.labels,
            "labels",
        )
    }

    /// The config's sizes, each against its limit, then the totals they imply.
    pub fn check_config(&self, config: &impl ConfigFigures) -> Check {
        let key = |k: &'static str, what: &str, figure: usize, limit: u64, name| {
            self.check_key(Some(k), what, figure as u64, limit, name)
        };
        self.check_stages(config.num_stages() as u64)?;
        for (i, &d) in config.depths().iter().enumerate() {
            key(
                "depths",
                &format!("entry {i}"),
                d,
                self.stage_depth,
                "stage-depth",
            )?;
        }
        for (i, &w) in config.hidden_sizes().iter().enumerate() {
            key(
                "hidden_sizes",
                &format!("entry {i}"),
                w,
                self.width,
                "width",
            )?;
        }
        key(
            "num_channels",
            "",
            config.num_channels(),
            self.channels,
            "channels",
        )?;
        key(
            "patch_size",
            "",
            config.patch_size(),
            self.patch_size,
            "patch-size",
        )?;
        key(
            "image_size",
            "",
            config.image_size(),
            self.input_side,
            "input-side",
        )?;
        self.check_labels(config.num_labels() as u64)?;
        let footprint = Footprint::of(config);
        let nodes = footprint.graph_nodes;
        self.check_key(
            Some("depths"),
            "the graph's node count",
            nodes,
            self.graph_nodes,
            "graph-nodes",
        )?;
        let params = footprint.parameters;
        self.check_key(
            Some("hidden_sizes"),
            "the parameter count",
            params,
            self.parameters,
            "parameters",
        )
    }

    /// A run of `batch` images of `input_hw`: the input's sides, then weights plus workspace
    /// against the memory limit.
    pub fn check_run(
        &self,
        config: &impl ConfigFigures,
        batch: usize,
        input_hw: (usize, usize),
    ) -> Check {
        let (h, w) = input_hw;
        self.check("the input height", h as u64, self.input_side, "input-side")?;
        self.check("the input width", w as u64, self.input_side, "input-side")?;
        let footprint = Footprint::of(config);
        let bytes = footprint
            .weight_bytes()
            .saturating_add(footprint.workspace_bytes(config, batch, input_hw));
        match self.memory_limit() {
            Some(limit) => self.check(
                format!("memory for weights and workspace at batch {batch}, {h}x{w} (bytes)"),
                bytes,
                limit,
                "memory-mb",
            ),
            None => Ok(()),
        }
    }

    /// The memory limit in bytes: the one set, else the memory available now (`None` where
    /// that cannot be read).
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_bytes.or_else(available_memory)
    }

    /// One decoded image of `width` x `height` pixels.
    pub fn check_image(&self, width: u64, height: u64) -> Check {
        self.check(
            format!("the image ({width}x{height}, pixels)"),
            width.saturating_mul(height),
            self.image_pixels,
            "image-pixels",
        )
    }
}

type Check = Result<(), LimitError>;

/// What a config costs, computed from its figures alone (saturating).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Parameters of `ConvNextV2ForImageClassification` (exactly `Graph::num_params`).
    pub parameters: u64,
    /// Nodes of the unfused graph (exactly the builder's).
    pub graph_nodes: u64,
}

impl Footprint {
    /// The footprint of `config`'s model (with its classifier).
    pub fn of(config: &impl ConfigFigures) -> Footprint {
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let c_in = config.num_channels() as u64;
        let p = config.patch_size() as u64;
        let widths: Vec<u64> = config.hidden_sizes().iter().map(|&w| w as u64).collect();
        let c0 = widths.first().copied().unwrap_or(0);
        // Embeddings: the patch conv (weight + bias) and its LayerNorm.
        let mut parameters = mul(mul(mul(c_in, c0), p), p)
            .saturating_add(c0)
            .saturating_add(mul(2, c0));
        let mut nodes: u64 = 1 + 2; // the input; patch conv + LayerNorm
        let mut prev = c0;
        for (i, (&c, &depth)) in widths.iter().zip(config.depths()).enumerate() {
            if i > 0 || prev != c {
                // Downsampling: LayerNorm(prev), 2x2 conv prev -> c.
                parameters = parameters
                    .saturating_add(mul(2, prev))
                    .saturating_add(mul(mul(4, prev), c))
                    .saturating_add(c);
                nodes = nodes.saturating_add(2);
            }
            // A block: dwconv 7x7 (49c + c), LayerNorm (2c), pwconv1 (4c^2 + 4c), GRN (2 * 4c),
            // pwconv2 (4c^2 + c).
            let block = mul(8, mul(c, c)).saturating_add(mul(65, c));
            parameters = parameters.saturating_add(mul(block, depth as u64));
            // dwconv, permute, LayerNorm, pwconv1, act, GRN, pwconv2, permute, residual add.
            nodes = nodes.saturating_add(mul(9, depth as u64));
            prev = c;
        }
        // Mean pool, final LayerNorm, classifier.
        let labels = config.num_labels() as u64;
        parameters = parameters.saturating_add(mul(2, prev));
        nodes = nodes.saturating_add(2);
        if labels > 0 {
            parameters = parameters.saturating_add(mul(prev, labels).saturating_add(labels));
            nodes = nodes.saturating_add(1);
        }
        Footprint {
            parameters,
            graph_nodes: nodes,
        }
    }

    /// Bytes the loaded weights may take: the f32 checkpoint plus a repacked copy for the
    /// kernels (an upper bound: mapped f32 tensors cost page cache, not heap).
    pub fn weight_bytes(&self) -> u64 {
        self.parameters.saturating_mul(8)
    }

    /// An upper bound of the workspace for `batch` images of `input_hw`: the input plus four
    /// of the largest per-stage value (a block's 4C expansion); the memory plan keeps fewer
    /// alive at once (tested against it).
    pub fn workspace_bytes(
        &self,
        config: &impl ConfigFigures,
        batch: usize,
        input_hw: (usize, usize),
    ) -> u64 {
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let (h, w) = (input_hw.0 as u64, input_hw.1 as u64);
        let p = (config.patch_size() as u64).max(1);
        let (mut sh, mut sw) = (h / p, w / p);
        let mut largest = 0u64;
        for (i, &c) in config.hidden_sizes().iter().enumerate() {
            if i > 0 {
                (sh, sw) = (sh / 2, sw / 2);
            }
            largest = largest.max(mul(mul(sh, sw), mul(4, c as u64)));
        }
        let input = mul(mul(config.num_channels() as u64, h), w);
        mul(mul(batch as u64, 4), input.saturating_add(mul(4, largest)))
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build_graph;
    use crate::config::ConvNextV2Config;
    use crate::lower::lower_outputs;
    use crate::passes::Pipeline;
    use crate::presets;

    fn config(json: &str) -> ConvNextV2Config {
        ConvNextV2Config::from_json(json).unwrap()
    }

    #[test]
    fn footprint_is_exactly_the_graphs() {
        let mut configs: Vec<ConvNextV2Config> = presets::PRESETS
            .iter()
            .map(|p| config(p.config_json))
            .collect();
        // No classifier; a stage 0 wider than... the stem (always equal); odd sizes.
        configs.push(config(
            r#"{"num_labels": 0, "hidden_sizes": [8, 8, 24], "depths": [1, 2, 1], "num_stages": 3,
                "num_channels": 5, "patch_size": 3}"#,
        ));
        for c in &configs {
            let g = build_graph(c, (c.image_size, c.image_size)).unwrap();
            let f = Footprint::of(c);
            assert_eq!(f.parameters, g.num_params() as u64, "{:?}", c.hidden_sizes);
            assert_eq!(f.graph_nodes, g.node_count() as u64, "{:?}", c.hidden_sizes);
        }
    }

    #[test]
    fn workspace_bound_covers_the_memory_plan() {
        for (name, hw) in [("atto-1k-224", (224, 224)), ("tiny-1k-224", (97, 75))] {
            let c = config(presets::find(name).unwrap().config_json);
            let mut g = build_graph(&c, hw).unwrap();
            Pipeline::default_pipeline().run(&mut g).unwrap();
            let program = lower_outputs(&g, &["logits"]).unwrap();
            let planned = program.workspace_bytes_per_image() as u64;
            let bound = Footprint::of(&c).workspace_bytes(&c, 1, hw);
            // An upper bound, and not a loose one: within 4x of the plan.
            assert!(
                bound >= planned && bound <= 4 * planned,
                "{name}: {bound} vs {planned}"
            );
        }
    }

    #[test]
    fn hostile_configs_are_refused_naming_the_key() {
        let limits = Limits::default();
        let cases = [
            (
                r#"{"hidden_sizes": [1048576, 2, 3, 4]}"#,
                "hidden_sizes",
                "width",
            ),
            (r#"{"depths": [100000, 1, 1, 1]}"#, "depths", "stage-depth"),
            (r#"{"image_size": 1000000}"#, "image_size", "input-side"),
            (r#"{"num_channels": 100000}"#, "num_channels", "channels"),
            (
                r#"{"hidden_sizes": [16384, 16384, 16384, 16384], "depths": [500, 1, 1, 1]}"#,
                "hidden_sizes",
                "parameters",
            ),
        ];
        // Parsed with every limit out of the way (fields are public: past `--limit`'s maxima).
        let lax = Limits {
            parameters: u64::MAX,
            ..Limits::hard_maxima()
        };
        for (json, key, name) in cases {
            let c = ConvNextV2Config::from_json_with(json, &lax).unwrap();
            let err = limits.check_config(&c).unwrap_err();
            assert_eq!(err.key, Some(key), "{json}: {err}");
            assert_eq!(err.name, name, "{json}: {err}");
            // The parser applies the same limits.
            let err = ConvNextV2Config::from_json(json).unwrap_err();
            assert_eq!(err.key, key, "{json}: {err}");
            assert!(err.message.contains("--limit"), "{json}: {err}");
        }
        let err = ConvNextV2Config::from_json(r#"{"num_labels": 1000000000000}"#).unwrap_err();
        assert_eq!(err.key, "num_labels", "{err}");
        for p in presets::PRESETS {
            limits.check_config(&config(p.config_json)).unwrap();
        }
    }

    #[test]
    fn run_limits_check_sides_and_memory() {
        let c = config(presets::find("tiny-1k-224").unwrap().config_json);
        let mut limits = Limits::default();
        limits.apply("memory-mb=64").unwrap();
        // tiny's weights alone are 28.6 M parameters: over 64 MiB at 8 bytes each.
        let err = limits.check_run(&c, 1, (224, 224)).unwrap_err();
        assert_eq!(err.name, "memory-mb");
        limits.apply("memory-mb=4096").unwrap();
        limits.check_run(&c, 8, (224, 224)).unwrap();
        let err = limits.check_run(&c, 1, (20000, 224)).unwrap_err();
        assert_eq!(err.name, "input-side");
        assert!(limits.check_run(&c, usize::MAX, (16384, 16384)).is_err());
        assert!(limits.apply("width").is_err());
        assert!(limits.apply("nope=1").is_err());
        assert!(limits.apply("width=x").is_err());
        assert!(limits.apply("width=99999999999").is_err());
        limits.apply("width=32768").unwrap();
        assert_eq!(limits.width, 32768);
    }
}
