#!/usr/bin/env bash
# Starts bigmoe serve on a free port with a fixture model and runs the official openai client and
# bigmoe loadtest against it.
set -euo pipefail
bin=$1
build=$2
fixtures=$3
src=$(cd "$(dirname "$0")" && pwd)
. "$src/serve_port.sh"
trap serve_stop_all EXIT
serve_start "$bin" -m "$fixtures/models/qwen35moe-tiny-f32.gguf" -np 2 -c 4096 -t 2
port=$SERVE_PORT
"$src/../run_node.sh" "$build/npm-ref" "$src/openai_client.mjs" "http://127.0.0.1:$port/v1"
# bigmoe loadtest against the same server: a table with no failed request
out=$("$bin" loadtest --url "http://127.0.0.1:$port" --workload chat -c 1,2 -n 2 --out-tokens 4)
grep -q "| chat | 2 | 2 | 0 | [0-9]*/4 |" <<< "$out" || { echo "FAIL: loadtest: $out"; exit 1; }
"$bin" loadtest --url "http://127.0.0.1:$port" --workload mixed -n 3 --in-tokens 40 --out-tokens 3 -o jsonl |
  grep -q '"failed":0' || { echo "FAIL: loadtest jsonl"; exit 1; }
if "$bin" loadtest --url "http://127.0.0.1:1" -n 1 2>/dev/null; then echo "FAIL: loadtest without a server"; exit 1; fi
echo "loadtest: 3 passed, 0 failed"
