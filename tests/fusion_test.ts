// Fused passes against the unfused ones they replace: AdamW writing the parameters' f16 copy
// as it updates them (mixed precision) against the separate cast pass.
import { deepEqual, equal, ok } from "node:assert/strict";
import { roundToF16 } from "../src/gpu/dtype.ts";
import { readF32, readValues } from "../src/gpu/runtime.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { AdamW } from "../src/optim/adamw.ts";
import { TrainStep } from "../src/train/step.ts";
import { LossScaler } from "../src/train/loss_scale.ts";
import { gpuTest } from "./_harness.ts";

// Tensors of 40 and 72 channels: ranges start at offsets that are not multiples of 128.
const CFG = { nLayer: 2, nHead: 2, nEmbd: 40, nCtx: 24, vocabSize: 101 };
const ADAM = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1 };

gpuTest("fused f16 copy: AdamW's update writes exactly f16(p) of every parameter", async (rt) => {
  if (!rt.gpu.features.shaderF16) return; // nothing to fuse without f16
  const model = await GPT2.create(rt, CFG, { B: 2, T: 24, precision: "fp16", seed: 5 });
  const half = model.weights.half!;
  const opt = await AdamW.create(rt, model.layout, {
    params: model.params,
    grads: model.grads,
    half,
  }, ADAM);
  try {
    ok(opt.writesHalf);
    const tokens = Array.from({ length: 48 }, (_, i) => (i * 13) % 101);
    const step = new TrainStep(rt, model, opt, { accum: 1 });
    for (let s = 0; s < 3; s++) {
      await step.run(1e-2, () => ({ inputs: tokens, targets: tokens.map((t) => (t + 1) % 101) }));
    }
    step.destroy();
    const n = model.layout.totalElements;
    const p = await readF32(rt.device, model.params, 0, n);
    const h = await readValues(rt.device, half, 0, n);
    const want = roundToF16(p);
    let bad = 0;
    for (let i = 0; i < n; i++) if (h[i] !== want[i]) bad++;
    equal(bad, 0, `${bad} of ${n} f16 elements differ from f16(p)`);
  } finally {
    opt.destroy();
    model.destroy();
  }
});

gpuTest("fused f16 copy: fp16 training gives the unfused path's losses bit for bit", async (rt) => {
  if (!rt.gpu.features.shaderF16) return;
  const run = async (fused: boolean) => {
    const model = await GPT2.create(rt, CFG, { B: 2, T: 24, precision: "fp16", seed: 9 });
    const bufs = { params: model.params, grads: model.grads };
    const opt = await AdamW.create(
      rt,
      model.layout,
      fused ? { ...bufs, half: model.weights.half } : bufs,
      ADAM,
    );
    // A loss scale of 2^30 overflows at first: skipped steps must leave the copy right too.
    const scaler = new LossScaler({ init: 2 ** 30, window: 2 });
    const step = new TrainStep(rt, model, opt, { accum: 2, scaler });
    const losses: number[] = [];
    let skipped = 0;
    for (let s = 0; s < 8; s++) {
      const tokens = Array.from({ length: 48 }, (_, i) => (i * 7 + s * 3) % 101);
      const r = await step.run(
        3e-3,
        () => ({ inputs: tokens, targets: tokens.map((t) => (t + 5) % 101) }),
      );
      losses.push(r.loss);
      if (r.overflow) skipped++;
    }
    const params = await readF32(rt.device, model.params);
    step.destroy();
    opt.destroy();
    model.destroy();
    return { losses, skipped, params, fusedFlag: opt.writesHalf };
  };
  const a = await run(true), b = await run(false);
  ok(a.fusedFlag && !b.fusedFlag);
  ok(a.skipped > 0, "no step overflowed: the skip path was not exercised");
  equal(a.skipped, b.skipped);
  deepEqual(a.losses, b.losses);
  deepEqual(a.params, b.params);
});
