#!/usr/bin/env bash
# Installs what bigmoe needs to build and test on Debian 12 (as root). Skips apt when all is there.
set -euo pipefail
pkgs=(cmake make g++ git pkg-config libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
      libpcre2-dev libutf8proc-dev libcpp-httplib-dev clang-format chromium)
# Node.js (tokenizer/template reference tests) may come from another packager: check the commands.
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
