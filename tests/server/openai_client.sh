#!/usr/bin/env bash
# Starts bigmoe serve on a free port with a fixture model and runs the official openai client
# against it.
set -euo pipefail
bin=$1
build=$2
fixtures=$3
src=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp)
"$bin" serve -m "$fixtures/models/qwen35moe-tiny-f32.gguf" --port 0 -np 2 -c 4096 -t 2 2> "$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 300); do
  grep -q "serve: ready" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
port=$(sed -n 's#.*listening on http://127.0.0.1:\([0-9]*\).*#\1#p' "$log")
[ -n "$port" ] || { cat "$log"; exit 1; }
"$src/../run_node.sh" "$build/npm-ref" "$src/openai_client.mjs" "http://127.0.0.1:$port/v1"
