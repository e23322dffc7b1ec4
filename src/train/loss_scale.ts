/**
 * Dynamic loss scaling for mixed precision (PyTorch's GradScaler policy): the
 * loss gradient is multiplied by `scale` so that small gradients survive f16;
 * a step whose gradients overflow is skipped and the scale halved, and after
 * `window` clean steps in a row the scale doubles.
 *
 * @module
 */

/** Options of {@linkcode LossScaler}. */
export interface LossScalerOptions {
  /** First scale (default 2^16). */
  init?: number;
  /** Clean steps before the scale doubles (default 2000). */
  window?: number;
  /** Bounds of the scale (default 1 and 2^24); growth stops at max. */
  min?: number;
  max?: number;
}

/** The scale and its clean-step counter, as saved in checkpoints. */
export interface LossScalerState {
  scale: number;
  goodSteps: number;
}

/**
 * @example
 * ```ts
 * const scaler = new LossScaler({ init: 2 ** 16 });
 * // ... train a step with model.setLossScale(scaler.scale) ...
 * scaler.update(nonFiniteGradients > 0); // halves on overflow
 * ```
 */
export class LossScaler {
  scale: number;
  goodSteps = 0;
  readonly window: number;
  readonly min: number;
  readonly max: number;

  constructor(o: LossScalerOptions = {}) {
    this.scale = o.init ?? 2 ** 16;
    this.window = o.window ?? 2000;
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
    if (overflow) {
      this.scale = Math.max(this.min, this.scale / 2);
      this.goodSteps = 0;
      return;
    }
    if (++this.goodSteps >= this.window) {
      this.scale = Math.max(this.scale, Math.min(this.max, this.scale * 2)); // growth never lowers it
      this.goodSteps = 0;
    }
  }

  get state(): LossScalerState {
    return { scale: this.scale, goodSteps: this.goodSteps };
  }

  set state(s: LossScalerState) {
    this.scale = s.scale;
    this.goodSteps = s.goodSteps;
  }
}
