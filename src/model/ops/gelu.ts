/**
 * GELU, tanh approximation (kernels/gelu.wgsl), forward and backward.
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { defineKernel } from "../../gpu/define_kernel.ts";
import { grid1d } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import geluSrc from "../../../kernels/gelu.wgsl" with { type: "text" };

/** kernels/gelu.wgsl's interface. */
export const geluKernel = defineKernel({
  name: "gelu",
  source: geluSrc,
  bindings: {
    inp: { access: "read", type: "float" },
    out: { access: "read_write", type: "float" },
    dout: { access: "read", type: "f32" },
    dinp: { access: "read_write", type: "float" },
  },
  uniforms: { N: "u32" },
  entryPoints: {
    forward: { bindings: ["inp", "out"], loopBound: () => 0 },
    backward: { bindings: ["inp", "dout", "dinp"], loopBound: () => 0 },
  },
});

/** out = gelu(inp), N elements. */
export function geluForward(
  rt: Runtime,
  N: number,
  ops: { inp: GPUBuffer; out: GPUBuffer },
): Promise<Dispatch> {
  return geluKernel.dispatch(rt, "forward", {
    buffers: ops,
    uniforms: { N },
    workgroups: grid1d(N, 64),
  });
}

/** dinp = gelu'(inp) * dout, N elements. */
export function geluBackward(
  rt: Runtime,
  N: number,
  ops: { inp: GPUBuffer; dout: GPUBuffer; dinp: GPUBuffer },
): Promise<Dispatch> {
  return geluKernel.dispatch(rt, "backward", {
    buffers: ops,
    uniforms: { N },
    workgroups: grid1d(N, 64),
  });
}
