#!/usr/bin/env bash
# tools/fuzz.sh TARGET SECONDS: runs one fuzz target (tests/fuzz/fuzz_targets/TARGET.rs) for
# SECONDS on one core, from the kept corpus (tests/fuzz/corpus/TARGET) and the regressions, then
# merges whatever widened coverage back into the kept corpus (commit it). Crashes land in
# tests/fuzz/artifacts/TARGET/: minimise one (`cargo fuzz tmin`), copy it into
# tests/fuzz/regressions/TARGET/ with a name saying what it broke, fix the bug; `cargo test`
# then replays it on stable (tests/tests/fuzz_corpus.rs).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). AddressSanitizer when a nightly toolchain is
# installed, else no sanitizer on stable; CNX_FUZZ_SANITIZER=none|address forces one. Debug
# assertions and overflow checks are on in both.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: tools/fuzz.sh TARGET SECONDS (targets: $(ls tests/fuzz/fuzz_targets | sed 's/\.rs$//' | tr '\n' ' '))"
target=${1:?$usage}
seconds=${2:?$usage}
case $target in
    config|preprocessor) dict=json; max_len=16384 ;;
    safetensors|safetensors_sharded) dict=safetensors; max_len=131072 ;;
    npy) dict=npy; max_len=65536 ;;
    image) dict=image; max_len=65536 ;;
    macro_args) dict=macro_args; max_len=2048 ;;
    serve_request) dict=json; max_len=65536 ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
if [ -n "${CNX_FUZZ_SANITIZER:-}" ]; then
    sanitizer=$CNX_FUZZ_SANITIZER
elif cargo +nightly --version >/dev/null 2>&1; then
    sanitizer=address
else
    sanitizer=none
fi
toolchain=()
[ "$sanitizer" != none ] && toolchain=(+nightly)
fuzz=tests/fuzz
work=$fuzz/work/$target
mkdir -p "$work" "$fuzz/corpus/$target" "$fuzz/regressions/$target" "$fuzz/artifacts/$target"
# Build once, then run the binary itself (CNX_FUZZ_NO_BUILD=1 reuses the last build).
if [ -z "${CNX_FUZZ_NO_BUILD:-}" ]; then
    cargo "${toolchain[@]}" fuzz build --fuzz-dir "$fuzz" --sanitizer "$sanitizer" \
        --debug-assertions "$target"
fi
binary=$fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release/$target
echo "fuzzing $target for ${seconds}s (sanitizer: $sanitizer)" >&2
# New inputs go to the first (uncommitted) directory; the others are read as seeds.
"$binary" "$work" "$fuzz/corpus/$target" "$fuzz/regressions/$target" \
    -artifact_prefix="$fuzz/artifacts/$target/" -max_total_time="$seconds" \
    -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" -dict="$fuzz/dict/$dict.dict" \
    -print_final_stats=1 2>&1 | tee "$fuzz/work/$target.log"
# Keep only what adds coverage.
"$binary" -merge=1 -max_len="$max_len" "$fuzz/corpus/$target" "$work" 2>&1 | tail -1
