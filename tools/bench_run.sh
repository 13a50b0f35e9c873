#!/usr/bin/env bash
# Wall time of whole `cnx run` commands (load + forward + write), median and min of N runs,
# on a random-weight model directory made by `cnx random-model`.
#   tools/bench_run.sh <model> <batch> <threads> [runs=5] [extra cnx run flags...]
set -euo pipefail
model=$1 batch=$2 threads=$3 runs=${4:-5}
shift $(( $# < 4 ? $# : 4 ))
cnx=${CNX:-target/release/cnx}
dir=${TMPDIR:-/tmp}/cnx-bench-$model-b$batch
[ -f "$dir/model.safetensors" ] || "$cnx" random-model "$model" --output "$dir" --batch "$batch" 2>/dev/null
times=()
for _ in $(seq "$runs"); do
  t0=$(date +%s%N)
  "$cnx" run --model "$dir" --input "$dir/pixel_values.npy" --output "$dir/out.npz" --threads "$threads" "$@" 2>/dev/null
  t1=$(date +%s%N)
  times+=($(( (t1 - t0) / 1000000 )))
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
echo "$model batch=$batch threads=$threads $*: median ${sorted[$(( runs / 2 ))]} ms, min ${sorted[0]} ms over $runs runs (${times[*]})"
