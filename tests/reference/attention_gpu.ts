/**
 * The plain attention kernel (tests/reference/attention.wgsl): T x T probabilities in a buffer,
 * a loop that grows with T. A GPU reference for flash attention, used by tests only.
 *
 * @module
 */

import type { Dispatch } from "../../src/gpu/dispatch.ts";
import { grid1d, makeDispatch } from "../../src/gpu/kernel.ts";
import type { Runtime } from "../../src/gpu/runtime.ts";
import type { AttentionShape } from "../../src/model/ops/attention.ts";
import { all } from "../../src/model/ops/tensor.ts";
import attentionSrc from "./attention.wgsl" with { type: "text" };

/** tests/reference/attention.wgsl's loop bound: it grows with T (that kernel is a reference). */
const plainAttentionLoops = (s: AttentionShape) => ({
  bound: s.T * (2 * (s.C / s.NH) + 4) + s.C / s.NH,
  shape: { T: s.T, HS: s.C / s.NH },
});

/** out [B,T,C] and att [B,NH,T,T] from qkv [B,T,3C]. */
export function attentionForward(
  rt: Runtime,
  s: AttentionShape,
  ops: { qkv: GPUBuffer; out: GPUBuffer; att: GPUBuffer },
): Promise<Dispatch> {
  return makeDispatch(rt, {
    name: "attention_forward",
    code: attentionSrc,
    entryPoint: "forward",
    buffers: { 0: all(ops.qkv), 1: all(ops.out), 2: all(ops.att) },
    uniform: { binding: 6, words: [s.B, s.T, s.C, s.NH] },
    workgroups: grid1d(s.B * s.T * s.NH, 64),
    flops: 4 * s.B * s.NH * s.T * s.T * (s.C / s.NH) / 2,
    loops: plainAttentionLoops(s),
  });
}

/** dqkv [B,T,3C] from dout [B,T,C] (dpre is scratch [B,NH,T,T]). */
export async function attentionBackward(
  rt: Runtime,
  s: AttentionShape,
  ops: { qkv: GPUBuffer; att: GPUBuffer; dout: GPUBuffer; dpre: GPUBuffer; dqkv: GPUBuffer },
): Promise<Dispatch[]> {
  const common = {
    code: attentionSrc,
    buffers: {
      0: all(ops.qkv),
      2: all(ops.att),
      3: all(ops.dout),
      4: all(ops.dpre),
      5: all(ops.dqkv),
    },
    uniform: { binding: 6, words: [s.B, s.T, s.C, s.NH] },
    workgroups: grid1d(s.B * s.T * s.NH, 64),
    flops: 4 * s.B * s.NH * s.T * s.T * (s.C / s.NH) / 2,
    loops: plainAttentionLoops(s),
  };
  return [
    await makeDispatch(rt, {
      ...common,
      name: "attention_backward_query",
      entryPoint: "backward_query",
    }),
    await makeDispatch(rt, { ...common, name: "attention_backward_kv", entryPoint: "backward_kv" }),
  ];
}
