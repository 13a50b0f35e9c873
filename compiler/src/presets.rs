//! The published `facebook/convnextv2-*` checkpoints: their `config.json` and
//! `preprocessor_config.json`, compiled in from `models/` so that presets work from any
//! directory and in the `convnextv2!` macro.

/// One published checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Short name, e.g. `tiny-1k-224`.
    pub name: &'static str,
    /// `config.json` text.
    pub config_json: &'static str,
    /// `preprocessor_config.json` text.
    pub preprocessor_json: &'static str,
}

impl Preset {
    /// The hub id, e.g. `facebook/convnextv2-tiny-1k-224`.
    pub fn hub_id(&self) -> String {
        format!("facebook/convnextv2-{}", self.name)
    }
}

macro_rules! preset {
    ($name:literal) => {
        Preset {
            name: $name,
            config_json: include_str!(concat!(
                "../../models/facebook/convnextv2-",
                $name,
                "/config.json"
            )),
            preprocessor_json: include_str!(concat!(
                "../../models/facebook/convnextv2-",
                $name,
                "/preprocessor_config.json"
            )),
        }
    };
}

/// Every published checkpoint, smallest first.
pub const PRESETS: &[Preset] = &[
    preset!("atto-1k-224"),
    preset!("femto-1k-224"),
    preset!("pico-1k-224"),
    preset!("nano-1k-224"),
    preset!("nano-22k-224"),
    preset!("nano-22k-384"),
    preset!("tiny-1k-224"),
    preset!("tiny-22k-224"),
    preset!("tiny-22k-384"),
    preset!("base-1k-224"),
    preset!("base-22k-224"),
    preset!("base-22k-384"),
    preset!("large-1k-224"),
    preset!("large-22k-224"),
    preset!("large-22k-384"),
    preset!("huge-1k-224"),
    preset!("huge-22k-384"),
    preset!("huge-22k-512"),
];

/// Looks up a preset by short name (`tiny-1k-224`) or hub id (`facebook/convnextv2-tiny-1k-224`).
pub fn find(name: &str) -> Option<&'static Preset> {
    let short = name.strip_prefix("facebook/convnextv2-").unwrap_or(name);
    PRESETS.iter().find(|p| p.name == short)
}

/// Preset names close to `name`, for "did you mean" messages.
pub fn suggestions(name: &str) -> Vec<&'static str> {
    let short = name
        .strip_prefix("facebook/convnextv2-")
        .unwrap_or(name)
        .to_ascii_lowercase();
    let mut scored: Vec<(usize, &'static str)> = PRESETS
        .iter()
        .map(|p| (edit_distance(&short, p.name), p.name))
        .collect();
    scored.sort();
    let size = short.split('-').next().unwrap_or("");
    let mut out: Vec<&'static str> = scored
        .iter()
        .filter(|&&(d, n)| d <= 3 || (!size.is_empty() && n.starts_with(size)))
        .map(|&(_, n)| n)
        .take(4)
        .collect();
    if out.is_empty() {
        out = scored.iter().take(3).map(|&(_, n)| n).collect();
    }
    out
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConvNextV2Config;

    #[test]
    fn every_preset_parses_with_its_published_dims() {
        let table: [(&str, [usize; 4], [usize; 4]); 8] = [
            ("atto", [40, 80, 160, 320], [2, 2, 6, 2]),
            ("femto", [48, 96, 192, 384], [2, 2, 6, 2]),
            ("pico", [64, 128, 256, 512], [2, 2, 6, 2]),
            ("nano", [80, 160, 320, 640], [2, 2, 8, 2]),
            ("tiny", [96, 192, 384, 768], [3, 3, 9, 3]),
            ("base", [128, 256, 512, 1024], [3, 3, 27, 3]),
            ("large", [192, 384, 768, 1536], [3, 3, 27, 3]),
            ("huge", [352, 704, 1408, 2816], [3, 3, 27, 3]),
        ];
        assert_eq!(PRESETS.len(), 18);
        for p in PRESETS {
            let c = ConvNextV2Config::from_json(p.config_json).unwrap();
            let size = p.name.split('-').next().unwrap();
            let (_, dims, depths) = table.iter().find(|(n, _, _)| *n == size).unwrap();
            assert_eq!(c.hidden_sizes, dims, "{}", p.name);
            assert_eq!(c.depths, depths, "{}", p.name);
            let res: usize = p.name.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(c.image_size, res, "{}", p.name);
            assert_eq!(c.num_labels(), 1000);
            assert_eq!(c.id2label[0], "tench, Tinca tinca");
            let pre: serde_json::Value = serde_json::from_str(p.preprocessor_json).unwrap();
            assert_eq!(pre["size"]["shortest_edge"], res, "{}", p.name);
        }
    }

    #[test]
    fn lookup_and_suggestions() {
        assert_eq!(find("tiny-1k-224").unwrap().name, "tiny-1k-224");
        assert_eq!(
            find("facebook/convnextv2-huge-22k-512").unwrap().name,
            "huge-22k-512"
        );
        assert!(find("tiny").is_none());
        assert!(suggestions("tiny-1k-22").contains(&"tiny-1k-224"));
        assert!(suggestions("tiny").contains(&"tiny-1k-224"));
    }
}
