/**
 * The residual add (kernels/residual.wgsl).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { grid1d, makeDispatch } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { all } from "./tensor.ts";
import residualSrc from "../../../kernels/residual.wgsl" with { type: "text" };

/** out = a + b, N elements. */
export function residualForward(
  rt: Runtime,
  N: number,
  ops: { a: GPUBuffer; b: GPUBuffer; out: GPUBuffer },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "residual_forward",
    code: residualSrc,
    entryPoint: "forward",
    buffers: { 0: all(ops.a), 1: all(ops.b), 2: all(ops.out) },
    uniform: { binding: 3, words: [N] },
    workgroups: grid1d(N, 64),
  });
}
