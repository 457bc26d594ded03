#!/usr/bin/env bash
# Formats every C++ source in place (the test command checks the same files).
set -euo pipefail
cd "$(dirname "$0")/.."
git ls-files -co --exclude-standard 'src/*.cpp' 'src/*.cu' 'src/*.cuh' 'src/*.h' 'src/*.inc' 'include/*.h' 'tests/*.cpp' 'tests/*.h' | xargs clang-format -i
