/**
 * The residual add (kernels/residual.wgsl).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { defineKernel } from "../../gpu/define_kernel.ts";
import { grid1d } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import residualSrc from "../../../kernels/residual.wgsl" with { type: "text" };

/** kernels/residual.wgsl's interface. */
export const residualKernel = defineKernel({
  name: "residual",
  source: residualSrc,
  bindings: {
    a: { access: "read", type: "f32" },
    b: { access: "read", type: "f32" },
    out: { access: "read_write", type: "f32" },
  },
  uniforms: { N: "u32" },
  entryPoints: { forward: { bindings: ["a", "b", "out"], loopBound: () => 0 } },
});

/** out = a + b, N elements. */
export function residualForward(
  rt: Runtime,
  N: number,
  ops: { a: GPUBuffer; b: GPUBuffer; out: GPUBuffer },
): Promise<Dispatch> {
  return residualKernel.dispatch(rt, "forward", {
    buffers: ops,
    uniforms: { N },
    workgroups: grid1d(N, 64),
  });
}
