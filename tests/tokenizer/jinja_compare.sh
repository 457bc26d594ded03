#!/usr/bin/env bash
# Differential test of bigmoe's Jinja interpreter against @huggingface/jinja on real chat templates.
set -euo pipefail
test_bin=$1
build=$2
src=$(cd "$(dirname "$0")" && pwd)
seed=${BIGMOE_SEED:-$(date +%s)}
echo "seed $seed"
"$src/../run_node.sh" "$build/npm-ref" "$src/jinja_reference.mjs" "$build/jinja_cases.jsonl" 60 "$seed"
BIGMOE_JINJA_CASES=$build/jinja_cases.jsonl "$test_bin" --gtest_filter='JinjaJs.*'
