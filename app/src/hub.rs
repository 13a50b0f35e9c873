//! Hugging Face hub ids (`facebook/convnextv2-tiny-1k-224`): resolved from the standard cache
//! (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`; the
//! `models--org--name/refs/<revision>` + `snapshots/<commit>/` layout), downloaded with the
//! `hf-hub` crate when not cached and not offline (`HF_HUB_OFFLINE=1`).

use std::path::{Path, PathBuf};

/// Files a ConvNeXt V2 checkpoint directory needs (the weights may be sharded instead).
pub const CHECKPOINT_FILES: &[&str] = &[
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
];

/// Why a hub id could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("`{repo}` is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; download it while online, or pass a local directory / --weights", cache.display())]
    OfflineNotCached { repo: String, cache: PathBuf },
    #[error("`{repo}` is not in the Hugging Face cache ({}) and could not be downloaded: {reason}", cache.display())]
    DownloadFailed {
        repo: String,
        cache: PathBuf,
        reason: String,
    },
}

/// Whether `s` looks like a hub model id (`org/name`, no other slashes).
pub fn is_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(org), Some(name), None) if !org.is_empty() && !name.is_empty() && !org.starts_with('.')
    )
}

/// The hub cache directory from the environment, as `huggingface_hub` computes it.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// Whether the environment says not to touch the network.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The snapshot directory of `repo` at `revision` in `cache`, if it holds a `config.json`.
pub fn cached_snapshot(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    // A revision is a branch or tag (refs/<name> holds the commit) or a commit hash itself.
    // A ref file holds one commit hash; anything else (a huge file, a path) is ignored.
    let commit = std::fs::File::open(repo_dir.join("refs").join(revision))
        .and_then(|f| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(f, 128), &mut text)?;
            Ok(text.trim().to_string())
        })
        .ok()
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| revision.to_string());
    let snapshot = repo_dir.join("snapshots").join(commit);
    snapshot.join("config.json").is_file().then_some(snapshot)
}

/// The local directory of `repo` (revision `main`): from the cache, else downloaded.
pub fn resolve(repo: &str) -> Result<PathBuf, HubError> {
    let cache = cache_dir();
    if let Some(dir) = cached_snapshot(&cache, repo, "main") {
        return Ok(dir);
    }
    if offline() {
        return Err(HubError::OfflineNotCached {
            repo: repo.to_string(),
            cache,
        });
    }
    let failed = |reason: String| HubError::DownloadFailed {
        repo: repo.to_string(),
        cache: cache.clone(),
        reason,
    };
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.clone()))
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let model = api.model(repo.to_string());
    let mut dir = None;
    for file in CHECKPOINT_FILES {
        let path = model
            .get(file)
            .map_err(|e| failed(format!("{file}: {e}")))?;
        dir = path.parent().map(Path::to_path_buf);
    }
    dir.ok_or_else(|| failed("no files".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(is_hub_id("facebook/convnextv2-tiny-1k-224"));
        assert!(!is_hub_id("tiny-1k-224"));
        assert!(!is_hub_id("models/facebook/x"));
        assert!(!is_hub_id("./x"));
        assert!(!is_hub_id("/abs"));
    }

    #[test]
    fn finds_snapshots_by_ref_or_commit() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache
            .path()
            .join("models--facebook--convnextv2-atto-1k-224");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        assert_eq!(
            cached_snapshot(cache.path(), "facebook/convnextv2-atto-1k-224", "main"),
            None
        );
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let found = cached_snapshot(cache.path(), "facebook/convnextv2-atto-1k-224", "main");
        assert_eq!(found.as_deref(), Some(snap.as_path()));
        assert_eq!(
            cached_snapshot(cache.path(), "facebook/convnextv2-atto-1k-224", "abc123").as_deref(),
            Some(snap.as_path())
        );
        assert_eq!(
            cached_snapshot(cache.path(), "facebook/other", "main"),
            None
        );
    }
}
