/**
 * The training step's gradient statistics, computed once per step in one place: the global
 * L2 norm of the gradients, the number of NaN or Inf elements, the clip factor with the loss
 * scale undone, and the overflow (skip) decision, all into a {@linkcode GRAD_STATS} buffer
 * that the optimizer's update reads on the GPU (kernels/grad_norm.wgsl).
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import { packUniforms, type StructDecl, uniformLayout } from "../gpu/define_kernel.ts";
import { type Dispatch, encodeDispatches } from "../gpu/dispatch.ts";
import type { Profiler } from "../gpu/profiler.ts";
import type { Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import { defineReducing, reduceForm, type ReduceOptions } from "../model/ops/reduce.ts";
import { type SplitBuffer, splitOf } from "../gpu/split_buffer.ts";
import { parameterRanges } from "../optim/adamw_common.ts";
import { GRAD_STATS_STRUCT } from "../optim/optimizer.ts";
import gradNormSrc from "../../kernels/grad_norm.wgsl" with { type: "text" };

const BLOCK = 4096; // elements per grad_norm workgroup

/** The per-step clip settings (kernels/grad_norm.wgsl's `clip`), written by setStep. */
const CLIP: StructDecl = {
  struct: "Clip",
  fields: { max_norm: "f32", inv_scale: "f32", skip_overflow: "u32", void_after_skip: "u32" },
};

/**
 * kernels/grad_norm.wgsl's interface, in each reduction form (src/model/ops/reduce.ts: the
 * partial sums reduce their workgroup).
 */
export const gradNormKernels = defineReducing({
  name: "grad_norm",
  source: gradNormSrc,
  bindings: {
    grads: { access: "read", type: "float" },
    partials: { access: "read_write", type: "f32" },
    stats: { access: "read_write", type: GRAD_STATS_STRUCT },
    clip: { access: "uniform", type: CLIP },
  },
  uniforms: { n: "u32", slot: "u32", count: "u32" },
  entryPoints: {
    partial: { bindings: ["grads", "partials"], loopBound: () => 64 + 64 },
    finish: { bindings: ["partials", "stats"], loopBound: (u) => Math.ceil(u.count / 256) + 8 },
    decide: { bindings: ["stats", "clip"], loopBound: () => 0 },
  },
});

/** Floats of partial sums and counts {@linkcode gradNormDispatches} needs for these ranges. */
export function gradNormPartials(ranges: { size: number }[]): number {
  return 2 * ranges.reduce((a, r) => a + Math.ceil(r.size / BLOCK), 0);
}

/**
 * Dispatches that write the global L2 norm of the gradient ranges to `stats.norm` and the
 * number of NaN or Inf elements to `stats.nonfinite`: a partial sum of squares per block of
 * 4096 (its workgroup reduced in the device's form, or as `options` says), then one
 * workgroup's fixed-order sum of the partials.
 */
export async function gradNormDispatches(
  rt: Runtime,
  ranges: { offset: number; size: number }[],
  grads: GPUBuffer | SplitBuffer,
  partials: GPUBuffer,
  stats: GPUBuffer,
  options: ReduceOptions = {},
): Promise<Dispatch[]> {
  const norm: Dispatch[] = [], split = splitOf(grads);
  const partial = gradNormKernels[await reduceForm(rt, options)];
  const total = gradNormPartials(ranges) / 2;
  let slot = 0;
  for (const r of ranges) {
    const blocks = Math.ceil(r.size / BLOCK);
    norm.push(
      await partial.dispatch(rt, "partial", {
        buffers: { grads: split.range(r.offset, r.size), partials },
        uniforms: { n: r.size, slot, count: total },
        workgroups: [blocks, 1, 1],
        flops: 2 * r.size,
      }),
    );
    slot += blocks;
  }
  norm.push(
    await gradNormKernels.tree.dispatch(rt, "finish", {
      buffers: { partials, stats },
      uniforms: { n: 0, slot: 0, count: slot },
      workgroups: [1, 1, 1],
    }),
  );
  return norm;
}

/** Per-step settings of {@linkcode GradNorm}. */
export interface GradNormStep {
  /** Clip the global gradient norm (the loss scale divided out) to this; 0: no clipping. */
  gradClip: number;
  /** The loss scale the gradients carry (default 1); the scale divides it out. */
  lossScale?: number;
  /** Skip the whole update when any gradient is NaN or Inf (fp16; default false). */
  skipOnOverflow?: boolean;
  /**
   * Skip it too when the step before skipped (the skip flag as it was left in `stats`): for a
   * step begun before the one before it was read back, which assumed that one would not
   * overflow (default false).
   */
  voidAfterSkip?: boolean;
}

/**
 * The gradient statistics of a layout's tensors (a ZeRO-1 shard's, or the model's) written
 * into `stats`, the buffer an optimizer reads ({@linkcode Optimizer.gradStats}).
 *
 * @example Clip to norm 1, then update
 * ```ts ignore
 * const norm = await GradNorm.create(rt, model.layout, model.grads, opt.gradStats);
 * norm.setStep({ gradClip: 1 });
 * opt.setStep(1, 6e-4);
 * await runDispatches(rt.device, [...norm.dispatches, ...opt.dispatches]);
 * ```
 */
export class GradNorm {
  /** The {@linkcode GRAD_STATS} buffer written (the optimizer's). */
  readonly stats: GPUBuffer;
  /** The norm and the non-finite count (partial sums, then their sum). */
  readonly normDispatches: Dispatch[];
  /** The gradient range each partial dispatch of `normDispatches` reads (the last sums them). */
  readonly #ranges: { offset: number; size: number }[];
  /** The scale and the skip flag from the norm (after the norm; ZeRO-1 sums norms between). */
  readonly decideDispatches: Dispatch[];
  readonly #rt: Runtime;
  readonly #mem: ArenaScope;
  readonly #clip: GPUBuffer;

  private constructor(
    rt: Runtime,
    mem: ArenaScope,
    stats: GPUBuffer,
    clip: GPUBuffer,
    norm: Dispatch[],
    decide: Dispatch[],
    ranges: { offset: number; size: number }[],
  ) {
    this.#rt = rt;
    this.#ranges = ranges;
    this.#mem = mem;
    this.stats = stats;
    this.#clip = clip;
    this.normDispatches = norm;
    this.decideDispatches = decide;
  }

  /** Builds the dispatches over the gradients of `layout`'s tensors, writing `stats`. */
  static async create(
    rt: Runtime,
    layout: ParamLayout,
    grads: GPUBuffer | SplitBuffer,
    stats: GPUBuffer,
    options: { maxBindingBytes?: number } & ReduceOptions = {},
  ): Promise<GradNorm> {
    const mem = rt.arena.scope();
    const ranges = parameterRanges(
      layout,
      options.maxBindingBytes ?? rt.gpu.limits.maxStorageBufferBindingSize,
    );
    const partials = mem.alloc("grad_norm.partials", "scratch", gradNormPartials(ranges) * 4);
    const clip = mem.alloc(
      "grad_norm.clip",
      "scratch",
      uniformLayout(CLIP.fields).size,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
    const norm = await gradNormDispatches(rt, ranges, grads, partials, stats, options);
    const decide = await gradNormKernels.tree.dispatch(rt, "decide", {
      buffers: { stats, clip },
      uniforms: { n: 0, slot: 0, count: 0 },
      workgroups: [1, 1, 1],
    });
    const out = new GradNorm(rt, mem, stats, clip, norm, [decide], ranges);
    out.setStep({ gradClip: 0 });
    return out;
  }

  /** Every dispatch of a step in order: the norm, then the decision. */
  get dispatches(): Dispatch[] {
    return [...this.normDispatches, ...this.decideDispatches];
  }

  /** Writes this step's clip threshold, loss scale and overflow rule. */
  setStep(o: GradNormStep): void {
    const words = packUniforms("grad_norm clip", CLIP.fields, {
      max_norm: o.gradClip,
      inv_scale: 1 / (o.lossScale ?? 1),
      skip_overflow: o.skipOnOverflow ? 1 : 0,
      void_after_skip: o.voidAfterSkip ? 1 : 0,
    });
    this.#rt.device.queue.writeBuffer(this.#clip, 0, words);
  }

  /** Encodes the norm dispatches. */
  encodeNorm(encoder: GPUCommandEncoder, profiler?: Profiler): void {
    encodeDispatches(encoder, this.normDispatches, profiler);
  }

  /**
   * The partial sums of the gradients in elements [start, end) only: the norm in pieces,
   * while the gradients are there (optimizer in backward), then {@linkcode totalDispatches}.
   * Every piece's sums land where the whole norm's would.
   */
  partDispatches(start: number, end: number): Dispatch[] {
    return this.normDispatches.filter((_, i) => {
      const r = this.#ranges[i];
      return r && r.offset >= start && r.offset + r.size <= end;
    });
  }

  /** The sum of the partial sums (after every {@linkcode partDispatches}). */
  get totalDispatches(): Dispatch[] {
    return this.normDispatches.slice(this.#ranges.length);
  }

  /** Encodes the decision (scale and skip) from the norm in `stats`. */
  encodeDecide(encoder: GPUCommandEncoder, profiler?: Profiler): void {
    encodeDispatches(encoder, this.decideDispatches, profiler);
  }

  /** Frees the partial sums, the uniforms and the dispatches' uniforms. */
  destroy(): void {
    for (const d of this.dispatches) for (const b of d.resources ?? []) this.#rt.arena.free(b);
    this.#mem.freeAll();
  }
}
