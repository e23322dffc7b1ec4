/**
 * LayerNorm (kernels/layernorm.wgsl), forward and backward. On a GPU with subgroups the
 * forward and the input gradient take a workgroup per row, its sums through subgroups
 * (kernels/layernorm_rows.wgsl); a CPU adapter keeps an invocation per row, which suits it.
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { defineKernel } from "../../gpu/define_kernel.ts";
import { grid1d, splitRange, WALK_ROWS } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { bytes, type TensorRange } from "./tensor.ts";
import layernormSrc from "../../../kernels/layernorm.wgsl" with { type: "text" };
import layernormRowsSrc from "../../../kernels/layernorm_rows.wgsl" with { type: "text" };

/** kernels/layernorm.wgsl's interface. */
export const layernormKernel = defineKernel({
  name: "layernorm",
  source: layernormSrc,
  bindings: {
    inp: { access: "read", type: "f32" },
    weight: { access: "read", type: "f32" },
    bias: { access: "read", type: "f32" },
    out: { access: "read_write", type: "float" },
    mean: { access: "read_write", type: "f32" },
    rstd: { access: "read_write", type: "f32" },
    dout: { access: "read", type: "f32" },
    dinp: { access: "read_write", type: "f32" },
    dweight: { access: "read_write", type: "f32" },
    dbias: { access: "read_write", type: "f32" },
  },
  uniforms: { N: "u32", C: "u32", n0: "u32", n1: "u32" },
  entryPoints: {
    forward: {
      bindings: ["inp", "weight", "bias", "out", "mean", "rstd"],
      loopBound: (u) => 3 * u.C,
    },
    forward_no_bias: {
      bindings: ["inp", "weight", "out", "mean", "rstd"],
      loopBound: (u) => 3 * u.C,
    },
    backward_input: {
      bindings: ["inp", "weight", "mean", "rstd", "dout", "dinp"],
      loopBound: (u) => 2 * u.C,
    },
    backward_params: {
      bindings: ["inp", "mean", "rstd", "dout", "dweight", "dbias"],
      loopBound: (u) => u.n1 - u.n0,
    },
    backward_params_no_bias: {
      bindings: ["inp", "mean", "rstd", "dout", "dweight"],
      loopBound: (u) => u.n1 - u.n0,
    },
  },
});

/** kernels/layernorm_rows.wgsl's interface: a workgroup of 64 lanes per row, subgroup sums. */
export const layernormRowsKernel = defineKernel({
  name: "layernorm_rows",
  source: layernormRowsSrc,
  bindings: {
    inp: { access: "read", type: "f32" },
    weight: { access: "read", type: "f32" },
    bias: { access: "read", type: "f32" },
    out: { access: "read_write", type: "float" },
    mean: { access: "read_write", type: "f32" },
    rstd: { access: "read_write", type: "f32" },
    dout: { access: "read", type: "f32" },
    dinp: { access: "read_write", type: "f32" },
  },
  uniforms: { N: "u32", C: "u32" },
  entryPoints: {
    forward: {
      bindings: ["inp", "weight", "bias", "out", "mean", "rstd"],
      loopBound: (u) => 3 * Math.ceil(u.C / 64) + 2 * 64,
    },
    forward_no_bias: {
      bindings: ["inp", "weight", "out", "mean", "rstd"],
      loopBound: (u) => 3 * Math.ceil(u.C / 64) + 2 * 64,
    },
    backward_input: {
      bindings: ["inp", "weight", "mean", "rstd", "dout", "dinp"],
      loopBound: (u) => 2 * Math.ceil(u.C / 64) + 2 * 64,
    },
  },
});

/** How a LayerNorm's rows are spread. */
export interface LayernormOptions {
  /**
   * A workgroup per row with subgroup sums (kernels/layernorm_rows.wgsl) instead of an
   * invocation per row. Default: where the device has subgroups and is not a CPU adapter.
   */
  subgroups?: boolean;
}

const rowsPerWorkgroup = (rt: Runtime, o: LayernormOptions) =>
  o.subgroups ?? (rt.gpu.features.subgroups && !rt.gpu.isCpu);

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
  options: LayernormOptions = {},
): Promise<Dispatch> {
  const { inp, out, mean, rstd } = ops, weight = bytes(ops.weight);
  if (rowsPerWorkgroup(rt, options)) {
    const uniforms = { N: s.N, C: s.C }, workgroups = grid1d(s.N, 1);
    return ops.bias
      ? layernormRowsKernel.dispatch(rt, "forward", {
        buffers: { inp, weight, bias: bytes(ops.bias), out, mean, rstd },
        uniforms,
        workgroups,
      })
      : layernormRowsKernel.dispatch(rt, "forward_no_bias", {
        buffers: { inp, weight, out, mean, rstd },
        uniforms,
        workgroups,
      });
  }
  const uniforms = { N: s.N, C: s.C, n0: 0, n1: 0 };
  if (!ops.bias) {
    return layernormKernel.dispatch(rt, "forward_no_bias", {
      buffers: { inp, weight, out, mean, rstd },
      uniforms,
      workgroups: grid1d(s.N, 64),
    });
  }
  return layernormKernel.dispatch(rt, "forward", {
    buffers: { inp, weight, bias: bytes(ops.bias), out, mean, rstd },
    uniforms,
    workgroups: grid1d(s.N, 64),
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
  options: LayernormOptions = {},
): Promise<Dispatch[]> {
  const { inp, mean, rstd, dout } = ops;
  // The parameter gradients sum over rows: in ranges within the loop budget, in order.
  const params: Dispatch[] = [];
  for (const [n0, n1] of splitRange(s.N, WALK_ROWS)) {
    const uniforms = { N: s.N, C: s.C, n0, n1 }, dweight = bytes(ops.dweight);
    params.push(
      ops.dbias
        ? await layernormKernel.dispatch(rt, "backward_params", {
          buffers: { inp, mean, rstd, dout, dweight, dbias: bytes(ops.dbias) },
          uniforms,
          workgroups: grid1d(s.C, 64),
        })
        : await layernormKernel.dispatch(rt, "backward_params_no_bias", {
          buffers: { inp, mean, rstd, dout, dweight },
          uniforms,
          workgroups: grid1d(s.C, 64),
        }),
    );
  }
  const input = { inp, weight: bytes(ops.weight), mean, rstd, dout, dinp: ops.dinp };
  return [
    rowsPerWorkgroup(rt, options)
      ? await layernormRowsKernel.dispatch(rt, "backward_input", {
        buffers: input,
        uniforms: { N: s.N, C: s.C },
        workgroups: grid1d(s.N, 1),
      })
      : await layernormKernel.dispatch(rt, "backward_input", {
        buffers: input,
        uniforms: { N: s.N, C: s.C, n0: 0, n1: 0 },
        workgroups: grid1d(s.N, 64),
      }),
    ...params,
  ];
}
