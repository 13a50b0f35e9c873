//! `ConvNextV2Config`: a Hugging Face `config.json`, read and validated.
//!
//! Semantics follow transformers (4.x and 5.x `save_pretrained` output alike):
//! - `hidden_sizes` / `depths` default to tiny's when absent or null;
//! - `id2label`, when present, decides the number of labels (as `PretrainedConfig` does); else
//!   `num_labels`, else 2. Zero labels means no classifier: logits are the pooled features;
//! - every LayerNorm uses eps 1e-6 except the final pooled one, which uses `layer_norm_eps`;
//! - unknown keys are ignored; inconsistent ones are errors naming the key.

use std::path::Path;

use cnx_runtime::Activation;

use crate::limits::{ConfigFigures, LimitError, Limits};
use crate::loss::ProblemType;
use serde::Deserialize;
use serde_json::Value;

/// The eps of every LayerNorm but the final one (fixed in transformers' modelling code).
pub const BLOCK_LAYER_NORM_EPS: f64 = 1e-6;

/// A config key that is missing, malformed or inconsistent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// A size over its limit, as the config error naming its key.
fn over_limit(e: LimitError) -> ConfigError {
    let key = e.key.unwrap_or("(file)");
    let what = if e.what.is_empty() {
        "the value".into()
    } else {
        e.what.clone()
    };
    bad(
        key,
        LimitError {
            key: None,
            what,
            ..e
        }
        .to_string(),
    )
}

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A validated ConvNeXt V2 configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvNextV2Config {
    pub num_channels: usize,
    pub patch_size: usize,
    pub num_stages: usize,
    pub hidden_sizes: Vec<usize>,
    pub depths: Vec<usize>,
    pub hidden_act: Activation,
    /// eps of the final LayerNorm over the pooled features.
    pub layer_norm_eps: f64,
    pub image_size: usize,
    /// Class names in index order; its length is the number of labels (0: no classifier).
    pub id2label: Vec<String>,
    pub out_features: Vec<String>,
    pub out_indices: Vec<usize>,
    /// Stochastic depth rate: training only, no effect at inference.
    pub drop_path_rate: f64,
    /// What labels mean for the loss (`None`: decided from the labels, as transformers does).
    pub problem_type: Option<ProblemType>,
}

/// `config.json` as written, before validation. Everything optional; unknown keys ignored.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    num_channels: Option<Value>,
    patch_size: Option<Value>,
    num_stages: Option<Value>,
    hidden_sizes: Option<Value>,
    depths: Option<Value>,
    hidden_act: Option<Value>,
    layer_norm_eps: Option<Value>,
    image_size: Option<Value>,
    id2label: Option<Value>,
    label2id: Option<Value>,
    num_labels: Option<Value>,
    out_features: Option<Value>,
    out_indices: Option<Value>,
    drop_path_rate: Option<Value>,
    problem_type: Option<Value>,
}

fn positive(key: &str, v: Option<&Value>, default: usize) -> Result<usize, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(0) => Err(bad(key, "must be positive, found 0")),
            Some(n) => usize::try_from(n).map_err(|_| bad(key, format!("{n} is too large"))),
            None => Err(bad(key, format!("expected a positive integer, found {v}"))),
        },
    }
}

fn size_list(key: &str, v: Option<&Value>, default: &[usize]) -> Result<Vec<usize>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(default.to_vec()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_u64() {
                Some(0) => Err(bad(key, format!("entry {i} is 0; sizes must be positive"))),
                Some(n) => usize::try_from(n).map_err(|_| bad(key, format!("entry {i} too large"))),
                None => Err(bad(
                    key,
                    format!("entry {i} is {item}, not a positive integer"),
                )),
            })
            .collect(),
        Some(v) => Err(bad(
            key,
            format!("expected a list of positive integers, found {v}"),
        )),
    }
}

fn float(key: &str, v: Option<&Value>, default: f64) -> Result<f64, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| bad(key, format!("expected a number, found {v}"))),
    }
}

impl ConvNextV2Config {
    /// Reads and validates a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self, crate::Error> {
        let text = read_text(path).map_err(|source| crate::Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|source| crate::Error::Config {
            path: path.display().to_string(),
            source,
        })
    }

    /// Parses and validates `config.json` text, within the default [`Limits`].
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::from_json_with(text, &Limits::default())
    }

    /// Parses and validates `config.json` text; sizes over `limits` are refused before
    /// anything is made from them.
    pub fn from_json_with(text: &str, limits: &Limits) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| bad("(file)", format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(bad("(file)", "expected a JSON object"));
        }
        let raw: RawConfig =
            serde_json::from_value(value).map_err(|e| bad("(file)", e.to_string()))?;
        let config = Self::from_raw(raw, limits)?;
        limits.check_config(&config).map_err(over_limit)?;
        Ok(config)
    }

    fn from_raw(raw: RawConfig, limits: &Limits) -> Result<Self, ConfigError> {
        if let Some(mt) = raw.model_type.as_deref() {
            if mt != "convnextv2" {
                return Err(bad(
                    "model_type",
                    format!("`{mt}` is not a ConvNeXt V2 model (expected `convnextv2`)"),
                ));
            }
        }
        let num_channels = positive("num_channels", raw.num_channels.as_ref(), 3)?;
        let patch_size = positive("patch_size", raw.patch_size.as_ref(), 4)?;
        let num_stages = positive("num_stages", raw.num_stages.as_ref(), 4)?;
        // Before anything per stage is made (the out_features checks are quadratic in it).
        limits.check_stages(num_stages as u64).map_err(over_limit)?;
        let hidden_sizes = size_list(
            "hidden_sizes",
            raw.hidden_sizes.as_ref(),
            &[96, 192, 384, 768],
        )?;
        let depths = size_list("depths", raw.depths.as_ref(), &[3, 3, 9, 3])?;
        for (key, list) in [("hidden_sizes", &hidden_sizes), ("depths", &depths)] {
            if list.len() != num_stages {
                return Err(bad(
                    key,
                    format!("has {} entries but num_stages is {num_stages}", list.len()),
                ));
            }
        }
        let hidden_act = match raw.hidden_act.as_ref() {
            None | Some(Value::Null) => Activation::Gelu,
            Some(Value::String(name)) => Activation::from_hf_name(name).ok_or_else(|| {
                let known: Vec<&str> = Activation::NAMES.iter().map(|(n, _)| *n).collect();
                bad(
                    "hidden_act",
                    format!("unknown activation `{name}` (known: {})", known.join(", ")),
                )
            })?,
            Some(v) => return Err(bad("hidden_act", format!("expected a name, found {v}"))),
        };
        let layer_norm_eps = float("layer_norm_eps", raw.layer_norm_eps.as_ref(), 1e-12)?;
        if layer_norm_eps < 0.0 {
            return Err(bad("layer_norm_eps", "must not be negative"));
        }
        let image_size = positive("image_size", raw.image_size.as_ref(), 224)?;
        let drop_path_rate = float("drop_path_rate", raw.drop_path_rate.as_ref(), 0.0)?;
        let id2label = labels(raw.id2label.as_ref(), raw.num_labels.as_ref(), limits)?;
        match raw.label2id.as_ref() {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(v) => {
                return Err(bad(
                    "label2id",
                    format!("expected an object or null, found {v}"),
                ))
            }
        }
        let problem_type = match raw.problem_type.as_ref() {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => {
                Some(ProblemType::from_hf_name(name).ok_or_else(|| {
                    let known: Vec<&str> = ProblemType::NAMES.iter().map(|(n, _)| *n).collect();
                    bad(
                        "problem_type",
                        format!(
                            "unknown problem type `{name}` (known: {})",
                            known.join(", ")
                        ),
                    )
                })?)
            }
            Some(v) => return Err(bad("problem_type", format!("expected a name, found {v}"))),
        };
        let (out_features, out_indices) = out_features(
            num_stages,
            raw.out_features.as_ref(),
            raw.out_indices.as_ref(),
        )?;
        Ok(ConvNextV2Config {
            num_channels,
            patch_size,
            num_stages,
            hidden_sizes,
            depths,
            hidden_act,
            layer_norm_eps,
            image_size,
            id2label,
            out_features,
            out_indices,
            drop_path_rate,
            problem_type,
        })
    }

    /// Number of classifier outputs; 0 means no classifier.
    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// `["stem", "stage1", ..., "stageN"]`, as transformers names backbone outputs.
    pub fn stage_names(&self) -> Vec<String> {
        stage_names(self.num_stages)
    }

    /// Total number of blocks.
    pub fn num_layers(&self) -> usize {
        self.depths.iter().sum()
    }
}

impl ConfigFigures for ConvNextV2Config {
    fn num_stages(&self) -> usize {
        self.num_stages
    }
    fn depths(&self) -> &[usize] {
        &self.depths
    }
    fn hidden_sizes(&self) -> &[usize] {
        &self.hidden_sizes
    }
    fn num_channels(&self) -> usize {
        self.num_channels
    }
    fn patch_size(&self) -> usize {
        self.patch_size
    }
    fn image_size(&self) -> usize {
        self.image_size
    }
    fn num_labels(&self) -> usize {
        ConvNextV2Config::num_labels(self)
    }
}

/// The largest `config.json` read (published ones are under 100 KiB, `id2label` included).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads a `config.json` as UTF-8 text, refusing one over [`MAX_CONFIG_BYTES`] (or an endless
/// file such as `/dev/zero`) after reading that many bytes.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_CONFIG_BYTES} bytes: not a config.json"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn stage_names(num_stages: usize) -> Vec<String> {
    std::iter::once("stem".to_string())
        .chain((1..=num_stages).map(|i| format!("stage{i}")))
        .collect()
}

/// Labels in index order, following `PretrainedConfig`: `id2label` wins; else `num_labels`
/// generic names `LABEL_i`; else 2.
fn labels(
    id2label: Option<&Value>,
    num_labels: Option<&Value>,
    limits: &Limits,
) -> Result<Vec<String>, ConfigError> {
    match id2label {
        Some(Value::Object(map)) => {
            limits.check_labels(map.len() as u64).map_err(over_limit)?;
            let mut labels = vec![None; map.len()];
            for (k, v) in map {
                let i: usize = k.parse().ok().filter(|&i| i < map.len()).ok_or_else(|| {
                    bad(
                        "id2label",
                        format!("key `{k}` is not an index below {}", map.len()),
                    )
                })?;
                let name = v
                    .as_str()
                    .ok_or_else(|| bad("id2label", format!("label of `{k}` is not a string")))?;
                // "1" and "01" are distinct keys naming the same index.
                if labels[i].replace(name.to_string()).is_some() {
                    return Err(bad("id2label", format!("index {i} is given twice")));
                }
            }
            // len keys, each a distinct index below len: every slot is filled.
            labels
                .into_iter()
                .enumerate()
                .map(|(i, l)| l.ok_or_else(|| bad("id2label", format!("index {i} is missing"))))
                .collect()
        }
        None | Some(Value::Null) => {
            let n = match num_labels {
                None | Some(Value::Null) => 2,
                Some(v) => v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad("num_labels", format!("expected an integer, found {v}")))?,
            };
            // Checked before the names are made: `num_labels: 1e12` must not allocate them.
            limits.check_labels(n as u64).map_err(over_limit)?;
            Ok((0..n).map(|i| format!("LABEL_{i}")).collect())
        }
        Some(v) => Err(bad("id2label", format!("expected an object, found {v}"))),
    }
}

/// Validates `out_features` / `out_indices` as transformers' backbone utilities do; when only
/// one is given the other is derived; when neither, the last stage.
fn out_features(
    num_stages: usize,
    features: Option<&Value>,
    indices: Option<&Value>,
) -> Result<(Vec<String>, Vec<usize>), ConfigError> {
    let names = stage_names(num_stages);
    let features: Option<Vec<String>> = match features {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| {
                    let s = v
                        .as_str()
                        .ok_or_else(|| bad("out_features", format!("{v} is not a stage name")))?;
                    if names.iter().any(|n| n == s) {
                        Ok(s.to_string())
                    } else {
                        Err(bad(
                            "out_features",
                            format!("`{s}` is not a stage (stages: {})", names.join(", ")),
                        ))
                    }
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(v) => return Err(bad("out_features", format!("expected a list, found {v}"))),
    };
    let indices: Option<Vec<usize>> = match indices {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| {
                    // Negative indices count from the end, as in Python.
                    let i = v
                        .as_i64()
                        .ok_or_else(|| bad("out_indices", format!("{v} is not an integer")))?;
                    let len = names.len() as i64;
                    // i < 0 in the first branch, so i + len cannot overflow.
                    let j = if i < 0 { i + len } else { i };
                    if (0..len).contains(&j) {
                        Ok(j as usize)
                    } else {
                        Err(bad(
                            "out_indices",
                            format!("{i} is out of range for {len} stages"),
                        ))
                    }
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(v) => return Err(bad("out_indices", format!("expected a list, found {v}"))),
    };
    // `names` has num_stages + 1 entries, and every index in `i` was checked to be below that
    // count above, so the indexing below cannot fail.
    match (features, indices) {
        (None, None) => Ok((vec![names[num_stages].clone()], vec![num_stages])),
        (Some(f), None) => {
            let idx = f
                .iter()
                .map(|s| names.iter().position(|n| n == s).expect("validated above"))
                .collect();
            Ok((f, idx))
        }
        (None, Some(i)) => Ok((i.iter().map(|&j| names[j].clone()).collect(), i)),
        (Some(f), Some(i)) => {
            let from_indices: Vec<&String> = i.iter().map(|&j| &names[j]).collect();
            if f.iter().collect::<Vec<_>>() != from_indices {
                return Err(bad(
                    "out_features",
                    format!("{f:?} does not correspond to out_indices {i:?}"),
                ));
            }
            Ok((f, i))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_tiny() {
        let c = ConvNextV2Config::from_json("{}").unwrap();
        assert_eq!(c.hidden_sizes, vec![96, 192, 384, 768]);
        assert_eq!(c.depths, vec![3, 3, 9, 3]);
        assert_eq!((c.num_channels, c.patch_size, c.num_stages), (3, 4, 4));
        assert_eq!(c.hidden_act, Activation::Gelu);
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.num_labels(), 2);
        assert_eq!(c.out_features, vec!["stage4"]);
        assert_eq!(c.out_indices, vec![4]);
    }

    #[test]
    fn labels_follow_pretrained_config() {
        let c = ConvNextV2Config::from_json(r#"{"num_labels": 0, "label2id": null}"#).unwrap();
        assert_eq!(c.num_labels(), 0);
        let c = ConvNextV2Config::from_json(r#"{"num_labels": 5}"#).unwrap();
        assert_eq!(c.id2label[4], "LABEL_4");
        // id2label decides, whatever num_labels says (transformers warns and does the same).
        let c = ConvNextV2Config::from_json(
            r#"{"id2label": {"1": "dog", "0": "cat"}, "num_labels": 7}"#,
        )
        .unwrap();
        assert_eq!(c.id2label, vec!["cat", "dog"]);
        let c = ConvNextV2Config::from_json(r#"{"id2label": {}}"#).unwrap();
        assert_eq!(c.num_labels(), 0);
    }

    #[test]
    fn inconsistent_configs_name_the_key() {
        let cases = [
            (r#"{"hidden_sizes": [8, 16, 24]}"#, "hidden_sizes"),
            (r#"{"num_stages": 3}"#, "hidden_sizes"),
            (
                r#"{"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1]}"#,
                "depths",
            ),
            (r#"{"depths": [1, 0, 1, 1]}"#, "depths"),
            (r#"{"patch_size": 0}"#, "patch_size"),
            (r#"{"num_channels": -1}"#, "num_channels"),
            (r#"{"hidden_act": "gelu_42"}"#, "hidden_act"),
            (r#"{"layer_norm_eps": "small"}"#, "layer_norm_eps"),
            (r#"{"id2label": {"0": "a", "2": "b"}}"#, "id2label"),
            (r#"{"id2label": {"1": "a", "01": "b"}}"#, "id2label"),
            (r#"{"label2id": [1]}"#, "label2id"),
            (r#"{"out_features": ["stage9"]}"#, "out_features"),
            (r#"{"out_indices": [7]}"#, "out_indices"),
            (r#"{"model_type": "convnext"}"#, "model_type"),
            (r#"{"problem_type": "ranking"}"#, "problem_type"),
            (r#"[1, 2]"#, "(file)"),
            (r#"{"depths": "#, "(file)"),
        ];
        for (json, key) in cases {
            let err = ConvNextV2Config::from_json(json).unwrap_err();
            assert_eq!(err.key, key, "{json}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_activations() {
        let c = ConvNextV2Config::from_json(
            r#"{"hidden_act": "gelu_new", "some_future_key": {"x": 1}, "drop_path_rate": 0.1,
                "out_features": ["stage1", "stage3"]}"#,
        )
        .unwrap();
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert_eq!(c.out_indices, vec![1, 3]);
        let c = ConvNextV2Config::from_json(r#"{"out_indices": [-1]}"#).unwrap();
        assert_eq!(c.out_features, vec!["stage4"]);
    }
}
