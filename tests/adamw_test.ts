import { ok } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readF32 } from "../src/gpu/runtime.ts";
import { AdamW } from "../src/optim/adamw.ts";
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
      await runDispatches(rt.device, opt.dispatches);
      const gs = ref.map((r) => g.subarray(r.t.offset, r.t.offset + r.t.size));
      const norm = gradNormRef(gs);
      const stats = await readF32(rt.device, opt.stats, 0, 2);
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
    opt.destroy();
    rt.arena.free(params);
    rt.arena.free(grads);
  }
});
