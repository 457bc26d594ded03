#!/usr/bin/env bash
# CLI end-to-end: bad input gives a clear error and a non-zero exit; info/logits/synth work.
set -uo pipefail
bin=$1
fixtures=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
expect() {  # expect NAME WANT_RC PATTERN CMD...
  local name=$1 want=$2 pat=$3
  shift 3
  out=$("$@" 2>&1)
  rc=$?
  if [ $rc -eq "$want" ]; then  # exactly: a signal (128 + n) is never an answer
    if grep -q -- "$pat" <<< "$out"; then pass=$((pass+1)); return; fi
  fi
  echo "FAIL: $name (rc=$rc): $out" | head -5
  fail=$((fail+1))
}
m=$fixtures/models/qwen35moe-tiny-f32.gguf
expect "no command" 1 "usage" "$bin"
expect "unknown command" 1 "unknown command" "$bin" frobnicate
expect "unknown flag" 1 "unknown option '--bogus'" "$bin" info -m "$m" --bogus
expect "missing model" 1 "cannot open" "$bin" info -m "$tmp/none.gguf"
expect "not gguf" 1 "not a GGUF file" "$bin" info -m "$0"
expect "info" 0 "qwen35moe" "$bin" info -m "$m"
expect "info json" 0 '"architecture": "qwen35moe"' "$bin" info -m "$m" --json
expect "bad token list" 1 "not an integer" "$bin" logits -m "$m" --tokens 1,x -o "$tmp/l"
expect "token out of range" 1 "out of range" "$bin" logits -m "$m" --tokens 1,99999 -o "$tmp/l"
expect "bad cache type" 1 "unsupported cache type" "$bin" logits -m "$m" --tokens 1 -ctk q9 -o "$tmp/l"
expect "bad ubatch" 1 "out of range" "$bin" logits -m "$m" --tokens 1 -ub 0 -o "$tmp/l"
expect "logits" 0 "wrote 3 x 512" "$bin" logits -m "$m" --tokens 1,2,3 -o "$tmp/l"
size=$(stat -c %s "$tmp/l")
if [ "$size" = $((3*512*4)) ]; then pass=$((pass+1)); else echo "FAIL: logits size $size"; fail=$((fail+1)); fi
expect "synth bad preset" 1 "unknown preset" "$bin" synth --preset nope -o "$tmp/x.gguf"
expect "synth bad quant" 1 "unknown quant" "$bin" synth --arch qwen3moe --quant Q3 -o "$tmp/x.gguf"
expect "synth" 0 "random weights" "$bin" synth --arch qwen3moe --n-embd 256 --n-layer 2 --quant Q4_K_M --byte-vocab -o "$tmp/s.gguf"
expect "synth loads" 0 "qwen3moe" "$bin" info -m "$tmp/s.gguf"
expect "bench bad format" 1 "md, csv, json or jsonl" "$bin" bench -m "$m" -o xml
expect "bench bad range" 1 "bad range" "$bin" bench -m "$m" -p 8-2
expect "bench bad pg" 1 "two values" "$bin" bench -m "$m" -pg 5
expect "bench jsonl" 0 '"n_prompt":8' "$bin" bench -m "$m" -p 8 -n 0 -r 1 -o jsonl
expect "bench md" 0 "| pp8 |" "$bin" bench -m "$m" -p 8 -n 2 -r 1
expect "run needs a prompt" 1 "give -p" "$bin" run -m "$m"
expect "run bad temp" 1 "out of range" "$bin" run -m "$m" -p hi --temp -1
expect "run bad draft" 1 "cannot open" "$bin" run -m "$m" -p hi -md "$tmp/none.gguf"
expect "tokenize ids" 0 "\[" "$bin" tokenize -m "$m" -p "hello" --ids
expect "bench -md" 0 '"bigmoe_spec_acceptance"' "$bin" bench -m "$m" -md "$fixtures/models/qwen35-tiny-f32.gguf" -p 0 -n 8 -r 1 -o jsonl
expect "bench -md vocab" 1 "vocabulary" "$bin" bench -m "$m" -md "$tmp/s.gguf" -p 0 -n 8 -r 1
d=$fixtures/models/qwen35-tiny-f32.gguf
expect "bench -md speed-up" 0 "| d_.*x |\|x | tg8" "$bin" bench -m "$m" -md none,"$d" --draft-max 2 -p 0 -n 8 -r 1
expect "bench -md speed-up json" 0 '"bigmoe_spec_speedup"' "$bin" bench -m "$m" -md none,"$d" -p 0 -n 8 -r 1 -o jsonl
expect "bench bad p-min" 1 "probabilities in \[0, 1\]" "$bin" bench -m "$m" -md "$d" --draft-p-min 1.5 -p 0 -n 8
expect "bench bad adaptive" 1 "0 or 1" "$bin" bench -m "$m" -md "$d" --draft-adaptive 2 -p 0 -n 8
expect "bench bad draft-max" 1 "above 16" "$bin" bench -m "$m" -md "$d" --draft-max 17 -p 0 -n 8
expect "run -md stats" 0 "plain steps .* t/s: speed-up [0-9.]*x" "$bin" run -m "$m" -md "$d" -p hi -n 24 --temp 0 --ignore-eos
expect "run -md short" 0 "drafting steps [0-9.]* t/s (too few steps for a speed-up)" "$bin" run -m "$m" -md "$d" -p hi \
  -n 5 --temp 0 --ignore-eos
expect "run -md no guard" 0 "(\([0-9][0-9]*\) of \1 steps drafted); drafting steps" "$bin" run -m "$m" -md "$d" -p hi \
  -n 24 --temp 0 --ignore-eos --draft-guard 0
expect "bench bad guard" 1 "0 or 1" "$bin" bench -m "$m" -md "$d" --draft-guard 5 -p 0 -n 8
expect "run stray argument" 1 "unexpected argument 'stray'" "$bin" run -m "$m" -p hi stray
expect "run bad adaptive" 1 "draft-adaptive" "$bin" run -m "$m" -md "$d" -p hi --draft-adaptive 3
"$bin" synth --arch qwen35 --n-embd 256 --n-layer 2 --output-tensor-type q4_k --byte-vocab -o "$tmp/o4.gguf" >/dev/null 2>&1
expect "synth output type" 0 "output.weight  *Q4_K " "$bin" info -m "$tmp/o4.gguf"
expect "synth bad output type" 1 "unknown output tensor type 'Q5_K'" "$bin" synth --arch qwen35 --output-tensor-type q5_k \
  -o "$tmp/o5.gguf"
q=$fixtures/models/qwen35moe-tiny-q4_k_m.gguf
expect "bench -nr" 0 "| 2 | 1 | tg4 |" "$bin" bench -m "$q" -nr 0,1 -t 2 -p 0 -n 4 -r 1
expect "bench bad -nr" 1 "0 or 1" "$bin" bench -m "$q" -nr 2 -p 0 -n 4 -r 1
expect "run --no-repack" 0 "generation: 4 tokens" "$bin" run -m "$q" --no-repack -p hi -n 4 --temp 0 --ignore-eos
# Sizes beyond the machine's memory: exit 1 with the bytes needed and available, never a signal.
for c in "run -m $m -p hi -n 2 -c 99999999" "logits -m $m --tokens 1,2 -o $tmp/l -c 99999999" \
         "bench -m $m -p 0 -n 1 -r 1 -d 99999999" "bench -m $m -p 99999999 -n 0 -r 1" \
         "run -m $m -p hi -n 2 -c 99999999 -md $fixtures/models/qwen35-tiny-f32.gguf"; do
  # shellcheck disable=SC2086
  expect "too large: $c" 1 "needs [0-9.]* [GT]iB (KV cache .*), [0-9.]* [GMT]iB are available; at most [0-9]* positions fit" \
    "$bin" $c
done
# A missing model anywhere in the list fails before the first record is printed.
expect "bench missing second model" 1 "cannot open" "$bin" bench -m "$m,$tmp/none.gguf" -p 8 -n 0 -r 1 -o json
if [ -z "$("$bin" bench -m "$m,$tmp/none.gguf" -p 8 -n 0 -r 1 -o json 2>/dev/null)" ]; then pass=$((pass+1)); else
  echo "FAIL: bench printed records before a missing model"; fail=$((fail+1)); fi
echo "cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
