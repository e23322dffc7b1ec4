/**
 * GELU, tanh approximation (kernels/gelu.wgsl), forward and backward.
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { grid1d, makeDispatch } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { dtypeOf, typedKernel } from "../../gpu/dtype.ts";
import { all } from "./tensor.ts";
import geluSrc from "../../../kernels/gelu.wgsl" with { type: "text" };

/** out = gelu(inp), N elements. */
export function geluForward(
  rt: Runtime,
  N: number,
  ops: { inp: GPUBuffer; out: GPUBuffer },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "gelu_forward",
    code: typedKernel(geluSrc, { in_t: dtypeOf(ops.inp), out_t: dtypeOf(ops.out) }),
    entryPoint: "forward",
    buffers: { 0: all(ops.inp), 1: all(ops.out) },
    uniform: { binding: 4, words: [N] },
    workgroups: grid1d(N, 64),
  });
}

/** dinp = gelu'(inp) * dout, N elements. */
export function geluBackward(
  rt: Runtime,
  N: number,
  ops: { inp: GPUBuffer; dout: GPUBuffer; dinp: GPUBuffer },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "gelu_backward",
    code: typedKernel(geluSrc, { in_t: dtypeOf(ops.inp), din_t: dtypeOf(ops.dinp) }),
    entryPoint: "backward",
    buffers: { 0: all(ops.inp), 2: all(ops.dout), 3: all(ops.dinp) },
    uniform: { binding: 4, words: [N] },
    workgroups: grid1d(N, 64),
  });
}
