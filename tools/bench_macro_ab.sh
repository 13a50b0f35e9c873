#!/usr/bin/env bash
# The `convnextv2!` macro's forward pass, two builds side by side (issue 31: before and after a
# change to the emitter), in alternating rounds on the same random weights: each round runs
# A then B (batch 1 and 8), medians of RUNS passes after one untimed pass
# (tests/benches/macro_forward.rs). Build each binary with
# `cargo bench -p cnx-tests --bench macro_forward --no-run` in its own checkout and copy it.
# Usage: tools/bench_macro_ab.sh MACRO_A MACRO_B CNX [ROUNDS] [MODEL] [THREADS]
set -euo pipefail
a=$1 b=$2 cnx=$3 rounds=${4:-5} model=${5:-tiny-1k-224} threads=${6:-2}
work=$(mktemp -d)
"$cnx" random-model "$model" --output "$work/m" --seed 1 >/dev/null 2>&1
for r in $(seq 1 "$rounds"); do
  for batch in 1 8; do
    runs=15; [ "$batch" -gt 1 ] && runs=5
    for side in a b; do
      bin=$a; [ $side = b ] && bin=$b
      t=$("$bin" "$model" "$work/m/model.safetensors" "$batch" $runs "$threads" \
          | sed -n 's/.*median \([0-9.]*\) ms.*/\1/p')
      echo "$side b$batch $r $t"
    done
  done
done
rm -rf "$work"
