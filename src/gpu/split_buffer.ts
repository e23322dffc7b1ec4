/**
 * A flat array of elements held in one GPU buffer or in several, split at given element
 * boundaries, when it is larger than one buffer may be (the adapter's maxBufferSize: 2 GiB on
 * lavapipe, often 4 GiB on GPUs; a 1.5B-parameter model's f16 weights take 3.1 GB). Its users
 * address it by element offsets in the whole array, as if it were one buffer, and bind
 * {@linkcode SplitBuffer.at}'s buffer and local offset; a range never straddles two parts.
 * Parts may share a buffer (`base` says where a part starts in it): the optimizer-in-backward
 * mode keeps every block's gradients in one block-sized buffer, reused block after block.
 *
 * @module
 */

import { type DType, dtypeBytes, dtypeOf } from "./dtype.ts";

/** One buffer of a split array: elements [start, end) of the whole, from `base` of `buffer`. */
export interface BufferPart {
  /** The first element of the whole array this part holds. */
  start: number;
  /** One past its last element. */
  end: number;
  /** The buffer holding it. */
  buffer: GPUBuffer;
  /** Where the part starts in its buffer, in elements (default 0). */
  base?: number;
}

/** A flat array of elements in one or more buffers of one element type. */
export class SplitBuffer {
  /** The parts in order, covering [0, elements). */
  readonly parts: readonly BufferPart[];
  /** Their element type. */
  readonly dtype: DType;

  /** Makes a split buffer of `parts`, which must follow each other from element 0. */
  constructor(parts: readonly BufferPart[]) {
    if (!parts.length) throw new RangeError("A split buffer needs at least one part");
    parts.forEach((p, i) => {
      if (p.start !== (i ? parts[i - 1].end : 0) || p.end < p.start) {
        throw new RangeError(`Split buffer parts must follow each other from 0: part ${i}`);
      }
    });
    this.dtype = dtypeOf(parts[0].buffer);
    if (parts.some((p) => dtypeOf(p.buffer) !== this.dtype)) {
      throw new TypeError("Split buffer parts must hold one element type");
    }
    this.parts = parts;
  }

  /** One buffer as a split buffer of one part. */
  static of(buffer: GPUBuffer): SplitBuffer {
    return new SplitBuffer([
      { start: 0, end: buffer.size / dtypeBytes(dtypeOf(buffer)), buffer },
    ]);
  }

  /** Elements in all. */
  get elements(): number {
    return this.parts[this.parts.length - 1].end;
  }

  /** The distinct buffers, in order. */
  get buffers(): GPUBuffer[] {
    return [...new Set(this.parts.map((p) => p.buffer))];
  }

  /** The buffers that hold more than one part (reused, like the shared block gradients). */
  get shared(): GPUBuffer[] {
    return this.buffers.filter((b) => this.parts.filter((p) => p.buffer === b).length > 1);
  }

  /** The only buffer, or an error naming `what` when there are several. */
  single(what: string): GPUBuffer {
    if (this.parts.length > 1) {
      throw new RangeError(
        `${what} span ${this.parts.length} buffers (over the adapter's maxBufferSize): address ` +
          "them through their SplitBuffer",
      );
    }
    return this.parts[0].buffer;
  }

  /** The part holding elements [offset, offset + size), and the offset within it. */
  at(offset: number, size = 0): { buffer: GPUBuffer; offset: number } {
    const p = this.parts.find((p) => offset >= p.start && offset < p.end) ??
      (offset === this.elements ? this.parts[this.parts.length - 1] : undefined);
    if (!p || offset + size > p.end) {
      throw new RangeError(
        `Elements [${offset}, ${offset + size}) are not inside one part of the split buffer ` +
          `(${this.parts.map((q) => `[${q.start}, ${q.end})`).join(", ")})`,
      );
    }
    return { buffer: p.buffer, offset: offset - p.start + (p.base ?? 0) };
  }

  /** Elements [offset, offset + size) as a binding range (bytes, whole 4-byte words). */
  range(offset: number, size: number): { buffer: GPUBuffer; offset: number; size: number } {
    const at = this.at(offset, size), n = dtypeBytes(this.dtype);
    return { buffer: at.buffer, offset: at.offset * n, size: Math.ceil((size * n) / 4) * 4 };
  }

  /** [start, end) cut at the parts' boundaries, each piece with its part. */
  pieces(start: number, end: number): { start: number; end: number; part: BufferPart }[] {
    return this.parts.filter((p) => p.start < end && p.end > start).map((part) => ({
      start: Math.max(start, part.start),
      end: Math.min(end, part.end),
      part,
    }));
  }
}

/** A buffer or a split buffer, as a split buffer. */
export const splitOf = (b: GPUBuffer | SplitBuffer): SplitBuffer =>
  b instanceof SplitBuffer ? b : SplitBuffer.of(b);
