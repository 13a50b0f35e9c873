//! Checkpoint naming schemes, and their translation to Hugging Face names.
//!
//! cnx's graph names every weight as `ConvNextV2ForImageClassification` does
//! (`convnextv2.encoder.stages.2.layers.5.pwconv1.weight`). A checkpoint may instead be a bare
//! `ConvNextV2Model` (no `convnextv2.` prefix, no classifier) or a timm `convnextv2_*` state dict;
//! both are renamed (and, for timm, trivially reshaped) to Hugging Face names on load.

use std::fmt;

/// How a checkpoint names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NamingScheme {
    /// `ConvNextV2ForImageClassification`: `convnextv2.*` and `classifier.*`.
    HuggingFace,
    /// A bare `ConvNextV2Model`: `embeddings.*`, `encoder.*`, `layernorm.*`; no classifier.
    HuggingFaceBare,
    /// timm's `ConvNeXt` with GRN: `stem.*`, `stages.N.*`, `head.*`.
    Timm,
}

impl fmt::Display for NamingScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NamingScheme::HuggingFace => "Hugging Face",
            NamingScheme::HuggingFaceBare => "Hugging Face (bare ConvNextV2Model)",
            NamingScheme::Timm => "timm",
        })
    }
}

impl NamingScheme {
    /// Guesses the scheme from the tensor names; `None` if no name looks like any scheme.
    pub fn detect<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Option<NamingScheme> {
        let any = |pred: &dyn Fn(&str) -> bool| names.clone().into_iter().any(pred);
        if any(&|n| n.starts_with("convnextv2.")) {
            Some(NamingScheme::HuggingFace)
        } else if any(&|n| n.starts_with("embeddings.") || n.starts_with("encoder.")) {
            Some(NamingScheme::HuggingFaceBare)
        } else if any(&|n| n.starts_with("stem.") || n.starts_with("stages.")) {
            Some(NamingScheme::Timm)
        } else {
            None
        }
    }

    /// The Hugging Face name of a checkpoint tensor; `None` if the scheme has no such tensor.
    pub fn to_hf_name(self, name: &str) -> Option<String> {
        match self {
            NamingScheme::HuggingFace => Some(name.to_string()),
            NamingScheme::HuggingFaceBare => Some(format!("convnextv2.{name}")),
            NamingScheme::Timm => timm_to_hf(name),
        }
    }

    /// The Hugging Face shape of a tensor stored with `shape` under the Hugging Face name
    /// `hf_name`. timm stores GRN parameters as `(C)` (older versions `(1, 1, 1, C)`) where HF
    /// has `(1, 1, 1, C)`, and the MLP of atto..nano as 1x1 convs `(O, I, 1, 1)` where HF has
    /// Linear `(O, I)`: the bytes are the same, only the shape differs.
    /// Only reshapes (`[c]` to `[1, 1, 1, c]`, `[o, i, 1, 1]` to `[o, i]`): the element count is
    /// unchanged, so the data still holds exactly the shape's product.
    pub fn to_hf_shape(self, hf_name: &str, shape: &[usize]) -> Vec<usize> {
        if self != NamingScheme::Timm {
            return shape.to_vec();
        }
        let is = |suffix: &str| hf_name.ends_with(suffix);
        match shape {
            [c] if is(".grn.weight") || is(".grn.bias") => vec![1, 1, 1, *c],
            [o, i, 1, 1] if is(".pwconv1.weight") || is(".pwconv2.weight") => vec![*o, *i],
            _ => shape.to_vec(),
        }
    }
}

/// timm `convnextv2_*` names to Hugging Face names.
fn timm_to_hf(name: &str) -> Option<String> {
    let (module, param) = name.rsplit_once('.')?;
    let hf_module = match module.split('.').collect::<Vec<_>>().as_slice() {
        ["stem", "0"] => "convnextv2.embeddings.patch_embeddings".to_string(),
        ["stem", "1"] => "convnextv2.embeddings.layernorm".to_string(),
        ["stages", s, "downsample", i @ ("0" | "1")] => {
            format!("convnextv2.encoder.stages.{s}.downsampling_layer.{i}")
        }
        ["stages", s, "blocks", b, rest @ ..] => {
            let part = match rest {
                ["conv_dw"] => "dwconv",
                ["norm"] => "layernorm",
                ["mlp", "fc1"] => "pwconv1",
                ["mlp", "grn"] => "grn",
                ["mlp", "fc2"] => "pwconv2",
                _ => return None,
            };
            format!("convnextv2.encoder.stages.{s}.layers.{b}.{part}")
        }
        ["head", "norm"] => "convnextv2.layernorm".to_string(),
        ["head", "fc"] => "classifier".to_string(),
        _ => return None,
    };
    if !(stage_index_ok(&hf_module) && matches!(param, "weight" | "bias")) {
        return None;
    }
    Some(format!("{hf_module}.{param}"))
}

/// Stage and block indices must be plain decimal numbers.
fn stage_index_ok(hf_module: &str) -> bool {
    hf_module
        .split('.')
        .zip(hf_module.split('.').skip(1))
        .filter(|(k, _)| *k == "stages" || *k == "layers")
        .all(|(_, v)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_schemes() {
        let hf = [
            "convnextv2.embeddings.patch_embeddings.weight",
            "classifier.bias",
        ];
        let bare = ["embeddings.patch_embeddings.weight", "layernorm.bias"];
        let timm = ["stem.0.weight", "head.fc.bias"];
        assert_eq!(NamingScheme::detect(hf), Some(NamingScheme::HuggingFace));
        assert_eq!(
            NamingScheme::detect(bare),
            Some(NamingScheme::HuggingFaceBare)
        );
        assert_eq!(NamingScheme::detect(timm), Some(NamingScheme::Timm));
        assert_eq!(NamingScheme::detect(["foo.weight"]), None);
    }

    #[test]
    fn translates_timm_names_and_shapes() {
        let t = NamingScheme::Timm;
        let cases = [
            (
                "stem.0.weight",
                "convnextv2.embeddings.patch_embeddings.weight",
            ),
            ("stem.1.bias", "convnextv2.embeddings.layernorm.bias"),
            (
                "stages.2.downsample.1.weight",
                "convnextv2.encoder.stages.2.downsampling_layer.1.weight",
            ),
            (
                "stages.1.blocks.3.conv_dw.bias",
                "convnextv2.encoder.stages.1.layers.3.dwconv.bias",
            ),
            (
                "stages.0.blocks.0.norm.weight",
                "convnextv2.encoder.stages.0.layers.0.layernorm.weight",
            ),
            (
                "stages.3.blocks.2.mlp.fc1.weight",
                "convnextv2.encoder.stages.3.layers.2.pwconv1.weight",
            ),
            (
                "stages.3.blocks.2.mlp.grn.bias",
                "convnextv2.encoder.stages.3.layers.2.grn.bias",
            ),
            (
                "stages.3.blocks.2.mlp.fc2.bias",
                "convnextv2.encoder.stages.3.layers.2.pwconv2.bias",
            ),
            ("head.norm.weight", "convnextv2.layernorm.weight"),
            ("head.fc.weight", "classifier.weight"),
        ];
        for (timm, hf) in cases {
            assert_eq!(t.to_hf_name(timm).as_deref(), Some(hf), "{timm}");
        }
        // ConvNeXt V1's layer scale and unknown modules are not V2 tensors.
        assert_eq!(t.to_hf_name("stages.0.blocks.0.gamma"), None);
        assert_eq!(t.to_hf_name("stages.x.blocks.0.norm.weight"), None);
        assert_eq!(t.to_hf_name("head.pre_logits.weight"), None);

        let grn = "convnextv2.encoder.stages.0.layers.0.grn.weight";
        assert_eq!(t.to_hf_shape(grn, &[32]), vec![1, 1, 1, 32]);
        let fc1 = "convnextv2.encoder.stages.0.layers.0.pwconv1.weight";
        assert_eq!(t.to_hf_shape(fc1, &[32, 8, 1, 1]), vec![32, 8]);
        assert_eq!(t.to_hf_shape(fc1, &[32, 8, 3, 1]), vec![32, 8, 3, 1]);
        // Hugging Face names keep their shapes as stored.
        assert_eq!(NamingScheme::HuggingFace.to_hf_shape(grn, &[32]), vec![32]);
    }
}
