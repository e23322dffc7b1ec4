/**
 * Decode attention: one new token over the KV cache, flash-decoding style
 * (kernels/attention_decode.wgsl).
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { writeDispatchUniforms } from "../../gpu/define_kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { defineReducing, reduceForm, type ReduceOptions } from "./reduce.ts";
import decodeSrc from "../../../kernels/attention_decode.wgsl" with { type: "text" };

/** Cache rows per workgroup of kernels/attention_decode.wgsl. */
const DECODE_DK = 256;

/**
 * kernels/attention_decode.wgsl's interface, in each reduction form (src/model/ops/reduce.ts:
 * a chunk's max and sum).
 */
export const attentionDecodeKernels = defineReducing({
  name: "attention_decode",
  source: decodeSrc,
  bindings: {
    q1: { access: "read", type: "float", alias: "qkv_t" },
    cache: { access: "read", type: "float", alias: "qkv_t" },
    out: { access: "read_write", type: "float" },
    partial: { access: "read_write", type: "f32" },
  },
  uniforms: { t: "u32", C: "u32", NH: "u32", S: "u32" },
  overrides: { HS: { type: "u32", default: 64 } },
  entryPoints: {
    partial_chunk: {
      bindings: ["q1", "cache", "partial"],
      label: "attention_decode",
      loopBound: (_, o) => {
        const per = DECODE_DK / 64;
        return per * (o.HS + 1) + per + 2 * 64 + Math.ceil(o.HS / 64) * (DECODE_DK + 1);
      },
    },
    combine: {
      bindings: ["out", "partial"],
      label: "attention_decode_combine",
      loopBound: (u, o) => Math.ceil(o.HS / 64) * (2 * u.S + 1),
    },
  },
});

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
 * flash-decoding style: a dispatch of chunks, then one that combines them. Both read the
 * position t from their uniform, which {@linkcode setDecodePosition} rewrites before each token.
 */
export async function attentionDecode(
  rt: Runtime,
  s: DecodeShape,
  ops: { q1: GPUBuffer; cache: GPUBuffer; out: GPUBuffer; partial: GPUBuffer },
  options: ReduceOptions = {},
): Promise<Dispatch[]> {
  const HS = s.C / s.NH, S = Math.ceil(s.maxT / DECODE_DK);
  if (HS > 128) throw new RangeError(`Head size ${HS} is over decode attention's maximum of 128`);
  const uniforms = { t: 0, C: s.C, NH: s.NH, S };
  const kernel = attentionDecodeKernels[await reduceForm(rt, options)];
  return await Promise.all([
    kernel.dispatch(rt, "partial_chunk", {
      buffers: { q1: ops.q1, cache: ops.cache, partial: ops.partial },
      uniforms,
      overrides: { HS },
      workgroups: [S, s.NH, 1],
    }),
    kernel.dispatch(rt, "combine", {
      buffers: { out: ops.out, partial: ops.partial },
      uniforms,
      overrides: { HS },
      workgroups: [s.NH, 1, 1],
    }),
  ]);
}

/** Sets the position t (the new token's) of decode attention's dispatches. */
export function setDecodePosition(
  queue: GPUQueue,
  dispatches: readonly Dispatch[],
  t: number,
): void {
  for (const d of dispatches) writeDispatchUniforms(queue, d, { t }); // either form's
}
