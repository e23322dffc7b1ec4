/**
 * The f16 copy of f32 parameters (kernels/cast.wgsl).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { defineKernel } from "../../gpu/define_kernel.ts";
import { grid1d } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import castSrc from "../../../kernels/cast.wgsl" with { type: "text" };

/** kernels/cast.wgsl's interface. */
export const castKernel = defineKernel({
  name: "cast",
  source: castSrc,
  bindings: {
    inp: { access: "read", type: "f32" },
    out: { access: "read_write", type: "f16" },
  },
  uniforms: { n: "u32" },
  entryPoints: { main: { bindings: ["inp", "out"], loopBound: () => 0, label: "cast_f16" } },
});

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
    out.push(castKernel.dispatch(rt, "main", {
      buffers: {
        inp: { buffer: ops.src, offset: e * 4, size: len * 4 },
        out: { buffer: ops.dst, offset: e * 2, size: Math.ceil((len * 2) / 4) * 4 },
      },
      uniforms: { n: len },
      workgroups: grid1d(len, 64),
    }));
  }
  return Promise.all(out);
}
