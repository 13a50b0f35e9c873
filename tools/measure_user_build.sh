#!/usr/bin/env bash
# Clean release build time of a one-dependency user crate, as a user of cnx would have it:
#  - "macro":   depends on `convnextv2` and expands `convnextv2!(config = "tiny-1k-224")`;
#  - "runtime": depends on `cnx-runtime` alone (the floor: what the generated code links).
# Each is built in a fresh target directory (nothing cached but the crates.io sources), so the
# figure includes every dependency. Usage: tools/measure_user_build.sh [repo] (default: .)
set -euo pipefail
repo=$(cd "${1:-.}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

make_crate() { # name dependency-line main.rs-body
    mkdir -p "$work/$1/src"
    cat > "$work/$1/Cargo.toml" <<TOML
[package]
name = "$1"
version = "0.1.0"
edition = "2021"

[dependencies]
$2

[workspace]
TOML
    printf '%s\n' "$3" > "$work/$1/src/main.rs"
    cp "$repo/Cargo.lock" "$work/$1/Cargo.lock"
}

make_crate user_macro "convnextv2 = { path = \"$repo/runtime\" }" \
'convnextv2::convnextv2!(config = "tiny-1k-224", name = Tiny);
fn main() { println!("{}", Tiny::NUM_LABELS); }'
make_crate user_runtime "cnx-runtime = { path = \"$repo/runtime/core\" }" \
'fn main() { println!("{}", cnx_runtime::pool::available()); }'

for c in user_runtime user_macro; do
    start=$(date +%s.%N)
    (cd "$work/$c" && CARGO_TARGET_DIR="$work/target-$c" cargo build --release --quiet)
    end=$(date +%s.%N)
    printf '%s: %.1f s\n' "$c" "$(echo "$end - $start" | bc)"
done
