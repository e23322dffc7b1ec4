/**
 * Decode attention: one new token over the KV cache, flash-decoding style
 * (kernels/attention_decode.wgsl).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { makeDispatch } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { dtypeOf, typedKernel } from "../../gpu/dtype.ts";
import { all } from "./tensor.ts";
import decodeSrc from "../../../kernels/attention_decode.wgsl" with { type: "text" };

/** Cache rows per workgroup of kernels/attention_decode.wgsl. */
const DECODE_DK = 256;

/** Shape of decode attention: a cache of `maxT` rows, C channels, NH heads. */
export interface DecodeShape {
  maxT: number;
  C: number;
  NH: number;
}

/** Bytes of the scratch that decode attention's chunks write their partial results to. */
export function decodePartialBytes(s: DecodeShape): number {
  return s.NH * Math.ceil(s.maxT / DECODE_DK) * (s.C / s.NH + 2) * 4;
}

/**
 * out [C] = attention of q1 (the new token's q|k|v [3C]) over cache rows 0..t ([maxT, 3C]),
 * flash-decoding style: a dispatch of chunks, then one that combines them. Both read t from
 * word 0 of their uniform, which the caller rewrites before each token.
 */
export function attentionDecode(
  rt: Runtime,
  s: DecodeShape,
  ops: { q1: GPUBuffer; cache: GPUBuffer; out: GPUBuffer; partial: GPUBuffer },
): Promise<Dispatch[]> {
  const HS = s.C / s.NH, S = Math.ceil(s.maxT / DECODE_DK), lanes = Math.ceil(HS / 64);
  if (HS > 128) throw new RangeError(`Head size ${HS} is over decode attention's maximum of 128`);
  const spec = {
    code: typedKernel(decodeSrc, { qkv_t: dtypeOf(ops.cache), out_t: dtypeOf(ops.out) }),
    constants: { HS },
    uniform: { binding: 3, words: [0, s.C, s.NH, S] },
  };
  const per = DECODE_DK / 64;
  return Promise.all([
    makeDispatch(rt, {
      ...spec,
      name: "attention_decode",
      entryPoint: "partial_chunk",
      buffers: { 0: all(ops.q1), 1: all(ops.cache), 4: all(ops.partial) },
      workgroups: [S, s.NH, 1],
      loops: {
        bound: per * (HS + 1) + per + 12 + lanes * (DECODE_DK + 1),
        shape: { maxT: s.maxT, HS },
      },
    }),
    makeDispatch(rt, {
      ...spec,
      name: "attention_decode_combine",
      entryPoint: "combine",
      buffers: { 2: all(ops.out), 4: all(ops.partial) },
      workgroups: [s.NH, 1, 1],
      loops: { bound: lanes * (2 * S + 1), shape: { maxT: s.maxT, HS } },
    }),
  ]);
}
