// The official `openai` npm client against bigmoe serve: chat (whole and streamed, the streamed
// text equal to the whole), log-probabilities, completions, tools accepted and a call forced by tool_choice,
// JSON mode, structured output (json_schema), models, and an error surfaced as the
// client's APIError with the server's status.
// usage: node openai_client.mjs BASE_URL
import OpenAI from "openai";

const [baseURL] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "test-key" });
const fail = (m) => { console.error("FAIL: " + m); process.exit(1); };
let passed = 0;
const check = (cond, what) => { if (!cond) fail(what); passed++; };

const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Say something" }];
const whole = await client.chat.completions.create({ model: "m", messages, max_tokens: 12, temperature: 0 });
check(whole.object === "chat.completion", "chat object");
check(whole.choices[0].message.role === "assistant", "assistant role");
check(typeof whole.choices[0].message.content === "string", "content is a string");
check(whole.usage.completion_tokens === 12 || whole.choices[0].finish_reason === "stop", "usage");

const stream = await client.chat.completions.create({
  model: "m", messages, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
let text = "", usage = null, finish = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    if (c.delta?.content) text += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
  }
}
check(text === whole.choices[0].message.content, `streamed text equals the whole (${JSON.stringify(text)})`);
check(finish === whole.choices[0].finish_reason, "finish reason");
check(usage && usage.completion_tokens === whole.usage.completion_tokens, "usage chunk");

const withLp = await client.chat.completions.create({
  model: "m", messages, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 2 });
const lp = withLp.choices[0].logprobs?.content ?? [];
check(lp.length === withLp.usage.completion_tokens, "a log-probability per token");
check(lp.every((t) => t.logprob <= 0 && t.top_logprobs.length === 2 && t.top_logprobs[0].logprob >= t.logprob),
      "greedy tokens with their two best alternatives");

const tools = [{ type: "function", function: { name: "get_weather", description: "weather",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];
const withTools = await client.chat.completions.create({ model: "m", messages, tools, max_tokens: 4, temperature: 0 });
check(withTools.usage.prompt_tokens > whole.usage.prompt_tokens, "tools are in the prompt");
// a named function: the answer is a call of it, its arguments a JSON object; the same streamed
// (a bias toward closing strings and objects makes the random-weight model finish the arguments)
const tokenId = async (text) => {
  const r = await fetch(baseURL.replace(/\/v1$/, "") + "/tokenize", { method: "POST", body: JSON.stringify({ content: text }) });
  return (await r.json()).tokens[0];
};
const logit_bias = { [await tokenId('"')]: 6, [await tokenId("}")]: 6 };
const toolChoice = { type: "function", function: { name: "get_weather" } };
const forced = await client.chat.completions.create({
  model: "m", messages, tools, tool_choice: toolChoice, logit_bias, max_tokens: 60, temperature: 0 });
const call = forced.choices[0].message.tool_calls?.[0];
check(forced.choices[0].finish_reason === "tool_calls" && call?.function.name === "get_weather",
      `a forced call (${JSON.stringify(forced.choices[0])})`);
const args = JSON.parse(call.function.arguments);
check(typeof args === "object" && !Array.isArray(args) && typeof args.city === "string",
      "its arguments are an instance of its parameters");
const fstream = await client.chat.completions.create({
  model: "m", messages, tools, tool_choice: toolChoice, logit_bias, max_tokens: 60, temperature: 0, stream: true });
let streamedArgs = "", streamedName = "";
for await (const chunk of fstream)
  for (const c of chunk.choices)
    for (const t of c.delta?.tool_calls ?? []) {
      streamedName += t.function?.name ?? "";
      streamedArgs += t.function?.arguments ?? "";
    }
check(streamedName === "get_weather" && streamedArgs === call.function.arguments, "the streamed call is the same");
const json = await client.chat.completions.create({
  model: "m", messages, response_format: { type: "json_object" }, max_tokens: 40, temperature: 0 });
check(typeof json.choices[0].message.content === "string", "JSON mode answers");
const schema = { type: "object", properties: { unit: { enum: ["celsius", "fahrenheit"] }, city: { type: "string" },
  days: { type: "integer", minimum: 1, maximum: 16 }, code: { type: "string", pattern: "^[A-Z]{3}$" } },
  required: ["unit", "days", "code", "city"], additionalProperties: false };
const structured = await client.chat.completions.create({ model: "m", messages, logit_bias, max_tokens: 120,
  temperature: 0, response_format: { type: "json_schema", json_schema: { name: "weather", strict: true, schema } } });
const answer = JSON.parse(structured.choices[0].message.content);
check(["celsius", "fahrenheit"].includes(answer.unit) && typeof answer.city === "string" &&
      Number.isInteger(answer.days) && answer.days >= 1 && answer.days <= 16 && /^[A-Z]{3}$/.test(answer.code) &&
      Object.keys(answer).length === 4, `structured output follows the schema (${JSON.stringify(answer)})`);

const comp = await client.completions.create({ model: "m", prompt: "Once upon a time", max_tokens: 6, temperature: 0 });
check(comp.object === "text_completion" && typeof comp.choices[0].text === "string", "completion");
const cstream = await client.completions.create({ model: "m", prompt: "Once upon a time", max_tokens: 6,
  temperature: 0, stream: true });
let ctext = "";
for await (const chunk of cstream) for (const c of chunk.choices) ctext += c.text ?? "";
check(ctext === comp.choices[0].text, "streamed completion equals the whole");

const models = await client.models.list();
check(models.data.length === 1 && models.data[0].object === "model", "models");

try {
  await client.chat.completions.create({ model: "m", messages: [], max_tokens: 2 });
  fail("empty messages accepted");
} catch (e) {
  check(e instanceof OpenAI.APIError && e.status === 400 && e.error?.type === "invalid_request_error",
        `an APIError with status 400 (${e})`);
}
console.log(`openai-client: ${passed} passed, 0 failed`);
