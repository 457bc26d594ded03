#!/usr/bin/env bash
# The main job: install dependencies, build, and run a short demo on a synthetic model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh build
bash scripts/demo.sh build/bigmoe
