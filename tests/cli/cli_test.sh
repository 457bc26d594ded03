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
expect "info gpu" 0 "^GPU (-ngl 99): " "$bin" info -m "$m"
expect "info gpu json" 0 '"gpu": {' "$bin" info -m "$m" --json
expect "bad token list" 1 "not an integer" "$bin" logits -m "$m" --tokens 1,x -o "$tmp/l"
expect "token out of range" 1 "out of range" "$bin" logits -m "$m" --tokens 1,99999 -o "$tmp/l"
expect "bad cache type" 1 "unknown cache type" "$bin" logits -m "$m" --tokens 1 -ctk q9 -o "$tmp/l"
expect "bad ubatch" 1 "out of range" "$bin" logits -m "$m" --tokens 1 -ub 0 -o "$tmp/l"
expect "logits" 0 "wrote 3 x 512" "$bin" logits -m "$m" --tokens 1,2,3 -o "$tmp/l"
size=$(stat -c %s "$tmp/l")
if [ "$size" = $((3*512*4)) ]; then pass=$((pass+1)); else echo "FAIL: logits size $size"; fail=$((fail+1)); fi
# perplexity, and KL divergence against a saved base
yes "The river runs past the old mill and the stones are warm in the sun." | head -30 > "$tmp/text.txt"
ppl=("$bin" perplexity -m "$m" -f "$tmp/text.txt" -c 64 -t 1)
expect "perplexity" 0 "Final estimate: PPL = " "${ppl[@]}"
expect "perplexity base" 0 "saved the scored" "${ppl[@]}" -ctk f32 -ctv f32 --kl-divergence-base "$tmp/base.kl"
expect "kl divergence" 0 "Mean KLD" "${ppl[@]}" -ctk q4_0 -ctv q8_0 --kl-divergence-base "$tmp/base.kl" --kl-divergence
expect "kl json" 0 '"top1_agreement":' "${ppl[@]}" -ctk q5_1 --kl-divergence-base "$tmp/base.kl" --kl-divergence --json
expect "kl other chunks" 1 "chunks of 64" "$bin" perplexity -m "$m" -f "$tmp/text.txt" -c 32 --kl-divergence-base "$tmp/base.kl" --kl-divergence
expect "kl without base" 1 "needs --kl-divergence-base" "${ppl[@]}" --kl-divergence
expect "perplexity no text" 1 "cannot" "$bin" perplexity -m "$m" -f "$tmp/none.txt"
expect "perplexity short text" 1 "fewer than one chunk" "$bin" perplexity -m "$m" -f "$tmp/text.txt" -c 65536
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
e_id=$("$bin" tokenize -m "$m" -p e --ids 2>/dev/null | tr -d '[] ')
expect "run --logit-bias" 0 "^eeeeee" "$bin" run -m "$m" -p hi -n 6 --temp 0 --ignore-eos -l "$e_id+100"
expect "run bad --logit-bias" 1 "takes ID+BIAS or ID-BIAS" "$bin" run -m "$m" -p hi -n 2 --logit-bias 5+inf
expect "run --logit-bias past the vocabulary" 1 "token 99999 is not an id in \[0, 512)" "$bin" run -m "$m" -p hi \
  -n 2 -l 99999-1
# -j: a schema that leaves only whitespace free gives exactly its one instance
one='{"type":"object","properties":{"u":{"enum":["yes"]}},"required":["u"],"additionalProperties":false}'
out=$("$bin" run -m "$m" -p hi -n 200 --temp 0 -j "$one" 2>/dev/null | tr -d ' \t\r\n')
if [ "$out" = '{"u":"yes"}' ]; then pass=$((pass+1)); else echo "FAIL: run -j: $out"; fail=$((fail+1)); fi
echo "$one" > "$tmp/schema.json"
out=$("$bin" run -m "$m" -p hi -n 200 --temp 0 --json-schema-file "$tmp/schema.json" 2>/dev/null | tr -d ' \t\r\n')
if [ "$out" = '{"u":"yes"}' ]; then pass=$((pass+1)); else echo "FAIL: run --json-schema-file: $out"; fail=$((fail+1)); fi
expect "run -j not enforced" 0 'warning: --json-schema: not enforced: #/properties/a: pattern' "$bin" run -m "$m" \
  -p hi -n 4 -j '{"properties":{"a":{"pattern":"(?=x)"}}}'
expect "run -j not JSON" 1 "is not valid JSON" "$bin" run -m "$m" -p hi -j '{"type":'
expect "run -j twice" 1 "either --json-schema or --json-schema-file" "$bin" run -m "$m" -p hi -j '{}' \
  --json-schema-file "$tmp/schema.json"
# --grammar: greedy text the grammar derives, ended by it (nothing can follow the digit)
out=$("$bin" run -m "$m" -p hi -n 50 --temp 0 --ignore-eos --grammar 'root ::= "ok" [0-9]' 2>/dev/null)
if [[ "$out" =~ ^ok[0-9]$ ]]; then pass=$((pass+1)); else echo "FAIL: run --grammar: $out"; fail=$((fail+1)); fi
printf 'root ::= word ("-" word)?\nword ::= [a-c]{2}  # two letters\n' > "$tmp/g.gbnf"
out=$("$bin" run -m "$m" -p hi -n 50 --temp 0 --grammar-file "$tmp/g.gbnf" 2>/dev/null)
if [[ "$out" =~ ^[a-c]{2}(-[a-c]{2})?$ ]]; then pass=$((pass+1)); else echo "FAIL: run --grammar-file: $out"; fail=$((fail+1)); fi
expect "run --grammar that does not parse" 1 "grammar: line 1, column 13: unterminated string" "$bin" run -m "$m" -p hi \
  --grammar 'root ::= "ok'
expect "run --grammar and -j" 1 "either a grammar or a JSON schema" "$bin" run -m "$m" -p hi -j '{}' --grammar 'root ::= "a"'
expect "run --grammar-file missing" 1 "nope.gbnf" "$bin" run -m "$m" -p hi --grammar-file "$tmp/nope.gbnf"
expect "run stray argument" 1 "unexpected argument 'stray'" "$bin" run -m "$m" -p hi stray
expect "run bad adaptive" 1 "draft-adaptive" "$bin" run -m "$m" -md "$d" -p hi --draft-adaptive 3
"$bin" synth --arch qwen35 --n-embd 256 --n-layer 2 --output-tensor-type q4_k --byte-vocab -o "$tmp/o4.gguf" >/dev/null 2>&1
expect "synth output type" 0 "output.weight  *Q4_K " "$bin" info -m "$tmp/o4.gguf"
expect "synth bad output type" 1 "unknown output tensor type 'Q5_K'" "$bin" synth --arch qwen35 --output-tensor-type q5_k \
  -o "$tmp/o5.gguf"
q=$fixtures/models/qwen35moe-tiny-q4_k_m.gguf
expect "bench -nr" 0 "| 2 | 1 | tg4 |" "$bin" bench -m "$q" -nr 0,1 -t 2 -p 0 -n 4 -r 1
expect "bench bad -nr" 1 "0 or 1" "$bin" bench -m "$q" -nr 2 -p 0 -n 4 -r 1
expect "bench -npl" 0 "| tg4 x3 |" "$bin" bench -m "$q" -npl 1,3 -t 2 -p 0 -n 4 -r 1
expect "bench -npl pg" 0 '"n_prompt":6,"n_gen":2.*"bigmoe_n_parallel":2' "$bin" bench -m "$q" -npl 2 -pg 6,2 -p 0 -n 0 -r 1 -o jsonl
expect "bench bad -npl" 1 "1 to 256" "$bin" bench -m "$q" -npl 257 -p 0 -n 4 -r 1
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
# A llama.cpp user's first hour: flags they type, answers they expect, nothing silent.
expect_in() {  # expect_in NAME WANT_RC PATTERN STDIN CMD...: as expect, with STDIN on standard input
  local name=$1 want=$2 pat=$3 input=$4
  shift 4
  out=$(printf '%b' "$input" | "$@" 2>&1)
  rc=$?
  if [ $rc -eq "$want" ] && grep -q -- "$pat" <<< "$out"; then pass=$((pass+1)); return; fi
  echo "FAIL: $name (rc=$rc): $out" | head -5
  fail=$((fail+1))
}
hw=$(nproc --all)
expect "-t above the hardware threads warns" 0 "more than the $hw hardware threads" "$bin" run -m "$m" -p hi -n 1 -t $((hw + 1))
expect "-t 0 is the physical cores (run)" 0 "generation: 1 tokens" "$bin" run -m "$m" -p hi -n 1 -t 0 --ignore-eos
expect "-t 0 (bench)" 0 '"n_prompt":4' "$bin" bench -m "$m" -p 4 -n 0 -r 1 -t 0 -o jsonl
expect "-t 0 (logits)" 0 "wrote 2 x" "$bin" logits -m "$m" --tokens 1,2 -t 0 -o "$tmp/l0"
expect "--temp nan" 1 "not a finite number" "$bin" run -m "$m" -p hi --temp nan
expect "--top-p inf" 1 "not a finite number" "$bin" run -m "$m" -p hi --top-p inf
expect "--bw nan" 1 "not a finite number" "$bin" bench -m "$m" --bw nan
expect "--draft-p-min nan" 1 "probabilities in" "$bin" bench -m "$m" -md "$d" --draft-p-min nan -p 0 -n 2
for o in "-sys x" "--reasoning off" "--chat-template chatml" "--context-shift"; do
  # shellcheck disable=SC2086
  expect "$o without chat warns" 0 "has no effect without -cnv or -st" "$bin" run -m "$m" -p hi -n 1 $o
done
expect "--draft-ngram with sampling warns" 0 "drafts greedily only" "$bin" run -m "$m" -p hi -n 2 --draft-ngram --temp 0.8
expect "synth --n-vocab below the tokenizer" 1 "below the tokenizer's 261 tokens" "$bin" synth --arch qwen3moe \
  --n-embd 256 --n-layer 2 --byte-vocab --n-vocab 100 -o "$tmp/v.gguf"
expect "synth does not overwrite" 1 "exists; --force overwrites it" "$bin" synth --arch qwen3moe --n-embd 256 \
  --n-layer 2 --byte-vocab -o "$tmp/s.gguf"
expect "synth --force" 0 "random weights" "$bin" synth --arch qwen3moe --n-embd 256 --n-layer 2 --byte-vocab --force \
  -o "$tmp/s.gguf"
expect "logits -c below the tokens" 1 "3 tokens do not fit in -c 2" "$bin" logits -m "$m" --tokens 1,2,3 -c 2 -o "$tmp/l"
expect "bench -ub above -b" 0 "micro-batches hold at most 4 tokens" "$bin" bench -m "$m" -b 4 -ub 8 -p 8 -n 0 -r 1
expect "bench -fa 0" 1 "always fused" "$bin" bench -m "$m" -fa 0 -p 8 -n 0 -r 1
expect "bench -fa 1" 0 "| pp8 |" "$bin" bench -m "$m" -fa 1 -p 8 -n 0 -r 1
long=$(timeout 5 "$bin" bench -m "$m" -p 1-100000+1 -n 0 -r 1 -o jsonl 2>&1 >/dev/null)
if grep -q "100000 tests of 1 repetitions.*hours" <<< "$long"; then pass=$((pass+1)); else
  echo "FAIL: a long bench says so first: $long" | head -3; fail=$((fail+1)); fi
expect_in "-st reads standard input" 0 "generation: 2 tokens" "hello\n" "$bin" run -m "$m" -st -n 2 --ignore-eos
expect_in "-st with nothing to say" 1 "-st needs a message" "" "$bin" run -m "$m" -st -n 2
expect_in "-cnv: empty lines, /clear, a full context" 0 "the conversation starts over" \
  "hi\n\n/clear\nagain and again\nmore words here\n/exit\n" "$bin" run -m "$m" -cnv -c 40 -n 100 --temp 0
expect_in "-cnv: full context says how to go on" 0 "/clear starts over; --context-shift" \
  "hi\nagain and again\nmore words here\n" "$bin" run -m "$m" -cnv -c 40 -n 100 --temp 0
expect_in "-cnv --context-shift drops turns" 0 "the oldest turn is dropped" \
  "hi\nagain and again\nmore words here\n" "$bin" run -m "$m" -cnv -c 40 -n 8 --temp 0 --context-shift
for c in run info logits bench tokenize report synth; do
  expect "$c --help" 0 "usage: bigmoe $c" "$bin" "$c" --help
  [ -z "$("$bin" "$c" --help 2>&1 >/dev/null)" ] && pass=$((pass+1)) || { echo "FAIL: $c --help wrote to stderr"; fail=$((fail+1)); }
done
expect "bigmoe help CMD" 0 "usage: bigmoe bench" "$bin" help bench
expect "bigmoe --help" 0 "'bigmoe help <command>'" "$bin" --help
expect "placeholders" 0 "-m, --model FILE .*" "$bin" run --help
expect "bench list syntax" 0 "ranges with a step" "$bin" bench --help
expect "-ngl 0" 0 "backend CPU" "$bin" run -m "$m" -p hi -n 1 -ngl 0
expect "-fa on" 0 "generation:" "$bin" run -m "$m" -p hi -n 1 -fa on
expect "-fa off" 1 "always fused" "$bin" run -m "$m" -p hi -n 1 -fa off
expect "-s -1 prints the seed" 0 "seed: [0-9]" "$bin" run -m "$m" -p hi -n 1 -s -1
expect "--temperature --predict" 0 "generation: 3 tokens" "$bin" run -m "$m" -p hi --predict 3 --temperature 0 --ignore-eos
expect "--verbose-prompt (raw)" 0 "prompt: 2 tokens: 104 105" "$bin" run -m "$m" -p hi -n 1 --verbose-prompt
expect "--verbose-prompt (chat)" 0 "\[prompt\]" "$bin" run -m "$m" -p hi -st -n 1 --verbose-prompt
printf 'You are terse.' > "$tmp/sys.txt"
expect "-sysf" 0 "You are terse." "$bin" run -m "$m" -p hi -st -n 1 -sysf "$tmp/sys.txt" --verbose-prompt
expect "-sys and -sysf" 1 "only one of -sys and -sysf" "$bin" run -m "$m" -p hi -st -sys a -sysf "$tmp/sys.txt"
printf '{%% for m in messages %%}[{{ m.role }}] {{ m.content }}\n{%% endfor %%}[assistant] ' > "$tmp/t.jinja"
expect "--chat-template-file" 0 "\[user\] hi" "$bin" run -m "$m" -p hi -st -n 1 --chat-template-file "$tmp/t.jinja" \
  --verbose-prompt
expect "--no-jinja" 0 "<|im_start|>user" "$bin" run -m "$m" -p hi -st -n 1 --no-jinja --verbose-prompt
expect "--jinja" 0 "generation:" "$bin" run -m "$m" -p hi -st -n 1 --jinja
expect "-e escapes" 0 "prompt: 3 tokens: 97 10 98" "$bin" run -m "$m" -p 'a\nb' -n 1 --verbose-prompt
expect "--no-escape" 0 "prompt: 4 tokens: 97 92 110 98" "$bin" run -m "$m" -p 'a\nb' -n 1 --verbose-prompt --no-escape
expect "-r stops" 0 "\[stop: stop\]\|\[stop: length\]" "$bin" run -m "$m" -p hi -st -n 20 -r e -v --temp 0
expect "--no-mmap --mlock --no-warmup --perf" 0 "generation:" "$bin" run -m "$m" -p hi -n 1 --no-mmap --mlock \
  --no-warmup --perf
expect "the load line" 0 "model: .* | backend CPU .* threads | context 4096, KV cache" "$bin" run -m "$m" -p hi -n 1
expect "bench -mmp -embd --no-warmup --delay -v" 0 "| pp4 |" "$bin" bench -m "$m" -p 4 -n 0 -r 1 -mmp 0,1 -embd 0 \
  --no-warmup --delay 0.01 -v
expect "bench -embd 1" 1 "embeddings are not measured" "$bin" bench -m "$m" -p 4 -n 0 -r 1 -embd 1
expect "bench -oe" 0 '"n_prompt":4' "$bin" bench -m "$m" -p 4 -n 0 -r 1 -oe jsonl
expect "bench --bw auto" 0 "read bandwidth .* GB/s" "$bin" bench -m "$m" -p 0 -n 2 -r 1 --bw auto
if "$bin" bench -m "$m" -p 0 -n 2 -r 1 2>/dev/null | grep -q "% bw"; then
  echo "FAIL: an empty % bw column"; fail=$((fail+1)); else pass=$((pass+1)); fi
# Progress lines appear on a terminal (script gives the command one) and not in a pipe.
if command -v script >/dev/null; then
  tty_out=$(script -qc "$bin synth --arch qwen3moe --n-embd 256 --n-layer 2 --byte-vocab --force -o $tmp/p.gguf" /dev/null)
  grep -q "writing $tmp/p.gguf: 100% (" <<< "$tty_out" && pass=$((pass+1)) || { echo "FAIL: synth progress"; fail=$((fail+1)); }
  tty_out=$(script -qc "$bin run -m $m -p hi -n 1" /dev/null)
  grep -q "loading $m: 100% (" <<< "$tty_out" && pass=$((pass+1)) || { echo "FAIL: load progress"; fail=$((fail+1)); }
  tty_out=$(script -qc "$bin logits -m $m --tokens 1,2,3,4,5 -ub 2 -o $tmp/lp" /dev/null)
  grep -q "logits: 100% (5 of 5 tokens)" <<< "$tty_out" && pass=$((pass+1)) || { echo "FAIL: logits progress"; fail=$((fail+1)); }
fi
if "$bin" run -m "$m" -p hi -n 1 2>&1 | grep -q "loading "; then echo "FAIL: progress in a pipe"; fail=$((fail+1)); else
  pass=$((pass+1)); fi
expect "serve needs a model" 1 "is required" "$bin" serve
expect "serve bad port" 1 "out of range" "$bin" serve -m "$m" --port 70000
expect "serve bad --grammar" 1 "serve: grammar: line 1, column 13: unterminated string" "$bin" serve -m "$m" --port 0 \
  --grammar 'root ::= "ok'
expect "serve -j not JSON" 1 "not valid JSON" "$bin" serve -m "$m" --port 0 -j '{"type":'
expect "serve grammar and schema" 1 "either a grammar or a JSON schema" "$bin" serve -m "$m" --port 0 -j '{}' \
  --grammar 'root ::= "a"'
expect "serve missing draft" 1 "cannot open" "$bin" serve -m "$m" --port 0 -md "$tmp/none.gguf"
expect "serve draft vocab" 1 "vocabulary" "$bin" serve -m "$m" --port 0 -md "$tmp/s.gguf"
expect "bad ngld" 1 "'--gpu-layers-draft': 'x' is not an integer" "$bin" run -m "$m" -md "$d" -p hi -n 1 -ngld x
expect "serve bad draft-max" 1 "out of range \\[1, 16\\]" "$bin" serve -m "$m" --port 0 -md "$d" --draft-max 17
expect "bad n-cpu-moe" 1 "'--n-cpu-moe': -2 is out of range" "$bin" run -m "$m" -p hi -n 1 -ngl 99 --n-cpu-moe -2
expect "n-cpu-moe without -ngl" 0 "warning: --n-cpu-moe has no effect without -ngl" "$bin" run -m "$m" -p hi -n 1 -ncmoe 2
expect "bench bad ncmoe" 1 "not an integer" "$bin" bench -m "$m" -p 8 -n 0 -r 1 -ngl 99 -ncmoe x
# -ngl: without a GPU (or a CUDA build) a clear error, for the whole model or some of its layers
if ! command -v nvidia-smi >/dev/null 2>&1; then
  expect "ngl without a GPU" 1 "^error: -ngl 99: " "$bin" run -m "$m" -p hi -n 1 -ngl 99
  expect "ngl split without a GPU" 1 "^error: -ngl 2: " "$bin" run -m "$m" -p hi -n 1 -ngl 2
  expect "ngld without a GPU" 1 "^error: -ngld 99: " "$bin" run -m "$m" -md "$d" -p hi -n 1 -ngld 99
  expect "bench ngl without a GPU" 1 "^error: .*-ngl 99: " "$bin" bench -m "$m" -p 8 -n 0 -r 1 -ngl 99
  expect "cpu-moe without a GPU" 1 "^error: -ngl 99: " "$bin" run -m "$m" -p hi -n 1 -ngl 99 -cmoe
  expect "n-cpu-moe without a GPU" 1 "^error: serve: -ngl 99: " "$bin" serve -m "$m" --port 0 -ngl 99 -ncmoe 2
fi
echo "cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
