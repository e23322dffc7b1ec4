/**
 * What the host does around the GPU during a bench: how many submits and readbacks, and how
 * long it waits on them. It wraps `mapAsync` and `onSubmittedWorkDone` (on the buffer class
 * of the runtime's backend, Deno's own or Dawn's) and `queue.submit` while a watch is open.
 * A bench's own code is unchanged; the wrappers add a clock read per call.
 *
 * @module
 */

import type { Runtime } from "../src/gpu/runtime.ts";

/** Totals since the watch opened. */
export interface HostWaits {
  /** `queue.submit` calls. */
  submits: number;
  /** `mapAsync` calls (readbacks) and `onSubmittedWorkDone` waits. */
  readbacks: number;
  /** Milliseconds the host spent waiting on those promises. */
  waitMs: number;
  /**
   * Milliseconds inside `queue.submit` calls: small on a GPU, but where the driver runs the
   * work in the calling thread before returning (Deno's WebGPU on lavapipe) it is the GPU's
   * time, not the host's own.
   */
  submitMs: number;
}

/** Opens a watch on `rt`'s device; `close()` puts the original methods back. */
export function watchHostWaits(rt: Runtime): { totals: HostWaits; close(): void } {
  const totals: HostWaits = { submits: 0, readbacks: 0, waitMs: 0, submitMs: 0 };
  const probe = rt.device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ });
  const bufferProto = Object.getPrototypeOf(probe) as { mapAsync: GPUBuffer["mapAsync"] };
  probe.destroy();
  const queue = rt.device.queue;
  const mapAsync = bufferProto.mapAsync, submit = queue.submit, done = queue.onSubmittedWorkDone;
  const timed = async <T>(p: Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await p;
    } finally {
      totals.readbacks++;
      totals.waitMs += performance.now() - t0;
    }
  };
  bufferProto.mapAsync = function (this: GPUBuffer, ...a: Parameters<GPUBuffer["mapAsync"]>) {
    return timed(mapAsync.apply(this, a));
  };
  queue.submit = (buffers: GPUCommandBuffer[]) => {
    totals.submits++;
    const t0 = performance.now();
    try {
      return submit.call(rt.device.queue, buffers);
    } finally {
      totals.submitMs += performance.now() - t0;
    }
  };
  queue.onSubmittedWorkDone = () => timed(done.call(rt.device.queue));
  return {
    totals,
    close() {
      bufferProto.mapAsync = mapAsync;
      Reflect.deleteProperty(queue, "submit"); // back to the prototype's
      Reflect.deleteProperty(queue, "onSubmittedWorkDone");
      if (queue.submit !== submit) queue.submit = submit;
      if (queue.onSubmittedWorkDone !== done) queue.onSubmittedWorkDone = done;
    },
  };
}
