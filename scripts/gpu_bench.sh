#!/usr/bin/env bash
# Issue 17's benchmarks on a GPU machine, in steps that each fit one device call (10 minutes):
#
#   bash scripts/gpu_bench.sh models [DIR] [BUILD]      # synth the 35B-A3B and 122B-A10B-REAP40 (Q4_K_M)
#   bash scripts/gpu_bench.sh bigmoe [DIR] [BUILD]      # bigmoe's rows of the issue's table, both models
#   bash scripts/gpu_bench.sh placement [DIR] [BUILD]   # the 122B split (-ngl 24), --n-cpu-moe 24, --profile
#   bash scripts/gpu_bench.sh llama SRC.tar.gz [DIR]    # build llama.cpp (CUDA) from an archive, its rows
#                                                       # (scripts/llama_src.sh makes a 1.8 MB one)
#
# DIR (default /root/models) holds the models; BUILD defaults to build-ci, whose npm-ref/ holds the
# Qwen3 tokenizer synth embeds. Output goes to stdout: bench/results/cuda.md takes the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:-}
shift || true

a3b=qwen3.5-35b-a3b
big=qwen3.5-122b-a10b-reap40

rows() {  # the issue's cells for one engine's bench command and one model
  local bench=$1 model=$2 depths=$3
  shift 3
  $bench -m "$model" -ngl 99 "$@" -p 512,2048 -n 128 -r 3
  $bench -m "$model" -ngl 99 "$@" -p 512 -n 128 -d "$depths" -r 1
}

case $step in
  models)
    dir=${1:-/root/models}
    bin=${2:-build-ci}/bigmoe
    mkdir -p "$dir"
    for p in $a3b $big; do
      [ -f "$dir/$p.gguf" ] || "$bin" synth --preset $p --quant Q4_K_M -o "$dir/$p.gguf"
    done
    ls -la "$dir"
    ;;
  bigmoe)
    dir=${1:-/root/models}
    bin=${2:-build-ci}/bigmoe
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    git log -1 --format='bigmoe %h %s' 2> /dev/null || true
    rows "$bin bench" "$dir/$a3b.gguf" 8192,32768
    rows "$bin bench" "$dir/$big.gguf" 32768
    ;;
  placement)
    dir=${1:-/root/models}
    bin=${2:-build-ci}/bigmoe
    m=$dir/$big.gguf
    "$bin" bench -m "$m" -ngl 99 -p 512 -n 128 -r 2 --profile
    "$bin" bench -m "$m" -ngl 24,99 -p 512 -n 128 -r 2
    "$bin" bench -m "$m" -ngl 99 -ncmoe 0,24,99 -p 512 -n 128 -r 2
    ;;
  llama)
    src=${1:?usage: gpu_bench.sh llama SRC.tar.gz|SRC.tar.xz [DIR]}  # a source tree, or scripts/llama_src.sh's
    dir=${2:-/root/models}
    ref=/root/ref/llama.cpp
    if [ ! -x "$ref/build/bin/llama-bench" ]; then
      mkdir -p "$ref"
      tar -xaf "$src" -C "$ref" --strip-components=1
      cmake -S "$ref" -B "$ref/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF > /dev/null
      cmake --build "$ref/build" --target llama-bench -j "$(nproc)" > /dev/null
    fi
    rows "$ref/build/bin/llama-bench" "$dir/$a3b.gguf" 8192,32768 -fa 1
    rows "$ref/build/bin/llama-bench" "$dir/$big.gguf" 32768 -fa 1
    ;;
  *)
    sed -n '2,10p' "$0"
    exit 2
    ;;
esac
