#!/usr/bin/env bash
# The chat page at / and the dashboard in headless Chromium against bigmoe serve with a fixture
# model (webui_browser.mjs says what is checked), also behind --api-key; --no-webui turns both off.
set -euo pipefail
bin=$1
build=$2
fixtures=$3
src=$(cd "$(dirname "$0")" && pwd)
. "$src/serve_port.sh"
trap serve_stop_all EXIT
m=$fixtures/models/qwen35moe-tiny-f32.gguf
serve_start "$bin" -m "$m" -c 4096 -t 2 --profile
"$src/../run_node.sh" "$build/npm-ref" "$src/webui_browser.mjs" "http://127.0.0.1:$SERVE_PORT/" "$build/webui_screenshot.png" "$bin"
kill "$SERVE_PID"
serve_start "$bin" -m "$m" -c 1024 -t 1 --api-key sesame
"$src/../run_node.sh" "$build/npm-ref" "$src/webui_browser.mjs" "http://127.0.0.1:$SERVE_PORT/" "$build/webui_key.png" "$bin" sesame
# off
serve_start "$bin" -m "$m" -c 1024 -t 1 --no-webui
for path in / /dashboard; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SERVE_PORT$path")
  [ "$code" = 404 ] || { echo "FAIL: --no-webui still serves $path ($code)"; exit 1; }
done
echo "webui: passed"
