/**
 * The fused classifier: softmax, cross-entropy and its gradient (kernels/classifier.wgsl), a
 * row's max and sum in the device's reduction form (src/model/ops/reduce.ts).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { type BufferRange, grid1d } from "../../gpu/kernel.ts";
import { defineReducing, reduceForm, type ReduceOptions } from "./reduce.ts";
import { tableChunks } from "./tensor.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import classifierSrc from "../../../kernels/classifier.wgsl" with { type: "text" };

/** kernels/classifier.wgsl's interface, in each reduction form. */
export const classifierKernels = defineReducing({
  name: "classifier",
  source: classifierSrc,
  bindings: {
    logits: { access: "read_write", type: "f32" },
    targets: { access: "read", type: "u32" },
    losses: { access: "read_write", type: "f32" },
    loss_scale: { access: "uniform", type: "vec4f" },
  },
  uniforms: { N: "u32", V: "u32", Vp: "u32", dloss: "f32" },
  overrides: { WRITE_GRAD: { type: "bool", default: true } },
  entryPoints: {
    main: {
      label: "classifier",
      bindings: ["logits", "targets", "losses", "loss_scale"],
      loopBound: (u) => 2 * Math.ceil(u.V / 64) + Math.ceil(u.Vp / 64) + 2 * 64,
    },
  },
});

/**
 * losses[N] = cross-entropy of logits [N, Vp] (first V columns) against targets;
 * with `writeGrad`, logits are replaced by dlogits scaled by `dloss` times the
 * loss scale (x of the 16-byte uniform `lossScale`). Rows are split into
 * binding-sized chunks (64-row multiples keep offsets aligned).
 */
export async function classifier(
  rt: Runtime,
  s: {
    N: number;
    V: number;
    Vp: number;
    dloss: number;
    writeGrad: boolean;
    maxBindingBytes?: number;
  },
  ops: { logits: GPUBuffer; targets: BufferRange; losses: BufferRange; lossScale: GPUBuffer },
  options: ReduceOptions = {},
): Promise<Dispatch[]> {
  const kernel = classifierKernels[await reduceForm(rt, options)];
  // Rows of logits in binding-sized chunks of 64-row multiples, as an embedding table's.
  const chunks = tableChunks(rt, s.N, s.Vp, s.maxBindingBytes);
  const t0 = ops.targets.offset ?? 0, l0 = ops.losses.offset ?? 0;
  return await Promise.all(chunks.map(([r0, r1]) =>
    kernel.dispatch(rt, "main", {
      name: s.writeGrad ? "classifier_loss_grad" : "classifier_loss",
      overrides: { WRITE_GRAD: s.writeGrad },
      buffers: {
        logits: { buffer: ops.logits, offset: r0 * s.Vp * 4, size: (r1 - r0) * s.Vp * 4 },
        targets: { buffer: ops.targets.buffer, offset: t0 + r0 * 4, size: (r1 - r0) * 4 },
        losses: { buffer: ops.losses.buffer, offset: l0 + r0 * 4, size: (r1 - r0) * 4 },
        loss_scale: ops.lossScale,
      },
      uniforms: { N: r1 - r0, V: s.V, Vp: s.Vp, dloss: s.dloss },
      workgroups: grid1d(r1 - r0, 1),
    })
  ));
}
