/**
 * One transformer block's forward dispatches, shared by the batched model
 * (src/model/gpt2.ts) and the one-token decoder (src/model/decode.ts):
 *
 *   x -> ln_1 -> c_attn -> [attention] -> c_proj -> + x -> ln_2 -> c_fc -> gelu
 *     -> mlp.c_proj -> + (residual)
 *
 * The attention dispatches come from the caller (flash attention over the
 * batch, or attention over the KV cache when decoding).
 *
 * @module
 */

import type { Dispatch } from "../gpu/dispatch.ts";
import type { Runtime } from "../gpu/runtime.ts";
import { linearForward } from "./linear.ts";
import type { MatmulOptions } from "./matmul.ts";
import { geluForward, layernormForward, residualForward, type TensorRange } from "./ops.ts";

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
  shape: { rows: number; C: number; l: number },
  P: (name: string) => TensorRange,
  W: (name: string) => TensorRange,
  b: BlockBuffers,
  attention: Dispatch[],
  mm: MatmulOptions = {},
): Promise<BlockDispatches> {
  const { rows: BT, C, l } = shape;
  const h = (n: string) => P(`h.${l}.${n}`);
  const op = (n: string) => ({ buffer: h(n).buffer, offset: h(n).offset });
  const w = (n: string) => ({ buffer: W(`h.${l}.${n}`).buffer, offset: W(`h.${l}.${n}`).offset });
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
