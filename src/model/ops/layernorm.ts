/**
 * LayerNorm (kernels/layernorm.wgsl), forward and backward.
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { type BufferRange, grid1d, makeDispatch, splitRange, WALK_ROWS } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { dtypeOf, typedKernel } from "../../gpu/dtype.ts";
import { all, bytes, type TensorRange } from "./tensor.ts";
import layernormSrc from "../../../kernels/layernorm.wgsl" with { type: "text" };

/** `buffers` with `t` at `binding` when there is one (a bias-less variant leaves it unbound). */
function withOptional(
  buffers: Record<number, BufferRange>,
  binding: number,
  t?: TensorRange,
): Record<number, BufferRange> {
  return t ? { ...buffers, [binding]: bytes(t) } : buffers;
}

/** out, mean, rstd = LayerNorm(inp [N, C]) with weight and bias (none: no bias add). */
export function layernormForward(
  rt: Runtime,
  s: { N: number; C: number },
  ops: {
    inp: GPUBuffer;
    weight: TensorRange;
    bias?: TensorRange;
    out: GPUBuffer;
    mean: GPUBuffer;
    rstd: GPUBuffer;
  },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "layernorm_forward",
    code: typedKernel(layernormSrc, { out_t: dtypeOf(ops.out) }),
    entryPoint: ops.bias ? "forward" : "forward_no_bias",
    buffers: withOptional(
      {
        0: all(ops.inp),
        1: bytes(ops.weight),
        3: all(ops.out),
        4: all(ops.mean),
        5: all(ops.rstd),
      },
      2,
      ops.bias,
    ),
    uniform: { binding: 10, words: [s.N, s.C] },
    workgroups: grid1d(s.N, 64),
    loops: { bound: 3 * s.C, shape: { C: s.C } },
  });
}

/** dinp += input gradient; dweight, dbias += parameter gradients (no dbias: no bias). */
export async function layernormBackward(
  rt: Runtime,
  s: { N: number; C: number },
  ops: {
    inp: GPUBuffer;
    weight: TensorRange;
    mean: GPUBuffer;
    rstd: GPUBuffer;
    dout: GPUBuffer;
    dinp: GPUBuffer;
    dweight: TensorRange;
    dbias?: TensorRange;
  },
): Promise<Dispatch[]> {
  const common = { code: layernormSrc, uniform: { binding: 10, words: [s.N, s.C] } };
  // The parameter gradients sum over rows: in ranges within the loop budget, in order.
  const params: Dispatch[] = [];
  for (const [n0, n1] of splitRange(s.N, WALK_ROWS)) {
    params.push(
      await makeDispatch(rt, {
        ...common,
        name: "layernorm_backward_params",
        entryPoint: ops.dbias ? "backward_params" : "backward_params_no_bias",
        buffers: withOptional(
          {
            0: all(ops.inp),
            4: all(ops.mean),
            5: all(ops.rstd),
            6: all(ops.dout),
            8: bytes(ops.dweight),
          },
          9,
          ops.dbias,
        ),
        uniform: { binding: 10, words: [s.N, s.C, n0, n1] },
        workgroups: grid1d(s.C, 64),
        loops: { bound: n1 - n0, shape: { N: s.N, n0 } },
      }),
    );
  }
  return [
    await makeDispatch(rt, {
      ...common,
      name: "layernorm_backward_input",
      entryPoint: "backward_input",
      buffers: {
        0: all(ops.inp),
        1: bytes(ops.weight),
        4: all(ops.mean),
        5: all(ops.rstd),
        6: all(ops.dout),
        7: all(ops.dinp),
      },
      workgroups: grid1d(s.N, 64),
      loops: { bound: 2 * s.C, shape: { C: s.C } },
    }),
    ...params,
  ];
}
