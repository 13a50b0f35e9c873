#!/usr/bin/env bash
# Issue 15's figures, side by side in one run: for each model, the ahead-of-time object's size
# and `cnx compile --emit obj` time; then, in alternating rounds on the same random weights,
# the forward time (median and min of RUNS after one untimed pass) of the C program
# (examples/c/classify.c linked with the object and libconvnextv2.a), `cnx bench --backend jit`
# and the `convnextv2!` macro's code (tests/benches/macro_forward.rs); and the C program's
# start-to-first-logits (process start, weight load, first forward, exit) against `cnx run`.
# Usage: [RUNS1=9] [RUNS8=5] tools/bench_aot.sh [ROUNDS] [MODELS] [BATCHES] [THREADS]
# (RUNS1: timed runs per batch-1 cell, RUNS8: per larger batch)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} models=${2:-"atto-1k-224 tiny-1k-224"} batches=${3:-"1 8"} threads=${4:-$(nproc)}
cargo build --release -p cnx-cli -p convnextv2 2>&1 | tail -1
cargo bench -p cnx-tests --bench macro_forward --no-run 2>&1 | tail -1
macro=$(ls -t target/release/deps/macro_forward-* | grep -v '\.d$' | head -1)
cnx=target/release/cnx
work=$(mktemp -d)
out=$work/results
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
for m in $models; do
  $cnx random-model "$m" --output "$work/$m" --seed 1 >/dev/null 2>&1
  for r in 1 2 3; do
    s=$(date +%s%N)
    $cnx compile "$m" --emit obj --output "$work/$m.o" 2>/dev/null
    echo "$m compile-ms $r $(ms "$s")" | tee -a "$out"
    s=$(date +%s%N)
    $cnx compile "$work/$m" --emit obj --embed-weights --output "$work/$m-embedded.o" 2>/dev/null
    echo "$m compile-embedded-ms $r $(ms "$s")" | tee -a "$out"
  done
  echo "$m object-bytes 1 $(stat -c %s "$work/$m.o")" | tee -a "$out"
  echo "$m object-embedded-bytes 1 $(stat -c %s "$work/$m-embedded.o")" | tee -a "$out"
  cc -O2 -I"$work" -DCNX_MODEL_HEADER="\"$m.h\"" examples/c/classify.c "$work/$m.o" \
    target/release/libconvnextv2.a -lpthread -ldl -lm -o "$work/$m-classify"
done
for r in $(seq 1 "$rounds"); do for m in $models; do for b in $batches; do
  runs=${RUNS1:-9}; [ "$b" -gt 1 ] && runs=${RUNS8:-5}
  c=$("$work/$m-classify" "$work/$m/model.safetensors" "$work/$m/pixel_values.npy" \
      --batch "$b" --runs $runs --top 0 --threads "$threads" \
      | sed -n 's/.*median \([0-9.]*\) ms.*(min \([0-9.]*\).*/\1 \2/p')
  echo "$m c-b$b $r ${c% *}" | tee -a "$out"
  echo "$m c-min-b$b $r ${c#* }" | tee -a "$out"
  j=$($cnx bench "$work/$m" --batch "$b" --runs $runs --backend jit --threads "$threads" --json 2>/dev/null \
      | python3 -c "import sys,json; r=json.loads(sys.stdin.readline()); print(r['median_ms'], r['min_ms'])")
  echo "$m jit-b$b $r ${j% *}" | tee -a "$out"
  echo "$m jit-min-b$b $r ${j#* }" | tee -a "$out"
  k=$("$macro" "$m" "$work/$m/model.safetensors" "$b" $runs "$threads" \
      | sed -n 's/.*median \([0-9.]*\) ms.*(min \([0-9.]*\)).*/\1 \2/p')
  echo "$m macro-b$b $r ${k% *}" | tee -a "$out"
  echo "$m macro-min-b$b $r ${k#* }" | tee -a "$out"
done; done
  for m in $models; do
    s=$(date +%s%N)
    "$work/$m-classify" "$work/$m/model.safetensors" "$work/$m/pixel_values.npy" --top 1 \
      --threads "$threads" >/dev/null
    echo "$m c-first-logits-ms $r $(ms "$s")" | tee -a "$out"
    s=$(date +%s%N)
    $cnx run --model "$work/$m" --input "$work/$m/pixel_values.npy" --output "$work/run.npz" \
      --threads "$threads" 2>/dev/null
    echo "$m cnx-run-first-logits-ms $r $(ms "$s")" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
cells = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    m, what, r, v = line.split()
    cells[(m, what)][r] = float(v)
med = lambda m, w: statistics.median(cells[(m, w)].values())
for m in dict.fromkeys(m for m, _ in cells):
    print(f"{m}: object {med(m, 'object-bytes') / 1024:.0f} KiB "
          f"({med(m, 'object-embedded-bytes') / 2**20:.1f} MiB with weights), "
          f"cnx compile {med(m, 'compile-ms'):.0f} ms ({med(m, 'compile-embedded-ms'):.0f} ms embedding)")
    for w in sorted({w[2:] for mm, w in cells if mm == m and w.startswith("c-b")}):
        for stat, pre in (("median", ""), ("min", "min-")):
            c, j, k = (cells[(m, f"{x}-{pre}{w}")] for x in ("c", "jit", "macro"))
            rs = sorted(set(c) & set(j) & set(k))
            rj = statistics.median(c[r] / j[r] for r in rs)
            rk = statistics.median(c[r] / k[r] for r in rs)
            print(f"  {w} {stat}s: C {statistics.median(c.values()):.2f} ms, JIT {statistics.median(j.values()):.2f} ms, "
                  f"macro {statistics.median(k.values()):.2f} ms; C/JIT {rj:.3f}, C/macro {rk:.3f} (median of per-round ratios)")
    print(f"  start to first logits: C program {med(m, 'c-first-logits-ms'):.0f} ms, "
          f"cnx run {med(m, 'cnx-run-first-logits-ms'):.0f} ms")
PY
rm -rf "$work"
