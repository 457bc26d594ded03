#!/usr/bin/env bash
# The chat page at / and the dashboard in headless Chromium against bigmoe serve with a fixture
# model (webui_browser.mjs says what is checked); --no-webui turns both off.
set -euo pipefail
bin=$1
build=$2
fixtures=$3
src=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp)
"$bin" serve -m "$fixtures/models/qwen35moe-tiny-f32.gguf" --port 0 -c 4096 -t 2 2> "$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 300); do
  grep -q "serve: ready" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
port=$(sed -n 's#.*listening on http://127.0.0.1:\([0-9]*\).*#\1#p' "$log")
[ -n "$port" ] || { cat "$log"; exit 1; }
"$src/../run_node.sh" "$build/npm-ref" "$src/webui_browser.mjs" "http://127.0.0.1:$port/" "$build/webui_screenshot.png"
# off
log2=$(mktemp)
"$bin" serve -m "$fixtures/models/qwen35moe-tiny-f32.gguf" --port 0 -c 1024 -t 1 --no-webui 2> "$log2" &
pid2=$!
trap 'kill $pid $pid2 2>/dev/null; wait $pid $pid2 2>/dev/null; rm -f "$log" "$log2"' EXIT
for _ in $(seq 1 300); do grep -q "serve: ready" "$log2" && break; sleep 0.1; done
port2=$(sed -n 's#.*listening on http://127.0.0.1:\([0-9]*\).*#\1#p' "$log2")
for path in / /dashboard; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port2$path")
  [ "$code" = 404 ] || { echo "FAIL: --no-webui still serves $path ($code)"; exit 1; }
done
echo "webui: passed"
