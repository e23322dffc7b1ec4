/**
 * The task tables: `deno task sample`, `eval` and `export` read their flags through the same
 * table code as train, and the library's sampling defaults are the sample table's.
 *
 * @module
 */

import { deepEqual, equal, throws } from "node:assert/strict";
import { parseCheckpointArgs } from "../tasks/_cli.ts";
import { EVAL_CONFIG, SAMPLE_CONFIG } from "../src/eval/config.ts";
import { EXPORT_CONFIG } from "../src/io/export_config.ts";
import { tableDefaults } from "../src/table.ts";
import { sampleToken } from "../src/eval/generate.ts";
import { rng } from "./_harness.ts";

Deno.test("sample, eval and export: no flags give the table's defaults", () => {
  const sample = parseCheckpointArgs(["ck"], "sample", SAMPLE_CONFIG);
  if (sample === "help") throw new Error("unexpected help");
  equal(sample.dir, "ck");
  deepEqual(sample.config, tableDefaults(SAMPLE_CONFIG));
  const ev = parseCheckpointArgs(["ck"], "eval", EVAL_CONFIG);
  if (ev === "help") throw new Error("unexpected help");
  deepEqual(ev.config, tableDefaults(EVAL_CONFIG));
  const e = parseCheckpointArgs(["ck", "--hf", "out", "--dtype", "bf16"], "export", EXPORT_CONFIG);
  if (e === "help") throw new Error("unexpected help");
  deepEqual(e.config, { llmc: undefined, hf: "out", dtype: "bf16" });
  const s = parseCheckpointArgs(["ck", "--top-k", "5", "--stop-at-eot"], "sample", SAMPLE_CONFIG);
  if (s === "help") throw new Error("unexpected help");
  equal(s.config.topK, 5);
  equal(s.config.stopAtEot, true);
  equal(s.config.temperature, 0.8);
  throws(() => parseCheckpointArgs(["ck", "--seq", "0"], "eval", EVAL_CONFIG), /--seq must be/);
  throws(() => parseCheckpointArgs(["ck", "a", "b"], "eval", EVAL_CONFIG), /one CHECKPOINT_DIR/);
});

Deno.test("generate's defaults are deno task sample's: temperature 0.8, top-k 40", () => {
  equal(SAMPLE_CONFIG.temperature.default, 0.8);
  equal(SAMPLE_CONFIG.topK.default, 40);
  const u = rng(3);
  const logits = Float32Array.from({ length: 300 }, () => 4 * u());
  const explicit = { temperature: 0.8, topK: 40, topP: 1 };
  const a = rng(9), b = rng(9);
  for (let i = 0; i < 200; i++) {
    equal(sampleToken(logits, {}, a), sampleToken(logits, explicit, b));
  }
  // Only the 40 likeliest tokens are ever drawn.
  const top = Array.from(logits.keys()).sort((x, y) => logits[y] - logits[x]).slice(0, 40);
  const r = rng(5);
  for (let i = 0; i < 200; i++) equal(top.includes(sampleToken(logits, {}, r)), true);
});
