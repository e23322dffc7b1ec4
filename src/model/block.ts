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
 * @module
 */

import type { Dispatch } from "../gpu/dispatch.ts";
import type { Runtime } from "../gpu/runtime.ts";
import { linearBackward, linearForward } from "./ops/linear.ts";
import type { MatmulOptions } from "./ops/matmul.ts";
import {
  flashAttentionBackward,
  geluBackward,
  geluForward,
  layernormBackward,
  layernormForward,
  residualForward,
  type TensorRange,
} from "./ops/mod.ts";
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

/** The buffers one block reads and writes ([rows, C] unless noted). */
export interface BlockBuffers {
  /** The block's input (the residual stream). */
  input: GPUBuffer;
  ln1: GPUBuffer;
  ln1Mean: GPUBuffer;
  ln1Rstd: GPUBuffer;
  /** [rows, 3C] */
  qkv: GPUBuffer;
  /** Attention output. */
  atty: GPUBuffer;
  attproj: GPUBuffer;
  res2: GPUBuffer;
  ln2: GPUBuffer;
  ln2Mean: GPUBuffer;
  ln2Rstd: GPUBuffer;
  /** [rows, 4C] */
  fch: GPUBuffer;
  /** [rows, 4C] */
  fchGelu: GPUBuffer;
  fcproj: GPUBuffer;
  /** The block's output. */
  res3: GPUBuffer;
}

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
 * Builds block `l` over `rows` positions; `P` names the parameter ranges, `W`
 * the ranges matmuls read weights from (an f16 copy under mixed precision).
 */
export async function blockForward(
  rt: Runtime,
  at: BlockAt & { rows: number },
  b: BlockBuffers,
  attention: Dispatch[],
): Promise<BlockDispatches> {
  const { rows: BT, l, weights, matmul: mm } = at, C = weights.config.nEmbd;
  const h = (n: string) => weights.tensor(`h.${l}.${n}`);
  const op = (n: string) => ({ buffer: h(n).buffer, offset: h(n).offset });
  const w = (n: string) => {
    const t = weights.weight(`h.${l}.${n}`);
    return { buffer: t.buffer, offset: t.offset };
  };
  const buf = (x: GPUBuffer) => ({ buffer: x });
  const lin = (name: string, Cin: number, OC: number, inp: GPUBuffer, out: GPUBuffer) =>
    linearForward(rt, { BT, C: Cin, OC, bias: true }, {
      inp: buf(inp),
      weight: w(`${name}.weight`),
      bias: op(`${name}.bias`),
      out: buf(out),
    }, mm);
  const ln = (name: string, inp: GPUBuffer, out: GPUBuffer, mean: GPUBuffer, rstd: GPUBuffer) =>
    layernormForward(rt, { N: BT, C }, {
      inp,
      weight: h(`${name}.weight`),
      bias: h(`${name}.bias`),
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

/** Scratch gradients the backward of every block reuses ([B*T, width]). */
export interface BlockScratch {
  /** Gradient of the residual stream [C]: read as the block's output gradient, then added to. */
  dres: GPUBuffer;
  /** [C]: the LayerNorms' output gradients. */
  dbtc: GPUBuffer;
  /** [C] */
  datty: GPUBuffer;
  /** [3C] */
  dqkv: GPUBuffer;
  /** [4C] */
  dfchGelu: GPUBuffer;
  /** [4C] */
  dfch: GPUBuffer;
  /** Flash attention's D [B, NH, T]. */
  delta: GPUBuffer;
}

/**
 * Builds block `l`'s backward over B*T positions, from `b`'s saved (or
 * recomputed) activations and `lse`: `P` names parameters, `W` the weights
 * matmuls read, `G` gradients (added to).
 */
export async function blockBackward(
  rt: Runtime,
  at: BlockAt & { B: number; T: number },
  b: BlockBuffers & { lse: GPUBuffer },
  d: BlockScratch,
): Promise<Dispatch[]> {
  const { B, T, l, weights, matmul: mm } = at;
  const { nEmbd: C, nHead: NH } = weights.config;
  const BT = B * T;
  const h = (n: string) => weights.tensor(`h.${l}.${n}`);
  const g = (n: string) => weights.tensor(`h.${l}.${n}`, true);
  const op = (t: TensorRange) => ({ buffer: t.buffer, offset: t.offset });
  const buf = (x: GPUBuffer) => ({ buffer: x });
  const lin = (
    name: string,
    Cin: number,
    OC: number,
    inp: GPUBuffer,
    dout: GPUBuffer,
    dinp: GPUBuffer,
  ) =>
    linearBackward(rt, { BT, C: Cin, OC, bias: true }, {
      inp: buf(inp),
      weight: op(weights.weight(`h.${l}.${name}.weight`)),
      dout: buf(dout),
      dinp: buf(dinp),
      dweight: op(g(`${name}.weight`)),
      dbias: op(g(`${name}.bias`)),
    }, mm);
  const ln = (name: string, inp: GPUBuffer, mean: GPUBuffer, rstd: GPUBuffer) =>
    layernormBackward(rt, { N: BT, C }, {
      inp,
      weight: h(`${name}.weight`),
      mean,
      rstd,
      dout: d.dbtc,
      dinp: d.dres,
      dweight: g(`${name}.weight`),
      dbias: g(`${name}.bias`),
    });
  return [
    ...await lin("mlp.c_proj", 4 * C, C, b.fchGelu, d.dres, d.dfchGelu),
    await geluBackward(rt, BT * 4 * C, { inp: b.fch, dout: d.dfchGelu, dinp: d.dfch }),
    ...await lin("mlp.c_fc", C, 4 * C, b.ln2, d.dfch, d.dbtc),
    ...await ln("ln_2", b.res2, b.ln2Mean, b.ln2Rstd),
    ...await lin("attn.c_proj", C, C, b.atty, d.dres, d.datty),
    ...await flashAttentionBackward(rt, { B, T, C, NH }, {
      qkv: b.qkv,
      out: b.atty,
      lse: b.lse,
      dout: d.datty,
      delta: d.delta,
      dqkv: d.dqkv,
    }),
    ...await lin("attn.c_attn", C, 3 * C, b.ln1, d.dqkv, d.dbtc),
    ...await ln("ln_1", b.input, b.ln1Mean, b.ln1Rstd),
  ];
}
