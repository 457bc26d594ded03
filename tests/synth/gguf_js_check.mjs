// Parses a GGUF file with the npm package @huggingface/gguf (another GGUF implementation) and
// checks it against the tensor table and metadata that `bigmoe info --json` reports.
// usage: node gguf_js_check.mjs FILE INFO.json
import { gguf } from "@huggingface/gguf";
import fs from "node:fs";

const [file, infoPath] = process.argv.slice(2);
const info = JSON.parse(fs.readFileSync(infoPath, "utf8"));
const { metadata, tensorInfos } = await gguf(file, { allowLocalFile: true });
const fail = (m) => { console.error("FAIL: " + m); process.exit(1); };
if (metadata["general.architecture"] !== info.architecture) fail("architecture " + metadata["general.architecture"]);
if (tensorInfos.length !== info.tensors.length) fail(`tensor count ${tensorInfos.length} vs ${info.tensors.length}`);
const byName = new Map(info.tensors.map((t) => [t.name, t]));
for (const t of tensorInfos) {
  const ours = byName.get(t.name);
  if (!ours) fail("unknown tensor " + t.name);
  const shape = t.shape.map(Number);
  if (JSON.stringify(shape) !== JSON.stringify(ours.shape)) fail(`${t.name} shape ${shape} vs ${ours.shape}`);
}
const n_layer = metadata[`${info.architecture}.block_count`];
if (Number(n_layer) !== info.hparams.n_layer_all) fail("block_count " + n_layer);
console.log(`ok: ${tensorInfos.length} tensors, ${Object.keys(metadata).length} metadata keys parsed by @huggingface/gguf`);
