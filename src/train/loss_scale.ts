/**
 * Dynamic loss scaling for mixed precision (PyTorch's GradScaler policy): the
 * loss gradient is multiplied by `scale` so that small gradients survive f16;
 * a step whose gradients overflow is skipped and the scale halved, and after
 * `window` clean steps in a row the scale doubles.
 *
 * @module
 */

import { TRAIN_CONFIG } from "./config_table.ts";

/** Options of {@linkcode LossScaler}. */
export interface LossScalerOptions {
  /** First scale (default: the training table's `lossScale`, 2^16). */
  init?: number;
  /** Clean steps before the scale doubles (default: the table's `lossScaleWindow`, 2000). */
  window?: number;
  /** Lowest scale an overflow can halve it to (default 1). */
  min?: number;
  /** Highest scale; doubling stops here (default 2^24). */
  max?: number;
}

/** The scale and its clean-step counter, as saved in checkpoints. */
export interface LossScalerState {
  /** The current loss scale. */
  scale: number;
  /** Clean steps in a row since the scale last changed. */
  goodSteps: number;
}

/**
 * Tracks the loss scale of mixed-precision training: halved when a step's gradients
 * overflow, doubled after `window` clean steps in a row.
 *
 * @example
 * ```ts
 * import { LossScaler } from "@webgpu-gpt2/core";
 *
 * const scaler = new LossScaler({ init: 2 ** 16 });
 * // ... train a step with model.setLossScale(scaler.scale), count non-finite gradients ...
 * const nonFiniteGradients = 0;
 * scaler.update(nonFiniteGradients > 0); // halves on overflow
 * ```
 */
export class LossScaler {
  /** The scale the loss gradient is multiplied by now. */
  scale: number;
  /** Clean steps in a row since the scale last changed. */
  goodSteps = 0;
  /** Clean steps in a row before the scale doubles. */
  readonly window: number;
  /** Lowest scale. */
  readonly min: number;
  /** Highest scale. */
  readonly max: number;

  /** A scaler with the given options; throws on a non-positive scale or window. */
  constructor(o: LossScalerOptions = {}) {
    this.scale = o.init ?? TRAIN_CONFIG.lossScale.default;
    this.window = o.window ?? TRAIN_CONFIG.lossScaleWindow.default;
    this.min = o.min ?? 1;
    this.max = o.max ?? 2 ** 24;
    if (!(this.scale > 0) || !Number.isFinite(this.scale)) {
      throw new RangeError(`Loss scale must be a positive number, got ${this.scale}`);
    }
    if (!Number.isInteger(this.window) || this.window < 1) {
      throw new RangeError(`Loss scale window must be a positive integer, got ${this.window}`);
    }
  }

  /** Records a step's outcome: overflow halves the scale, a full window of clean steps doubles it. */
  update(overflow: boolean): void {
    this.state = this.after(overflow);
  }

  /** The state {@linkcode update} would leave, without changing this one. */
  after(overflow: boolean): LossScalerState {
    if (overflow) return { scale: Math.max(this.min, this.scale / 2), goodSteps: 0 };
    if (this.goodSteps + 1 >= this.window) {
      // Growth never lowers it.
      return { scale: Math.max(this.scale, Math.min(this.max, this.scale * 2)), goodSteps: 0 };
    }
    return { scale: this.scale, goodSteps: this.goodSteps + 1 };
  }

  /** The scale and clean-step counter, to save in a checkpoint and restore on resume. */
  get state(): LossScalerState {
    return { scale: this.scale, goodSteps: this.goodSteps };
  }

  set state(s: LossScalerState) {
    this.scale = s.scale;
    this.goodSteps = s.goodSteps;
  }
}
