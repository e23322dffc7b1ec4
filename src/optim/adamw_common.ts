/**
 * What every AdamW variant (fp32, 8-bit, 4-bit) shares: the hyperparameters, the per-step
 * uniform (kernels/adamw_step.wgsl), binding-sized ranges of the flat buffers and the global
 * gradient norm (kernels/grad_norm.wgsl).
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import type { Dispatch } from "../gpu/dispatch.ts";
import { f32Bits, makeDispatch } from "../gpu/kernel.ts";
import type { Runtime } from "../gpu/runtime.ts";
import type { ParamLayout } from "../model/params.ts";
import type { StepOptions } from "./optimizer.ts";
import stepSrc from "../../kernels/adamw_step.wgsl" with { type: "text" };
import gradNormSrc from "../../kernels/grad_norm.wgsl" with { type: "text" };

/** An AdamW kernel with the shared Step struct and helpers (kernels/adamw_step.wgsl) first. */
export function withStep(kernel: string): string {
  return `${stepSrc}\n${kernel}`;
}

/** AdamW hyperparameters (PyTorch's names and defaults, nanoGPT's betas). */
export interface AdamWConfig {
  /** Decay rate of the first-moment (gradient mean) estimate m, e.g. 0.9. */
  beta1: number;
  /** Decay rate of the second-moment (squared gradient) estimate v, e.g. 0.95. */
  beta2: number;
  /** Added to the square root of the bias-corrected v so the update never divides by zero. */
  eps: number;
  /**
   * Decoupled weight decay: each step subtracts `lr * weightDecay * p` from tensors with
   * `decay` (matrices and embeddings, not biases or LayerNorm).
   */
  weightDecay: number;
  /** Clip the global gradient norm to this; 0 disables clipping. */
  gradClip: number;
}

/** nanoGPT/llm.c defaults. */
export const ADAMW_DEFAULTS: AdamWConfig = {
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.1,
  gradClip: 1.0,
};

/** A contiguous piece of one tensor that fits in one binding (elements). */
export interface ParamRange {
  name: string;
  offset: number;
  size: number;
  decay: boolean;
}

/** Splits every tensor of a layout into ranges of at most `maxBytes` bytes. */
export function parameterRanges(layout: ParamLayout, maxBytes: number): ParamRange[] {
  const per = Math.floor(maxBytes / 4 / 64) * 64;
  const out: ParamRange[] = [];
  for (const t of layout.tensors) {
    for (let o = 0; o < t.size; o += per) {
      out.push({
        name: t.name,
        offset: t.offset + o,
        size: Math.min(per, t.size - o),
        decay: t.decay,
      });
    }
  }
  return out;
}

const BLOCK = 4096; // elements per grad_norm workgroup

/** Bytes of the per-step uniform (kernels/adamw_step.wgsl's Step). */
const STEP_BYTES = 48;

/**
 * The two small buffers every AdamW variant binds: stats (grad_norm's output,
 * 4 floats) and the per-step uniform.
 */
export function stepBuffers(
  mem: ArenaScope,
  prefix: string,
): { stats: GPUBuffer; step: GPUBuffer } {
  return {
    stats: mem.alloc(`${prefix}.stats`, "scratch", 16),
    step: mem.alloc(
      `${prefix}.step`,
      "scratch",
      STEP_BYTES,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    ),
  };
}

/** The per-step uniform of the AdamW kernels (see kernels/adamw_step.wgsl's Step). */
export function stepWords(
  c: AdamWConfig,
  t: number,
  lr: number,
  o: StepOptions = {},
): Uint32Array<ArrayBuffer> {
  return new Uint32Array([
    f32Bits(lr),
    f32Bits(c.beta1),
    f32Bits(c.beta2),
    f32Bits(c.eps),
    f32Bits(1 - c.beta1 ** t),
    f32Bits(1 - c.beta2 ** t),
    f32Bits(c.weightDecay),
    f32Bits(c.gradClip),
    f32Bits(1 / (o.lossScale ?? 1)),
    o.skipOnOverflow ? 1 : 0,
    0,
    0,
  ]);
}

/** Floats of partial sums and counts {@linkcode gradNormDispatches} needs for these ranges. */
export function gradNormPartials(ranges: { size: number }[]): number {
  return 2 * ranges.reduce((a, r) => a + Math.ceil(r.size / BLOCK), 0);
}

/**
 * Dispatches that write the global L2 norm of the gradient ranges to stats[1]
 * and the number of NaN or Inf elements to stats[2]: a partial sum of squares
 * per block of 4096, then one workgroup's fixed-order sum of the partials.
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
