/**
 * The f16 copy of f32 parameters (kernels/cast.wgsl).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { grid1d, makeDispatch } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import castSrc from "../../../kernels/cast.wgsl" with { type: "text" };

/** dst[n] (f16) = src[n] (f32), in binding-sized chunks. */
export function castToHalf(
  rt: Runtime,
  n: number,
  ops: { src: GPUBuffer; dst: GPUBuffer },
  maxBindingBytes: number = rt.gpu.limits.maxStorageBufferBindingSize,
): Promise<Dispatch[]> {
  // Chunks of 128-element multiples keep both offsets 256-byte aligned.
  const per = Math.max(128, Math.floor(maxBindingBytes / 4 / 128) * 128);
  const out: Promise<Dispatch>[] = [];
  for (let e = 0; e < n; e += per) {
    const len = Math.min(per, n - e);
    out.push(makeDispatch(rt, {
      name: "cast_f16",
      code: castSrc,
      entryPoint: "main",
      buffers: {
        0: { buffer: ops.src, offset: e * 4, size: len * 4 },
        1: { buffer: ops.dst, offset: e * 2, size: Math.ceil((len * 2) / 4) * 4 },
      },
      uniform: { binding: 2, words: [len] },
      workgroups: grid1d(len, 64),
    }));
  }
  return Promise.all(out);
}
