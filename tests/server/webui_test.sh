#!/usr/bin/env bash
# The chat page at / and the dashboard in headless Chromium against bigmoe serve with a fixture
# model (webui_browser.mjs says what is checked), also behind --api-key; --no-webui turns both off.
set -euo pipefail
bin=$1
build=$2
fixtures=$3
src=$(cd "$(dirname "$0")" && pwd)
. "$src/serve_port.sh"
log=$(mktemp)
"$bin" serve -m "$fixtures/models/qwen35moe-tiny-f32.gguf" --port 0 -c 4096 -t 2 --profile 2> "$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
port=$(serve_port "$log" $pid)
"$src/../run_node.sh" "$build/npm-ref" "$src/webui_browser.mjs" "http://127.0.0.1:$port/" "$build/webui_screenshot.png" "$bin"
kill $pid; wait $pid 2>/dev/null || true
rm -f "$log"
log=$(mktemp)  # a fresh log: the new server's redirection may come after serve_port first reads it
"$bin" serve -m "$fixtures/models/qwen35moe-tiny-f32.gguf" --port 0 -c 1024 -t 1 --api-key sesame 2> "$log" &
pid=$!
port=$(serve_port "$log" $pid)
"$src/../run_node.sh" "$build/npm-ref" "$src/webui_browser.mjs" "http://127.0.0.1:$port/" "$build/webui_key.png" "$bin" sesame
# off
log2=$(mktemp)
"$bin" serve -m "$fixtures/models/qwen35moe-tiny-f32.gguf" --port 0 -c 1024 -t 1 --no-webui 2> "$log2" &
pid2=$!
trap 'kill $pid $pid2 2>/dev/null; wait $pid $pid2 2>/dev/null; rm -f "$log" "$log2"' EXIT
port2=$(serve_port "$log2" $pid2)
for path in / /dashboard; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port2$path")
  [ "$code" = 404 ] || { echo "FAIL: --no-webui still serves $path ($code)"; exit 1; }
done
echo "webui: passed"
