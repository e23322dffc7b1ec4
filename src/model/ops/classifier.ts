/**
 * The fused classifier: softmax, cross-entropy and its gradient (kernels/classifier.wgsl).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { type BufferRange, f32Bits, grid1d, makeDispatch } from "../../gpu/kernel.ts";
import { tableChunks } from "./tensor.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import classifierSrc from "../../../kernels/classifier.wgsl" with { type: "text" };

/**
 * losses[N] = cross-entropy of logits [N, Vp] (first V columns) against targets;
 * with `writeGrad`, logits are replaced by dlogits scaled by `dloss` times the
 * loss scale (x of the 16-byte uniform `lossScale`). Rows are split into
 * binding-sized chunks (64-row multiples keep offsets aligned).
 */
export function classifier(
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
): Promise<Dispatch[]> {
  // Rows of logits in binding-sized chunks of 64-row multiples, as an embedding table's.
  const chunks = tableChunks(rt, s.N, s.Vp, s.maxBindingBytes);
  const t0 = ops.targets.offset ?? 0, l0 = ops.losses.offset ?? 0;
  return Promise.all(chunks.map(([r0, r1]) =>
    makeDispatch(rt, {
      name: s.writeGrad ? "classifier_loss_grad" : "classifier_loss",
      code: classifierSrc,
      entryPoint: "main",
      constants: { WRITE_GRAD: +s.writeGrad },
      buffers: {
        0: { buffer: ops.logits, offset: r0 * s.Vp * 4, size: (r1 - r0) * s.Vp * 4 },
        1: { buffer: ops.targets.buffer, offset: t0 + r0 * 4, size: (r1 - r0) * 4 },
        2: { buffer: ops.losses.buffer, offset: l0 + r0 * 4, size: (r1 - r0) * 4 },
        4: { buffer: ops.lossScale },
      },
      uniform: { binding: 3, words: [r1 - r0, s.V, s.Vp, f32Bits(s.dloss)] },
      workgroups: grid1d(r1 - r0, 1),
      loops: {
        bound: 2 * Math.ceil(s.V / 64) + Math.ceil(s.Vp / 64) + 12,
        shape: { V: s.V, Vp: s.Vp },
      },
    })
  ));
}
