/**
 * A run sized to a time budget (`--time 5m`): it measures its own speed over its first steps
 * and decides, once, how many steps fit. The decision is logged and saved with the run's
 * settings (a resume keeps it), and the schedule follows the decided steps. Until then the
 * schedule is built for an unbounded run: warmup, then the peak rate (cosine and wsd start
 * flat there), so the steps before the decision see the rates the decided schedule gives them
 * within its warmup (50 steps by default, past the decision).
 *
 * @module
 */

import { formatDuration } from "../format.ts";

/** The budget when neither --steps nor --time is given: the default job ends in minutes. */
export const DEFAULT_TIME_S = 300;

/**
 * Seconds from "90s", "5m", "1h30m", "2h", "1.5h" or a plain number of seconds; a TypeError
 * naming --time otherwise.
 */
export function parseDuration(text: string): number {
  const t = text.trim();
  let seconds = 0, rest = t;
  if (/^\d+(\.\d+)?$/.test(t)) seconds = Number(t);
  else {
    const unit: Record<string, number> = { h: 3600, m: 60, s: 1 };
    for (const m of t.matchAll(/(\d+(?:\.\d+)?)([hms])/g)) {
      seconds += Number(m[1]) * unit[m[2]];
      rest = rest.replace(m[0], "");
    }
    if (rest !== "" || t === "") seconds = NaN;
  }
  if (!(seconds > 0 && Number.isFinite(seconds))) {
    throw new TypeError(`must be a duration such as 90s, 5m or 1h30m, got "${text}"`);
  }
  return seconds;
}

/** How a run's length is set: a budget in seconds (then `cap` bounds it), or fixed steps. */
export interface RunLength {
  /** Train for about this many seconds, counted from the start of the run. */
  seconds?: number;
  /** The fixed number of steps, or (with `seconds`) the most the budget may choose. */
  steps?: number;
}

/** The rule in one place: --time, else --steps, else the default budget. */
export function runLength(c: { steps?: number; time?: number }): RunLength {
  if (c.time !== undefined) return { seconds: c.time, steps: c.steps };
  if (c.steps !== undefined) return { steps: c.steps };
  return { seconds: DEFAULT_TIME_S };
}

/** What {@linkcode StepBudget} decided, for the log. */
export interface BudgetDecision {
  /** The run's total steps. */
  steps: number;
  /** Seconds per optimizer step, measured. */
  perStep: number;
  /** The steps the measurement covered (after the first, which compiles and tunes). */
  measured: [number, number];
  /** Seconds the run had taken when it decided (setup and the steps so far). */
  elapsed: number;
  /** The line the trainer prints. */
  line: string;
}

/** Options of {@linkcode StepBudget}. */
export interface StepBudgetOptions {
  /** The budget in seconds. */
  seconds: number;
  /** The most steps it may choose. */
  cap?: number;
  /** Validation: every this many steps (0: never) ... */
  valEvery: number;
  /** ... this many forward passes of one batch each. */
  valBatches: number;
}

/** Steps timed after the first before deciding, and the least time they must cover. */
const MEASURE_STEPS = 3, MEASURE_MS = 2000, MEASURE_MAX_STEPS = 50;

/**
 * Decides a run's steps from its measured speed: after the first step (compilation and
 * tuning) it times at least 3 steps and 2 s, then fits what is left of the budget. A
 * validation pass counts as a third of a training step per batch (a forward of the same
 * shape); 5% of the budget is kept for the final checkpoint and sample.
 */
export class StepBudget {
  readonly #o: StepBudgetOptions;
  #from?: { step: number; ms: number };
  #done = false;

  constructor(options: StepBudgetOptions) {
    this.#o = options;
  }

  /**
   * Called after each step with the time since the run began; returns the decision once
   * (at most MEASURE_MAX_STEPS steps in), else undefined.
   */
  afterStep(step: number, elapsedMs: number): BudgetDecision | undefined {
    const o = this.#o;
    if (this.#done) return undefined;
    if (!this.#from) {
      this.#from = { step, ms: elapsedMs };
      return undefined;
    }
    const n = step - this.#from.step, span = elapsedMs - this.#from.ms;
    if (n < MEASURE_STEPS || (span < MEASURE_MS && n < MEASURE_MAX_STEPS)) return undefined;
    this.#done = true;
    const perStep = span / n / 1000;
    const valShare = o.valEvery > 0 ? o.valBatches / (3 * o.valEvery) : 0;
    const left = 0.95 * o.seconds - elapsedMs / 1000;
    let steps = step + Math.max(0, Math.floor(left / (perStep * (1 + valShare))));
    if (o.cap !== undefined) steps = Math.min(steps, o.cap);
    steps = Math.max(steps, step);
    const line = `time: ${formatDuration(o.seconds)} budget; ${perStep.toFixed(3)} s/step over ` +
      `steps ${this.#from.step + 1}-${step}, ${formatDuration(elapsedMs / 1000)} spent so far ` +
      `(setup and the first steps), so the run takes ${steps} steps` +
      (o.cap !== undefined && steps === o.cap ? ` (--steps ${o.cap} is the most)` : "");
    return {
      steps,
      perStep,
      measured: [this.#from.step + 1, step],
      elapsed: elapsedMs / 1000,
      line,
    };
  }
}
