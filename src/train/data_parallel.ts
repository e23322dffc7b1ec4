/**
 * Data-parallel training over MPI ranks (src/dist), as llm.c does it: every rank holds the
 * whole model, reads its own rows of each global batch, and averages the gradients with an
 * all-reduce in TrainStep's "gradients ready" hook, so every rank applies the same update and
 * the parameters stay identical. N ranks with batch B see exactly the tokens of one process
 * with batch N*B (the loader serves the global batch; rank r takes rows [r*B, (r+1)*B)).
 *
 * Gradients go GPU -> host -> MPI -> host -> GPU in buckets of whole tensors: each bucket's
 * readback is mapped as soon as the copy lands and its all-reduce starts while the next
 * bucket is still being read back (MPI runs on another thread), so transfer and reduction
 * overlap. The model's loss gradient is pre-divided by N, so the sum is the mean.
 *
 * @module
 */

import type { Dist } from "../dist/dist.ts";
import type { GPT2 } from "../model/gpt2.ts";
import type { TokenBatch } from "../data/loader.ts";
import type { MicroBatch, StepHooks } from "./step.ts";

/** Milliseconds spent per phase of the gradient exchange, summed over steps. */
export interface ExchangeTimes {
  /** GPU -> host: copies and maps. */
  readback: number;
  /** MPI all-reduce (the part not hidden behind readback). */
  allReduce: number;
  /** host -> GPU. */
  upload: number;
  /** Steps counted. */
  steps: number;
}

/** The step hooks and batch sharding of one rank. */
export interface DataParallel {
  /** The collectives. */
  dist: Dist;
  /** TrainStep's hooks: the gradient all-reduce and the mean loss over ranks. */
  hooks: StepHooks;
  /** This rank's rows of a global batch (N*B rows). */
  shard(b: TokenBatch): MicroBatch;
  /** True on every rank when any rank asks to stop (Ctrl-C reaches ranks at different steps). */
  agree(stop: boolean): Promise<boolean>;
  /** Time spent in the gradient exchange so far. */
  times: ExchangeTimes;
  /** Frees the staging buffers. */
  destroy(): void;
}

/** Bytes per bucket of gradients (whole tensors; a larger tensor is a bucket alone). */
export const BUCKET_BYTES = 32 * 2 ** 20;

/** The hooks for `model` (B rows per rank) over `dist`. */
export function dataParallel(dist: Dist, model: GPT2, bucketBytes = BUCKET_BYTES): DataParallel {
  const { device } = model.rt;
  const BT = model.B * model.T;
  // Buckets of consecutive tensors in the flat gradient buffer, last layer first (the
  // order a bucketed backward would produce them).
  const buckets: { start: number; end: number }[] = [];
  for (const t of [...model.layout.tensors].reverse()) {
    const b = buckets[buckets.length - 1];
    // Consecutive tensors: a bucket spans the alignment padding between them too (zeros).
    if (b && (b.end - t.offset) * 4 <= bucketBytes) b.start = t.offset;
    else buckets.push({ start: t.offset, end: t.offset + t.size });
  }
  const staging = buckets.map((b) =>
    device.createBuffer({
      label: "ddp.readback",
      size: (b.end - b.start) * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    })
  );
  const times: ExchangeTimes = { readback: 0, allReduce: 0, upload: 0, steps: 0 };
  const hooks: StepHooks = {
    async gradientsReady(grads) {
      const enc = device.createCommandEncoder();
      buckets.forEach((b, i) =>
        enc.copyBufferToBuffer(grads, b.start * 4, staging[i], 0, (b.end - b.start) * 4)
      );
      device.queue.submit([enc.finish()]);
      const host: Float32Array<ArrayBuffer>[] = [];
      const reduced: Promise<void>[] = [];
      let readback = 0;
      for (let i = 0; i < buckets.length; i++) {
        const r0 = performance.now();
        await staging[i].mapAsync(GPUMapMode.READ);
        host.push(new Float32Array(staging[i].getMappedRange().slice(0)));
        staging[i].unmap();
        readback += performance.now() - r0;
        reduced.push(dist.allReduceSum(host[i])); // queued: overlaps the next readback
      }
      const a0 = performance.now();
      await Promise.all(reduced);
      const u0 = performance.now();
      buckets.forEach((b, i) => device.queue.writeBuffer(grads, b.start * 4, host[i]));
      const u1 = performance.now();
      times.readback += readback;
      times.allReduce += u0 - a0;
      times.upload += u1 - u0;
      times.steps++;
    },
    async reduceLoss(loss) {
      const x = new Float64Array([loss]);
      await dist.allReduceSum(x);
      return x[0] / dist.size;
    },
  };
  return {
    dist,
    hooks,
    shard: (b) => ({
      inputs: b.inputs.subarray(dist.rank * BT, (dist.rank + 1) * BT),
      targets: b.targets.subarray(dist.rank * BT, (dist.rank + 1) * BT),
    }),
    async agree(stop) {
      const x = new Float64Array([stop ? 1 : 0]);
      await dist.allReduceSum(x);
      return x[0] > 0;
    },
    times,
    destroy: () => staging.forEach((s) => s.destroy()),
  };
}
