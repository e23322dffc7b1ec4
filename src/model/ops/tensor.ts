/**
 * Tensors inside flat buffers, as the layers' dispatch builders address them.
 *
 * @module
 */

import { type BufferRange, splitRange } from "../../gpu/kernel.ts";
import { dtypeBytes, dtypeOf } from "../../gpu/dtype.ts";
import type { Runtime } from "../../gpu/runtime.ts";

/** The whole of a buffer. */
export const all = (buffer: GPUBuffer): BufferRange => ({ buffer });

/** A tensor inside a flat buffer: offset and size in elements of the buffer's type. */
export interface TensorRange {
  /** The flat buffer (parameters, gradients or their f16 copy). */
  buffer: GPUBuffer;
  /** Where the tensor starts, in elements of the buffer (not bytes). */
  offset: number;
  /** Number of elements in the tensor. */
  size: number;
}

/**
 * A tensor's bytes as a binding range, in the buffer's element type (f32, or f16 for 16-bit
 * weights and gradients): tensors start 256-byte aligned in either (TENSOR_ALIGN).
 */
export function bytes(t: TensorRange): Required<BufferRange> {
  const n = dtypeBytes(dtypeOf(t.buffer));
  return { buffer: t.buffer, offset: t.offset * n, size: Math.ceil((t.size * n) / 4) * 4 };
}

/**
 * Row ranges of an embedding table [rows, C] that each fit in one binding.
 * Chunks hold a multiple of 64 rows so their offsets stay 256-byte aligned.
 */
export function tableChunks(
  rt: Runtime,
  rows: number,
  C: number,
  limit: number = rt.gpu.limits.maxStorageBufferBindingSize,
): [number, number][] {
  return splitRange(rows, Math.max(64, Math.floor(limit / (C * 4) / 64) * 64));
}
