#!/usr/bin/env bash
# The quality of each KV cache type pair: KL divergence and top-token agreement against an f32
# cache over the same text (bigmoe perplexity with a saved base), as JSON lines and a markdown
# table. Every pair of {f16, q8_0, q5_1, q4_0} for K and V, and the other types with K = V.
# usage: scripts/bench_kv_quality.sh MODEL TEXT OUT_PREFIX [THREADS] [CHUNK] [CHUNKS]
#   writes OUT_PREFIX.jsonl and OUT_PREFIX.md; BIGMOE names the binary (default build/bigmoe).
set -euo pipefail
model=$1 text=$2 out=$3 threads=${4:-2} chunk=${5:-2048} chunks=${6:-2}
bin=${BIGMOE:-build/bigmoe}
base=$(mktemp /tmp/bigmoe_kl_base.XXXXXX)
trap 'rm -f "$base"' EXIT
run=("$bin" perplexity -m "$model" -f "$text" -c "$chunk" --chunks "$chunks" -t "$threads" --json)
"${run[@]}" -ctk f32 -ctv f32 --kl-divergence-base "$base" > "$out.jsonl"
pairs=()
for k in f16 q8_0 q5_1 q4_0; do for v in f16 q8_0 q5_1 q4_0; do pairs+=("$k $v"); done; done
for t in bf16 q5_0 q4_1 iq4_nl; do pairs+=("$t $t"); done
for p in "${pairs[@]}"; do
  set -- $p
  echo "K $1 V $2" >&2
  "${run[@]}" -ctk "$1" -ctv "$2" --kl-divergence-base "$base" --kl-divergence >> "$out.jsonl"
done
python3 - "$out.jsonl" > "$out.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = rows[0]
print(f"f32 cache: PPL {base['ppl']:.4f} over {base['scored']} scored tokens ({base['chunks']} chunks of {base['n_ctx']})\n")
print("| K | V | KV bytes vs f16 | PPL | ln(PPL / f32 PPL) | mean KLD | median KLD | p99 KLD | max KLD | same top token |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
bits = {"f16": 16, "bf16": 16, "q8_0": 8.5, "q5_1": 6, "q5_0": 5.5, "q4_1": 5, "q4_0": 4.5, "iq4_nl": 4.5}
import math
for r in rows[1:]:
    size = (bits[r["type_k"]] + bits[r["type_v"]]) / 32
    print(f"| {r['type_k']} | {r['type_v']} | {size:.0%} | {r['ppl']:.4f} | {math.log(r['ppl'] / r['base_ppl']):+.5f} | "
          f"{r['kl_mean']:.6f} ± {r['kl_mean_error']:.6f} | {r['kl_median']:.6f} | {r['kl_p99']:.6f} | {r['kl_max']:.5f} | "
          f"{100 * r['top1_agreement']:.2f}% |")
PY
cat "$out.md"
