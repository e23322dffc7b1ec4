/**
 * The encoder: token plus position embeddings (kernels/encoder.wgsl), forward and backward.
 *
 * @module
 */

import type { Dispatch } from "../../gpu/dispatch.ts";
import { type BufferRange, grid1d, makeDispatch, splitRange, WALK_ROWS } from "../../gpu/kernel.ts";
import type { Runtime } from "../../gpu/runtime.ts";
import { all, bytes, tableChunks, type TensorRange } from "./tensor.ts";
import encoderSrc from "../../../kernels/encoder.wgsl" with { type: "text" };

/** kernels/encoder.wgsl's Params (12 words): BT, T, C, v0, v1, first, pos0, s0, s1. */
const encoderWords = (w: number[]) => [...w, ...new Array(12 - w.length).fill(0)];

/** Shapes for the encoder: B*T tokens of T positions, C channels, Vp table rows. */
export interface EncoderShape {
  BT: number;
  T: number;
  C: number;
  Vp: number;
  /** Binding limit for the wte chunks (default: the adapter's), for tests. */
  maxBindingBytes?: number;
  /** First position (decoding one token at position pos0); word 6 of the uniform. */
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
      makeDispatch(rt, {
        name: "encoder_forward",
        code: encoderSrc,
        entryPoint: "forward",
        buffers: {
          0: ops.tokens,
          1: bytes({
            buffer: ops.wte.buffer,
            offset: ops.wte.offset + v0 * s.C,
            size: (v1 - v0) * s.C,
          }),
          2: bytes(ops.wpe),
          3: all(ops.out),
        },
        uniform: {
          binding: 7,
          words: encoderWords([s.BT, s.T, s.C, v0, v1, i === 0 ? 1 : 0, s.pos0 ?? 0]),
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
  const wpe = await makeDispatch(rt, {
    name: "encoder_backward_wpe",
    code: encoderSrc,
    entryPoint: "backward_wpe",
    buffers: { 4: all(ops.dout), 5: bytes({ ...ops.dwpe, size: s.T * s.C }) },
    uniform: { binding: 7, words: encoderWords([s.BT, s.T, s.C]) },
    workgroups: grid1d(s.T * s.C, 64),
    loops: { bound: s.BT / s.T, shape: { B: s.BT / s.T } },
  });
  // Sorted slots in ranges within the loop budget (a run of one token can be all of BT).
  const slots = splitRange(s.BT, WALK_ROWS);
  const pairs = tableChunks(rt, s.Vp, s.C, s.maxBindingBytes).flatMap((v) =>
    slots.map((r) => [v, r] as const)
  );
  const wte = await Promise.all(
    pairs.map(([[v0, v1], [s0, s1]]) =>
      makeDispatch(rt, {
        name: "encoder_backward_wte",
        code: encoderSrc,
        entryPoint: "backward_wte",
        buffers: {
          0: ops.tokens,
          4: all(ops.dout),
          6: bytes({
            buffer: ops.dwte.buffer,
            offset: ops.dwte.offset + v0 * s.C,
            size: (v1 - v0) * s.C,
          }),
          8: ops.order,
        },
        uniform: { binding: 7, words: encoderWords([s.BT, s.T, s.C, v0, v1, 0, 0, s0, s1]) },
        workgroups: grid1d((s1 - s0) * s.C, 64),
        loops: { bound: s1 - s0, shape: { BT: s.BT, s0 } },
      })
    ),
  );
  return [wpe, ...wte];
}
