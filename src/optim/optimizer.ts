/**
 * What every optimizer offers a training step, so that fp32 AdamW, the 8-bit and 4-bit ones,
 * their offloaded variants, and a new one (Muon, a fused update) are interchangeable: the
 * step encodes the update after the backward, finishes it after the submit, and reads the
 * gradient norm from `stats`. An optimizer knows no file format and no loop: its state goes
 * out as named tensors and comes back through {@linkcode SavedState}.
 *
 * @module
 */

import type { Profiler } from "../gpu/profiler.ts";

/** Per-step options of mixed precision. */
export interface StepOptions {
  /** The loss scale the gradients carry (default 1); the update divides it out. */
  lossScale?: number;
  /** Skip the whole step when any gradient is NaN or Inf (default false). */
  skipOnOverflow?: boolean;
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
  /** [loss, grad norm, non-finite gradient count, 0] f32, written by the update. */
  readonly stats: GPUBuffer;
  /** Bytes of optimizer state on the GPU. */
  readonly stateBytes: number;
  /** Bytes of optimizer state kept in CPU memory (offload), else 0. */
  readonly hostBytes: number;
  /**
   * True when the update also writes the parameters' f16 copy (mixed precision, fused):
   * the step then skips the separate cast pass. Default false.
   */
  readonly writesHalf?: boolean;
  /**
   * Writes the per-step values (learning rate `lr`, bias corrections for step `t`, 1-based,
   * loss scale) before the step's update runs.
   */
  setStep(t: number, lr: number, options?: StepOptions): void;
  /** Encodes the update (or the part that runs in the step's encoder) after the backward. */
  encodeUpdate(encoder: GPUCommandEncoder, profiler?: Profiler): void;
  /** Finishes the update after that encoder was submitted (offload streams the state). */
  finishUpdate(): Promise<void>;
  /**
   * The first half of {@linkcode encodeUpdate}: the gradient norm into `stats` only. With
   * {@linkcode encodeApply}, the step can change `stats` in between (ZeRO-1 sums each rank's
   * share of the norm). Optional: an optimizer without it cannot shard its state.
   */
  encodeNorm?(encoder: GPUCommandEncoder, profiler?: Profiler): void;
  /** The second half: the update, reading the norm from `stats`. */
  encodeApply?(encoder: GPUCommandEncoder, profiler?: Profiler): void;
  /** The state as named tensors, for a checkpoint. */
  readState(): Promise<StateTensor[]>;
  /** Restores state saved from {@linkcode readState}; throws before any write when it does not fit. */
  writeState(saved: SavedState): void;
  /** Frees the state and every buffer the optimizer made. */
  destroy(): void;
}

/** The error when saved state lacks a tensor this optimizer needs. */
export function otherOptimizerError(saved: SavedState, name: string): Error {
  return new Error(
    `${saved.path} has no "${name}": it holds another optimizer's state; resume with the ` +
      "--optimizer it was saved with",
  );
}
