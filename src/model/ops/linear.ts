/**
 * GPT-2's linear layer (Hugging Face Conv1D layout), forward and backward, as
 * matmul dispatches.
 *
 * Shapes: inp [BT, C], weight [C, OC] (Conv1D: in x out, so checkpoints map one
 * to one), bias [OC], out [BT, OC].
 *   forward:  out   = inp · weight + bias
 *   backward: dinp (+)= dout · weightᵀ
 *             dweight += inpᵀ · dout
 *             dbias   += column sums of dout
 * Gradients of parameters accumulate (+=), as they do over micro-batches;
 * dinp accumulates when `accumulateInput` is set (a residual branch).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { matmul, matmulBiasBackward, type MatmulOptions, type Operand } from "./matmul.ts";

/** Sizes of a linear layer. */
export interface LinearShape {
  /** Rows of the input: batch size times sequence length. */
  BT: number;
  /** Input channels. */
  C: number;
  /** Output channels. */
  OC: number;
  /** The layer has a bias [OC]. */
  bias: boolean;
}

/** Dispatches for out = inp · weight (+ bias). */
export function linearForward(
  rt: Runtime,
  shape: LinearShape,
  ops: { inp: Operand; weight: Operand; bias?: Operand; out: Operand },
  options: MatmulOptions = {},
): Promise<Dispatch[]> {
  const { BT, C, OC } = shape;
  return matmul(rt, { M: BT, N: OC, K: C, bias: shape.bias }, {
    a: ops.inp,
    b: ops.weight,
    c: ops.out,
    bias: ops.bias,
  }, { name: "linear_forward", ...options });
}

/** Dispatches for the backward pass of {@linkcode linearForward}. */
export async function linearBackward(
  rt: Runtime,
  shape: LinearShape & { accumulateInput?: boolean },
  ops: {
    inp: Operand;
    weight: Operand;
    dout: Operand;
    dinp: Operand;
    dweight: Operand;
    dbias?: Operand;
  },
  options: MatmulOptions = {},
): Promise<Dispatch[]> {
  const { BT, C, OC } = shape;
  const dinp = await matmul(
    rt,
    { M: BT, N: C, K: OC, transB: true, accumulate: shape.accumulateInput ?? false },
    { a: ops.dout, b: ops.weight, c: ops.dinp },
    { name: "linear_backward_dinp", ...options },
  );
  const dweight = await matmul(
    rt,
    { M: C, N: OC, K: BT, transA: true, accumulate: true },
    { a: ops.inp, b: ops.dout, c: ops.dweight },
    { name: "linear_backward_dweight", ...options },
  );
  const out = [...dinp, ...dweight];
  if (shape.bias) {
    if (!ops.dbias) throw new TypeError("Linear layer has bias: true but no dbias operand");
    out.push(
      ...await matmulBiasBackward(rt, { M: BT, N: OC }, { dout: ops.dout, dbias: ops.dbias }),
    );
  }
  return out;
}
