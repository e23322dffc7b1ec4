/**
 * Timing candidate dispatches for the autotuner: timestamp queries around each repetition
 * where the adapter has them, else the wall clock around `onSubmittedWorkDone`.
 *
 * @module
 */

import { type Dispatch, encodeDispatches } from "./dispatch.ts";
import type { Runtime } from "./runtime.ts";
import type { TuneTimer } from "./autotune.ts";

/** Options for {@linkcode dispatchTimer}. */
export interface DispatchTimerOptions {
  /** Use timestamp queries when the device has them (default true). */
  timestamps?: boolean;
  /** Called by dispose, e.g. to free the dispatches' buffers. */
  dispose?: () => void;
}

/**
 * A {@linkcode TuneTimer} for dispatches: one compute pass per run, timed on the GPU with
 * timestamp queries (the device's "timestamp-query" feature, as src/gpu/profiler.ts uses
 * it), or by the wall clock from submit to `onSubmittedWorkDone` without them. Short runs
 * on the wall clock are repeated within the pass until they take about a millisecond, so
 * the submit's fixed cost fades.
 */
export function dispatchTimer(
  rt: Runtime,
  dispatches: readonly Dispatch[],
  options: DispatchTimerOptions = {},
): TuneTimer {
  const device = rt.device;
  const useTs = (options.timestamps ?? true) && device.features.has("timestamp-query");
  const qs = useTs ? device.createQuerySet({ type: "timestamp", count: 2 }) : undefined;
  const resolve = useTs
    ? device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    })
    : undefined;
  const read = useTs
    ? device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    : undefined;
  let repeat = 1;
  const once = async (n: number): Promise<{ wall: number; gpu?: number }> => {
    // One pass holding the dispatches n times.
    const list = n === 1 ? dispatches : Array.from({ length: n }, () => dispatches).flat();
    const timed = device.createCommandEncoder();
    if (qs) {
      const p = timed.beginComputePass({
        timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
      });
      for (const d of list) {
        p.setPipeline(d.pipeline);
        d.bindGroups.forEach((g, i) => p.setBindGroup(i, g));
        p.dispatchWorkgroups(...d.workgroups);
      }
      p.end();
      timed.resolveQuerySet(qs, 0, 2, resolve!, 0);
      timed.copyBufferToBuffer(resolve!, 0, read!, 0, 16);
    } else encodeDispatches(timed, list);
    const t0 = performance.now();
    device.queue.submit([timed.finish()]);
    await device.queue.onSubmittedWorkDone();
    const wall = performance.now() - t0;
    if (!read) return { wall };
    await read.mapAsync(GPUMapMode.READ);
    const t = new BigUint64Array(read.getMappedRange().slice(0));
    read.unmap();
    const gpu = Number(t[1] - t[0]) / 1e6;
    return { wall, gpu: gpu > 0 ? gpu : undefined };
  };
  return {
    async run() {
      const r = await once(repeat);
      if (r.gpu !== undefined) return r.gpu / repeat;
      if (repeat === 1 && r.wall < 1) repeat = Math.min(64, Math.ceil(1 / Math.max(r.wall, 0.02)));
      return r.wall / repeat;
    },
    dispose() {
      qs?.destroy();
      resolve?.destroy();
      read?.destroy();
      options.dispose?.();
    },
  };
}
