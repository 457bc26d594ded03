#!/usr/bin/env bash
# End to end: bench two configurations with depths and --profile, render the report, check it in
# headless Chromium (screenshot pixels along every series, no console errors).
set -euo pipefail
bin=$1
build=$2
fixtures=$3
src=$(cd "$(dirname "$0")" && pwd)
. "$src/../server/serve_port.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
m=$fixtures/models/qwen35moe-tiny-q4_k_m.gguf
"$bin" bench -m "$m" -p 16 -n 4 -d 0,16,48 -r 2 -t 2 -o jsonl --profile > "$tmp/a.jsonl" 2>/dev/null
"$bin" bench -m "$m" -p 16 -n 4 -d 0,16,48 -r 2 -t 1 -o json > "$tmp/b.json" 2>/dev/null
# speculative decoding: plain, then two drafts x two draft lengths (a speed-up series per length,
# a point per draft)
"$bin" bench -m "$m" -md none,"$fixtures/models/qwen35-tiny-f32.gguf","$fixtures/models/qwen35moe-tiny-f32.gguf" \
  --draft-max 1,4 -p 0 -n 8 -r 1 -t 2 -o jsonl > "$tmp/c.jsonl" 2>/dev/null
grep -q '"bigmoe_spec_speedup"' "$tmp/c.jsonl"
# a server under load at two concurrencies: throughput and latency against concurrency
trap 'serve_stop_all; rm -rf "$tmp"' EXIT
serve_start "$bin" -m "$fixtures/models/qwen35moe-tiny-f32.gguf" -np 2 -c 2048 -t 2
port=$SERVE_PORT
"$bin" loadtest --url "http://127.0.0.1:$port" --label bigmoe -c 1,2 -n 2 --in-tokens 20 --out-tokens 6 \
  -o jsonl > "$tmp/d.jsonl" 2>/dev/null
"$bin" report "$tmp/a.jsonl" "$tmp/b.json" "$tmp/c.jsonl" "$tmp/d.jsonl" -o "$tmp/report.html"
grep -q "id='speculative'" "$tmp/report.html"
for id in throughput ttft itl; do grep -q "id='$id'" "$tmp/report.html" || { echo "no $id chart"; exit 1; }; done
grep -q "data-series='bigmoe · chat 20 in / 6 out'" "$tmp/report.html" || { echo "no loadtest series"; exit 1; }
# the same configuration in two files: two lines
cp "$tmp/a.jsonl" "$tmp/again.jsonl"
"$bin" report "$tmp/a.jsonl" "$tmp/again.jsonl" -o "$tmp/two.html"
for f in a.jsonl again.jsonl; do
  grep -q "data-series='[^']*tg4 · $f'" "$tmp/two.html" || { echo "no tg4 line for $f"; exit 1; }
done
# profile shares as text, and each result's build, CPU and date
grep -q "<td class='shares'>[^<]*expert[^<]*%" "$tmp/report.html" || { echo "no profile shares as text"; exit 1; }
grep -q "<td class='src'>[^<]* · [^<]* · 20[0-9][0-9]-" "$tmp/report.html" || { echo "no build/CPU/date"; exit 1; }
grep -q "<svg" "$tmp/report.html"
if grep -qiE "<script|https?://" "$tmp/report.html"; then echo "report is not self-contained"; exit 1; fi
"$src/../run_node.sh" "$build/npm-ref" "$src/report_browser.mjs" "$tmp/report.html" "$build/report_screenshot.png"
