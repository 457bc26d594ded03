#!/usr/bin/env bash
# The whole test suite: format check, the fast tier, then unit and fuzz tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
start=$(date +%s)

echo "== format check"
files=$(git ls-files 'src/*.cpp' 'src/*.cu' 'src/*.cuh' 'src/*.h' 'src/*.inc' 'include/*.h' 'tests/*.cpp' 'tests/*.h')
clang-format --dry-run --Werror $files

echo "== fast tier (release, warnings as errors)"
bash scripts/build.sh build-ci -DBIGMOE_WERROR=ON
(cd build-ci && ctest -L 'unit|model|cli|js' -j2 --output-on-failure --timeout 900)

echo "== unit and fuzz tests under ASan + UBSan"
# only the unit tests' targets: the command-line tool, the model tests and the benchmarks do not
# run here. -O1 -g1 (line tables), assertions on: on the 2-core VM this builds in 6.5 minutes
# against ~11 with -O2 -g (server_test.cpp alone: 49 s against 145), and the tests take as long.
cmake -S . -B build-asan -DBIGMOE_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DBIGMOE_CUDA=OFF >/dev/null
cmake --build build-asan -j2 --target unit_tests
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest -L unit -j2 --output-on-failure --timeout 1800)

echo "== all tests passed in $(( $(date +%s) - start )) s"
