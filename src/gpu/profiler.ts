/**
 * Per-dispatch GPU timings with timestamp queries, on behind `DEBUG=3`.
 *
 * Each profiled dispatch runs in its own compute pass with a begin and end
 * timestamp; after the step the queries are resolved, read back and summed per
 * kernel name. Reading back every step is slow, which is why it is debug only.
 *
 * @module
 */

import type { Dispatch } from "./dispatch.ts";

/** Totals for one kernel name. */
export interface KernelTiming {
  /** The dispatches' kernel name. */
  name: string;
  /** Number of profiled dispatches with this name. */
  calls: number;
  /** Total GPU time of those dispatches, in milliseconds. */
  ms: number;
  /** Total floating-point operations of those dispatches (0 when unknown). */
  flops: number;
}

/**
 * Collects timestamp pairs for up to `capacity` dispatches per step.
 *
 * @example
 * ```ts
 * const profiler = Profiler.create(gpu.device); // undefined without timestamp-query
 * await runDispatches(gpu.device, dispatches, profiler);
 * console.log(profiler?.format());
 * ```
 */
export class Profiler {
  /** The device whose dispatches are timed. */
  readonly device: GPUDevice;
  /** Most dispatches that can be timed per step (at most 2048). */
  readonly capacity: number;
  #querySet: GPUQuerySet;
  #resolveBuffer: GPUBuffer;
  #readBuffer: GPUBuffer;
  #pending: Dispatch[] = [];
  #totals = new Map<string, KernelTiming>();

  private constructor(device: GPUDevice, capacity: number) {
    this.device = device;
    if (capacity > 2048) {
      throw new RangeError(
        `Profiler capacity ${capacity} is over WebGPU's limit: use at most 2048`,
      );
    }
    this.capacity = capacity;
    this.#querySet = device.createQuerySet({ type: "timestamp", count: 2 * capacity });
    this.#resolveBuffer = device.createBuffer({
      size: 16 * capacity,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    this.#readBuffer = device.createBuffer({
      size: 16 * capacity,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /**
   * A profiler, or undefined when the device has no timestamp-query feature.
   * WebGPU allows 4096 queries per set, so at most 2048 dispatches per step.
   */
  static create(device: GPUDevice, capacity = 2048): Profiler | undefined {
    return device.features.has("timestamp-query") ? new Profiler(device, capacity) : undefined;
  }

  /** Timestamp writes for the next dispatch's pass. */
  slot(d: Dispatch): GPUComputePassTimestampWrites {
    const i = this.#pending.length;
    if (i >= this.capacity) {
      throw new RangeError(
        `Profiler is full: more than ${this.capacity} dispatches in one step: ` +
          "create it with a larger capacity",
      );
    }
    this.#pending.push(d);
    return {
      querySet: this.#querySet,
      beginningOfPassWriteIndex: 2 * i,
      endOfPassWriteIndex: 2 * i + 1,
    };
  }

  /** Adds the resolve and copy commands; call after the profiled dispatches. */
  resolve(encoder: GPUCommandEncoder): void {
    const n = this.#pending.length;
    if (n === 0) return;
    encoder.resolveQuerySet(this.#querySet, 0, 2 * n, this.#resolveBuffer, 0);
    encoder.copyBufferToBuffer(this.#resolveBuffer, 0, this.#readBuffer, 0, 16 * n);
  }

  /** Reads back the step's timestamps (after submit) and adds them to the totals. */
  async collect(): Promise<void> {
    const n = this.#pending.length;
    if (n === 0) return;
    await this.#readBuffer.mapAsync(GPUMapMode.READ, 0, 16 * n);
    const t = new BigUint64Array(this.#readBuffer.getMappedRange(0, 16 * n));
    for (let i = 0; i < n; i++) {
      const d = this.#pending[i];
      const ms = Number(t[2 * i + 1] - t[2 * i]) / 1e6;
      const rec = this.#totals.get(d.name) ?? { name: d.name, calls: 0, ms: 0, flops: 0 };
      rec.calls++;
      rec.ms += ms;
      rec.flops += d.flops;
      this.#totals.set(d.name, rec);
    }
    this.#readBuffer.unmap();
    this.#pending = [];
  }

  /** Totals per kernel name, slowest first. */
  timings(): KernelTiming[] {
    return [...this.#totals.values()].sort((a, b) => b.ms - a.ms);
  }

  /** A table of the totals: calls, ms, share and GFLOP/s per kernel. */
  format(): string {
    const rows = this.timings();
    const total = rows.reduce((s, r) => s + r.ms, 0);
    const out = ["kernel                          calls        ms      %   GFLOP/s"];
    for (const r of rows) {
      const gflops = r.flops && r.ms ? (r.flops / r.ms / 1e6).toFixed(1) : "-";
      out.push(
        `${r.name.padEnd(30)} ${String(r.calls).padStart(6)} ${r.ms.toFixed(2).padStart(9)} ` +
          `${(100 * r.ms / (total || 1)).toFixed(1).padStart(6)} ${gflops.padStart(9)}`,
      );
    }
    return out.join("\n");
  }

  /** Releases the query set and buffers. */
  destroy(): void {
    this.#querySet.destroy();
    this.#resolveBuffer.destroy();
    this.#readBuffer.destroy();
  }
}
