/**
 * The library's training surface: a partial config filled from the one table, a resume
 * that inherits the run's settings (what `deno task train --resume` does, without the CLI),
 * the typed per-step callback and the replaceable logger.
 *
 * @module
 */

import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { resolveTrainConfig, type StepRecord, train } from "../src/train/trainer.ts";
import { TRAIN_CONFIG } from "../src/train/config_table.ts";
import { gpuTest } from "./_harness.ts";
import { SMALL_MODEL, syntheticText } from "./_train_config.ts";

Deno.test("a partial config takes every other value from the table", async () => {
  const c = await resolveTrainConfig({ modelName: "gpt2-mini", steps: 10 });
  equal(c.steps, 10);
  equal(c.out, "runs/gpt2-mini");
  for (const [key, row] of Object.entries(TRAIN_CONFIG)) {
    if (["modelName", "model", "out", "steps", "totalBatch", "notices"].includes(key)) continue;
    deepEqual(c[key as keyof typeof c], row.default, key);
  }
  equal(c.totalBatch, c.batch * c.seq);
  equal((await resolveTrainConfig({}, { ranks: 2 })).totalBatch, 2 * c.batch * c.seq);
  equal((await resolveTrainConfig({ schedule: "constant" })).warmup, 0);
  deepEqual((await resolveTrainConfig({})).notices, []);
  await rejects(() => resolveTrainConfig({ modelName: "gpt5" }), /Unknown model "gpt5"/);
});

gpuTest(
  "train(): onStep gets each step's numbers; a resume inherits the run's settings",
  async (rt) => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(`${dir}/text.txt`, syntheticText(3000, 2));
      const lines: string[] = [];
      const records: StepRecord[] = [];
      const first = await train(rt, {
        modelName: "test",
        model: SMALL_MODEL,
        data: `${dir}/text.txt`,
        cacheDir: `${dir}/cache`,
        out: `${dir}/run`,
        batch: 2,
        seq: 16,
        steps: 2,
        lr: 2e-3,
        warmup: 1,
        valEvery: 0,
        sampleTokens: 0,
      }, { logger: { log: (l) => lines.push(l) }, onStep: (r) => records.push(r) });
      deepEqual(records.map((r) => r.step), [1, 2]);
      deepEqual(records.map((r) => r.loss), first.losses);
      for (const r of records) {
        equal(r.steps, 2);
        ok(r.lr > 0 && r.gradNorm > 0 && r.tokensPerS > 0 && r.flopsPerS > 0 && r.ms > 0);
      }
      ok(lines.some((l) => l.startsWith("done at step 2")));
      // Only what changes is given: the model, batch, lr and data come from the checkpoint.
      const more: string[] = [];
      const second = await train(rt, { out: `${dir}/run`, resume: "latest", steps: 3 }, {
        logger: { log: (l) => more.push(l) },
      });
      equal(second.lastStep, 3);
      ok(more.includes("resume: --steps 3 (was 2)"), more.join("\n"));
      const saved = JSON.parse(await Deno.readTextFile(`${dir}/run/run_config.json`));
      equal(saved.lr, 2e-3);
      equal(saved.seq, 16);
      equal(saved.modelName, "test");
      equal(saved.model.nLayer, SMALL_MODEL.nLayer);
      equal(saved.model.nEmbd, SMALL_MODEL.nEmbd);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
