// Drives the chat page in headless Chromium (Debian's, through playwright-core): a message gets a
// reply streamed token by token (the reply's text seen growing), a long reply is stopped, a
// message is edited and resent, a greedy reply regenerated comes back the same from the prompt
// cache, a reload finds the conversation in the browser's storage, and the page logs no errors and
// fetches nothing but its own server. Then the dashboard: while `bigmoe loadtest` runs against the
// server its charts show decode tokens/s and running requests, its slot table fills and its per-op
// profile (the server runs with --profile) shows the shares of the steps' time. Screenshots of both pages are decoded
// and the expected elements found drawn in them.
// With KEY (a server started with --api-key KEY): the page asks for the key once, replies, and
// after a reload replies again without asking.
// usage: node webui_browser.mjs URL SCREENSHOT.png BIGMOE [KEY]
import { spawn } from "node:child_process";
import { chromium } from "playwright-core";

const [url, shot, bigmoe, apiKey] = process.argv.slice(2);
const fail = (m) => { console.error("FAIL: " + m); process.exit(1); };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
// Decodes a PNG in a blank page's canvas and, for each rectangle (page pixels), counts its distinct
// colours and its pixels near `rgb` (when given).
async function pixels(png, rects) {
  const p = await browser.newPage();
  const out = await p.evaluate(async ({ b64, rects }) => {
    const img = new Image();
    img.src = "data:image/png;base64," + b64;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.width;
    c.height = img.height;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    return rects.map(({ x, y, width, height, rgb }) => {
      const size = img.width + "x" + img.height;
      if (width < 1 || height < 1 || x + width > img.width || y + height > img.height) return { colours: 0, near: 0, size };
      const d = g.getImageData(Math.floor(x), Math.floor(y), Math.ceil(width), Math.ceil(height)).data;
      const colours = new Set();
      let near = 0;
      for (let i = 0; i < d.length; i += 4) {
        colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        if (rgb && Math.abs(d[i] - rgb[0]) + Math.abs(d[i + 1] - rgb[1]) + Math.abs(d[i + 2] - rgb[2]) < 60) near++;
      }
      return { colours: colours.size, near, size };
    });
  }, { b64: png.toString("base64"), rects });
  await p.close();
  return out;
}
// A full-page screenshot of pg, checked to show each expected element: [selector, rgb or null];
// the last element a selector matches is the one checked. Every element must hold text or lines
// (several colours), and pixels of its colour where one is given. The dashboard redraws on a timer,
// so the elements are located before and after the screenshot, which is taken again until the
// layout held still around it; an element found not drawn is looked at in two more screenshots
// before the test fails (a redraw mid-capture is not a missing element).
async function checkShot(pg, path, expected) {
  const locate = () => Promise.all(expected.map(([sel]) => pg.$$eval(sel, (els) => {
    const e = els[els.length - 1];
    if (!e) return null;
    const b = e.getBoundingClientRect();
    return { x: b.x + scrollX, y: b.y + scrollY, width: b.width, height: b.height };
  })));
  let problems = [];
  for (let shot = 0; shot < 3; shot++) {
    if (shot > 0) await pg.waitForTimeout(300);
    let png, rects;
    for (let attempt = 0; ; attempt++) {
      const before = await locate();
      png = await pg.screenshot({ path, fullPage: true });
      rects = await locate();
      if (JSON.stringify(before) === JSON.stringify(rects)) break;
      if (attempt === 5) fail(`${path}: the layout kept moving: ${JSON.stringify(before)} -> ${JSON.stringify(rects)}`);
      await pg.waitForTimeout(50);
    }
    rects.forEach((r, i) => { if (!r) fail(`${path}: no element ${expected[i][0]}`); });
    const stats = await pixels(png, rects.map((r, i) => ({ ...r, rgb: expected[i][1] })));
    problems = [];
    stats.forEach((s, i) => {
      const [sel, rgb] = expected[i];
      if (s.colours < 3) problems.push(`${sel} is not drawn (${s.colours} colours; at ${JSON.stringify(rects[i])}, image ${s.size})`);
      else if (rgb && s.near < 3) problems.push(`${sel} shows none of its colour`);
    });
    if (!problems.length) return;
  }
  fail(`${path}: ${problems.join("; ")}`);
}

if (apiKey) {
  // the page asks for the key once, then remembers it
  const page = await browser.newPage();
  const asked = [], errors = [];
  page.on("dialog", async (d) => { asked.push(d.message()); await d.accept(apiKey); });
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.fill("#max_tokens", "6");
  for (let round = 0; round < 2; round++) {
    await page.fill("#input", "Hello number " + round);
    await page.click("#send");
    await page.waitForFunction((n) => document.querySelectorAll(".msg.assistant .stats").length === n, round + 1);
    const stats = await page.$$eval(".msg.assistant .stats", (e) => e.map((x) => x.textContent));
    if (!/^\d+ tokens/.test(stats[round])) fail("with an API key: " + stats[round]);
    if (round === 0) await page.reload();
  }
  if (asked.length !== 1 || !/API key/.test(asked[0])) fail("the key was asked for " + asked.length + " times");
  // the one 401 that made the page ask is the only error
  const other = errors.filter((e) => !/status of 401/.test(e));
  if (other.length || errors.length > 1) fail("console errors: " + errors.join("; "));
  await browser.close();
  console.log("webui browser with an API key: passed");
  process.exit(0);
}

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
// every state the page draws (the page's renderMessages is a global function: wrapped here)
await page.evaluate(() => {
  const draw = window.renderMessages;
  window.replyStates = new Set();
  window.renderMessages = () => {
    draw();
    window.replyStates.add(document.querySelector(".msg.assistant .content")?.textContent ?? "");
  };
});
await page.click("#send");
await page.waitForSelector(".msg.assistant .stats");
const seen = new Set(await page.evaluate(() => [...window.replyStates]));
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

// regenerate the greedy reply: the same text, its whole prompt from the prompt cache
const lastReply = () => page.evaluate(() => {
  const a = [...document.querySelectorAll(".msg.assistant")].pop();
  return { text: a.querySelector(".content").textContent, stats: a.querySelector(".stats")?.textContent ?? "" };
});
const first = await lastReply();
await page.click(".msg.assistant .regenerate");
await page.waitForFunction(() => /tokens/.test([...document.querySelectorAll(".msg.assistant")].pop()?.querySelector(".stats")?.textContent ?? "") &&
  !document.getElementById("send").disabled);
const again = await lastReply();
if (again.text !== first.text) fail(`regenerate at temperature 0 changed the reply: ${JSON.stringify(first.text)} -> ${JSON.stringify(again.text)}`);
const m = again.stats.match(/prompt (\d+) \((\d+) cached\)/);
if (!m || Number(m[2]) !== Number(m[1])) fail("regenerate did not come from the prompt cache: " + again.stats);

// reload: the conversation is still there
await page.reload();
const users = await page.$$eval(".msg.user .content", (els) => els.map((e) => e.textContent));
if (users.join("|") !== want.join("|")) fail("after a reload: " + JSON.stringify(users));
if ((await page.$$(".conv")).length !== 1) fail("the conversation list after a reload");
const accent = [0x24, 0x57, 0xc5];
await checkShot(page, shot, [["#list .conv", null], [".msg.user", null], [".msg.assistant .content", null],
  [".msg.assistant .stats", null], ["#send", null], ["#input", null], ["#settings", null]]);

// the dashboard: its charts move while requests run
const dash = await browser.newPage({ viewport: { width: 1100, height: 800 } });
dash.on("console", (m) => { if (m.type() === "error") errors.push("dashboard: " + m.text()); });
dash.on("pageerror", (e) => errors.push("dashboard: " + String(e)));
await dash.goto(url + "dashboard?every=150");
const lt = spawn(bigmoe, ["loadtest", "--url", url.replace(/\/$/, ""), "--workload", "chat", "-c", "4", "-n", "12", "--out-tokens", "80"],
  { stdio: ["ignore", "ignore", "inherit"] });
const load = new Promise((resolve, reject) => lt.on("exit", (code) => (code === 0 ? resolve() : reject(new Error("loadtest exited " + code)))));
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
// the profile: shares of the steps' time by op class, the experts among them
const ops = await dash.$$eval("#ops .op", (els) => els.map((e) => [e.dataset.op, Number(e.dataset.share)]));
const total = ops.reduce((a, [, s]) => a + s, 0);
if (ops.length < 4 || !ops.some(([op, s]) => op === "expert_matmul" && s > 0) || total < 0.98 || total > 1.02)
  fail("the dashboard's profile: " + JSON.stringify(ops));
await checkShot(dash, shot.replace(/\.png$/, "-dashboard.png"), [["#c-tps", accent], ["#c-req", accent], ["#c-mem", accent],
  ["#c-ttft", accent], ["#slots", null], ["#ops .op:first-child .bar div", accent]]);
await browser.close();
if (errors.length) fail("console errors: " + errors.join("; "));
if (foreign.length) fail("requests beyond the server: " + foreign.join(" "));
console.log("webui browser: passed");
