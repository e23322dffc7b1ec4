/**
 * Data-parallel training over MPI ranks (src/parallel), as llm.c does it: every rank holds the
 * whole model, reads its own rows of each global batch, and averages the gradients with an
 * all-reduce in TrainStep's "gradients ready" hook, so every rank applies the same update and
 * the parameters stay identical. N ranks with batch B see exactly the tokens of one process
 * with batch N*B (the loader serves the global batch; rank r takes rows [r*B, (r+1)*B)).
 *
 * Gradients go GPU -> host -> MPI -> host -> GPU in buckets, one per layer, as PyTorch's
 * DDP does: the last micro-step's backward is submitted in parts (the graph's gradMarks),
 * and after each part its layer's gradients are copied out, mapped and all-reduced (on MPI's
 * thread) while the GPU runs the backward of the layers below. The model's loss gradient is
 * pre-divided by N, so the sum is the mean.
 *
 * ZeRO-1 (`zero`): the optimizer state is split into N shards of whole tensors, one per rank,
 * which divides optimizer memory by N. The gradients are reduce-scattered (each rank gets the
 * mean of its shard), each rank's optimizer computes its shard's share of the gradient norm,
 * the squares are summed over ranks before the update reads the norm (so clipping and the
 * fp16 overflow skip are global), each rank updates its shard, and the parameters are
 * all-gathered. A checkpoint gathers the state on rank 0, in the same format as without it.
 *
 * @module
 */

import { type Dist, gatherToRoot } from "../parallel/dist.ts";
import type { GPT2 } from "../model/gpt2.ts";
import type { ParamLayout } from "../model/params.ts";
import type { TokenBatch } from "../data/loader.ts";
import { encodeSafetensors, parseSafetensors, tensorF32 } from "../io/safetensors.ts";
import { GRAD_STATS, GRAD_STATS_BYTES, type StateTensor } from "../optim/optimizer.ts";
import type { MicroBatch, StepHooks } from "./step.ts";

/** A range of the flat parameter buffer, in elements. */
export interface Shard {
  /** First element. */
  start: number;
  /** One past the last. */
  end: number;
}

/**
 * ZeRO-1 shards: `ranks` contiguous ranges of whole tensors covering the flat buffer (the
 * padding between tensors included), balanced by size.
 */
export function zeroShards(layout: ParamLayout, ranks: number): Shard[] {
  if (layout.tensors.length < ranks) {
    throw new RangeError(`ZeRO-1 needs a tensor per rank: ${layout.tensors.length} < ${ranks}`);
  }
  const total = layout.totalElements;
  const starts = [0];
  layout.tensors.forEach((t, i) => {
    const r = starts.length; // the next shard starts at the first tensor past its share
    const left = layout.tensors.length - i; // every later shard still needs a tensor
    if (r < ranks && i > 0 && (t.offset >= (r * total) / ranks || left <= ranks - r)) {
      starts.push(t.offset);
    }
  });
  return starts.map((start, r) => ({ start, end: starts[r + 1] ?? total }));
}

/** The part of a layout inside a shard (offsets unchanged; totalElements = the shard's end). */
export function shardLayout(layout: ParamLayout, shard: Shard): ParamLayout {
  const tensors = layout.tensors.filter((t) => t.offset >= shard.start && t.offset < shard.end);
  return { tensors, byName: new Map(tensors.map((t) => [t.name, t])), totalElements: shard.end };
}

/** Milliseconds spent per phase of the gradient exchange, summed over steps. */
export interface ExchangeTimes {
  /** GPU -> host: waiting for each bucket's copy to map (the backward runs meanwhile). */
  readback: number;
  /** MPI all-reduce, bucket by bucket. */
  allReduce: number;
  /** host -> GPU. */
  upload: number;
  /** What the step waited for after the backward was submitted (the exchange not hidden). */
  exposed: number;
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
  /** Rank 0's `x` on every rank (what one rank decides, e.g. a time budget's steps). */
  fromLead(x: number): Promise<number>;
  /** Time spent in the gradient exchange so far. */
  times: ExchangeTimes;
  /** ZeRO-1: this rank's shard of the parameters (its optimizer covers only it). */
  zeroShard?: Shard;
  /**
   * The whole optimizer state on rank 0 for a checkpoint (ZeRO-1 gathers every rank's shard;
   * without it rank 0's own state is whole). Every rank must call it at the same step.
   */
  gatherState(local: () => Promise<StateTensor[]>): Promise<StateTensor[] | undefined>;
  /** Frees the staging buffers. */
  destroy(): void;
}

/** The hooks for `model` (B rows per rank) over `dist`. */
export function dataParallel(
  dist: Dist,
  model: GPT2,
  options: { zero?: boolean } = {},
): DataParallel {
  const { device } = model.rt;
  const BT = model.B * model.T;
  const w = model.weights;
  if (options.zero && (w.gradDtype === "f16" || w.weightDtype === "f16")) {
    throw new TypeError(
      "--zero shards f32 weights and gradients: with --grad-dtype f16 or --weight-dtype f16 " +
        "drop --zero (16-bit weights and gradients already take a quarter of its memory)",
    );
  }
  if (options.zero && w.paramParts.parts.length > 1) {
    throw new RangeError(
      "--zero needs the parameters in one buffer: this model's span " +
        `${w.paramParts.parts.length} (over the adapter's maxBufferSize); drop --zero`,
    );
  }
  // 16-bit gradients (f16) are read back and written in f16, summed across ranks in f32. MPI
  // has no f16 sum: up to 3 ranks all-gather the f16 bytes and each sums them in rank order
  // (every rank alike), which moves (N-1)/N x 2 bytes per element where an f32 ring
  // all-reduce moves 2(N-1)/N x 4: half for 2 ranks; from 4 ranks the f32 all-reduce moves less.
  const half = w.gradDtype === "f16", n = half ? 2 : 4;
  const gather = half && dist.size <= 3;
  // One bucket per gradient mark of the graph: a layer's tensors as soon as its backward is
  // done (the last layer first), then ln_f, wte and wpe at the end. Each bucket's ranges
  // (cut where the gradients' buffers split) are packed into one staging buffer, each at a
  // 4-byte boundary (copies move words).
  const buckets = model.gradMarks.map((m) => {
    let at = 0;
    const parts = m.ranges.flatMap((r) => w.gradParts.pieces(r.start, r.end)).map((r) => {
      const p = {
        buffer: r.part.buffer,
        from: (r.start - r.part.start + (r.part.base ?? 0)) * n, // bytes into its buffer
        at,
        words: Math.ceil(((r.end - r.start) * n) / 4) * 4,
      };
      at += p.words / n;
      return p;
    });
    return {
      parts,
      staging: device.createBuffer({
        label: "ddp.readback",
        size: Math.max(16, at * n),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }),
      host: new Float32Array(at),
      // The all-gather's f16 bytes: this rank's, then every rank's.
      mine: new Uint8Array(gather ? at * n : 0),
      all: new Uint8Array(gather ? dist.size * at * n : 0),
      counts: gather ? Array<number>(dist.size).fill(at * n) : [],
      // f16: the sums rounded to nearest for the upload, made once like the rest.
      upload: half ? new Float16Array(at) : undefined,
    };
  });
  /** The bucket's f16 gradients summed over the ranks into `b.host`, through an all-gather. */
  const gatherSum = async (b: typeof buckets[number]) => {
    await dist.allGather(b.mine, b.counts, b.all);
    const all = new Float16Array(b.all.buffer), n = b.host.length;
    b.host.fill(0);
    for (let r = 0; r < dist.size; r++) {
      for (let i = 0; i < n; i++) b.host[i] += all[r * n + i];
    }
  };
  const times: ExchangeTimes = { readback: 0, allReduce: 0, upload: 0, exposed: 0, steps: 0 };
  // Buckets are read and reduced strictly in order (MPI needs the same order on every rank).
  let chain = Promise.resolve();
  const hooks: StepHooks = {
    bucketReady(_, i) {
      const b = buckets[i];
      const enc = device.createCommandEncoder();
      for (const p of b.parts) {
        enc.copyBufferToBuffer(p.buffer, p.from, b.staging, p.at * n, p.words);
      }
      device.queue.submit([enc.finish()]);
      chain = chain.then(async () => {
        const r0 = performance.now();
        await b.staging.mapAsync(GPUMapMode.READ, 0, b.host.length * n);
        const raw = b.staging.getMappedRange(0, b.host.length * n);
        if (gather) b.mine.set(new Uint8Array(raw));
        else b.host.set(half ? new Float16Array(raw) : new Float32Array(raw));
        b.staging.unmap();
        const a0 = performance.now();
        // On MPI's thread: the GPU goes on with the backward.
        if (gather) await gatherSum(b);
        else await dist.allReduceSum(b.host);
        times.readback += a0 - r0;
        times.allReduce += performance.now() - a0;
      });
    },
    async gradientsReady() {
      const e0 = performance.now();
      await chain;
      const u0 = performance.now();
      for (const b of buckets) {
        // f16: the sums rounded to nearest, whole words (a part's odd last element is padding).
        const out = b.upload ?? b.host;
        b.upload?.set(b.host);
        for (const p of b.parts) {
          device.queue.writeBuffer(p.buffer, p.from, out, p.at, p.words / n);
        }
      }
      times.upload += performance.now() - u0;
      times.exposed += performance.now() - e0;
      times.steps++;
    },
    async reduceLoss(loss) {
      const x = new Float64Array([loss]);
      await dist.allReduceSum(x);
      return x[0] / dist.size;
    },
  };
  const shards = options.zero ? zeroShards(model.layout, dist.size) : undefined;
  const zeroParts = shards ? zeroHooks(dist, model, shards) : undefined;
  return {
    dist,
    // ZeRO-1 reduce-scatters the whole gradient after the backward instead of bucket by bucket.
    hooks: zeroParts ? { reduceLoss: hooks.reduceLoss, ...zeroParts.hooks } : hooks,
    zeroShard: shards?.[dist.rank],
    async gatherState(local) {
      if (!shards) return dist.rank === 0 ? await local() : undefined;
      const parts = await gatherToRoot(dist, encodeSafetensors(await local()));
      if (!parts) return undefined;
      const all: StateTensor[] = [];
      for (const bytes of parts) {
        const file = parseSafetensors(bytes);
        for (const [name, t] of file.tensors) {
          all.push({ name, shape: t.shape, data: tensorF32(file, name) });
        }
      }
      return all;
    },
    shard: (b) => ({
      inputs: b.inputs.subarray(dist.rank * BT, (dist.rank + 1) * BT),
      targets: b.targets.subarray(dist.rank * BT, (dist.rank + 1) * BT),
    }),
    async agree(stop) {
      const x = new Float64Array([stop ? 1 : 0]);
      await dist.allReduceSum(x);
      return x[0] > 0;
    },
    async fromLead(v) {
      const x = new Float64Array([dist.rank === 0 ? v : 0]);
      await dist.allReduceSum(x);
      return x[0];
    },
    times,
    destroy: () => {
      buckets.forEach((b) => b.staging.destroy());
      zeroParts?.destroy();
    },
  };
}

/** ZeRO-1's hooks: gradients reduce-scattered, the norm's squares summed, parameters gathered. */
function zeroHooks(
  dist: Dist,
  model: GPT2,
  shards: Shard[],
): { hooks: StepHooks; destroy(): void } {
  const { device } = model.rt;
  const mine = shards[dist.rank], counts = shards.map((s) => s.end - s.start);
  const total = model.layout.totalElements;
  const mapped = (label: string, bytes: number) =>
    device.createBuffer({
      label,
      size: Math.max(16, bytes),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  const statsBack = mapped("zero.stats", GRAD_STATS_BYTES);
  const paramsBack = mapped("zero.params", counts[dist.rank] * 4);
  const gradsBack = mapped("zero.grads", total * 4);
  // Host copies, made once: the exchange allocates nothing per step.
  const full = new Float32Array(total), reduced = new Float32Array(counts[dist.rank]);
  const local = new Float32Array(counts[dist.rank]), gathered = new Float32Array(total);
  const stats = new Float32Array(GRAD_STATS_BYTES / 4), sums = new Float64Array(2);
  const { norm, nonfinite } = GRAD_STATS;
  /** Copies `into.length` floats at byte `offset` of `src` through `staging` into `into`. */
  const read = async (src: GPUBuffer, offset: number, staging: GPUBuffer, into: Float32Array) => {
    const bytes = into.length * 4;
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(src, offset, staging, 0, bytes);
    device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ, 0, bytes);
    into.set(new Float32Array(staging.getMappedRange(0, bytes)));
    staging.unmap();
  };
  return {
    hooks: {
      // Each rank receives the sum (the mean: dloss is pre-divided) of its own shard, the only
      // gradients its optimizer reads.
      async gradientsReady(grads) {
        const g = grads.single("ZeRO-1's gradients");
        await read(g, 0, gradsBack, full);
        await dist.reduceScatterSum(full, counts, reduced);
        device.queue.writeBuffer(g, mine.start * 4, reduced);
      },
      async normReady(buffer) {
        await read(buffer, 0, statsBack, stats);
        sums[0] = stats[norm] * stats[norm];
        sums[1] = stats[nonfinite];
        await dist.allReduceSum(sums);
        stats[norm] = Math.sqrt(sums[0]);
        stats[nonfinite] = sums[1] + (Number.isFinite(stats[norm]) ? 0 : 1);
        device.queue.writeBuffer(buffer, 0, stats);
      },
      async updated(params) {
        const p = params.single("ZeRO-1's parameters");
        await read(p, mine.start * 4, paramsBack, local);
        await dist.allGather(local, counts, gathered);
        device.queue.writeBuffer(p, 0, gathered);
      },
    },
    destroy() {
      for (const b of [statsBack, paramsBack, gradsBack]) b.destroy();
    },
  };
}
