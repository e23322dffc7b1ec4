/**
 * The runtime a model or kernel needs: device, arena, pipeline cache and, with
 * `DEBUG=3`, a profiler.
 *
 * @module
 */

import { Arena } from "./arena.ts";
import { debugLevel } from "./debug.ts";
import { dtypeBytes, dtypeOf } from "./dtype.ts";
import { type Gpu, requestGpu, type RequestGpuOptions } from "./device.ts";
import { PipelineCache } from "./pipelines.ts";
import { Profiler } from "./profiler.ts";

/** Everything GPU-side that kernels share. */
export interface Runtime {
  /** The adapter's name, limits and features, with the device. */
  gpu: Gpu;
  /** The WebGPU device every buffer and pipeline belongs to (same as `gpu.device`). */
  device: GPUDevice;
  /** The arena that allocates, frees and accounts for every GPU buffer. */
  arena: Arena;
  /** Compiled compute pipelines, shared by every kernel built on this runtime. */
  pipelines: PipelineCache;
  /** Present with DEBUG=3 on adapters with timestamp-query. */
  profiler?: Profiler;
}

/**
 * Requests a device and builds the runtime around it.
 *
 * @example
 * ```ts
 * const rt = await createRuntime();
 * console.log(rt.gpu.name);
 * ```
 */
export async function createRuntime(options: RequestGpuOptions = {}): Promise<Runtime> {
  const gpu = await requestGpu(options);
  return {
    gpu,
    device: gpu.device,
    arena: new Arena(gpu.device),
    pipelines: new PipelineCache(gpu.device, gpu.backend),
    profiler: debugLevel() >= 3 ? Profiler.create(gpu.device) : undefined,
  };
}

/** Copies `bytes` bytes at `offset` of a GPU buffer back to the CPU. */
export async function readBuffer(
  device: GPUDevice,
  buffer: GPUBuffer,
  offset: number = 0,
  bytes: number = buffer.size - offset,
): Promise<ArrayBuffer> {
  const staging = device.createBuffer({
    size: Math.ceil(bytes / 4) * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(buffer, offset, staging, 0, staging.size);
    device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    return staging.getMappedRange().slice(0, bytes);
  } finally {
    staging.destroy();
  }
}

/** A range of elements in a buffer: where it starts and how many. */
export interface ElementRange {
  /** First element. */
  offset: number;
  /** Number of elements. */
  size: number;
}

/**
 * Reads many ranges of one buffer (sorted by offset) in a few round trips: neighbouring
 * ranges are copied together, in spans of at most `spanBytes`, through one staging buffer.
 * Elements are the buffer's type (f32, or f16 widened to f32; src/gpu/dtype.ts).
 */
export async function readSpans(
  device: GPUDevice,
  buffer: GPUBuffer,
  ranges: readonly ElementRange[],
  spanBytes: number = 256 * 2 ** 20,
): Promise<Float32Array[]> {
  const half = dtypeOf(buffer) === "f16", n = half ? 2 : 4;
  const spans: { start: number; end: number; members: number[] }[] = [];
  ranges.forEach((r, i) => {
    const span = spans[spans.length - 1];
    if (span && r.offset >= span.start && (r.offset + r.size - span.start) * n <= spanBytes) {
      span.end = Math.max(span.end, r.offset + r.size);
      span.members.push(i);
    } else spans.push({ start: r.offset, end: r.offset + r.size, members: [i] });
  });
  // A span's bytes, widened to whole 4-byte words (copies move words).
  const window = (s: { start: number; end: number }) => {
    const from = Math.floor((s.start * n) / 4) * 4;
    return { from, bytes: Math.min(buffer.size, Math.ceil((s.end * n) / 4) * 4) - from };
  };
  const out: Float32Array[] = new Array(ranges.length);
  const biggest = Math.max(4, ...spans.map((s) => window(s).bytes));
  const staging = device.createBuffer({
    label: "read_spans",
    size: Math.ceil(biggest / 4) * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    for (const s of spans) {
      if (s.end === s.start) {
        for (const i of s.members) out[i] = new Float32Array(0);
        continue;
      }
      const { from, bytes } = window(s);
      const encoder = device.createCommandEncoder();
      encoder.copyBufferToBuffer(buffer, from, staging, 0, bytes);
      device.queue.submit([encoder.finish()]);
      await staging.mapAsync(GPUMapMode.READ, 0, bytes);
      const raw = staging.getMappedRange(0, bytes);
      const all = half ? new Float16Array(raw) : new Float32Array(raw);
      const first = from / n; // the element at the window's start
      for (const i of s.members) {
        const r = ranges[i];
        const [lo, hi] = [r.offset - first, r.offset - first + r.size];
        out[i] = all instanceof Float16Array
          ? Float32Array.from(all.subarray(lo, hi))
          : all.slice(lo, hi);
      }
      staging.unmap();
    }
  } finally {
    staging.destroy();
  }
  return out;
}

/** Reads a float32 buffer (or a range of `count` floats from element `start`). */
export async function readF32(
  device: GPUDevice,
  buffer: GPUBuffer,
  start: number = 0,
  count: number = buffer.size / 4 - start,
): Promise<Float32Array> {
  return new Float32Array(await readBuffer(device, buffer, start * 4, count * 4));
}

/**
 * Reads `count` elements from element `start` of a buffer of any element type
 * (see src/gpu/dtype.ts), widened to f32.
 */
export async function readValues(
  device: GPUDevice,
  buffer: GPUBuffer,
  start = 0,
  count?: number,
): Promise<Float32Array> {
  const t = dtypeOf(buffer), size = dtypeBytes(t);
  const n = count ?? buffer.size / size - start;
  const raw = await readBuffer(device, buffer, start * size, n * size);
  return t === "f16" ? Float32Array.from(new Float16Array(raw)) : new Float32Array(raw);
}
