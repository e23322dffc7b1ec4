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
    pipelines: new PipelineCache(gpu.device),
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
