/**
 * Time to save a checkpoint: reading the weights and the optimizer state back from the GPU,
 * encoding them as safetensors, and writing the directory (temp name, then rename; SHA-256
 * of each file hashed while it is written); and to load it again (read, checksums, NaN/Inf
 * scan), as a resume does.
 *
 * @module
 */

import { createRuntime } from "../src/gpu/runtime.ts";
import { parameterCount, resolveConfig } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { encodeModel } from "../src/model/weights.ts";
import { loadCheckpoint, saveCheckpoint } from "../src/io/checkpoint.ts";
import { AdamW } from "../src/optim/adamw.ts";
import { type BenchCase, type BenchRow, median } from "./_harness.ts";

/** `deno task bench checkpoint [--model gpt2] [--reps 3]` */
export const checkpointBench: BenchCase = {
  name: "checkpoint",
  args: "--model gpt2 --reps 3",
  description:
    "save a checkpoint (weights + AdamW state): GPU readback ms, write ms, total; load ms (checked)",
  async run({ args, quick, log }) {
    const rt = await createRuntime();
    const name = args.model ?? (quick ? "gpt2-mini" : "gpt2");
    const cfg = resolveConfig(name);
    const reps = Number(args.reps ?? (quick ? 1 : 3));
    const model = await GPT2.create(rt, cfg, { B: 1, T: 64 });
    const opt = await AdamW.create(rt, model.layout, { params: model.params, grads: model.grads }, {
      beta1: 0.9,
      beta2: 0.95,
      eps: 1e-8,
      weightDecay: 0.1,
    });
    const dir = await Deno.makeTempDir({ prefix: "ckpt-bench-" });
    const read: number[] = [], write: number[] = [], load: number[] = [];
    try {
      for (let r = 0; r < reps; r++) {
        const t0 = performance.now();
        const weights = await encodeModel(model);
        const state = await opt.readState();
        const t1 = performance.now();
        const saved = await saveCheckpoint(dir, r + 1, {
          config: cfg,
          model: weights,
          optimizer: state,
        }, 1);
        const t2 = performance.now();
        await loadCheckpoint(saved);
        const t3 = performance.now();
        read.push(t1 - t0);
        write.push(t2 - t1);
        load.push(t3 - t2);
        log(
          `rep ${r + 1}: readback ${(t1 - t0).toFixed(0)} ms, write ${(t2 - t1).toFixed(0)} ms, ` +
            `load ${(t3 - t2).toFixed(0)} ms`,
        );
      }
    } finally {
      opt.destroy();
      model.destroy();
      await Deno.remove(dir, { recursive: true });
    }
    const rows: BenchRow[] = [{
      model: name,
      params: parameterCount(cfg),
      readback_ms: +median(read).toFixed(1),
      write_ms: +median(write).toFixed(1),
      total_ms: +(median(read) + median(write)).toFixed(1),
      load_ms: +median(load).toFixed(1),
    }];
    return rows;
  },
};
