/**
 * What every AdamW variant (fp32, 8-bit, 4-bit) shares: the hyperparameters, the per-step
 * uniform (kernels/adamw_update.wgsl's `s`), binding-sized ranges of the flat buffers and
 * the gradient statistics buffer an optimizer reads when none is given.
 *
 * @module
 */

import type { ArenaScope } from "../gpu/arena.ts";
import { packUniforms, type StructDecl, uniformLayout } from "../gpu/define_kernel.ts";
import type { SplitBuffer } from "../gpu/split_buffer.ts";
import type { ParamLayout } from "../model/params.ts";
import { GRAD_STATS_BYTES, identityGradStats } from "./optimizer.ts";

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
}

/** nanoGPT/llm.c defaults. */
export const ADAMW_DEFAULTS: AdamWConfig = {
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.1,
};

/** A contiguous piece of one tensor that fits in one binding (elements). */
export interface ParamRange {
  name: string;
  offset: number;
  size: number;
  decay: boolean;
}

/**
 * Splits every tensor of a layout into ranges of at most `maxBytes` bytes of f32 (so of f16
 * too), starting 256-byte aligned in either.
 */
export function parameterRanges(layout: ParamLayout, maxBytes: number): ParamRange[] {
  const per = Math.floor(maxBytes / 4 / 128) * 128;
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

/**
 * The per-step uniform every AdamW kernel reads as `s` (kernels/adamw_update.wgsl): the
 * learning rate, the hyperparameters and the bias corrections of step t, and the seed of
 * 16-bit weights' stochastic rounding (kernels/param_store.wgsl; 0 for f32 weights), written
 * once per step ({@linkcode stepWords}).
 */
export const ADAMW_STEP: StructDecl = {
  struct: "Step",
  fields: {
    lr: "f32",
    beta1: "f32",
    beta2: "f32",
    eps: "f32",
    bc1: "f32",
    bc2: "f32",
    wd: "f32",
    round_seed: "u32",
  },
};

/**
 * The seed of stochastic rounding at step `t` (kernels/param_store.wgsl): the step itself for
 * 16-bit (f16) weights, 0 (no rounding) for f32 ones.
 */
export function roundSeed(params: SplitBuffer, t: number): number {
  return params.dtype === "f16" ? t >>> 0 || 1 : 0;
}

/** Bytes of the per-step uniform. */
const STEP_BYTES = uniformLayout(ADAMW_STEP.fields).size;

/**
 * The two small buffers every AdamW variant binds: the gradient statistics (`given`, the
 * training step's, or its own: scale 1, never skipped) and the per-step uniform.
 */
export function stepBuffers(
  mem: ArenaScope,
  prefix: string,
  given?: GPUBuffer,
): { gradStats: GPUBuffer; step: GPUBuffer } {
  return {
    gradStats: given ?? ownGradStats(mem, prefix),
    step: mem.alloc(
      `${prefix}.step`,
      "scratch",
      STEP_BYTES,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    ),
  };
}

/** A gradient statistics buffer of an optimizer driven without a training step. */
export function ownGradStats(mem: ArenaScope, prefix: string): GPUBuffer {
  const b = mem.alloc(`${prefix}.grad_stats`, "scratch", GRAD_STATS_BYTES);
  mem.arena.device.queue.writeBuffer(b, 0, identityGradStats());
  return b;
}

/**
 * The per-step uniform {@linkcode ADAMW_STEP} for step `t` (1-based) at learning rate `lr`, for
 * the parameters `params` (f16 ones get stochastic rounding).
 */
export function stepWords(
  c: AdamWConfig,
  t: number,
  lr: number,
  params: SplitBuffer,
): Uint32Array<ArrayBuffer> {
  return packUniforms("AdamW step", ADAMW_STEP.fields, {
    lr,
    beta1: c.beta1,
    beta2: c.beta2,
    eps: c.eps,
    bc1: 1 - c.beta1 ** t,
    bc2: 1 - c.beta2 ** t,
    wd: c.weightDecay,
    round_seed: roundSeed(params, t),
  });
}
