// Renders a bigmoe report in headless Chromium (Debian's, driven by playwright-core), takes a
// screenshot and checks that every data series is drawn: its colour is present along its line in
// the pixels (not just axes), and the page logged no errors.
// usage: node report_browser.mjs REPORT.html SCREENSHOT.png
import { chromium } from "playwright-core";
import fs from "node:fs";
import zlib from "node:zlib";

const [htmlPath, shotPath] = process.argv.slice(2);
const fail = (m) => { console.error("FAIL: " + m); process.exit(1); };

function decodePng(buf) {
  let pos = 8, width = 0, height = 0, colorType = 0;
  const idat = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos), type = buf.toString("ascii", pos + 4, pos + 8);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (type === "IHDR") { width = data.readUInt32BE(0); height = data.readUInt32BE(4); colorType = data[9];
      if (data[8] !== 8 || data[12] !== 0) fail("unsupported PNG"); }
    if (type === "IDAT") idat.push(data);
    pos += 12 + len;
  }
  const bpp = colorType === 6 ? 4 : colorType === 2 ? 3 : fail("unsupported PNG colour type");
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * bpp, out = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)], src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? out[y * stride + x - bpp] : 0, b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= bpp && y > 0 ? out[(y - 1) * stride + x - bpp] : 0;
      let v = src[x];
      if (f === 1) v += a; else if (f === 2) v += b; else if (f === 3) v += (a + b) >> 1;
      else if (f === 4) { const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c; }
      out[y * stride + x] = v & 255;
    }
  }
  return { width, height, bpp, px: (x, y) => { const i = (Math.round(y) * width + Math.round(x)) * bpp; return [out[i], out[i + 1], out[i + 2]]; } };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
const errors = [];
page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
page.on("pageerror", (e) => errors.push(String(e)));
page.on("requestfailed", (r) => errors.push("request " + r.url()));
await page.goto("file://" + fs.realpathSync(htmlPath));
const series = await page.$$eval("polyline.series", (els) => els.map((e) => {
  const ctm = e.getScreenCTM();
  const pts = e.getAttribute("points").trim().split(/\s+/).map((p) => p.split(",").map(Number)).map(([x, y]) => {
    const p = e.ownerSVGElement.createSVGPoint(); p.x = x; p.y = y; const q = p.matrixTransform(ctm); return [q.x, q.y];
  });
  return { name: e.dataset.series, color: e.dataset.color, pts };
}));
const png = await page.screenshot({ path: shotPath, fullPage: true });
await browser.close();
if (series.length < 2) fail(`expected at least two series, found ${series.length}`);
const img = decodePng(png);
const hex = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
// the distance from point p to the polyline pts, in pixels
const distTo = (p, pts) => {
  if (pts.length === 1) return Math.hypot(p[0] - pts[0][0], p[1] - pts[0][1]);
  let best = Infinity;
  for (let i = 0; i + 1 < pts.length; i++) {
    const [a, b] = [pts[i], pts[i + 1]], dx = b[0] - a[0], dy = b[1] - a[1], len2 = dx * dx + dy * dy;
    const t = len2 > 0 ? Math.max(0, Math.min(1, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2)) : 0;
    best = Math.min(best, Math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy));
  }
  return best;
};
let checked = 0;
for (const [k, s] of series.entries()) {
  const want = hex(s.color);
  // sample along every segment (and at every point): the series colour must be there
  const samples = [];
  for (let i = 0; i < s.pts.length; i++) {
    samples.push(s.pts[i]);
    if (i + 1 < s.pts.length) for (const t of [0.25, 0.5, 0.75])
      samples.push([s.pts[i][0] + t * (s.pts[i + 1][0] - s.pts[i][0]), s.pts[i][1] + t * (s.pts[i + 1][1] - s.pts[i][1])]);
  }
  // Lines of similar speed may cross or overlap: a sample where a series drawn later passes within
  // 3 pixels counts as covered, not missing. A third of the samples must show the colour or be
  // covered, and at least two show it unless every sample is covered; an undrawn series shows it
  // nowhere and is covered nowhere.
  let hits = 0, covered = 0;
  for (const [x, y] of samples) {
    const c = img.px(x, y);
    if (Math.hypot(c[0] - want[0], c[1] - want[1], c[2] - want[2]) < 60) hits++;
    else if (series.slice(k + 1).some((o) => distTo([x, y], o.pts) < 3)) covered++;
  }
  const seen = hits + covered >= Math.max(2, samples.length / 3) && (hits >= 2 || covered === samples.length);
  if (!seen) fail(`series '${s.name}' (${s.color}): colour found at ${hits} of ${samples.length} points (${covered} covered by later series)`);
  checked++;
}
if (errors.length) fail("console errors: " + errors.join("; "));
console.log(`report-browser: ${checked} passed, 0 failed`);
