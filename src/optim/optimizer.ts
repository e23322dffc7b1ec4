/**
 * What every optimizer offers a training step, so that fp32 AdamW, the 8-bit and 4-bit ones,
 * their offloaded variants, Adafactor and a new one are interchangeable: the step computes
 * the gradient norm, the clip factor, the non-finite count and the overflow decision into a
 * {@linkcode GRAD_STATS} buffer the optimizer reads on the GPU; the optimizer gets the
 * learning rate and step number from {@linkcode Optimizer.setStep}, encodes its update after
 * the backward and finishes it after the submit. An optimizer knows no norm, no file format
 * and no loop: its state goes out as named tensors and comes back through
 * {@linkcode SavedState}.
 *
 * @module
 */

import type { Dispatch } from "../gpu/dispatch.ts";
import type { StructDecl } from "../gpu/define_kernel.ts";
import type { Profiler } from "../gpu/profiler.ts";

// ---------------------------------------------------------------------------
// The gradient statistics: written by the training step, read by every update.

/**
 * The gradient statistics buffer, f32 slots by name: the one definition of its layout (the
 * WGSL struct {@linkcode GRAD_STATS_STRUCT} is generated from it).
 *
 * - `scale`: what every stored gradient is multiplied by before the update: the clip factor
 *   over the loss scale, min(1, max_norm / (norm / S + 1e-6)) / S (1 without either).
 * - `norm`: the L2 norm of the stored (loss-scaled) gradients' finite elements.
 * - `nonfinite`: how many gradient elements are NaN or Inf (+1 when the norm overflows).
 * - `skip`: 1 when the whole update is skipped (fp16 overflow), else 0.
 */
export const GRAD_STATS = { scale: 0, norm: 1, nonfinite: 2, skip: 3 } as const;

/** Bytes of the {@linkcode GRAD_STATS} buffer. */
export const GRAD_STATS_BYTES = Object.keys(GRAD_STATS).length * 4;

/**
 * {@linkcode GRAD_STATS} as a WGSL struct, fields in slot order: the type of the binding every
 * kernel that reads or writes the statistics declares (src/gpu/define_kernel.ts).
 */
export const GRAD_STATS_STRUCT: StructDecl = {
  struct: "GradStats",
  fields: Object.fromEntries(
    Object.entries(GRAD_STATS).sort((a, b) => a[1] - b[1]).map(([k]) => [k, "f32"]),
  ),
};

/** The statistics of an untouched gradient: scale 1, nothing skipped. */
export function identityGradStats(): Float32Array<ArrayBuffer> {
  const s = new Float32Array(GRAD_STATS_BYTES / 4);
  s[GRAD_STATS.scale] = 1;
  return s;
}

/** A named tensor of optimizer state for a checkpoint: f32 values or raw bytes. */
export interface StateTensor {
  /** Unique within the optimizer's state, e.g. "m.wte.weight". */
  name: string;
  /** Dimensions. */
  shape: number[];
  /** The values (f32) or the raw bytes (packed codes). */
  data: Float32Array | Uint8Array;
}

/** Saved optimizer state as a checkpoint gives it back. */
export interface SavedState {
  /** Where it came from, for messages. */
  readonly path: string;
  /** True when the state holds a tensor of this name. */
  has(name: string): boolean;
  /** A tensor's values as f32. */
  f32(name: string): Float32Array<ArrayBuffer>;
  /** A tensor's raw bytes. */
  bytes(name: string): Uint8Array<ArrayBuffer>;
}

/** The optimizer protocol the training step drives. */
export interface Optimizer {
  /**
   * The {@linkcode GRAD_STATS} buffer the update reads its gradient scale and skip flag
   * from: given at creation, or the optimizer's own (scale 1, never skipped).
   */
  readonly gradStats: GPUBuffer;
  /** Bytes of optimizer state on the GPU. */
  readonly stateBytes: number;
  /** Bytes of optimizer state kept in CPU memory (offload), else 0. */
  readonly hostBytes: number;
  /**
   * True when the update also writes the parameters' f16 copy (mixed precision, fused):
   * the step then skips the separate cast pass. Default false.
   */
  readonly writesHalf?: boolean;
  /** Writes the per-step values (learning rate `lr`, step `t`, 1-based) before the update. */
  setStep(t: number, lr: number): void;
  /**
   * Encodes the update (or the part that runs in the step's encoder) after the backward and
   * after the step wrote `gradStats`.
   */
  encodeUpdate(encoder: GPUCommandEncoder, profiler?: Profiler): void;
  /**
   * The update's dispatches for the parameters in elements [start, end) only (whole tensors):
   * the optimizer-in-backward step updates each block as soon as its gradients are complete
   * (it asks once and replays them). Absent, or throwing, where the update cannot run in
   * pieces (offloaded state).
   */
  updatePart?(start: number, end: number): Dispatch[];
  /** Finishes the update after that encoder was submitted (offload streams the state). */
  finishUpdate(): Promise<void>;
  /** The state as named tensors, for a checkpoint. */
  readState(): Promise<StateTensor[]>;
  /** Restores state saved from {@linkcode readState}; throws before any write when it does not fit. */
  writeState(saved: SavedState): void;
  /** Frees the state and every buffer the optimizer made. */
  destroy(): void;
}

/** The dispatches of `parts` (each over elements [offset, offset + size)) inside [start, end). */
export function dispatchesWithin(
  parts: readonly { offset: number; size: number; dispatches: readonly Dispatch[] }[],
  start: number,
  end: number,
): Dispatch[] {
  return parts.filter((p) => p.offset >= start && p.offset + p.size <= end).flatMap((p) =>
    p.dispatches
  );
}

/** The error when saved state lacks a tensor this optimizer needs. */
export function otherOptimizerError(saved: SavedState, name: string): Error {
  return new Error(
    `${saved.path} has no "${name}": it holds another optimizer's state; resume with the ` +
      "--optimizer it was saved with",
  );
}
