#!/usr/bin/env bash
# Differential test of bigmoe's Jinja interpreter against @huggingface/jinja on real chat templates.
set -euo pipefail
test_bin=$1
build=$2
src=$(cd "$(dirname "$0")" && pwd)
npmdir=$build/npm-ref
"$src/../../scripts/npm_ref.sh" "$npmdir"
cp "$src/jinja_reference.mjs" "$npmdir/"
seed=${BIGMOE_SEED:-$(date +%s)}
echo "seed $seed"
(cd "$npmdir" && node jinja_reference.mjs "$build/jinja_cases.jsonl" 60 "$seed")
BIGMOE_JINJA_CASES=$build/jinja_cases.jsonl "$test_bin" --gtest_filter='JinjaJs.*'
