/**
 * The training step's gradient statistics, computed once per step in one place: the global
 * L2 norm of the gradients, the number of NaN or Inf elements, the clip factor with the loss
 * scale undone, and the overflow (skip) decision, all into a {@linkcode GRAD_STATS} buffer
 * that the optimizer's update reads on the GPU (kernels/grad_norm.wgsl).
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import { type Dispatch, encodeDispatches } from "../gpu/dispatch.ts";
import { f32Bits, makeDispatch } from "../gpu/kernel.ts";
import type { Profiler } from "../gpu/profiler.ts";
import type { Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import { parameterRanges } from "../optim/adamw_common.ts";
import { optimizerKernel } from "../optim/kernel_source.ts";
import gradNormBody from "../../kernels/grad_norm.wgsl" with { type: "text" };

const gradNormSrc = optimizerKernel(gradNormBody);

const BLOCK = 4096; // elements per grad_norm workgroup

/** Floats of partial sums and counts {@linkcode gradNormDispatches} needs for these ranges. */
export function gradNormPartials(ranges: { size: number }[]): number {
  return 2 * ranges.reduce((a, r) => a + Math.ceil(r.size / BLOCK), 0);
}

/**
 * Dispatches that write the global L2 norm of the gradient ranges to `stats.norm` and the
 * number of NaN or Inf elements to `stats.nonfinite`: a partial sum of squares per block of
 * 4096, then one workgroup's fixed-order sum of the partials.
 */
export async function gradNormDispatches(
  rt: Runtime,
  ranges: { offset: number; size: number }[],
  grads: GPUBuffer,
  partials: GPUBuffer,
  stats: GPUBuffer,
): Promise<Dispatch[]> {
  const norm: Dispatch[] = [];
  const total = gradNormPartials(ranges) / 2;
  let slot = 0;
  for (const r of ranges) {
    const blocks = Math.ceil(r.size / BLOCK);
    norm.push(
      await makeDispatch(rt, {
        name: "grad_norm_partial",
        code: gradNormSrc,
        entryPoint: "partial",
        buffers: {
          0: { buffer: grads, offset: r.offset * 4, size: r.size * 4 },
          1: { buffer: partials },
        },
        uniform: { binding: 3, words: [r.size, slot, total] },
        workgroups: [blocks, 1, 1],
        flops: 2 * r.size,
        loops: { bound: 70, shape: { n: r.size } },
      }),
    );
    slot += blocks;
  }
  norm.push(
    await makeDispatch(rt, {
      name: "grad_norm_finish",
      code: gradNormSrc,
      entryPoint: "finish",
      buffers: { 1: { buffer: partials }, 2: { buffer: stats } },
      uniform: { binding: 3, words: [0, 0, slot] },
      workgroups: [1, 1, 1],
      loops: { bound: Math.ceil(slot / 256) + 8, shape: { partials: slot } },
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
  ) {
    this.#rt = rt;
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
    grads: GPUBuffer,
    stats: GPUBuffer,
    options: { maxBindingBytes?: number } = {},
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
      16,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
    const norm = await gradNormDispatches(rt, ranges, grads, partials, stats);
    const decide = await makeDispatch(rt, {
      name: "grad_norm_decide",
      code: gradNormSrc,
      entryPoint: "decide",
      buffers: { 2: { buffer: stats }, 4: { buffer: clip } },
      workgroups: [1, 1, 1],
    });
    const out = new GradNorm(rt, mem, stats, clip, norm, [decide]);
    out.setStep({ gradClip: 0 });
    return out;
  }

  /** Every dispatch of a step in order: the norm, then the decision. */
  get dispatches(): Dispatch[] {
    return [...this.normDispatches, ...this.decideDispatches];
  }

  /** Writes this step's clip threshold, loss scale and overflow rule. */
  setStep(o: GradNormStep): void {
    const words = new Uint32Array([
      f32Bits(o.gradClip),
      f32Bits(1 / (o.lossScale ?? 1)),
      o.skipOnOverflow ? 1 : 0,
      0,
    ]);
    this.#rt.device.queue.writeBuffer(this.#clip, 0, words);
  }

  /** Encodes the norm dispatches. */
  encodeNorm(encoder: GPUCommandEncoder, profiler?: Profiler): void {
    encodeDispatches(encoder, this.normDispatches, profiler);
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
