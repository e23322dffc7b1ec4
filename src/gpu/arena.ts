/**
 * The buffer arena: every GPU buffer the package makes goes through here, tagged
 * with a category, so memory can be reported (current and peak, by category)
 * and checked against a plan.
 *
 * @module
 */

import { formatBytes } from "../format.ts";
import { type DType, setDType } from "./dtype.ts";

export { formatBytes };

/** What a buffer holds; the memory report groups by these. */
export type MemoryCategory =
  | "parameters"
  | "gradients"
  | "optimizer"
  | "activations"
  | "scratch";

/** All categories, in report order. */
export const MEMORY_CATEGORIES: readonly MemoryCategory[] = [
  "parameters",
  "gradients",
  "optimizer",
  "activations",
  "scratch",
];

/** A byte count per category plus the total. */
export type MemoryBytes = Record<MemoryCategory, number> & { total: number };

/** A snapshot of the arena's accounting. */
export interface MemoryReport {
  /** Bytes allocated now, by category. */
  current: MemoryBytes;
  /** Peak of the total, with the per-category bytes at the moment of that peak. */
  peak: MemoryBytes;
  /** Live buffers, largest first. */
  buffers: { label: string; category: MemoryCategory; bytes: number }[];
}

/** Usage for storage buffers that can be copied in and out. */
export const STORAGE_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC |
  GPUBufferUsage.COPY_DST;

function zeroBytes(): MemoryBytes {
  return { parameters: 0, gradients: 0, optimizer: 0, activations: 0, scratch: 0, total: 0 };
}

/**
 * Allocates and frees GPU buffers and keeps the books.
 *
 * @example
 * ```ts
 * const gpu = await requestGpu();
 * const arena = new Arena(gpu.device);
 * const w = arena.alloc("wte", "parameters", 1024);
 * console.log(arena.report().current.parameters); // 1024
 * arena.free(w);
 * ```
 */
export class Arena {
  /** The device the buffers are created on. */
  readonly device: GPUDevice;
  #live = new Map<GPUBuffer, { label: string; category: MemoryCategory; bytes: number }>();
  #current = zeroBytes();
  #peak = zeroBytes();

  /** An empty arena for `device`. */
  constructor(device: GPUDevice) {
    this.device = device;
  }

  /**
   * A new zero-filled buffer of at least `bytes` bytes (rounded up to 16),
   * holding elements of `dtype` (see src/gpu/dtype.ts). Storage buffers bigger
   * than the device allows fail here with the numbers.
   */
  alloc(
    label: string,
    category: MemoryCategory,
    bytes: number,
    usage: GPUBufferUsageFlags = STORAGE_USAGE,
    dtype: DType = "f32",
  ): GPUBuffer {
    // Multiples of 16 so any range can be bound as array<vec4f>.
    const size = Math.max(16, Math.ceil(bytes / 16) * 16);
    const max = this.device.limits.maxBufferSize;
    if (size > max) {
      throw new RangeError(
        `Cannot allocate buffer "${label}": ${size} bytes is over this device's maxBufferSize ` +
          `of ${max}: split it into smaller buffers`,
      );
    }
    const buffer = this.device.createBuffer({ label, size, usage });
    setDType(buffer, dtype);
    this.#live.set(buffer, { label, category, bytes: size });
    this.#current[category] += size;
    this.#current.total += size;
    if (this.#current.total > this.#peak.total) this.#peak = { ...this.#current };
    return buffer;
  }

  /** A buffer holding `data`, written through the queue. */
  allocWith(
    label: string,
    category: MemoryCategory,
    data: ArrayBufferView<ArrayBuffer>,
    usage: GPUBufferUsageFlags = STORAGE_USAGE,
    dtype: DType = "f32",
  ): GPUBuffer {
    const buffer = this.alloc(label, category, data.byteLength, usage, dtype);
    // Writes must be whole 4-byte words (an odd count of f16 values is not).
    const bytes = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
    bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    this.device.queue.writeBuffer(buffer, 0, bytes);
    return buffer;
  }

  /** Destroys a buffer made by this arena and takes it off the books. */
  free(buffer: GPUBuffer): void {
    const rec = this.#live.get(buffer);
    if (!rec) {
      throw new Error(`Cannot free buffer "${buffer.label}": it was not made by this arena`);
    }
    this.#live.delete(buffer);
    this.#current[rec.category] -= rec.bytes;
    this.#current.total -= rec.bytes;
    buffer.destroy();
  }

  /** Frees every live buffer. */
  freeAll(): void {
    for (const b of [...this.#live.keys()]) this.free(b);
  }

  /** A scope whose buffers are freed together (a model's, an optimizer's). */
  scope(): ArenaScope {
    return new ArenaScope(this);
  }

  /** Bytes allocated now (cheap: for per-step progress lines). */
  get currentBytes(): number {
    return this.#current.total;
  }

  /** Current and peak bytes by category, and the live buffers. */
  report(): MemoryReport {
    return {
      current: { ...this.#current },
      peak: { ...this.#peak },
      buffers: [...this.#live.values()].sort((a, b) => b.bytes - a.bytes).map((r) => ({ ...r })),
    };
  }
}

/** Buffers made through one owner, freed at once with {@linkcode ArenaScope.freeAll}. */
export class ArenaScope {
  /** The arena that allocates and frees this scope's buffers. */
  readonly arena: Arena;
  #owned: GPUBuffer[] = [];

  /** An empty scope over `arena` (usually made with {@linkcode Arena.scope}). */
  constructor(arena: Arena) {
    this.arena = arena;
  }

  /** As {@linkcode Arena.alloc}, remembered for {@linkcode freeAll}. */
  alloc(
    label: string,
    category: MemoryCategory,
    bytes: number,
    usage?: GPUBufferUsageFlags,
    dtype?: DType,
  ): GPUBuffer {
    const b = this.arena.alloc(label, category, bytes, usage, dtype);
    this.#owned.push(b);
    return b;
  }

  /** Frees every buffer this scope made. */
  freeAll(): void {
    for (const b of this.#owned) this.arena.free(b);
    this.#owned = [];
  }
}

/** A one-line summary of a report's current and peak totals by category. */
export function formatMemory(report: MemoryReport): string {
  const parts = MEMORY_CATEGORIES.filter((c) => report.peak[c] > 0).map((c) =>
    `${c} ${formatBytes(report.peak[c])}`
  );
  return `current ${formatBytes(report.current.total)}, peak ${formatBytes(report.peak.total)}` +
    (parts.length ? ` (at peak: ${parts.join(", ")})` : "");
}
