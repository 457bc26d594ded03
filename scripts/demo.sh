#!/usr/bin/env bash
# Demo: synthesize a small Qwen3.5-MoE-shaped model (random weights) and run it.
set -euo pipefail
bin=${1:-build/bigmoe}
out=${BIGMOE_DEMO_DIR:-/tmp/bigmoe-demo}
mkdir -p "$out"
echo "== synthesizing a small Qwen3.5-MoE-shaped model (RANDOM weights: its output is meaningless)"
"$bin" synth --arch qwen35moe --n-embd 512 --n-layer 8 --n-head 4 --n-head-kv 2 --head-dim 128 --n-rot 32 \
  --n-expert 32 --n-expert-used 4 --n-ff-exp 256 --n-ff-shexp 512 --ssm-d-state 128 --ssm-k-heads 2 \
  --ssm-v-heads 4 --quant Q4_K_M -o "$out/demo-moe.gguf"
"$bin" info -m "$out/demo-moe.gguf" | head -8
echo "== logits of a short token sequence"
"$bin" logits -m "$out/demo-moe.gguf" --tokens 72,101,108,108,111 -o "$out/logits.f32"
