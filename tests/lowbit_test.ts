import { deepEqual, equal, ok } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { LowBitAdamW, statePieces } from "../src/optim/lowbit.ts";
import { dynamicMap, linearMapNoZero, nearestCode } from "../src/optim/quant_maps.ts";
import { layoutOf, type ParamLayout } from "../src/model/params.ts";
import { encodeSafetensors, parseSafetensors } from "../src/io/safetensors.ts";
import { train, type TrainConfig, type TrainSettings } from "../src/train/trainer.ts";
import { GradNorm } from "../src/train/grad_norm.ts";
import { setReduceForm } from "../src/model/ops/reduce.ts";
import { gradNormRef } from "./reference/adamw.ts";
import { lowbitStepRef, refQuantState, unpackCodes } from "./reference/lowbit.ts";
import { assertAllClose, gpuTest, rng } from "./_harness.ts";
import { syntheticText, testTrainConfig } from "./_train_config.ts";

Deno.test("quantization maps: bitsandbytes' dynamic maps and the 4-bit maps", () => {
  const s8 = dynamicMap(true, 8), u8 = dynamicMap(false, 8), s4 = dynamicMap(true, 4);
  equal(new Set(s8).size, 256);
  equal(new Set(u8).size, 256);
  equal(s8[255], 1);
  ok(Math.abs(s8[0] + 0.99296875) < 1e-7); // most negative signed code, as in bitsandbytes
  equal(u8[0], 0);
  equal(s4.length, 16);
  deepEqual(Array.from(linearMapNoZero(4)), Array.from({ length: 16 }, (_, k) => (k + 1) / 16));
  equal(nearestCode(s8, 0), s8.indexOf(0));
  equal(nearestCode(s8, 5), 255);
  equal(nearestCode(s8, -5), 0);
  // exactly between two codes: the lower one
  const mid = Math.fround((u8[10] + u8[11]) / 2);
  ok([10, 11].includes(nearestCode(u8, mid)));
  const v4 = linearMapNoZero(4);
  equal(nearestCode(v4, 0), 0);
  equal(nearestCode(v4, 0.09375), 0); // halfway between 1/16 and 2/16: ties go low
});

/** Tensors of the shapes the optimizers treat differently. */
function fakeLayout(): ParamLayout {
  // Weight decay follows the shape: on the 2-D tensors only.
  return layoutOf([
    { name: "w", shape: [96, 48] }, // 4608: quantized; rank-1 v at 4 bits
    { name: "b", shape: [5120] }, // 1-D, quantized: block-wise v at 4 bits
    { name: "small", shape: [100] }, // fp32 state
  ]);
}

async function stateOf(opt: LowBitAdamW) {
  const file = parseSafetensors(encodeSafetensors(await opt.readState()));
  const bytes = (k: string) => {
    const t = file.tensors.get(`lowbit${opt.config.bits}.${k}`)!;
    return file.data.slice(t.data_offsets[0], t.data_offsets[1]);
  };
  return {
    mq: new Uint32Array(bytes("mq").buffer),
    vq: new Uint32Array(bytes("vq").buffer),
    mabs: new Float32Array(bytes("mabs").buffer),
    vabs: new Float32Array(bytes("vabs").buffer),
    scales: new Float32Array(bytes("scales").buffer),
  };
}

/**
 * A 2-D tensor of 40,000 rows: 4-bit AdamW's column maxima walk its rows in two dispatches
 * (32,768 + 7,232), within the loop budget.
 */
function tallLayout(): ParamLayout {
  return layoutOf([{ name: "tall", shape: [40000, 4] }, { name: "b", shape: [5120] }]);
}

// The block maxima in each reduction form (src/model/ops/reduce.ts), subgroups forced on.
for (
  const [bits, layoutName, makeLayout, form] of [
    [8, "", fakeLayout, "tree"],
    [4, "", fakeLayout, "tree"],
    [4, ", a 40,000-row tensor", tallLayout, "tree"],
    [8, "", fakeLayout, "subgroup"],
    [4, "", fakeLayout, "subgroup"],
  ] as const
) {
  gpuTest(
    `${bits}-bit AdamW: codes bit-exact and steps match the CPU reference${layoutName}` +
      (form === "subgroup" ? ", block maxima through subgroups" : ""),
    async (rt) => {
      setReduceForm(rt, form);
      const layout = makeLayout();
      const n = layout.totalElements;
      const u = rng(bits);
      const p0 = Float32Array.from({ length: n }, () => u() - 0.5);
      const params = rt.arena.allocWith("p", "parameters", p0);
      const grads = rt.arena.alloc("g", "gradients", n * 4);
      // Step 1 uses betas of 1/2 and gradients k/64, so m and v are exact in f32 and
      // every code must match bit for bit; later steps use real betas.
      const exact = { beta1: 0.5, beta2: 0.5, eps: 1e-8, weightDecay: 0.1, gradClip: 0 };
      const opt = await LowBitAdamW.create(rt, layout, { params, grads }, { bits, ...exact });
      // The training step's norm and clip, written where the update reads them.
      const gn = await GradNorm.create(rt, layout, grads, opt.gradStats);
      const update = bits === 8 ? "adamw8bit" : "adamw4bit_update";
      ok(
        opt.dispatches.some((d) => d.pipeline.label === update + (form === "tree" ? "" : "_sg")),
        `${form} form of ${update} in ${opt.dispatches.map((d) => d.pipeline.label)}`,
      );
      const pieces = opt.pieces;
      const ref = pieces.map((pc) => {
        const block = bits === 8 ? 256 : 128;
        return {
          pc,
          p: p0.slice(pc.offset, pc.offset + pc.size),
          st: refQuantState(pc.size, bits, block, pc.rows, pc.cols),
          block,
        };
      });
      try {
        for (let step = 1; step <= 3; step++) {
          const h = step === 1 ? exact : { ...exact, beta1: 0.9, beta2: 0.95, gradClip: 5 };
          Object.assign(opt.config, h);
          gn.setStep({ gradClip: h.gradClip });
          const g = step === 1
            ? Float32Array.from({ length: n }, () => Math.round((u() - 0.5) * 128) / 64)
            : Float32Array.from({ length: n }, () => (u() - 0.5) * 0.2);
          if (step === 3) {
            g[7] = NaN; // non-finite elements leave parameter and state alone
            g[4700] = Infinity;
          }
          rt.device.queue.writeBuffer(grads, 0, g);
          opt.setStep(step, 1e-2);
          await runDispatches(rt.device, [...gn.dispatches, ...opt.dispatches]);
          // The norm covers the tensors only (not the alignment gaps between them).
          const norm = gradNormRef(
            layout.tensors.map((t) =>
              g.subarray(t.offset, t.offset + t.size).filter(Number.isFinite)
            ),
          );
          for (const r of ref) {
            const gs = g.subarray(r.pc.offset, r.pc.offset + r.pc.size);
            if (r.pc.kind === "fp32") continue; // fp32 AdamW is tested in adamw_test.ts
            lowbitStepRef(
              r.p,
              gs,
              r.st,
              bits,
              r.block,
              r.pc.decay,
              norm,
              { ...h, lr: 1e-2, t: step },
              r.pc.rows,
              r.pc.cols,
            );
          }
          const st = await stateOf(opt);
          let mismatches = 0, total = 0;
          for (const r of ref) {
            if (r.pc.kind === "fp32") continue;
            const got = await readF32(rt.device, params, r.pc.offset, r.pc.size);
            assertAllClose(got, r.p, {
              rtol: 1e-4,
              atol: 1e-6,
              label: `step ${step} params ${r.pc.name}`,
            });
            const per = bits === 8 ? 4 : 8;
            const words = (q: Uint32Array) =>
              q.subarray(r.pc.words, r.pc.words + Math.ceil(r.pc.size / per));
            const mc = unpackCodes(words(st.mq), r.pc.size, bits),
              vc = unpackCodes(words(st.vq), r.pc.size, bits);
            for (let i = 0; i < r.pc.size; i++) {
              total += 2;
              mismatches += +(mc[i] !== r.st.mCodes[i]) + +(vc[i] !== r.st.vCodes[i]);
            }
            if (step === 1) {
              deepEqual(mc, r.st.mCodes, `m codes ${r.pc.name}`);
              deepEqual(vc, r.st.vCodes, `v codes ${r.pc.name}`);
              const nb = r.st.mAbs.length;
              deepEqual(st.mabs.subarray(r.pc.abs, r.pc.abs + nb), r.st.mAbs);
              const vScale = r.pc.rows
                ? st.scales.subarray(r.pc.scales, r.pc.scales + r.pc.rows + r.pc.cols)
                : st.vabs.subarray(r.pc.abs, r.pc.abs + nb);
              deepEqual(vScale, r.st.vAbs);
            }
            if (step === 3) {
              const at = (i: number) => i - r.pc.offset;
              for (const i of [7, 4700]) {
                if (i >= r.pc.offset && i < r.pc.offset + r.pc.size) equal(got[at(i)], r.p[at(i)]);
              }
            }
          }
          // Later steps: f32 rounding order may differ (fused multiply-add), so a code can
          // land on its neighbour; almost all must still agree.
          ok(mismatches <= total * 0.002, `step ${step}: ${mismatches} of ${total} codes differ`);
        }
        // NaN and Inf gradients left their parameters exactly as they were after step 2.
      } finally {
        setReduceForm(rt, undefined);
        gn.destroy();
        opt.destroy();
        rt.arena.free(params);
        rt.arena.free(grads);
      }
    },
  );
}

Deno.test("state layout: bytes per parameter and pieces under the binding limit", () => {
  const layout = fakeLayout();
  const big: ParamLayout = {
    tensors: [{ name: "wte.weight", shape: [4096, 64], offset: 0, size: 4096 * 64, decay: true }],
    byName: new Map(),
    totalElements: 4096 * 64,
  };
  // 256 KiB bindings: the 1 MiB tensor runs in pieces of whole rows (multiples of 128).
  const q4 = statePieces(big, { bits: 4, block8: 256, fp32Embeddings: false }, 256 * 1024);
  ok(q4.pieces.length > 1);
  for (const p of q4.pieces) {
    equal(p.rows % 128, 0);
    ok(p.size * 4 <= 256 * 1024);
  }
  const f32 = statePieces(big, { bits: 4, block8: 256, fp32Embeddings: true }, 1 << 27);
  equal(f32.pieces[0].kind, "fp32");
  const q8 = statePieces(layout, { bits: 8, block8: 256, fp32Embeddings: false }, 1 << 27);
  deepEqual(q8.pieces.map((p) => p.kind), ["q8", "q8", "fp32"]);
});

gpuTest("a small model trained with 8-bit and 4-bit AdamW ends close to fp32 AdamW", async (rt) => {
  const dir = await Deno.makeTempDir();
  try {
    const text = syntheticText(20000, 11, 7);
    await Deno.writeTextFile(`${dir}/text.txt`, text);
    const base = testTrainConfig(`${dir}/run`, `${dir}/text.txt`, {
      modelName: "lowbit-test",
      model: { nLayer: 2, nHead: 2, nEmbd: 64, nCtx: 32, vocabSize: 50257 },
      steps: 100,
      warmup: 10,
      seed: 5,
      keep: 1,
      cacheDir: `${dir}/cache`,
    });
    const final: Record<string, number> = {};
    for (const optimizer of ["adamw", "adamw8bit", "adamw4bit"] as const) {
      const r = await train(rt, { ...base, optimizer, out: `${dir}/${optimizer}` }, {
        logger: { log: () => {} },
      });
      final[optimizer] = r.losses.slice(-20).reduce((a, b) => a + b) / 20;
    }
    console.log(`final losses (mean of the last 20 steps): ${JSON.stringify(final)}`);
    ok(final.adamw < 4, `fp32 AdamW did not learn: ${final.adamw}`);
    for (const k of ["adamw8bit", "adamw4bit"]) {
      const gap = (final[k] - final.adamw) / final.adamw;
      ok(
        gap < 0.05,
        `${k} ends ${(100 * gap).toFixed(1)}% above fp32 AdamW (${final[k]} vs ${final.adamw})`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("low-bit state is saved and restored with checkpoints: resume stays exact", async (rt) => {
  const dir = await Deno.makeTempDir();
  try {
    const u = rng(12);
    const text = Array.from(
      { length: 5000 },
      () => ["a", "b", "sea", "whale", "ship"][Math.floor(u() * 5)],
    ).join(" ");
    await Deno.writeTextFile(`${dir}/t.txt`, text);
    const cfg = (out: string, over: TrainSettings = {}): TrainSettings =>
      testTrainConfig(out, `${dir}/t.txt`, {
        modelName: "resume",
        model: { nLayer: 1, nHead: 2, nEmbd: 64, nCtx: 16, vocabSize: 50257 },
        seq: 16,
        totalBatch: 32,
        steps: 6,
        schedule: "constant",
        minLr: 3e-3,
        warmup: 0,
        seed: 3,
        keep: 1,
        cacheDir: `${dir}/cache`,
        ...over,
      });
    const quiet = { logger: { log: () => {} } };
    const variants: Partial<TrainConfig>[] = [
      { optimizer: "adamw8bit" },
      { optimizer: "adamw4bit" },
      { optimizer: "adamw4bit", optimizerOffload: true },
    ];
    for (const v of variants) {
      const tag = `${v.optimizer}${v.optimizerOffload ? "-offload" : ""}`;
      const full = await train(rt, cfg(`${dir}/${tag}-full`, v), quiet);
      const part = await train(rt, cfg(`${dir}/${tag}-part`, v), {
        ...quiet,
        stopAfter: (s) => s === 3,
      });
      const rest = await train(
        rt,
        cfg(`${dir}/${tag}-part`, { ...v, resume: part.checkpoint }),
        quiet,
      );
      deepEqual([...part.losses, ...rest.losses], full.losses, tag);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("offloaded (paged) state gives the same steps as state on the GPU", async (rt) => {
  const layout = fakeLayout();
  const n = layout.totalElements;
  const u = rng(21);
  const p0 = Float32Array.from({ length: n }, () => u() - 0.5);
  for (const bits of [8, 4] as const) {
    const pa = rt.arena.allocWith("pa", "parameters", p0),
      pb = rt.arena.allocWith("pb", "parameters", p0);
    const grads = rt.arena.alloc("g", "gradients", n * 4);
    const onGpu = await LowBitAdamW.create(rt, layout, { params: pa, grads }, { bits });
    const paged = await LowBitAdamW.create(rt, layout, { params: pb, grads }, {
      bits,
      offload: true,
    });
    // The training step's statistics (clip 1) for each; the paged one's norm runs first.
    const gnA = await GradNorm.create(rt, layout, grads, onGpu.gradStats);
    const gnB = await GradNorm.create(rt, layout, grads, paged.gradStats);
    gnA.setStep({ gradClip: 1 });
    gnB.setStep({ gradClip: 1 });
    try {
      ok(paged.stateBytes < onGpu.stateBytes, "the GPU holds one piece's state");
      equal(paged.hostBytes, onGpu.stateBytes);
      for (let step = 1; step <= 3; step++) {
        rt.device.queue.writeBuffer(
          grads,
          0,
          Float32Array.from({ length: n }, () => (u() - 0.5) * 0.1),
        );
        onGpu.setStep(step, 1e-2);
        paged.setStep(step, 1e-2);
        await runDispatches(rt.device, [...gnA.dispatches, ...onGpu.dispatches]);
        await runDispatches(rt.device, gnB.dispatches);
        await paged.runOffloaded();
      }
      deepEqual(await readF32(rt.device, pb), await readF32(rt.device, pa));
      const sa = await onGpu.readState(), sb = await paged.readState();
      for (let i = 0; i < sa.length; i++) deepEqual(sb[i].data, sa[i].data, sa[i].name);
    } finally {
      gnA.destroy();
      gnB.destroy();
      onGpu.destroy();
      paged.destroy();
      for (const b of [pa, pb, grads]) rt.arena.free(b);
    }
  }
});
