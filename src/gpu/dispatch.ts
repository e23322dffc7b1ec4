/**
 * Dispatches: a pipeline, its bind groups and a grid, made once at setup and
 * replayed every step into one command encoder.
 *
 * @module
 */

import type { Profiler } from "./profiler.ts";

/** One compute dispatch, ready to encode. */
export interface Dispatch {
  /** Kernel name, for profiles and errors. */
  name: string;
  /** The compiled compute pipeline. */
  pipeline: GPUComputePipeline;
  /** Bind groups, set at group indices 0, 1, ... in order. */
  bindGroups: GPUBindGroup[];
  /** Workgroup counts in x, y and z. */
  workgroups: readonly [number, number, number];
  /** Floating-point operations this dispatch does, for GFLOP/s reports (0 if unknown). */
  flops: number;
  /** Buffers made for this dispatch alone (its uniforms), freed with it. */
  resources?: GPUBuffer[];
}

/** Frees the per-dispatch buffers of dispatches built with the runtime's arena. */
export function freeDispatches(
  arena: { free(b: GPUBuffer): void },
  dispatches: readonly Dispatch[],
): void {
  for (const d of dispatches) for (const b of d.resources ?? []) arena.free(b);
}

/**
 * Encodes dispatches in order. Without a profiler they share one compute pass;
 * with one, each gets its own pass with timestamp writes.
 */
export function encodeDispatches(
  encoder: GPUCommandEncoder,
  dispatches: readonly Dispatch[],
  profiler?: Profiler,
): void {
  if (profiler) {
    for (const d of dispatches) {
      const pass = encoder.beginComputePass({ timestampWrites: profiler.slot(d) });
      encodeOne(pass, d);
      pass.end();
    }
    return;
  }
  const pass = encoder.beginComputePass();
  for (const d of dispatches) encodeOne(pass, d);
  pass.end();
}

function encodeOne(pass: GPUComputePassEncoder, d: Dispatch): void {
  pass.setPipeline(d.pipeline);
  for (let i = 0; i < d.bindGroups.length; i++) pass.setBindGroup(i, d.bindGroups[i]);
  pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
}

/** Encodes dispatches in one encoder, submits, and waits for the queue. */
export async function runDispatches(
  device: GPUDevice,
  dispatches: readonly Dispatch[],
  profiler?: Profiler,
): Promise<void> {
  const encoder = device.createCommandEncoder();
  encodeDispatches(encoder, dispatches, profiler);
  profiler?.resolve(encoder);
  device.queue.submit([encoder.finish()]);
  await device.queue.onSubmittedWorkDone();
  await profiler?.collect();
}
