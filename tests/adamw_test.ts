import { deepEqual, equal, match, ok, rejects, throws } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { setDType } from "../src/gpu/dtype.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { AdamW, adamwKernel } from "../src/optim/adamw.ts";
import { GradNorm, type GradNormStep } from "../src/train/grad_norm.ts";
import { layoutOf, type ParamLayout } from "../src/model/params.ts";
import { adamwRef, gradNormRef } from "./reference/adamw.ts";
import { assertAllClose, gpuTest, randn } from "./_harness.ts";

/** A layout of a few tensors with awkward sizes, decayed and not. */
function fakeLayout(): ParamLayout {
  // Weight decay follows the shape: on the 2-D tensors only.
  return layoutOf([
    { name: "w1", shape: [37, 29] },
    { name: "b1", shape: [29] },
    { name: "w2", shape: [300, 7] }, // split into several binding-sized ranges below
    { name: "ln", shape: [5] },
  ]);
}

gpuTest("AdamW with grad clipping matches a float64 reference over several steps", async (rt) => {
  const layout = fakeLayout();
  const n = layout.totalElements;
  const p0 = randn(n, 1), params = rt.arena.allocWith("p", "parameters", p0);
  const grads = rt.arena.alloc("g", "gradients", n * 4);
  const hyper = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 5.0 };
  // 512-byte bindings: w2 (2100 floats) runs as several ranges and norm partials.
  const opt = await AdamW.create(rt, layout, { params, grads }, hyper, { maxBindingBytes: 512 });
  // The training step's norm and clip, written where the update reads them.
  const gn = await GradNorm.create(rt, layout, grads, opt.gradStats, { maxBindingBytes: 512 });
  gn.setStep({ gradClip: hyper.gradClip });
  const ref = layout.tensors.map((t) => ({
    t,
    p: Float64Array.from(p0.subarray(t.offset, t.offset + t.size)),
    m: new Float64Array(t.size),
    v: new Float64Array(t.size),
  }));
  try {
    for (let step = 1; step <= 3; step++) {
      const g = randn(n, 10 + step, step === 2 ? 0.01 : 1); // step 2: norm under the clip
      if (step === 3) g[5] = NaN; // skipped by the norm and the update
      rt.device.queue.writeBuffer(grads, 0, g);
      const lr = 1e-3 * step;
      opt.setStep(step, lr);
      await runDispatches(rt.device, [...gn.dispatches, ...opt.dispatches]);
      const gs = ref.map((r) => g.subarray(r.t.offset, r.t.offset + r.t.size));
      const norm = gradNormRef(gs);
      const stats = await readF32(rt.device, gn.stats, 0, 2);
      ok(Math.abs(stats[1] - norm) / norm < 1e-5, `norm ${stats[1]} vs ${norm}`);
      ref.forEach((r, i) =>
        adamwRef(r.p, gs[i], r.m, r.v, r.t.decay, norm, { ...hyper, lr, t: step })
      );
    }
    for (const r of ref) {
      const o = r.t.offset, s = r.t.size;
      const tol = { rtol: 1e-5, atol: 1e-6 };
      assertAllClose(await readF32(rt.device, params, o, s), r.p, {
        ...tol,
        label: `p ${r.t.name}`,
      });
      assertAllClose(await readF32(rt.device, opt.m, o, s), r.m, {
        ...tol,
        label: `m ${r.t.name}`,
      });
      assertAllClose(await readF32(rt.device, opt.v, o, s), r.v, {
        rtol: 1e-5,
        atol: 1e-9,
        label: `v ${r.t.name}`,
      });
    }
  } finally {
    gn.destroy();
    opt.destroy();
    rt.arena.free(params);
    rt.arena.free(grads);
  }
});

gpuTest("loss scale is undone exactly, and an overflow skips the whole step", async (rt) => {
  const { LowBitAdamW } = await import("../src/optim/lowbit.ts");
  // 80 x 64 is over the 4096-element threshold: the low-bit state is quantized.
  const layout = layoutOf([{ name: "w", shape: [80, 64] }, { name: "b", shape: [64] }]);
  const n = layout.totalElements, S = 1024;
  const p0 = randn(n, 1), g = randn(n, 2); // |g| is well over the clip of 1: clipping is on
  const make = async (kind: string, label: string) => {
    const params = rt.arena.allocWith(`${label}.p`, "parameters", p0);
    const grads = rt.arena.alloc(`${label}.g`, "gradients", n * 4);
    const bufs = { params, grads };
    const opt = await (kind === "adamw"
      ? AdamW.create(rt, layout, bufs)
      : LowBitAdamW.create(rt, layout, bufs, { bits: kind === "adamw8bit" ? 8 : 4 }));
    // The training step's part: the norm, the clip of 1 and the overflow rule, written
    // where the update reads them; `o` drives both as one step.
    const gn = await GradNorm.create(rt, layout, grads, opt.gradStats);
    const setStep = (t: number, lr: number, s: Omit<GradNormStep, "gradClip"> = {}) => {
      gn.setStep({ gradClip: 1, ...s });
      opt.setStep(t, lr);
    };
    const o = {
      setStep,
      dispatches: [...gn.dispatches, ...opt.dispatches],
      stats: gn.stats,
      readState: () =>
        opt.readState(),
      destroy: () => (gn.destroy(), opt.destroy()),
    };
    return { o, params, grads };
  };
  const state = async (o: { readState(): Promise<{ data: ArrayBufferView }[]> }) =>
    (await o.readState()).map((t) =>
      Array.from(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))
    );
  for (const kind of ["adamw", "adamw8bit", "adamw4bit"]) {
    const plain = await make(kind, "plain"), scaled = await make(kind, "scaled");
    try {
      rt.device.queue.writeBuffer(plain.grads, 0, g);
      rt.device.queue.writeBuffer(scaled.grads, 0, g.map((x) => x * S));
      plain.o.setStep(1, 1e-2);
      scaled.o.setStep(1, 1e-2, { lossScale: S, skipOnOverflow: true });
      await runDispatches(rt.device, [...plain.o.dispatches, ...scaled.o.dispatches]);
      // A power-of-two scale divides out exactly: bit-identical parameters and state.
      const p1 = await readF32(rt.device, scaled.params, 0, n);
      assertAllClose(p1, await readF32(rt.device, plain.params, 0, n), {
        rtol: 0,
        atol: 0,
        label: `${kind} scaled vs plain`,
      });
      ok(p1.some((x, i) => x !== p0[i]), `${kind}: the step changed nothing`);
      const s1 = await state(scaled.o);
      ok(JSON.stringify(s1) === JSON.stringify(await state(plain.o)), `${kind} state`);
      // One Inf among the scaled gradients: nothing moves, and stats[2] counts it.
      const bad = g.map((x) => x * S);
      bad[77] = Infinity;
      rt.device.queue.writeBuffer(scaled.grads, 0, bad);
      scaled.o.setStep(2, 1e-2, { lossScale: S, skipOnOverflow: true });
      await runDispatches(rt.device, scaled.o.dispatches);
      const stats = await readF32(rt.device, scaled.o.stats, 0, 3);
      ok(stats[2] === 1, `${kind}: non-finite count ${stats[2]}`);
      assertAllClose(await readF32(rt.device, scaled.params, 0, n), p1, {
        rtol: 0,
        atol: 0,
        label: `${kind} after a skipped step`,
      });
      ok(JSON.stringify(await state(scaled.o)) === JSON.stringify(s1), `${kind}: state moved`);
      // Without skipOnOverflow only the bad element is left alone.
      scaled.o.setStep(2, 1e-2, { lossScale: S });
      await runDispatches(rt.device, scaled.o.dispatches);
      const p2 = await readF32(rt.device, scaled.params, 0, n);
      ok(p2[77] === p1[77] && p2[78] !== p1[78], `${kind}: element-wise skip`);
    } finally {
      for (const x of [plain, scaled]) {
        x.o.destroy();
        rt.arena.free(x.params);
        rt.arena.free(x.grads);
      }
    }
  }
});

Deno.test("AdamW's f16 copy is a declared entry point: the f32 update needs no shader-f16", () => {
  const fake = (label: string, dtype: "f32" | "f16" = "f32") => {
    const b = { label, size: 1024 } as GPUBuffer;
    setDType(b, dtype);
    return b;
  };
  const buffers = {
    params: fake("params"),
    grads: fake("grads"),
    m: fake("m"),
    v: fake("v"),
    gstats: fake("grad_stats"),
    s: fake("step"),
  };
  const args = {
    buffers,
    uniforms: { n: 100, decay: 1, p0: 3, e0: 0 },
    workgroups: [2, 1, 1] as const,
  };
  const f32 = adamwKernel.plan("main", args);
  const f16 = adamwKernel.plan("main_f16copy", {
    ...args,
    buffers: { ...buffers, half: fake("half", "f16") },
  });
  equal(f32.name, "adamw");
  equal(f16.name, "adamw_f16copy");
  equal(/enable f16/.test(f32.code), false);
  match(f16.code, /^enable f16;\n/);
  match(f16.code, /var<storage, read_write> half: array<f16>;/);
  // One body: the variants differ in the generated header and the entry point only.
  const body = (code: string) => code.slice(code.indexOf("// ---- adamw.wgsl"));
  equal(body(f16.code), body(f32.code));
  deepEqual(f32.layout.map((e) => e.binding), [0, 1, 2, 3, 4, 5, 7]);
  deepEqual(f16.layout.map((e) => e.binding), [0, 1, 2, 3, 4, 5, 6, 7]);
  throws(
    () => adamwKernel.plan("main", { ...args, buffers: { ...buffers, half: fake("h") } }),
    /unknown binding "half"/,
  );
});

gpuTest("AdamW refuses an f16 copy that is not an f16 buffer", async (rt) => {
  const layout = fakeLayout();
  const params = rt.arena.alloc("p", "parameters", layout.totalElements * 4);
  const grads = rt.arena.alloc("g", "gradients", layout.totalElements * 4);
  const half = rt.arena.alloc("h", "parameters", layout.totalElements * 2);
  try {
    await rejects(
      () => AdamW.create(rt, layout, { params, grads, half }),
      /f16 copy \("h"\) holds f32: pass the f16 buffer/,
    );
  } finally {
    for (const b of [params, grads, half]) rt.arena.free(b);
  }
});
