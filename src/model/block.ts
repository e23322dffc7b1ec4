/**
 * One transformer block's dispatches. The forward is shared by the batched
 * model (src/model/passes.ts) and the one-token decoder (src/model/decode.ts):
 *
 *   x -> ln_1 -> c_attn -> [attention] -> c_proj -> + x -> ln_2 -> c_fc -> gelu
 *     -> mlp.c_proj -> + (residual)
 *
 * The attention dispatches come from the caller (flash attention over the
 * batch, or attention over the KV cache when decoding). The backward runs the
 * same graph in reverse over the batch, adding to the parameter gradients.
 *
 * The buffers are the block spec's (src/model/block_spec.ts); a layer whose bias the
 * weights' layout lacks gets no bias add and no bias gradient.
 *
 * @module
 */

import type { Dispatch } from "../gpu/dispatch.ts";
import type { Runtime } from "../gpu/runtime.ts";
import { linearBackward, linearForward } from "./ops/linear.ts";
import type { MatmulOptions, Operand } from "./ops/matmul.ts";
import {
  flashAttentionBackward,
  geluBackward,
  geluForward,
  layernormBackward,
  layernormForward,
  residualForward,
  type TensorRange,
} from "./ops/mod.ts";
import type { BlockActs, BlockScratch } from "./block_spec.ts";
import type { Weights } from "./weights.ts";

/** Which block, over which weights, with which matmul options. */
export interface BlockAt {
  /** The weights the block reads (and whose gradients its backward adds to). */
  weights: Weights;
  /** The layer index. */
  l: number;
  /** Options for the block's matmuls. */
  matmul?: MatmulOptions;
}

/** The buffers one block reads and writes: its input (the residual stream) and activations. */
export type BlockBuffers = BlockActs & { input: GPUBuffer };

/** A block's dispatches in order: `pre`, then attention, then `post`. */
export interface BlockDispatches {
  /** ln_1 and c_attn: up to q|k|v. */
  pre: Dispatch[];
  attention: Dispatch[];
  /** c_proj, residual, ln_2, MLP, residual. */
  post: Dispatch[];
  /** The part of `post` that recomputes the MLP's 4C-wide activations (c_fc, gelu). */
  mlp: Dispatch[];
}

/**
 * Block `l`'s parameters by name: their ranges, the ranges matmuls read weights from (an f16
 * copy under mixed precision) and gradients. A bias the layout lacks is undefined.
 */
function blockParams(weights: Weights, l: number) {
  const name = (n: string) => `h.${l}.${n}`;
  const range = (t: TensorRange): Operand => ({ buffer: t.buffer, offset: t.offset });
  const bias = (n: string, grads = false) =>
    weights.has(name(`${n}.bias`)) ? weights.tensor(name(`${n}.bias`), grads) : undefined;
  return {
    /** A parameter (or its gradient). */
    p: (n: string, grads = false) => weights.tensor(name(n), grads),
    /** Where matmuls read layer `n`'s weight. */
    w: (n: string) => range(weights.weight(name(`${n}.weight`))),
    /** Layer `n`'s bias (or its gradient), if it has one. */
    bias,
    /** The same as an operand. */
    biasOp: (n: string, grads = false) => {
      const b = bias(n, grads);
      return b && range(b);
    },
    range,
  };
}

const buf = (x: GPUBuffer): Operand => ({ buffer: x });

/**
 * Builds block `l` over `rows` positions; the attention dispatches (between q|k|v and
 * c_proj) come from the caller.
 */
export async function blockForward(
  rt: Runtime,
  at: BlockAt & { rows: number },
  b: BlockBuffers,
  attention: Dispatch[],
): Promise<BlockDispatches> {
  const { rows: BT, l, weights, matmul: mm } = at, C = weights.config.nEmbd;
  const P = blockParams(weights, l);
  const lin = (name: string, Cin: number, OC: number, inp: GPUBuffer, out: GPUBuffer) => {
    const bias = P.biasOp(name);
    return linearForward(rt, { BT, C: Cin, OC, bias: !!bias }, {
      inp: buf(inp),
      weight: P.w(name),
      bias,
      out: buf(out),
    }, mm);
  };
  const ln = (name: string, inp: GPUBuffer, out: GPUBuffer, mean: GPUBuffer, rstd: GPUBuffer) =>
    layernormForward(rt, { N: BT, C }, {
      inp,
      weight: P.p(`${name}.weight`),
      bias: P.bias(name),
      out,
      mean,
      rstd,
    });
  const pre = [
    await ln("ln_1", b.input, b.ln1, b.ln1Mean, b.ln1Rstd),
    ...await lin("attn.c_attn", C, 3 * C, b.ln1, b.qkv),
  ];
  const mlp = [
    ...await lin("mlp.c_fc", C, 4 * C, b.ln2, b.fch),
    await geluForward(rt, BT * 4 * C, { inp: b.fch, out: b.fchGelu }),
  ];
  const post = [
    ...await lin("attn.c_proj", C, C, b.atty, b.attproj),
    await residualForward(rt, BT * C, { a: b.input, b: b.attproj, out: b.res2 }),
    await ln("ln_2", b.res2, b.ln2, b.ln2Mean, b.ln2Rstd),
    ...mlp,
    ...await lin("mlp.c_proj", 4 * C, C, b.fchGelu, b.fcproj),
    await residualForward(rt, BT * C, { a: b.res2, b: b.fcproj, out: b.res3 }),
  ];
  return { pre, attention, post, mlp };
}

/**
 * Builds block `l`'s backward over B*T positions, from `b`'s saved (or recomputed)
 * activations, adding to the parameter gradients; `d` is the scratch every block reuses
 * (dresidual: the block's output gradient on entry, its input gradient on exit).
 */
export async function blockBackward(
  rt: Runtime,
  at: BlockAt & { B: number; T: number },
  b: BlockBuffers,
  d: BlockScratch,
): Promise<Dispatch[]> {
  const { B, T, l, weights, matmul: mm } = at;
  const { nEmbd: C, nHead: NH } = weights.config;
  const BT = B * T;
  const P = blockParams(weights, l);
  const lin = (
    name: string,
    Cin: number,
    OC: number,
    inp: GPUBuffer,
    dout: GPUBuffer,
    dinp: GPUBuffer,
  ) => {
    const dbias = P.biasOp(name, true);
    return linearBackward(rt, { BT, C: Cin, OC, bias: !!dbias }, {
      inp: buf(inp),
      weight: P.w(name),
      dout: buf(dout),
      dinp: buf(dinp),
      dweight: P.range(P.p(`${name}.weight`, true)),
      dbias,
    }, mm);
  };
  const ln = (name: string, inp: GPUBuffer, mean: GPUBuffer, rstd: GPUBuffer) =>
    layernormBackward(rt, { N: BT, C }, {
      inp,
      weight: P.p(`${name}.weight`),
      mean,
      rstd,
      dout: d.dBtc,
      dinp: d.dresidual,
      dweight: P.p(`${name}.weight`, true),
      dbias: P.bias(name, true),
    });
  return [
    ...await lin("mlp.c_proj", 4 * C, C, b.fchGelu, d.dresidual, d.dFchGelu),
    await geluBackward(rt, BT * 4 * C, { inp: b.fch, dout: d.dFchGelu, dinp: d.dFch }),
    ...await lin("mlp.c_fc", C, 4 * C, b.ln2, d.dFch, d.dBtc),
    ...await ln("ln_2", b.res2, b.ln2Mean, b.ln2Rstd),
    ...await lin("attn.c_proj", C, C, b.atty, d.dresidual, d.dAtty),
    ...await flashAttentionBackward(rt, { B, T, C, NH }, {
      qkv: b.qkv,
      out: b.atty,
      lse: b.lse,
      dout: d.dAtty,
      delta: d.attnDelta,
      dqkv: d.dQkv,
    }),
    ...await lin("attn.c_attn", C, 3 * C, b.ln1, d.dQkv, d.dBtc),
    ...await ln("ln_1", b.input, b.ln1Mean, b.ln1Rstd),
  ];
}
