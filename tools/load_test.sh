#!/usr/bin/env bash
# tools/load_test.sh MODEL [SECONDS] [CLIENTS] [MAX_BATCH]
#
# Load test of `cnx serve` on loopback (not in CI): MODEL is a preset (random weights are
# written for it) or a model directory. Measures, on the same machine in one run:
#   1. `cnx bench` at batch 1, 8 and MAX_BATCH: the best is the offline throughput the server
#      is compared with;
#   2. the server under CLIENTS concurrent clients for SECONDS (oha: `cargo install oha`),
#      each POSTing a photo to /v1/classify, three rounds in a row (the later rounds show
#      whether memory keeps growing after the first minute); requests still in flight at the
#      end of a round are waited for (not counted as errors);
# and prints throughput, p50/p99 latency, errors, mean batch size (from /metrics), RSS after
# warm-up and after each round, and the ratio to the offline throughput.
# Needs nothing else running (2 cores: the server and oha share them, as a real host would).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: tools/load_test.sh MODEL [SECONDS] [CLIENTS] [MAX_BATCH]}
seconds=${2:-30}
clients=${3:-64}
max_batch=${4:-16}
cnx=${CNX:-target/release/cnx}  # CNX=other/cnx compares another build
image=tests/fixtures/images/chelsea.jpg
[ -x "$cnx" ] || cargo build --release -p cnx-cli
command -v oha >/dev/null || { echo "needs oha: cargo install oha" >&2; exit 2; }
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
if [ -d "$model" ]; then dir=$model; else
    dir=$work/model
    "$cnx" random-model "$model" --output "$dir" >/dev/null 2>&1
fi

# The best of batch 1, 8 and MAX_BATCH (one JSON object per batch size).
best=$("$cnx" bench "$dir" --batch "1,8,$max_batch" --runs 5 --json \
    | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
for r in rows:
    print("offline: cnx bench batch %d: %.2f images/s" % (r["batch"], r["images_per_s"]), file=sys.stderr)
print(max(r["images_per_s"] for r in rows))')
echo "offline best: $best images/s"

"$cnx" serve --model "$dir" --port 0 --max-batch "$max_batch" --max-delay-ms 5 --queue 256 \
    2> "$work/serve.log" &
server=$!
for _ in $(seq 600); do grep -q 'http://' "$work/serve.log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1)
for _ in 1 2 3; do curl -s --data-binary @"$image" "$url/v1/classify" >/dev/null; done
rss() { awk '/VmRSS/ {print $2 / 1024 " MiB"}' /proc/$server/status; }
echo "RSS after warm-up: $(rss)"

for round in $(seq "${ROUNDS:-3}"); do
    oha -z "${seconds}s" -c "$clients" -m POST -D "$image" -T image/jpeg --no-tui \
        --wait-ongoing-requests-after-deadline \
        --output-format json "$url/v1/classify" > "$work/oha$round.json"
    python3 - "$work/oha$round.json" "$best" "$round" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]
lat = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0)
errors = sum(v for k, v in codes.items() if k != "200") + sum(r.get("errorDistribution", {}).values())
if r.get("errorDistribution"):
    print("errors:", r["errorDistribution"])
rps = s["requestsPerSec"]
print(f"round {sys.argv[3]}: {rps:.2f} images/s ({rps / float(sys.argv[2]):.0%} of offline), "
      f"p50 {lat['p50'] * 1e3:.0f} ms, p99 {lat['p99'] * 1e3:.0f} ms, {ok} ok, {errors} errors")
EOF
    echo "RSS after round $round: $(rss)"
done
curl -s "$url/metrics" | python3 -c '
import sys
m = {l.split()[0]: float(l.split()[1]) for l in sys.stdin if l.startswith("cnx_batch_size_")}
print("mean batch size: %.2f" % (m["cnx_batch_size_sum"] / m["cnx_batch_size_count"]))'
kill -TERM $server
wait $server
