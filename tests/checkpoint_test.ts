/**
 * checksums.json and the non-finite check, without a GPU: the format is versioned, an older
 * checkpoint without checksums is read with a notice, a damaged checksums file is an error,
 * and NaN or Infinity is found in F32, F16 and BF16 tensors.
 */
import { deepEqual, equal, match, rejects, throws } from "node:assert/strict";
import { loadCheckpoint, saveCheckpoint } from "../src/io/checkpoint.ts";
import {
  checkFinite,
  encodeSafetensors,
  nonFinite,
  parseSafetensors,
} from "../src/io/safetensors.ts";
import { constantWeights } from "./_harness.ts";
import type { GPT2Config } from "../src/model/config.ts";

const CFG: GPT2Config = { nLayer: 1, nHead: 2, nEmbd: 16, nCtx: 16, vocabSize: 101 };

Deno.test("checksums.json: written with every file, versioned, checked when read", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ck = await saveCheckpoint(dir, 3, {
      config: CFG,
      model: constantWeights(CFG, 0.5),
      optimizer: [{ name: "m.wte.weight", shape: [2], data: new Float32Array(2) }],
      trainer: { step: 3, optimizer_steps: 3 },
    });
    const sums = JSON.parse(await Deno.readTextFile(`${ck}/checksums.json`));
    equal(sums.format, "webgpu-gpt2-checksums");
    equal(sums.version, 1);
    deepEqual(Object.keys(sums.files).sort(), [
      "config.json",
      "model.safetensors",
      "optimizer.safetensors",
      "trainer_state.json",
    ]);
    const st = JSON.parse(await Deno.readTextFile(`${ck}/trainer_state.json`));
    equal(st.checksums, "checksums.json");
    deepEqual((await loadCheckpoint(ck)).notices, []);

    // A newer version is refused with the fix; a damaged file names itself.
    await Deno.writeTextFile(`${ck}/checksums.json`, JSON.stringify({ ...sums, version: 2 }));
    await rejects(
      () => loadCheckpoint(ck),
      /checksums\.json has version 2; this package reads up to 1: upgrade it/,
    );
    await Deno.writeTextFile(`${ck}/checksums.json`, "{ not json");
    await rejects(
      () => loadCheckpoint(ck),
      /Invalid .*checksums\.json: .*; the checkpoint is damaged/,
    );

    // Without it, a checkpoint whose trainer state says it had one is incomplete...
    await Deno.remove(`${ck}/checksums.json`);
    await rejects(
      () => loadCheckpoint(ck),
      /checksums\.json is missing but trainer_state\.json says the checkpoint was saved with one: the checkpoint is incomplete; use an older checkpoint/,
    );
    // ... its weights alone still load (with a notice), and an older version's loads whole.
    match(
      (await loadCheckpoint(ck, { weightsOnly: true })).notices![0],
      /has no checksums\.json \(saved by an older version\): damage to its files cannot be detected/,
    );
    const { checksums: _, ...older } = st;
    await Deno.writeTextFile(`${ck}/trainer_state.json`, JSON.stringify(older));
    equal((await loadCheckpoint(ck)).notices!.length, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("NaN and Infinity are found in F32, F16 and BF16 tensors, and placed", () => {
  const data = new Float32Array(12).fill(1);
  data[7] = -Infinity;
  data[9] = NaN;
  for (const dtype of ["F32", "F16", "BF16"] as const) {
    const file = parseSafetensors(
      encodeSafetensors([
        { name: "ok", shape: [2], data: new Float32Array(2) },
        { name: "x", shape: [3, 4], data },
        { name: "raw", shape: [4], data: new Uint8Array(4).fill(0xff) }, // not floats: skipped
      ], { dtype }),
      `m.${dtype}`,
    );
    equal(nonFinite(file, "ok"), undefined);
    equal(nonFinite(file, "raw"), undefined);
    deepEqual(nonFinite(file, "x"), { count: 2, first: 7, value: "-Infinity" });
    const size = dtype === "F32" ? 4 : 2;
    const byte = file.dataOffset! + file.tensors.get("x")!.data_offsets[0] + 7 * size;
    throws(
      () => checkFinite(file, "fix it"),
      new RegExp(
        `^Error: m\\.${dtype}: tensor "x" holds -Infinity at element 7 \\(\\[1, 3\\], byte ${byte}\\), 2 non-finite value\\(s\\) in all: fix it$`,
      ),
    );
  }
});
