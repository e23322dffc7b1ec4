/**
 * Optimizer step time per million parameters and bytes of state per
 * parameter, for fp32 AdamW, 8-bit and 4-bit AdamW, on GPT-2-shaped tensors.
 *
 * @module
 */

import { freeDispatches, runDispatches } from "../src/gpu/dispatch.ts";
import { castToHalf } from "../src/model/ops/cast.ts";
import { createRuntime } from "../src/gpu/runtime.ts";
import { parameterCount, resolveConfig } from "../src/model/config.ts";
import { parameterLayout } from "../src/model/params.ts";
import { AdamW } from "../src/optim/adamw.ts";
import { LowBitAdamW } from "../src/optim/lowbit.ts";
import { GradNorm } from "../src/train/grad_norm.ts";
import { type BenchCase, type BenchRow, median } from "./_harness.ts";

/** `deno task bench optim [--model gpt2-mini] [--steps 3]` */
export const optimBench: BenchCase = {
  name: "optim",
  args: "--model gpt2 --steps 3",
  description: "AdamW fp32 / 8-bit / 4-bit: step ms per million parameters, state bytes/param",
  async run({ args, quick, log }) {
    const rt = await createRuntime();
    const name = args.model ?? (quick ? "gpt2-mini" : "gpt2");
    const cfg = resolveConfig(name);
    const layout = parameterLayout(cfg);
    const n = layout.totalElements;
    const steps = Number(args.steps ?? (quick ? 2 : 3));
    const params = rt.arena.alloc("bench.params", "parameters", n * 4);
    const grads = rt.arena.alloc("bench.grads", "gradients", n * 4);
    const rows: BenchRow[] = [];
    try {
      // Small random gradients, written in slices (one JS array of n floats can be large).
      const slice = 1 << 22;
      for (let o = 0; o < n; o += slice) {
        const m = Math.min(slice, n - o);
        rt.device.queue.writeBuffer(
          grads,
          o * 4,
          Float32Array.from({ length: m }, (_, i) => ((i * 7919) % 1000 - 500) * 1e-6),
        );
      }
      const P = parameterCount(cfg);
      for (const kind of ["adamw", "adamw8bit", "adamw4bit"] as const) {
        log(`optim ${kind} on ${name} (${(P / 1e6).toFixed(1)}M parameters)`);
        const opt: AdamW | LowBitAdamW = kind === "adamw"
          ? await AdamW.create(rt, layout, { params, grads })
          : await LowBitAdamW.create(rt, layout, { params, grads }, {
            bits: kind === "adamw8bit" ? 8 : 4,
          });
        // The gradient norm and clip, the training step's part, timed with the update.
        const norm = await GradNorm.create(rt, layout, grads, opt.gradStats);
        norm.setStep({ gradClip: 1 });
        const all = [...norm.dispatches, ...opt.dispatches];
        try {
          opt.setStep(1, 1e-4);
          await runDispatches(rt.device, all); // warm-up
          const times: number[] = [];
          for (let s = 0; s < steps; s++) {
            opt.setStep(s + 2, 1e-4);
            const t0 = performance.now();
            await runDispatches(rt.device, all);
            times.push(performance.now() - t0);
          }
          const ms = median(times);
          rows.push({
            optimizer: kind,
            model: name,
            params_M: +(P / 1e6).toFixed(2),
            step_ms: ms,
            ms_per_M_params: ms / (P / 1e6),
            state_MiB: +(opt.stateBytes / 2 ** 20).toFixed(1),
            bytes_per_param: +(opt.stateBytes / P).toFixed(3),
            adapter: rt.gpu.name,
          });
        } finally {
          norm.destroy();
          opt.destroy();
        }
      }
      // Mixed precision: AdamW then the f16 cast pass, against the update that writes the f16
      // copy itself, alternating in one run.
      if (rt.gpu.features.shaderF16) {
        const half = rt.arena.alloc("bench.params.f16", "parameters", n * 2, undefined, "f16");
        const cast = await castToHalf(rt, n, { src: params, dst: half });
        const unfused = await AdamW.create(rt, layout, { params, grads });
        const fused = await AdamW.create(rt, layout, { params, grads, half });
        try {
          const runs = { unfused: [] as number[], fused: [] as number[] };
          for (let s = 0; s <= steps; s++) {
            for (
              const [label, opt, extra] of [
                ["unfused", unfused, cast],
                ["fused", fused, []],
              ] as const
            ) {
              opt.setStep(s + 1, 1e-4);
              const t0 = performance.now();
              await runDispatches(rt.device, [...opt.dispatches, ...extra]);
              if (s > 0) runs[label].push(performance.now() - t0); // step 0 warms up
            }
          }
          for (const label of ["unfused", "fused"] as const) {
            rows.push({
              optimizer: `adamw + f16 copy, ${label}`,
              model: name,
              params_M: +(P / 1e6).toFixed(2),
              step_ms: median(runs[label]),
              ms_per_M_params: median(runs[label]) / (P / 1e6),
              state_MiB: +(fused.stateBytes / 2 ** 20).toFixed(1),
              bytes_per_param: +(fused.stateBytes / P).toFixed(3),
              adapter: rt.gpu.name,
            });
          }
          log(
            `f16 copy: fused ${median(runs.fused).toFixed(0)} ms against ` +
              `${median(runs.unfused).toFixed(0)} ms (AdamW + cast pass)`,
          );
        } finally {
          freeDispatches(rt.arena, cast);
          unfused.destroy();
          fused.destroy();
          rt.arena.free(half);
        }
      }
    } finally {
      rt.arena.free(params);
      rt.arena.free(grads);
    }
    return rows;
  },
};
