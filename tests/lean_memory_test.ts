/**
 * The memory modes: 16-bit gradients and 16-bit weights (no f32 copy on the GPU, stochastic
 * rounding in the optimizer). Their gradients and global norm against the f32 gradients of the
 * same weights, the rounding's statistics, a run in each mode against fp16 with f32 weights and
 * gradients, an exact resume, and the memory plan against the arena.
 */

import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readValues } from "../src/gpu/runtime.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { layoutOf, parameterLayout } from "../src/model/params.ts";
import { blockSpans, splitPoints, Weights } from "../src/model/weights.ts";
import { SplitBuffer } from "../src/gpu/split_buffer.ts";
import { createOptimizer } from "../src/optim/registry.ts";
import { AdamW } from "../src/optim/adamw.ts";
import { Adafactor } from "../src/optim/adafactor.ts";
import { LowBitAdamW } from "../src/optim/lowbit.ts";
import type { Optimizer } from "../src/optim/optimizer.ts";
import { GradNorm } from "../src/train/grad_norm.ts";
import { planMemory } from "../src/train/memory_plan.ts";
import type { TrainSettings } from "../src/train/resolve.ts";
import { train } from "../src/train/trainer.ts";
import { gpuTest, hasF16, rng, uploadAs } from "./_harness.ts";
import { syntheticText, testTrainConfig } from "./_train_config.ts";

const f16Test = (name: string, fn: Parameters<typeof gpuTest>[1]) =>
  gpuTest({ name, needs: "shader-f16" }, fn);

const CFG = { nLayer: 2, nHead: 2, nEmbd: 64, nCtx: 64, vocabSize: 503 };

/**
 * Runs `fn` with small training runs on synthetic text in a temporary directory: `config`
 * gives a run of an `nLayer`-layer model (batch 2 x 32 tokens, one micro-step a step) with
 * `base` and then `over` applied.
 */
async function withSmallRuns(
  nLayer: number,
  base: TrainSettings,
  fn: (
    config: (out: string, over?: TrainSettings) => TrainSettings,
    quiet: { logger: { log(line: string): void } },
  ) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/t.txt`, syntheticText(20000, 4, 7));
    await fn((out, over = {}) =>
      testTrainConfig(`${dir}/${out}`, `${dir}/t.txt`, {
        model: { nLayer, nHead: 2, nEmbd: 64, nCtx: 32, vocabSize: 50257 },
        seq: 32,
        batch: 2,
        totalBatch: 64,
        lr: 3e-3,
        cacheDir: `${dir}/cache`,
        ...base,
        ...over,
      }), { logger: { log: () => {} } });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

f16Test(
  "16-bit gradients match f32 ones, and their global norm (the clip factor) to 1e-3, also " +
    "accumulated over micro-steps",
  async (rt) => {
    const B = 2, T = 64, scale = 1024;
    const models = await Promise.all(
      (["f32", "f16"] as const).map((gradDtype) =>
        GPT2.create(rt, CFG, { B, T, seed: 3, precision: "fp16", gradDtype })
      ),
    );
    const stats = models.map(() => uploadAs(rt, "grad_stats", new Float32Array(8)));
    const norms = await Promise.all(
      models.map((m, i) => GradNorm.create(rt, m.layout, m.grads, stats[i])),
    );
    try {
      equal(models[1].weights.gradDtype, "f16");
      const u = rng(5);
      // Batches 0-3 on their own, 4-7 accumulated into one gradient (f32 sums, f16 stores).
      for (let batch = 0; batch < 8; batch++) {
        const tokens = Array.from({ length: B * T }, () => Math.floor(u() * CFG.vocabSize));
        const targets = tokens.map((t) => (t * 7 + 3) % CFG.vocabSize);
        const got: number[] = [];
        for (const [i, m] of models.entries()) {
          m.setLossScale(scale);
          await m.forwardBackward(tokens, targets, { accumulate: batch > 4 });
          norms[i].setStep({ gradClip: 1, lossScale: scale });
          await runDispatches(rt.device, norms[i].normDispatches);
          got.push((await readValues(rt.device, norms[i].stats, 0, 2))[1]);
        }
        const rel = Math.abs(got[1] - got[0]) / got[0];
        ok(
          rel < 1e-3,
          `batch ${batch}: norm ${got[1]} with f16 gradients, ${got[0]} with f32 (${rel})`,
        );
        // Every tensor's gradient within f16's rounding of the f32 one.
        for (const t of models[0].layout.tensors) {
          const [a, b] = await Promise.all(models.map((m) => m.weights.readTensor(t.name, true)));
          let d2 = 0, s2 = 0;
          for (let i = 0; i < a.length; i++) (d2 += (a[i] - b[i]) ** 2), (s2 += a[i] ** 2);
          ok(Math.sqrt(d2 / (s2 || 1)) < 2e-3, `${t.name}: ${Math.sqrt(d2 / s2)} relative`);
        }
      }
    } finally {
      norms.forEach((n) => n.destroy());
      models.forEach((m) => m.destroy());
      stats.forEach((b) => rt.arena.free(b));
    }
  },
);

f16Test(
  "16-bit weights: every optimizer rounds stochastically, unbiased, onto f16 values",
  async (rt) => {
    // 1-D tensors of 1.0 take one AdamW step of exactly -lr (first step: m / sqrt(v) = 1) with
    // lr far below the f16 gap under 1 (2^-11): round-to-nearest would never move them; the
    // mean must be 1 - lr, each value 1 or 1 - 2^-11.
    const n = 1 << 16, lr = 1e-4, gap = 2 ** -11;
    const layout = layoutOf([{ name: "x", shape: [n] }, { name: "y", shape: [n] }]);
    const makers: [string, (p: GPUBuffer, g: GPUBuffer) => Promise<Optimizer>][] = [
      ["adamw", (p, g) => AdamW.create(rt, layout, { params: p, grads: g }, { weightDecay: 0 })],
      [
        "adamw8bit",
        (p, g) =>
          LowBitAdamW.create(rt, layout, { params: p, grads: g }, { bits: 8, weightDecay: 0 }),
      ],
      [
        "adamw4bit",
        (p, g) =>
          LowBitAdamW.create(rt, layout, { params: p, grads: g }, { bits: 4, weightDecay: 0 }),
      ],
      // Adafactor's first update of a constant gradient is 1 per element too (RMS 1, no clip).
      [
        "adafactor",
        (p, g) => Adafactor.create(rt, layout, { params: p, grads: g }, { weightDecay: 0 }),
      ],
    ];
    for (const [name, make] of makers) {
      const runs: Float32Array[] = [];
      for (let rep = 0; rep < 2; rep++) {
        const params = uploadAs(rt, "p", new Float32Array(layout.totalElements).fill(1), "f16");
        const grads = uploadAs(rt, "g", new Float32Array(layout.totalElements).fill(0.5), "f16");
        const opt = await make(params, grads);
        try {
          opt.setStep(1, lr);
          const enc = rt.device.createCommandEncoder();
          opt.encodeUpdate(enc);
          rt.device.queue.submit([enc.finish()]);
          await opt.finishUpdate();
          runs.push(await readValues(rt.device, params, 0, layout.totalElements));
        } finally {
          opt.destroy();
          rt.arena.free(params);
          rt.arena.free(grads);
        }
      }
      for (const t of layout.tensors) {
        const x = runs[0].subarray(t.offset, t.offset + t.size);
        ok(
          x.every((v) => v === 1 || v === 1 - gap),
          `${name} ${t.name}: values off the f16 grid`,
        );
        const mean = x.reduce((a, b) => a + b, 0) / x.length;
        // The mean of n Bernoulli steps of the gap: 6 standard deviations.
        const sd = gap * Math.sqrt((lr / gap) * (1 - lr / gap) / x.length);
        ok(Math.abs(mean - (1 - lr)) < 6 * sd, `${name} ${t.name}: mean ${mean}, want ${1 - lr}`);
      }
      // The tensors round independently, and a step rounds the same way every time.
      ok(runs[0].subarray(0, n).some((v, i) => v !== runs[0][layout.tensors[1].offset + i]));
      deepEqual(runs[1], runs[0]);
    }
  },
);

f16Test(
  "a run with 16-bit weights and gradients learns like fp16 with f32 ones, and resumes exactly",
  async (rt) => {
    await withSmallRuns(2, { steps: 20, precision: "fp16" }, async (config, quiet) => {
      // Without fp16 the 16-bit modes are refused before anything is built.
      await rejects(
        () => train(rt, config("bad", { precision: "fp32", gradDtype: "f16" }), quiet),
        /--grad-dtype f16 needs --precision fp16/,
      );
      const base = await train(rt, config("base"), quiet);
      const g16 = await train(rt, config("g16", { gradDtype: "f16" }), quiet);
      const lean = await train(rt, config("lean", { gradDtype: "f16", weightDtype: "f16" }), quiet);
      const last = (l: number[]) => l.slice(-5).reduce((a, b) => a + b, 0) / 5;
      console.log(`last 5 steps: ${[base, g16, lean].map((r) => last(r.losses).toFixed(4))}`);
      ok(last(base.losses) < base.losses[0] - 0.5, `no learning: ${base.losses}`);
      // Each mode is its own arithmetic, not the base run again.
      ok(g16.losses.some((l, i) => l !== base.losses[i]), "16-bit gradients changed nothing");
      ok(lean.losses.some((l, i) => l !== g16.losses[i]), "16-bit weights changed nothing");
      for (const [name, r] of [["16-bit gradients", g16], ["16-bit weights", lean]] as const) {
        const rel = Math.abs(last(r.losses) - last(base.losses)) / last(base.losses);
        ok(rel < 0.01, `${name}: last losses ${last(r.losses)} against ${last(base.losses)}`);
      }
      // Stopped at step 8 and resumed: the same losses, step for step, as one run.
      const leanOf = (out: string) => config(out, { gradDtype: "f16", weightDtype: "f16" });
      const part = await train(rt, leanOf("part"), { ...quiet, stopAfter: (s) => s === 8 });
      const rest = await train(rt, { ...leanOf("part"), resume: part.checkpoint }, quiet);
      deepEqual([...part.losses, ...rest.losses], lean.losses);
    });
  },
);

f16Test(
  "the memory plan of 16-bit weights and gradients is what the arena allocates",
  async (rt) => {
    const B = 2, T = 32;
    for (const o of [{ gradDtype: "f16" }, { gradDtype: "f16", weightDtype: "f16" }] as const) {
      const before = rt.arena.report().current;
      const m = await GPT2.create(rt, CFG, { B, T, seed: 1, precision: "fp16", ...o });
      try {
        const plan = planMemory(CFG, { B, T, precision: "fp16", ...o }).bytes;
        const now = rt.arena.report().current;
        // (Scratch also holds the dispatches' uniforms, which the plan leaves out.)
        for (const k of ["parameters", "gradients", "activations"] as const) {
          equal(now[k] - before[k], plan[k], `${JSON.stringify(o)}: ${k}`);
        }
        const elements = m.layout.totalElements;
        equal(plan.gradients, elements * 2);
        equal(plan.parameters, elements * (o.weightDtype === "f16" ? 2 : 6));
      } finally {
        m.destroy();
      }
    }
  },
);

Deno.test("a split buffer addresses whole-array offsets in its parts; splits fall at tensor starts", () => {
  const buf = (label: string, size: number) => ({ label, size }) as GPUBuffer;
  const s = new SplitBuffer([
    { start: 0, end: 256, buffer: buf("a", 1024) },
    { start: 256, end: 640, buffer: buf("b", 1536) },
  ]);
  equal(s.elements, 640);
  deepEqual(s.at(300, 100), { buffer: s.parts[1].buffer, offset: 44 });
  deepEqual(s.range(256, 3), { buffer: s.parts[1].buffer, offset: 0, size: 12 });
  throws(() => s.at(200, 100), /Elements \[200, 300\) are not inside one part/);
  throws(() => s.single("The parameters"), /The parameters span 2 buffers/);
  deepEqual(
    s.pieces(200, 300).map((p) => [p.start, p.end, p.part.buffer.label]),
    [[200, 256, "a"], [256, 300, "b"]],
  );
  throws(() => new SplitBuffer([{ start: 1, end: 2, buffer: buf("c", 16) }]), /follow each other/);
  const layout = layoutOf([
    { name: "a", shape: [100] },
    { name: "b", shape: [300] },
    { name: "c", shape: [50] },
  ]);
  // 128-element alignment: a at 0, b at 128, c at 512; at most 512 bytes (128 f32) a part.
  deepEqual(splitPoints(layout, 2048), [[0, 512], [512, 640]]);
  deepEqual(splitPoints(layout, 4096), [[0, 640]]);
  throws(() => splitPoints(layout, 1024), /Parameter "b" needs 1536 bytes, over this adapter's/);
});

f16Test("weights split over several buffers train bit for bit like one buffer", async (rt) => {
  const B = 2, T = 32;
  const modes = [
    { optimizer: "adamw", precision: "fp32" },
    { optimizer: "adamw", precision: "fp16" }, // the fused f16 copy, split too
    { optimizer: "adamw4bit", precision: "fp16", gradDtype: "f16", weightDtype: "f16" },
    { optimizer: "adafactor", precision: "fp16", gradDtype: "f16", weightDtype: "f16" },
  ] as const;
  for (const mode of modes) {
    const runs: { losses: number[]; tensors: Float32Array[]; parts: number }[] = [];
    for (const maxBufferBytes of [undefined, 200_000]) {
      const weights = await Weights.create(rt, CFG, { seed: 2, ...mode, maxBufferBytes });
      const m = await GPT2.create(rt, CFG, { B, T, weights });
      const opt = await createOptimizer(mode.optimizer, rt, m.layout, {
        params: weights.paramParts,
        grads: weights.gradParts,
        half: weights.halfParts,
      }, {});
      const norm = await GradNorm.create(rt, m.layout, weights.gradParts, opt.gradStats);
      try {
        const losses: number[] = [];
        const u = rng(9);
        for (let step = 1; step <= 3; step++) {
          const tokens = Array.from({ length: B * T }, () => Math.floor(u() * CFG.vocabSize));
          m.setLossScale(mode.precision === "fp16" ? 256 : 1);
          m.setBatch(tokens, tokens.map((t) => (t * 3 + 1) % CFG.vocabSize));
          const enc = rt.device.createCommandEncoder();
          m.encodeTrain(enc);
          norm.setStep({ gradClip: 1, lossScale: mode.precision === "fp16" ? 256 : 1 });
          opt.setStep(step, 1e-2);
          norm.encodeNorm(enc);
          norm.encodeDecide(enc);
          opt.encodeUpdate(enc);
          rt.device.queue.submit([enc.finish()]);
          await opt.finishUpdate();
          if (!opt.writesHalf) m.markParamsChanged();
          const l = await m.readLosses();
          losses.push(l.reduce((a, b) => a + b, 0));
        }
        runs.push({
          losses,
          tensors: (await weights.readAll()).map((t) => t.data as Float32Array),
          parts: weights.paramParts.parts.length,
        });
      } finally {
        norm.destroy();
        opt.destroy();
        m.destroy();
        weights.destroy();
      }
    }
    const what = JSON.stringify(mode);
    equal(runs[0].parts, 1, what);
    ok(runs[1].parts >= 3, `${what}: ${runs[1].parts} parts`);
    deepEqual(runs[1].losses, runs[0].losses, what);
    runs[0].tensors.forEach((t, i) => deepEqual(runs[1].tensors[i], t, `${what}: tensor ${i}`));
  }
});

gpuTest(
  "the optimizer in backward trains bit for bit like the usual step, with one block's gradients",
  async (rt) => {
    // One micro-step a step (totalBatch = batch x seq), a checkpoint every 3 steps.
    await withSmallRuns(3, { steps: 6, saveEvery: 3 }, async (config, quiet) => {
      const modes: Record<string, unknown>[] = [
        { optimizer: "adamw" },
        { optimizer: "adamw4bit", gradClip: 0.05 }, // clipping on at every step
        ...(hasF16
          ? [{ optimizer: "adafactor", precision: "fp16", gradDtype: "f16", weightDtype: "f16" }]
          : []),
      ];
      for (const [i, mode] of modes.entries()) {
        const usual = await train(rt, config(`usual${i}`, mode), quiet);
        const said: string[] = [];
        const fused = await train(
          rt,
          config(`fused${i}`, { ...mode, optimizerInBackward: true }),
          { logger: { log: (l) => said.push(l) } },
        );
        ok(said.some((l) => /^optimizer in backward: gradients of one block/.test(l)), `${said}`);
        deepEqual(fused.losses, usual.losses, JSON.stringify(mode));
        const bytes = (r: typeof usual) => Deno.readFile(`${r.checkpoint}/model.safetensors`);
        deepEqual(await bytes(fused), await bytes(usual), `${JSON.stringify(mode)}: weights`);
      }
      // Resumed from its step-3 checkpoint, it goes on as it would have.
      const fusedOf = (out: string) => config(out, { ...modes[0], optimizerInBackward: true });
      const whole = await train(rt, fusedOf("whole"), quiet);
      const part = await train(rt, fusedOf("part"), { ...quiet, stopAfter: (s) => s === 3 });
      const rest = await train(rt, { ...fusedOf("part"), resume: part.checkpoint }, quiet);
      deepEqual([...part.losses, ...rest.losses], whole.losses);
      // Accumulation cannot update inside one backward.
      await rejects(
        () => train(rt, config("accum", { optimizerInBackward: true, totalBatch: 128 }), quiet),
        /--optimizer-in-backward .* one micro-step per update \(--total-batch 64, not 128\)/,
      );
    });
  },
);

Deno.test("the optimizer in backward plans one block's gradients, as Weights allocates them", () => {
  const cfg = { nLayer: 4, nHead: 2, nEmbd: 64, nCtx: 64, vocabSize: 503 };
  const usual = planMemory(cfg, { B: 1, T: 64 }).bytes.gradients;
  const fused = planMemory(cfg, { B: 1, T: 64, optimizerInBackward: true }).bytes.gradients;
  const layout = parameterLayout(cfg), blocks = blockSpans(layout, cfg.nLayer);
  const block = (blocks[0][1] - blocks[0][0]) * 4;
  equal(usual - fused, 3 * block); // 4 blocks' gradients become 1
});
