#!/usr/bin/env bash
# Before/after forward timing on a noisy machine: two cnx binaries, alternating, ROUNDS rounds
# back to back per (model, backend, batch) cell; prints one line per run and, at the end, the
# median of each cell's medians and the median of the per-round after/before ratios.
# Usage: tools/bench_alternate.sh BEFORE_CNX AFTER_CNX [ROUNDS] [MODELS] [BACKENDS] [BATCHES]
# e.g.   tools/bench_alternate.sh /tmp/cnx-before target/release/cnx 6 "atto-1k-224 tiny-1k-224"
# CNX_BENCH_ARGS adds arguments to every `cnx bench` (e.g. "--precision bf16 --threads 2").
set -euo pipefail
before=$1 after=$2 rounds=${3:-6}
models=${4:-"atto-1k-224 tiny-1k-224"} backends=${5:-"interp jit"} batches=${6:-"1 8"}
out=$(mktemp)
for m in $models; do for be in $backends; do for b in $batches; do
  runs=9; [ "$b" -gt 1 ] && runs=5
  for r in $(seq 1 "$rounds"); do for v in before after; do
    bin=$before; [ $v = after ] && bin=$after
    # shellcheck disable=SC2086
    "$bin" bench "$m" --batch "$b" --runs $runs --backend "$be" --json ${CNX_BENCH_ARGS:-} 2>/dev/null \
      | python3 -c "import sys,json; d=json.loads(sys.stdin.readline()); print('$m $be $b $r $v', d['median_ms'])" \
      | tee -a "$out"
  done; done
done; done; done
python3 - "$out" <<'PY'
import collections, statistics, sys
cells = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    m, be, b, r, v, ms = line.split()
    cells[(m, be, b)][(r, v)] = float(ms)
for (m, be, b), x in cells.items():
    rounds = sorted({r for r, _ in x if (r, "before") in x and (r, "after") in x})
    ratios = [x[(r, "after")] / x[(r, "before")] for r in rounds]
    med = lambda v: statistics.median(x[(r, v)] for r in rounds)
    print(f"{m} {be} batch {b}: before {med('before'):.2f} ms, after {med('after'):.2f} ms, "
          f"ratio {statistics.median(ratios):.3f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")
PY
rm -f "$out"
