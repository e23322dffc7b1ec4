/**
 * llm.c model files and Hugging Face export: a random model written in each
 * format, converted both ways, gives the same loss; bad headers are clear
 * errors; the tokenizer files reproduce our BPE.
 */
import { deepEqual, equal, match, ok, rejects, throws } from "node:assert/strict";
import { main as exportMain } from "../tasks/export.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { exportTensors, loadTensors } from "../src/model/weights.ts";
import { loadCheckpoint, saveCheckpoint } from "../src/io/checkpoint.ts";
import { decodeLlmc, encodeLlmc, LLMC_MAGIC } from "../src/io/llmc.ts";
import { encodeSafetensors, readSafetensors, tensorF32 } from "../src/io/safetensors.ts";
import { gpt2TokenizerFiles } from "../src/io/hf_tokenizer.ts";
import { encodeOrdinary } from "../src/data/tokenizer.ts";
import type { GPT2Config } from "../src/model/config.ts";
import type { Runtime } from "../src/gpu/runtime.ts";
import { constantWeights, gpuTest, randomiseWeights, runTask } from "./_harness.ts";

const CFG: GPT2Config = { nLayer: 2, nHead: 2, nEmbd: 32, nCtx: 16, vocabSize: 50257 };
const B = 2, T = 16;
const tokens = Array.from({ length: B * T + 1 }, (_, i) => (i * 7919) % 50257);

/** The loss of the weights at `path` (a checkpoint dir or an llm.c .bin) on `tokens`. */
async function lossOf(rt: Runtime, path: string): Promise<number> {
  const ck = await loadCheckpoint(path);
  const m = await GPT2.create(rt, ck.config, { B, T, seed: null, inference: true });
  try {
    loadTensors(ck.model, m);
    return await m.forward(tokens.slice(0, B * T), tokens.slice(1));
  } finally {
    m.destroy();
  }
}

gpuTest("llm.c .bin (fp32, bf16) and HF export: same loss both ways", async (rt) => {
  const dir = await Deno.makeTempDir();
  try {
    const m = await GPT2.create(rt, CFG, { B, T, seed: 1, inference: true });
    randomiseWeights(m, 5);
    const ref = await m.forward(tokens.slice(0, B * T), tokens.slice(1));
    const tensors = await exportTensors(m);
    const ours = await saveCheckpoint(`${dir}/ck`, 1, {
      config: CFG,
      model: encodeSafetensors(tensors),
    });
    m.destroy();

    // Ours -> llm.c fp32 -> HF fp32: every tensor bit for bit, the same loss.
    await exportMain([ours, "--llmc", `${dir}/m3.bin`]);
    equal(await lossOf(rt, `${dir}/m3.bin`), ref);
    await exportMain([`${dir}/m3.bin`, "--hf", `${dir}/hf32`]);
    const back = await readSafetensors(`${dir}/hf32/model.safetensors`);
    for (const t of tensors) deepEqual(tensorF32(back, t.name), t.data, t.name);
    equal(await lossOf(rt, `${dir}/hf32`), ref);

    // bf16: llm.c v5 and HF bf16 round alike, so their losses agree exactly, near fp32's.
    await exportMain([ours, "--llmc", `${dir}/m5.bin`, "--dtype", "bf16"]);
    equal(decodeLlmc(await Deno.readFile(`${dir}/m5.bin`), "m5").version, 5);
    await exportMain([ours, "--hf", `${dir}/hf16`, "--dtype", "bf16"]);
    const l5 = await lossOf(rt, `${dir}/m5.bin`);
    equal(await lossOf(rt, `${dir}/hf16`), l5);
    ok(Math.abs(l5 - ref) < 0.02 * ref, `bf16 ${l5} vs fp32 ${ref}`);
    // ... and bf16 llm.c -> HF bf16 keeps the same values.
    await exportMain([`${dir}/m5.bin`, "--hf", `${dir}/hf16b`, "--dtype", "bf16"]);
    equal(await lossOf(rt, `${dir}/hf16b`), l5);

    // The HF directory has what from_pretrained reads.
    for (
      const f of [
        "config.json",
        "generation_config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
      ]
    ) ok(await Deno.stat(`${dir}/hf16/${f}`), f);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/hf16/config.json`));
    equal(config.torch_dtype, "bfloat16");
    equal(config.n_embd, 32);
    await rejects(() => exportMain([ours, "--hf", `${dir}/hf16`]), /hf16 already exists/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("llm.c headers: wrong magic, version or size name the file and the field", () => {
  const t = (name: string) => {
    const n = name === "wte.weight" ? 50257 * 32 : name.startsWith("wpe") ? 16 * 32 : 0;
    return new Float32Array(n || sizeOf(name));
  };
  const good = encodeLlmc(CFG, t);
  const head = new Int32Array(good.buffer, 0, 8);
  equal(head[0], LLMC_MAGIC);
  deepEqual([...head.subarray(1)], [3, 16, 50257, 2, 2, 32, 50304]);
  equal(decodeLlmc(good, "ok.bin").tensors.length, 2 + 12 * 2 + 2);
  // llm.c's order and [out, in] matrices, checked on the raw floats: HF c_attn.weight[i=1, o=2]
  // of layer 0 is qkvw[0][2][1], after wte (Vp x C), wpe, ln1w and ln1b.
  const C = 32, qkv = new Float32Array(3 * C * C);
  qkv[1 * 3 * C + 2] = 5;
  const raw = new Float32Array(
    encodeLlmc(CFG, (n) => n === "h.0.attn.c_attn.weight" ? qkv : t(n)).buffer,
  );
  equal(raw[256 + 50304 * C + 16 * C + 2 * 2 * C + 2 * C + 1], 5);
  const bad = (edit: (h: Int32Array) => void, cut = 0) => {
    const b = good.slice(0, good.length - cut);
    edit(new Int32Array(b.buffer, 0, 8));
    return b;
  };
  throws(() => decodeLlmc(bad((h) => (h[0] = 7)), "x.bin"), /x\.bin: header int 0 \(magic\) is 7/);
  throws(
    () => decodeLlmc(bad((h) => (h[0] = 20240520)), "s.bin"),
    /magic\) is 20240520.*token shard: use it with --data/,
  );
  throws(() => decodeLlmc(bad((h) => (h[1] = 4)), "v.bin"), /header int 1 \(version\) is 4/);
  throws(() => decodeLlmc(bad(() => {}, 4), "t.bin"), /t\.bin: \d+ bytes, but the header .* needs/);
  throws(() => decodeLlmc(bad((h) => (h[7] = 100)), "p.bin"), /header int 7 \(padded vocab\)/);
  throws(() => decodeLlmc(new Uint8Array(10), "short.bin"), /short\.bin: 10 bytes is shorter/);
});

function sizeOf(name: string): number {
  const C = 32;
  if (name.endsWith("c_attn.weight")) return 3 * C * C;
  if (name.endsWith("c_attn.bias")) return 3 * C;
  if (name.endsWith("mlp.c_fc.weight") || name.endsWith("mlp.c_proj.weight")) return 4 * C * C;
  if (name.endsWith("mlp.c_fc.bias")) return 4 * C;
  if (name.endsWith("attn.c_proj.weight")) return C * C;
  return C;
}

Deno.test("vocab.json and merges.txt reproduce the GPT-2 tokenizer's ids", () => {
  const files = gpt2TokenizerFiles(1024);
  const vocab: Record<string, number> = JSON.parse(files["vocab.json"]);
  equal(Object.keys(vocab).length, 50257);
  equal(vocab["<|endoftext|>"], 50256);
  const merges = files["merges.txt"].trim().split("\n");
  equal(merges[0], "#version: 0.2");
  equal(merges.length, 50001);
  equal(merges[1], "Ġ t");
  // A plain BPE over merges.txt, as Hugging Face's tokenizer runs it.
  const rank = new Map(merges.slice(1).map((m, i) => [m, i]));
  const byteChar = (b: number) => byUnicode[b];
  const text = "Call me Ishmael. Some years ago—never mind how long precisely—having little money!";
  const words = text.match(/'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+/gu)!;
  const ids: number[] = [];
  for (const w of words) {
    let parts = [...new TextEncoder().encode(w)].map(byteChar);
    for (;;) {
      let best = -1, br = Infinity;
      for (let i = 0; i + 1 < parts.length; i++) {
        const r = rank.get(`${parts[i]} ${parts[i + 1]}`);
        if (r !== undefined && r < br) [best, br] = [i, r];
      }
      if (best < 0) break;
      parts = [...parts.slice(0, best), parts[best] + parts[best + 1], ...parts.slice(best + 2)];
    }
    for (const p of parts) ids.push(vocab[p]);
  }
  deepEqual(ids, encodeOrdinary(text));
  match(files["tokenizer_config.json"], /"model_max_length": 1024/);
});

/** GPT-2's bytes_to_unicode, written out independently of src/io/hf_tokenizer.ts. */
const byUnicode: string[] = (() => {
  const bs = [
    ...Array.from({ length: 0x7e - 0x21 + 1 }, (_, i) => 0x21 + i),
    ...Array.from({ length: 0xac - 0xa1 + 1 }, (_, i) => 0xa1 + i),
    ...Array.from({ length: 0xff - 0xae + 1 }, (_, i) => 0xae + i),
  ];
  const out: string[] = [];
  bs.forEach((b) => (out[b] = String.fromCodePoint(b)));
  let n = 0;
  for (let b = 0; b < 256; b++) if (!out[b]) out[b] = String.fromCodePoint(256 + n++);
  return out;
})();

Deno.test("export: Ctrl-C leaves nothing; a dead export's leftovers go, nothing else", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Big enough (about 200 MB) that the export is still writing when Ctrl-C comes.
    const cfg = { nLayer: 2, nHead: 4, nEmbd: 768, nCtx: 64, vocabSize: 50257 };
    const ck = await saveCheckpoint(`${dir}/run`, 1, { config: cfg, model: constantWeights(cfg) });
    const leftovers = async (name: string) =>
      (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).filter((n) =>
        n.startsWith(`${name}.`)
      );

    // Ctrl-C while the temporary output exists: it is removed, the exit code is 130.
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../tasks/export.ts", import.meta.url).pathname,
        ck,
        "--hf",
        `${dir}/hf`,
      ],
      stderr: "piped",
    }).spawn();
    const t0 = performance.now();
    while ((await leftovers("hf")).length === 0 && performance.now() - t0 < 60_000) {
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill("SIGINT");
    const out = await child.output();
    const stderr = new TextDecoder().decode(out.stderr);
    equal(out.code, 130, stderr);
    match(stderr, /export: interrupted; nothing was written to .*\/hf$/m);
    deepEqual(await leftovers("hf"), []);
    equal(await Deno.stat(`${dir}/hf`).then(() => true, () => false), false);

    // What an export that died left (its process is gone), what an older version left, what
    // an export on another machine may be writing, and the user's own files of similar names.
    const gone = new Deno.Command("true").spawn();
    await gone.status;
    const host = Deno.hostname().replace(/[^A-Za-z0-9.-]/g, "_");
    const dead = `${dir}/hf.tmp-${host}-${gone.pid}-0123abcd`;
    await Deno.mkdir(dead);
    await Deno.writeTextFile(`${dead}/config.json`, "{}");
    const kept = [
      "hf.tmp-89abcdef",
      "hf.tmp-elsewhere.example-12-0123abcd",
      "hf.tmp-notes.txt",
      "hf.tmp-0123abcd.bak",
      "hfx.tmp-0123abcd",
    ];
    for (const name of kept) await Deno.writeTextFile(`${dir}/${name}`, name);
    const r = await runTask(exportMain, [ck, "--llmc", `${dir}/m.bin`]);
    equal(r.code, 0, String(r.error)); // another output: hf's leftovers are not its business
    deepEqual(r.stderr, []);
    const again = await runTask(exportMain, [ck, "--hf", `${dir}/hf`, "--dtype", "bf16"]);
    equal(again.code, 0, String(again.error));
    deepEqual(
      again.stderr.sort(),
      [
        `export: ${dir}/hf.tmp-89abcdef may be left by an interrupted export: remove it if no ` +
        "export is running",
        `export: ${dir}/hf.tmp-elsewhere.example-12-0123abcd may be left by an interrupted export ` +
        "on elsewhere.example: remove it if no export is running",
        `export: removed ${dead}, left by an interrupted export (process ${gone.pid} is gone)`,
      ].sort(),
    );
    ok(await Deno.stat(`${dir}/hf/model.safetensors`));
    for (const name of kept) equal(await Deno.readTextFile(`${dir}/${name}`), name);
    equal(await Deno.stat(dead).then(() => true, () => false), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
