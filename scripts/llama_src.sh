#!/usr/bin/env bash
# A trimmed llama.cpp source archive for building the reference engine's llama-bench (CUDA) on the
# GPU machine: the whole tree is ~50 MB, this keeps what that target needs (~1.8 MB as xz), so it
# travels beside scripts/gpu_pack.sh's archive within the device tool's 64 MiB.
#
#   bash scripts/llama_src.sh GIT_DIR [COMMIT] [OUT]   # COMMIT default 3f545be, OUT .gpu/llsrc.tar.xz
#
# GIT_DIR is a clone or a bare mirror of ngxson/llama.cpp. Left out: models, docs, examples, tests,
# Python, the other backends' sources, the web UI and every tool but llama-bench (tools/CMakeLists.txt
# then adds llama-bench alone; vendor/ no longer adds miniaudio, which only the dropped tools use).
# (A mirror without the large model blobs makes git archive print "invalid object ... models/...":
# those files are not taken.)
# On the GPU machine: bash scripts/gpu_bench.sh llama OUT [DIR].
set -euo pipefail
git_dir=${1:?usage: llama_src.sh GIT_DIR [COMMIT] [OUT]}
commit=${2:-3f545be}
out=${3:-.gpu/llsrc.tar.xz}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mapfile -t keep < <(git -C "$git_dir" ls-tree --name-only "$commit" |
  grep -vxE 'models|docs|\.github|media|gguf-py|examples|tests|benches|\.devops|pocs|conversion|scripts')
mkdir -p "$stage/llama.cpp"
git -C "$git_dir" archive "$commit" "${keep[@]}" | tar -x -C "$stage/llama.cpp"
cd "$stage/llama.cpp"
for b in openvino webgpu metal et hexagon sycl vulkan opencl cann musa zdnn rpc blas kompute virtgpu zendnn; do
  rm -rf "ggml/src/ggml-$b"
done
find tools -mindepth 1 -maxdepth 1 -type d ! -name llama-bench -exec rm -rf {} +
printf 'add_subdirectory(llama-bench)\n' > tools/CMakeLists.txt
rm -rf vendor/miniaudio
sed -i '/add_subdirectory(miniaudio)/d' vendor/CMakeLists.txt
cd - > /dev/null
mkdir -p "$(dirname "$out")"
tar -C "$stage" -cf - llama.cpp | xz -T2 -6 > "$out"
ls -la "$out"
