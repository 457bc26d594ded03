#!/usr/bin/env bash
# The layering rule, checked on every build: a folder of src/ includes only from itself and the
# layers below it (docs/architecture.md). Prints each include that breaks it and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A allowed=(
  [core]="core"
  [quant]="core quant"
  [gguf]="core quant gguf"
  [backend]="core quant gguf backend"
  [models]="core quant gguf backend models"
  [tokenizer]="core quant gguf tokenizer"
  [runtime]="core quant gguf backend models tokenizer runtime bigmoe"
  [synth]="core quant gguf synth"
  [report]="core report"
  [bench]="core quant gguf backend models tokenizer runtime bigmoe bench report"
  [server]="core quant gguf backend models tokenizer runtime bigmoe server"
  [cli]="core quant gguf backend models tokenizer runtime bigmoe synth bench report server cli"
)
bad=0
for dir in src/*/; do
  layer=$(basename "$dir")
  if [ -z "${allowed[$layer]+x}" ]; then
    echo "check_layers: src/$layer has no place in the layer table (scripts/check_layers.sh)"
    bad=1
    continue
  fi
  while IFS=: read -r file line inc; do
    root=${inc#*\"}
    root=${root%%/*}
    case " ${allowed[$layer]} " in
      *" $root "*) ;;
      *) echo "$file:$line: $layer may not include $root ($inc)"; bad=1 ;;
    esac
  done < <(grep -rnoE '#include "[a-z_]+/[^"]*"' "$dir" || true)
done
exit $bad
