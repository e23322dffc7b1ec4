/**
 * GPT-2 forward+backward throughput: tokens/s and achieved GFLOP/s for `tiny`
 * and `gpt2` (124M) at B=4, T=64 on whatever adapter runs it.
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
import { type BenchCase, type BenchRow, median } from "./_harness.ts";

/** `deno task bench model [--models tiny,gpt2] [--B 4] [--T 64] [--steps 3]` */
export const modelBench: BenchCase = {
  name: "model",
  args: "--models tiny,gpt2 --B 4 --T 64 --steps 3",
  description: "GPT-2 forward+backward tokens/s and GFLOP/s (tiny, gpt2 124M) at B=4, T=64",
  async run({ args, quick, log }) {
    const rt = await createRuntime();
    const B = Number(args.B ?? 4), T = Number(args.T ?? 64);
    const steps = Number(args.steps ?? (quick ? 1 : 3));
    const names = (args.models ?? (quick ? "tiny" : "tiny,gpt2")).split(",");
    const rows: BenchRow[] = [];
    for (const name of names) {
      const cfg = resolveConfig(name, name === "tiny" ? { nCtx: Math.max(T, 16) } : {});
      log(`model ${name}: building B=${B} T=${T}`);
      const t0 = performance.now();
      const model = await GPT2.create(rt, cfg, { B, T, seed: 1 });
      const setupMs = performance.now() - t0;
      try {
        const u = mulberry32(7);
        const tok = () => Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
        const tokens = tok(), targets = tok();
        log(`model ${name}: warm-up step`);
        await model.forwardBackward(tokens, targets);
        const times: number[] = [];
        let loss = 0;
        for (let s = 0; s < steps; s++) {
          const t1 = performance.now();
          loss = await model.forwardBackward(tokens, targets);
          times.push(performance.now() - t1);
          log(
            `model ${name}: step ${s + 1}/${steps} ${times[s].toFixed(0)} ms, loss ${
              loss.toFixed(3)
            }`,
          );
        }
        if (rt.profiler) {
          log(`model ${name}: per-kernel GPU time (DEBUG=3)\n${rt.profiler.format()}`);
        }
        const ms = median(times);
        const N = parameterCount(cfg) - cfg.nCtx * cfg.nEmbd;
        const flopsPerToken = 6 * N + 12 * cfg.nLayer * cfg.nEmbd * T;
        const tokensPerS = (B * T) / (ms / 1000);
        rows.push({
          model: name,
          params_M: +(parameterCount(cfg) / 1e6).toFixed(2),
          B,
          T,
          step_ms: ms,
          tokens_per_s: tokensPerS,
          gflops: (flopsPerToken * tokensPerS) / 1e9,
          setup_s: setupMs / 1000,
          dispatches: model.dispatchCount,
          peak_memory: formatBytes(rt.arena.report().peak.total),
          loss,
          adapter: rt.gpu.name,
        });
      } finally {
        model.destroy();
      }
    }
    return rows;
  },
};
