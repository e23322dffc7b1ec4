/**
 * The encoder: token plus position embeddings (kernels/encoder.wgsl), forward and backward.
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { defineKernel } from "../../gpu/define_kernel.ts";
import { type BufferRange, grid1d, splitRange, WALK_ROWS } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { bytes, tableChunks, type TensorRange } from "./tensor.ts";
import encoderSrc from "../../../kernels/encoder.wgsl" with { type: "text" };

/** kernels/encoder.wgsl's interface. */
export const encoderKernel = defineKernel({
  name: "encoder",
  source: encoderSrc,
  bindings: {
    tokens: { access: "read", type: "u32" },
    wte: { access: "read", type: "float" },
    wpe: { access: "read", type: "float" },
    out: { access: "read_write", type: "f32" },
    dout: { access: "read", type: "f32" },
    dwpe: { access: "read_write", type: "float" },
    dwte: { access: "read_write", type: "float" },
    order: { access: "read", type: "u32" },
  },
  uniforms: {
    BT: "u32",
    T: "u32",
    C: "u32",
    v0: "u32",
    v1: "u32",
    first: "u32",
    pos0: "u32",
    s0: "u32",
    s1: "u32",
  },
  entryPoints: {
    forward: { bindings: ["tokens", "wte", "wpe", "out"], loopBound: () => 0 },
    backward_wpe: { bindings: ["dout", "dwpe"], loopBound: (u) => u.BT / u.T },
    backward_wte: {
      bindings: ["tokens", "dout", "dwte", "order"],
      loopBound: (u) => u.s1 - u.s0,
    },
  },
});

/** Uniform fields a dispatch does not use. */
const unused = { v0: 0, v1: 0, first: 0, pos0: 0, s0: 0, s1: 0 };

/** Shapes for the encoder: B*T tokens of T positions, C channels, Vp table rows. */
export interface EncoderShape {
  BT: number;
  T: number;
  C: number;
  Vp: number;
  /** Binding limit for the wte chunks (default: the adapter's), for tests. */
  maxBindingBytes?: number;
  /** First position (decoding one token at position pos0; see {@linkcode setEncoderPosition}). */
  pos0?: number;
}

/** out[BT, C] = wte[tokens] + wpe[t], one dispatch per binding-sized chunk of wte. */
export function encoderForward(
  rt: Runtime,
  s: EncoderShape,
  ops: { tokens: BufferRange; wte: TensorRange; wpe: TensorRange; out: GPUBuffer },
): Promise<Dispatch[]> {
  return Promise.all(
    tableChunks(rt, s.Vp, s.C, s.maxBindingBytes).map(([v0, v1], i) =>
      encoderKernel.dispatch(rt, "forward", {
        buffers: {
          tokens: ops.tokens,
          wte: bytes({
            buffer: ops.wte.buffer,
            offset: ops.wte.offset + v0 * s.C,
            size: (v1 - v0) * s.C,
          }),
          wpe: bytes(ops.wpe),
          out: ops.out,
        },
        uniforms: {
          ...unused,
          BT: s.BT,
          T: s.T,
          C: s.C,
          v0,
          v1,
          first: i === 0 ? 1 : 0,
          pos0: s.pos0 ?? 0,
        },
        workgroups: grid1d(s.BT * s.C, 64),
      })
    ),
  );
}

/** dwte and dwpe += the encoder's gradients from dout[BT, C]. */
export async function encoderBackward(
  rt: Runtime,
  s: EncoderShape,
  ops: {
    tokens: BufferRange;
    order: BufferRange;
    dout: GPUBuffer;
    dwte: TensorRange;
    dwpe: TensorRange;
  },
): Promise<Dispatch[]> {
  const wpe = await encoderKernel.dispatch(rt, "backward_wpe", {
    buffers: { dout: ops.dout, dwpe: bytes({ ...ops.dwpe, size: s.T * s.C }) },
    uniforms: { ...unused, BT: s.BT, T: s.T, C: s.C },
    workgroups: grid1d(s.T * s.C, 64),
  });
  // Sorted slots in ranges within the loop budget (a run of one token can be all of BT).
  const slots = splitRange(s.BT, WALK_ROWS);
  const pairs = tableChunks(rt, s.Vp, s.C, s.maxBindingBytes).flatMap((v) =>
    slots.map((r) => [v, r] as const)
  );
  const wte = await Promise.all(
    pairs.map(([[v0, v1], [s0, s1]]) =>
      encoderKernel.dispatch(rt, "backward_wte", {
        buffers: {
          tokens: ops.tokens,
          dout: ops.dout,
          dwte: bytes({
            buffer: ops.dwte.buffer,
            offset: ops.dwte.offset + v0 * s.C,
            size: (v1 - v0) * s.C,
          }),
          order: ops.order,
        },
        uniforms: { ...unused, BT: s.BT, T: s.T, C: s.C, v0, v1, s0, s1 },
        workgroups: grid1d((s1 - s0) * s.C, 64),
      })
    ),
  );
  return [wpe, ...wte];
}

/**
 * Sets the first position (`pos0`) of encoder forward dispatches, for decoding one token at
 * a time without rebuilding them.
 */
export function setEncoderPosition(
  queue: GPUQueue,
  dispatches: readonly Dispatch[],
  pos0: number,
): void {
  for (const d of dispatches) encoderKernel.writeUniforms(queue, d, { pos0 });
}
