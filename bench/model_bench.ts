/**
 * GPT-2 forward+backward throughput: tokens/s and achieved GFLOP/s for `tiny`
 * and `gpt2` (124M) at B=4, T=64 on whatever adapter runs it, in fp32 and (with
 * shader-f16) fp16 mixed precision, their steps interleaved so that the ratio
 * is measured side by side.
 *
 * FLOPs per token: 6·N + 12·L·C·T (nanoGPT's estimate_mfu; N = parameters
 * without wpe; attention counted as 12·L·C·T, i.e. without causal halving).
 *
 * @module
 */

import { createRuntime } from "../src/gpu/runtime.ts";
import { formatBytes } from "../src/gpu/arena.ts";
import { parameterCount, resolveConfig } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { mulberry32 } from "../src/model/init.ts";
import type { Precision } from "../src/model/plan.ts";
import { type BenchCase, type BenchRow, median } from "./_harness.ts";
import { type HostWaits, watchHostWaits } from "./_host_waits.ts";

/** `deno task bench model [--models tiny,gpt2] [--B 4] [--T 64] [--steps 3] [--precision fp32,fp16]` */
export const modelBench: BenchCase = {
  name: "model",
  args: "--models tiny,gpt2 --B 4 --T 64 --steps 3 --precision fp32,fp16",
  description:
    "GPT-2 forward+backward tokens/s and GFLOP/s (tiny, gpt2 124M) at B=4, T=64, fp32 and fp16",
  async run({ args, quick, log }) {
    const rt = await createRuntime();
    const B = Number(args.B ?? 4), T = Number(args.T ?? 64);
    const steps = Number(args.steps ?? (quick ? 1 : 3));
    const names = (args.models ?? (quick ? "tiny" : "tiny,gpt2")).split(",");
    const precisions = (args.precision ?? (rt.gpu.features.shaderF16 ? "fp32,fp16" : "fp32"))
      .split(",") as Precision[];
    const rows: BenchRow[] = [];
    for (const name of names) {
      const cfg = resolveConfig(name, name === "tiny" ? { nCtx: Math.max(T, 16) } : {});
      const runs = [];
      for (const precision of precisions) {
        log(`model ${name}: building B=${B} T=${T} ${precision}`);
        const t0 = performance.now();
        const model = await GPT2.create(rt, cfg, { B, T, seed: 1, precision });
        runs.push({
          precision,
          model,
          setupMs: performance.now() - t0,
          times: [] as number[],
          host: { submits: 0, readbacks: 0, waitMs: 0, submitMs: 0 } as HostWaits,
        });
      }
      try {
        const u = mulberry32(7);
        const tok = () => Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
        const tokens = tok(), targets = tok();
        const loss = new Map<string, number>();
        for (const r of runs) {
          log(`model ${name} ${r.precision}: warm-up step`);
          await r.model.forwardBackward(tokens, targets);
        }
        for (let s = 0; s < steps; s++) {
          for (const r of runs) { // interleaved: the same noise for every precision
            const watch = watchHostWaits(rt), t1 = performance.now();
            try {
              loss.set(r.precision, await r.model.forwardBackward(tokens, targets));
            } finally {
              watch.close();
            }
            r.times.push(performance.now() - t1);
            for (const k of ["submits", "readbacks", "waitMs", "submitMs"] as const) {
              r.host[k] += watch.totals[k];
            }
            log(
              `model ${name} ${r.precision}: step ${s + 1}/${steps} ${r.times[s].toFixed(0)} ms, ` +
                `loss ${loss.get(r.precision)!.toFixed(3)}`,
            );
          }
        }
        if (rt.profiler) {
          log(`model ${name}: per-kernel GPU time (DEBUG=3)\n${rt.profiler.format()}`);
        }
        const base = median(runs[0].times);
        for (const r of runs) {
          const ms = median(r.times);
          const N = parameterCount(cfg) - cfg.nCtx * cfg.nEmbd;
          const flopsPerToken = 6 * N + 12 * cfg.nLayer * cfg.nEmbd * T;
          const tokensPerS = (B * T) / (ms / 1000);
          rows.push({
            model: name,
            precision: r.model.precision,
            params_M: +(parameterCount(cfg) / 1e6).toFixed(2),
            B,
            T,
            step_ms: ms,
            [`speed_vs_${runs[0].precision}`]: +(base / ms).toFixed(3),
            tokens_per_s: tokensPerS,
            gflops: (flopsPerToken * tokensPerS) / 1e9,
            setup_s: r.setupMs / 1000,
            dispatches: r.model.dispatchCount,
            submits_per_step: r.host.submits / steps,
            readbacks_per_step: r.host.readbacks / steps,
            // The host's own time in a step: encoding, without the waits and the submits.
            host_ms: (r.times.reduce((a, b) => a + b, 0) - r.host.waitMs - r.host.submitMs) /
              steps,
            wait_ms: r.host.waitMs / steps,
            // Inside queue.submit: the GPU's time where the driver runs the work there.
            submit_ms: r.host.submitMs / steps,
            backend: rt.gpu.backend,
            loss: loss.get(r.precision)!,
            adapter: rt.gpu.name,
          });
        }
        rows.push({ model: name, peak_memory_all_runs: formatBytes(rt.arena.report().peak.total) });
      } finally {
        for (const r of runs) r.model.destroy();
      }
    }
    return rows;
  },
};
