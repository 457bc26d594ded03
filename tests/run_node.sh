#!/usr/bin/env bash
# Runs one of the tests' JavaScript scripts with node beside the npm reference packages (installed
# once by scripts/npm_ref.sh), so that its imports resolve. Paths in ARGS must be absolute.
# usage: tests/run_node.sh NPM_DIR SCRIPT.mjs [ARGS...]
set -euo pipefail
dir=$1
script=$2
shift 2
"$(dirname "$0")/../scripts/npm_ref.sh" "$dir"
cp "$script" "$dir/"
cd "$dir"
node "$(basename "$script")" "$@"
