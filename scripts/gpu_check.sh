#!/usr/bin/env bash
# The GPU half of the test suite, for a machine with an NVIDIA GPU (CI has none, so these cases
# skip there): every CUDA op against float64, the fixture logits, state operations, the prompt
# cache, speculative decoding and the profiler with the whole model on the GPU and with a CPU/GPU split, and
# compute-sanitizer on the ops. Prints one line per step and exits non-zero if any failed.
#
#   bash scripts/gpu_check.sh [BUILD_DIR] [FIXTURES_DIR]
#
# BUILD_DIR defaults to build-ci; FIXTURES_DIR to ../shared/fixtures. A copy of the fixtures that
# lacks some models fails their tests ("cannot open"): GTEST_FILTER='-*qwen3moe*:...' leaves them
# out of every step but the conformance suite, which reads no fixture.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-ci}
fixtures=${2:-../shared/fixtures}
t=$build/tests
# the test binaries run on the model (scripts/gpu_pack.sh reads this line to pack them)
model_tests=(fixture_logits_test state_test prompt_cache_test speculative_test profiler_test)
export BIGMOE_FIXTURES=$fixtures
failed=0

step() {
  local name=$1
  shift
  local start=$SECONDS
  if "$@" > "/tmp/gpu_check_$name.log" 2>&1; then
    echo "ok    $name ($((SECONDS - start)) s)"
  else
    echo "FAIL  $name ($((SECONDS - start)) s): /tmp/gpu_check_$name.log"
    tail -n 20 "/tmp/gpu_check_$name.log"
    failed=$((failed + 1))
  fi
}

if ! command -v nvidia-smi > /dev/null 2>&1; then
  echo "gpu_check: no nvidia-smi: this machine has no NVIDIA GPU" >&2
  exit 2
fi

step conformance "$t/conformance_test" --gtest_filter='*cuda*'
for ngl in 99 2; do
  for test in "${model_tests[@]}"; do
    step "${test}_ngl$ngl" env BIGMOE_TEST_NGL=$ngl "$t/$test"
  done
done
# routed experts in host memory beside GPU layers (--n-cpu-moe 2, --cpu-moe)
for ncmoe in 2 -1; do
  step "fixture_logits_test_ncmoe$ncmoe" env BIGMOE_TEST_NGL=99 BIGMOE_TEST_NCMOE=$ncmoe "$t/fixture_logits_test"
done
if command -v compute-sanitizer > /dev/null 2>&1; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$t/conformance_test" --gtest_filter='*cuda*'
  # (RACECHECK_FILTER narrows it: the depth-66000 batch-invariance case takes ~150 s under racecheck)
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$t/conformance_test" \
    --gtest_filter="${RACECHECK_FILTER:-*attention*cuda*}"
else
  echo "skip  compute-sanitizer (not installed)"
fi
echo "gpu_check: $failed failed"
[ "$failed" -eq 0 ]
