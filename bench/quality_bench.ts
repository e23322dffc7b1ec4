/**
 * What the memory modes cost in quality: the same small model trained the same way (data,
 * seed, schedule) in each mode, its final training loss (mean of the last 20 steps) and
 * validation loss against fp32 AdamW's. The target for every mode is within 1%.
 *
 * `deno task bench quality` (4 layers, 256 wide, T=256, 300 steps on
 * ../shared/data/tinyshakespeare.txt; `--steps`, `--layers`, `--width`, `--seq`, `--batch`,
 * `--modes` and `--data` change it; `--quick`: 40 steps of a 2-layer, 128-wide model).
 *
 * @module
 */

import { MEMORY_MODES } from "../src/train/memory_plan.ts";
import type { TrainSettings } from "../src/train/resolve.ts";
import { train } from "../src/train/trainer.ts";
import { createRuntime } from "../src/gpu/runtime.ts";
import type { BenchCase, BenchRow } from "./_harness.ts";

const SHAKESPEARE = new URL("../../shared/data/tinyshakespeare.txt", import.meta.url).pathname;

/** The modes compared: the reference, then each new 16-bit setting on its own and combined. */
const MODES: Record<string, TrainSettings> = {
  "fp32": { precision: "fp32", optimizer: "adamw" },
  "fp16": { precision: "fp16", optimizer: "adamw" },
  "grads16": { precision: "fp16", optimizer: "adamw", gradDtype: "f16" },
  "weights16": { precision: "fp16", optimizer: "adamw", gradDtype: "f16", weightDtype: "f16" },
  "lean-4bit": { ...MEMORY_MODES["lean-4bit"], recompute: "none" },
  "lean": { ...MEMORY_MODES.lean, recompute: "none" },
};

export const qualityBench: BenchCase = {
  name: "quality",
  args: `--steps 300 --layers 4 --width 256 --seq 256 --batch 4 --modes ${
    Object.keys(MODES).join(",")
  } --reference fp32|none --data FILE`,
  description: "final loss of a small model in each memory mode against fp32 AdamW's",
  async run({ args, quick, log }) {
    const steps = Number(args.steps ?? (quick ? 40 : 300));
    const width = Number(args.width ?? (quick ? 128 : 256));
    const layers = Number(args.layers ?? (quick ? 2 : 4));
    const T = Number(args.seq ?? (quick ? 64 : 256)), B = Number(args.batch ?? 4);
    const modes = (args.modes ?? Object.keys(MODES).join(",")).split(",");
    for (const m of modes) {
      if (!MODES[m]) throw new RangeError(`--modes ${m}: one of ${Object.keys(MODES).join(", ")}`);
    }
    // The reference comes first (`--reference none` leaves it out: it is deterministic, so a
    // mode run later compares with an earlier run's fp32 row).
    if (modes[0] !== "fp32" && args.reference !== "none") modes.unshift("fp32");
    const data = args.data ?? SHAKESPEARE;
    await Deno.stat(data).catch(() => {
      throw new Error(`${data} is missing: give a text file with --data`);
    });
    const rt = await createRuntime();
    const dir = await Deno.makeTempDir({ prefix: "quality-" });
    const rows: BenchRow[] = [];
    try {
      for (const mode of modes) {
        log(`quality: ${mode} (${steps} steps)`);
        const t0 = performance.now();
        const r = await train(rt, {
          modelName: "quality",
          model: { nLayer: layers, nHead: width / 64, nEmbd: width, nCtx: T, vocabSize: 50257 },
          data,
          out: `${dir}/${mode}`,
          cacheDir: `${dir}/cache`,
          batch: B,
          seq: T,
          totalBatch: B * T,
          steps,
          lr: 1e-3,
          minLr: 1e-4,
          warmup: Math.round(steps / 10),
          seed: 1337,
          valEvery: steps,
          valBatches: 16,
          sampleTokens: 0,
          saveEvery: 0,
          keep: 1,
          ...MODES[mode],
        }, {
          logger: { log: () => {} },
          onStep: (s) => {
            if (s.step % 50 === 0) {
              log(`quality: ${mode} step ${s.step}, loss ${s.loss.toFixed(3)}`);
            }
          },
        });
        const tail = r.losses.slice(-20);
        const final = tail.reduce((a, b) => a + b, 0) / tail.length;
        const ref = rows.find((r) => r.mode === "fp32") as
          | { final_loss: number; val_loss: number }
          | undefined;
        rows.push({
          mode,
          final_loss: final,
          val_loss: r.valLoss ?? NaN,
          vs_fp32_pct: ref ? +((100 * (final - ref.final_loss)) / ref.final_loss).toFixed(3) : 0,
          val_vs_fp32_pct: ref
            ? +((100 * ((r.valLoss ?? NaN) - ref.val_loss)) / ref.val_loss).toFixed(3)
            : 0,
          seconds: +((performance.now() - t0) / 1000).toFixed(0),
        });
        log(`quality: ${JSON.stringify(rows[rows.length - 1])}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    return rows;
  },
};
