//! Replays the kept fuzz corpus on stable: every input in `tests/fuzz/corpus/<target>/` (seeds
//! and what libFuzzer found that widened coverage) and `tests/fuzz/regressions/<target>/`
//! (inputs that once crashed, hung or over-allocated) goes through the same function its
//! fuzz target calls (`cnx_tests::fuzzing`). A panic here is a regression.

use std::path::{Path, PathBuf};

use cnx_tests::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("readable entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    files.retain(|p| p.is_file());
    files.sort();
    files
}

#[test]
fn every_target_has_a_seeded_corpus_and_a_target_file() {
    for (name, _) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "tests/fuzz/corpus/{name} is empty");
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
    }
}

#[test]
fn kept_corpus_and_regressions_replay_without_panicking() {
    let mut replayed = 0;
    for (name, run) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for path in inputs(&fuzz_dir().join(kind).join(name)) {
                let data = std::fs::read(&path).expect("readable input");
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{name}: {} panicked", path.display());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= TARGETS.len());
}

/// The seeds reach the accepting paths (a checkpoint that loads and runs, a sharded one, a
/// config that builds), so the fuzzer starts from inputs that exercise them.
#[test]
fn valid_seeds_are_accepted() {
    use cnx_compiler::passes::Pipeline;
    use cnx_compiler::{ConvNextV2Config, LoadedModel};
    use cnx_runtime::WeightStore;
    let seed = |target: &str, name: &str| {
        std::fs::read(fuzz_dir().join("corpus").join(target).join(name)).expect("seed exists")
    };
    let config = ConvNextV2Config::from_json(cnx_tests::fuzzing::SMALL_CONFIG).unwrap();
    for name in [
        "seed-small-f32",
        "seed-small-f16",
        "seed-small-f64",
        "seed-small-bare",
    ] {
        let store = WeightStore::from_bytes(&seed("safetensors", name)).unwrap();
        LoadedModel::new(
            "seed",
            config.clone(),
            store,
            (32, 32),
            &Pipeline::default_pipeline(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let sharded = seed("safetensors_sharded", "seed-two-shards");
    let parts: Vec<&[u8]> = {
        let sep = cnx_tests::fuzzing::SHARD_SEPARATOR;
        let at: Vec<usize> = (0..sharded.len() - sep.len())
            .filter(|&i| &sharded[i..i + sep.len()] == sep)
            .collect();
        assert_eq!(at.len(), 2);
        vec![
            &sharded[..at[0]],
            &sharded[at[0] + sep.len()..at[1]],
            &sharded[at[1] + sep.len()..],
        ]
    };
    let shards = [1, 2]
        .iter()
        .map(|i| {
            (
                format!("model-0000{i}-of-00002.safetensors"),
                parts[*i].to_vec(),
            )
        })
        .collect();
    let index = std::str::from_utf8(parts[0]).unwrap();
    let store = WeightStore::from_sharded_bytes(index, &shards).unwrap();
    LoadedModel::new(
        "seed",
        config,
        store,
        (32, 32),
        &Pipeline::default_pipeline(),
    )
    .unwrap();
    let small = seed("config", "seed-small");
    ConvNextV2Config::from_json_with(
        std::str::from_utf8(&small).unwrap(),
        &cnx_tests::fuzzing::limits(),
    )
    .unwrap();
}
