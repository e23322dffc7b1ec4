/**
 * The divergence guard: a non-finite loss, or a loss far above the recent median, condemns
 * the weights that produced it; a non-finite gradient norm condemns the update just applied;
 * fp16 steps that overflow again and again mean the loss scale cannot work.
 *
 * @module
 */

/** A run stopped by the divergence guard (or by fp16 overflowing step after step). */
export class DivergenceError extends Error {
  /** The error with `message` (it says where the last good checkpoint is). */
  constructor(message: string) {
    super(message);
    this.name = "DivergenceError";
  }
}

/** The median of a non-empty list. */
export function median(xs: number[]): number {
  const a = [...xs].sort((x, y) => x - y), m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
}

/** Why a step diverged, and the step whose weights are to blame. */
export interface Divergence {
  /** What was wrong, for the error message. */
  why: string;
  /** The step after which the condemned weights were saved (step - 1 for a bad loss). */
  suspect: number;
}

/** Settings of {@linkcode DivergenceGuard}. */
export interface GuardOptions {
  /** A loss over this many times the recent median diverged (0: no loss test). */
  factor: number;
  /** Steps whose median the loss is compared with. */
  window: number;
  /** fp16: overflowed (skipped) steps in a row that stop the run. */
  maxOverflows: number;
}

/** Watches each step's loss and gradient norm. */
export class DivergenceGuard {
  readonly options: GuardOptions;
  #recent: number[];
  #overflows = 0;

  /** A guard whose median starts from `recent` losses (a resume's, from its log). */
  constructor(options: GuardOptions, recent: number[] = []) {
    this.options = options;
    this.#recent = recent.slice(-options.window);
  }

  /** Overflowed steps in a row so far. */
  get overflowsInARow(): number {
    return this.#overflows;
  }

  /**
   * Checks step `step`'s outcome; returns what diverged, or undefined (and then counts the
   * loss into the median). An overflowed step is not judged: its update was skipped.
   */
  check(step: number, loss: number, norm: number, overflow: boolean): Divergence | undefined {
    this.#overflows = overflow ? this.#overflows + 1 : 0;
    if (overflow) return undefined;
    const { factor, window } = this.options;
    const recent = this.#recent;
    const typical = recent.length ? median(recent) : NaN;
    // A bad loss condemns the weights it was computed with (step - 1's); a bad
    // gradient norm, the update this step just applied.
    if (!Number.isFinite(loss)) return { why: `the loss is ${loss}`, suspect: step - 1 };
    if (factor > 0 && loss > factor * typical) {
      return {
        why: `the loss ${loss.toPrecision(4)} is ${(loss / typical).toFixed(1)}x the median ` +
          `${typical.toFixed(4)} of the last ${recent.length} steps (--divergence ${factor})`,
        suspect: step - 1,
      };
    }
    if (!Number.isFinite(norm)) return { why: `the gradient norm is ${norm}`, suspect: step };
    recent.push(loss);
    if (recent.length > window) recent.shift();
    return undefined;
  }

  /** The error when fp16 overflowed too often in a row, or undefined. */
  overflowError(scale: number, firstScale: number, lastCheckpoint: string): Error | undefined {
    if (this.#overflows < this.options.maxOverflows) return undefined;
    return new DivergenceError(
      `${this.#overflows} fp16 steps in a row overflowed and were skipped (loss scale now ` +
        `${scale}, started at ${firstScale}): the gradients do not fit in ` +
        "fp16 at this scale. Lower --loss-scale (65536 is usual), lower --lr, or train with " +
        "--precision fp32" +
        (lastCheckpoint ? `; the last checkpoint is ${lastCheckpoint}` : ""),
    );
  }
}
