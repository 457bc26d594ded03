// Drives the chat page in headless Chromium (Debian's, through playwright-core): a message gets a
// reply streamed token by token (the reply's text seen growing), a long reply is stopped, a
// message is edited and resent, a reload finds the conversation in the browser's storage, and the
// page logs no errors and fetches nothing but its own server. Then the dashboard: while requests
// run its charts show decode tokens/s and running requests, and its slot table fills.
// usage: node webui_browser.mjs URL SCREENSHOT.png
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);
const fail = (m) => { console.error("FAIL: " + m); process.exit(1); };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
const errors = [], foreign = [];
page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
page.on("pageerror", (e) => errors.push(String(e)));
page.on("request", (r) => { if (!r.url().startsWith(url) && !r.url().startsWith("data:")) foreign.push(r.url()); });
await page.goto(url);
await page.fill("#temp", "0");

// a reply, streamed: sample the reply's text while it grows
await page.fill("#max_tokens", "120");
await page.fill("#input", "Tell me about rivers.");
await page.click("#send");
const seen = new Set();
for (let i = 0; i < 400; i++) {
  const t = await page.evaluate(() => document.querySelector(".msg.assistant .content")?.textContent ?? "");
  seen.add(t);
  if (await page.evaluate(() => !!document.querySelector(".msg.assistant .stats"))) break;
  await page.waitForTimeout(5);
}
const stats = await page.textContent(".msg.assistant .stats");
if (!/\d+ tokens, \d+\.\d t\/s, prompt \d+ \(\d+ cached\)/.test(stats) || / 0\.0 t\/s/.test(stats))
  fail("no statistics under the reply: " + stats);
if (seen.size < 3) fail(`the reply did not appear token by token (${seen.size} distinct states)`);

// stop a long reply (a reply the model ends by itself before the click is tried again with
// another message)
await page.fill("#max_tokens", "2000");
let stopped = false;
for (let k = 0; k < 6 && !stopped; k++) {
  const n = await page.$$eval(".msg.assistant", (e) => e.length);
  await page.fill("#input", "Now go on for a very long time, part " + k + ".");
  await page.click("#send");
  await page.waitForFunction((n) => {
    const a = document.querySelectorAll(".msg.assistant");
    return a.length === n + 1 && (a[n].querySelector(".content").textContent.length > 0 || !!a[n].querySelector(".stats"));
  }, n);
  stopped = await page.evaluate(() => {
    const b = document.getElementById("stop");
    if (b.disabled) return false;
    b.click();
    return true;
  });
  if (stopped)
    await page.waitForFunction((n) => /stopped/.test(document.querySelectorAll(".msg.assistant")[n]?.querySelector(".stats")?.textContent ?? ""), n);
  else
    await page.waitForFunction(() => !document.getElementById("send").disabled);
}
if (!stopped) fail("every long reply ended before it could be stopped");

// edit the last message and resend it
const before = await page.$$eval(".msg.user .content", (els) => els.map((e) => e.textContent));
const edits = await page.$$(".msg.user .edit");
await edits[edits.length - 1].click();
if (!/^Now go on for a very long time, part \d\.$/.test(await page.inputValue("#input"))) fail("edit did not put the message back");
await page.fill("#max_tokens", "8");
await page.fill("#input", "Short, please.");
await page.click("#send");
const want = [...before.slice(0, -1), "Short, please."];
await page.waitForFunction((w) => document.querySelectorAll(".msg.user").length === w &&
  /tokens/.test([...document.querySelectorAll(".msg.assistant")].pop()?.querySelector(".stats")?.textContent ?? ""), want.length);

// reload: the conversation is still there
await page.reload();
const users = await page.$$eval(".msg.user .content", (els) => els.map((e) => e.textContent));
if (users.join("|") !== want.join("|")) fail("after a reload: " + JSON.stringify(users));
if ((await page.$$(".conv")).length !== 1) fail("the conversation list after a reload");
await page.screenshot({ path: shot, fullPage: true });

// the dashboard: its charts move while requests run
const dash = await browser.newPage({ viewport: { width: 1100, height: 800 } });
dash.on("console", (m) => { if (m.type() === "error") errors.push("dashboard: " + m.text()); });
dash.on("pageerror", (e) => errors.push("dashboard: " + String(e)));
await dash.goto(url + "dashboard?every=150");
const body = (i) => JSON.stringify({ prompt: "Document " + i + " river stone light", max_tokens: 60, ignore_eos: true, temperature: 0.8, seed: i });
const load = Promise.all([0, 1, 2, 3].map(async (i) => {
  for (let k = 0; k < 3; k++)
    await fetch(url + "v1/completions", { method: "POST", headers: { "Content-Type": "application/json" }, body: body(i * 3 + k) });
}));
let maxDecode = 0, maxRunning = 0;
const t0 = Date.now();
let done = false;
load.then(() => { done = true; });
const decodeNonzero = () => dash.evaluate(() => series.tps[1].some((v) => v > 0));
const runningNonzero = () => dash.evaluate(() => series.req[0].some((v) => v > 0));
while (!done && Date.now() - t0 < 60000) {
  await dash.waitForTimeout(100);
  maxDecode = Math.max(maxDecode, (await decodeNonzero()) ? 1 : 0);
  maxRunning = Math.max(maxRunning, (await runningNonzero()) ? 1 : 0);
}
await load;
await dash.waitForTimeout(400);
const points = await dash.$$eval("polyline.series", (els) => els.map((e) => Number(e.dataset.points)));
if (points.length !== 8 || Math.min(...points) < 3) fail("dashboard charts: " + JSON.stringify(points));
if (!maxDecode || !(await decodeNonzero())) fail("the dashboard never showed decode tokens/s");
if (!maxRunning) fail("the dashboard never showed a running request");
const rows = await dash.$$eval("#slots tr", (els) => els.length);
if (rows < 2) fail("no slot rows on the dashboard");
await dash.screenshot({ path: shot.replace(/\.png$/, "-dashboard.png"), fullPage: true });
await browser.close();
if (errors.length) fail("console errors: " + errors.join("; "));
if (foreign.length) fail("requests beyond the server: " + foreign.join(" "));
console.log("webui browser: passed");
