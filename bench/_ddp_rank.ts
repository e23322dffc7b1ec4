/**
 * One rank of `deno task bench ddp`: `deno run -A bench/_ddp_rank.ts MODEL B T STEPS [GRADS]`
 * (GRADS f16: fp16 with 16-bit gradients), alone or under mpirun. Times optimizer steps of random batches through TrainStep (with the
 * data-parallel hook on several ranks) and prints one `ddp {...}` JSON line per rank.
 *
 * @module
 */

import { initDist } from "../src/parallel/dist.ts";
import { createRuntime } from "../src/gpu/runtime.ts";
import { resolveConfig } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { createOptimizer } from "../src/optim/registry.ts";
import { ADAMW_DEFAULTS } from "../src/optim/adamw.ts";
import { dataParallel } from "../src/train/data_parallel.ts";
import { TrainStep } from "../src/train/step.ts";

const [name = "tiny", b = "4", t = "64", n = "5", grads = "f32"] = Deno.args;
const cfg = resolveConfig(name);
const [B, T, steps] = [Number(b), Math.min(Number(t), cfg.nCtx), Number(n)];
const dist = await initDist();
const rt = await createRuntime();
const half = grads === "f16";
const model = await GPT2.create(rt, cfg, {
  B,
  T,
  dloss: 1 / (B * T * dist.size),
  ...(half ? { precision: "fp16", gradDtype: "f16" } as const : {}),
});
const w = model.weights;
const opt = await createOptimizer("adamw", rt, model.layout, {
  params: w.paramParts,
  grads: w.gradParts,
  half: w.halfParts,
}, ADAMW_DEFAULTS);
const dp = dist.size > 1 ? dataParallel(dist, model) : undefined;
const step = new TrainStep(rt, model, opt, { accum: 1, hooks: dp?.hooks });
const tokens = Array.from({ length: B * T }, (_, i) => (i * 7919 + dist.rank) % cfg.vocabSize);
const batch = { inputs: tokens, targets: tokens.map((x) => (x + 1) % cfg.vocabSize) };
await step.run(1e-4, () => batch); // warm-up: pipelines, first maps
const t0 = { ...(dp?.times ?? { readback: 0, allReduce: 0, upload: 0, exposed: 0, steps: 0 }) };
const start = performance.now();
for (let s = 0; s < steps; s++) await step.run(1e-4, () => batch);
const ms = (performance.now() - start) / steps;
const per = (k: "readback" | "allReduce" | "upload" | "exposed") =>
  dp ? +((dp.times[k] - t0[k]) / steps).toFixed(1) : 0;
console.log(`ddp ${
  JSON.stringify({
    rank: dist.rank,
    ranks: dist.size,
    ms_per_step: +ms.toFixed(1),
    seq: T,
    tokens_per_s: +((B * T * dist.size * 1000) / ms).toFixed(0),
    readback_ms: per("readback"),
    allreduce_ms: per("allReduce"),
    upload_ms: per("upload"),
    exposed_ms: per("exposed"),
    grads: w.gradDtype,
    // What each rank sends per step (src/train/data_parallel.ts): an f32 ring all-reduce
    // 2(N-1)/N x 4 bytes a gradient, an f16 all-gather (up to 3 ranks) (N-1) x 2.
    sent_mb: +(
      (dist.size < 2
        ? 0
        : w.gradDtype === "f16" && dist.size <= 3
        ? (dist.size - 1) * 2
        : (2 * (dist.size - 1) / dist.size) * 4) * model.layout.totalElements / 2 ** 20
    ).toFixed(1),
    grad_mb: +((model.layout.totalElements * (w.gradDtype === "f16" ? 2 : 4)) / 2 ** 20).toFixed(1),
  })
}`);
step.destroy();
dp?.destroy();
opt.destroy();
model.destroy();
