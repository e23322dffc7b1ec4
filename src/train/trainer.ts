/**
 * The training loop: gradient accumulation to a total batch in tokens, a learning-rate
 * schedule, periodic validation, samples, HellaSwag and checkpoints, exact resume, the
 * divergence guard, and a clean save when the caller's AbortSignal fires. One optimizer step is a
 * TrainStep (src/train/step.ts); what the run holds is built by setUpRun
 * (src/train/run_setup.ts) and stepped by RunLoop (src/train/loop.ts); the settings and
 * their defaults are one table (src/train/config_table.ts), merged with a resumed run's by
 * src/train/resolve.ts.
 *
 * @module
 */

import type { Runtime } from "../gpu/runtime.ts";
import { listCheckpoints } from "../io/checkpoint.ts";
import type { TrainConfig } from "./config.ts";
import { resolveTrainConfig, type TrainSettings } from "./resolve.ts";
import { lockRunDir, recoverCheckpoints } from "./run_dir.ts";
import { type RunSetup, setUpRun } from "./run_setup.ts";
import { RunLoop } from "./loop.ts";
import type { StepHooks } from "./step.ts";
import type { Dist } from "../parallel/dist.ts";
import type { GPT2 } from "../model/gpt2.ts";

export type { TrainConfig } from "./config.ts";
export { type ResolveOptions, resolveTrainConfig, type TrainSettings } from "./resolve.ts";
export { DivergenceError } from "./guard.ts";

/** What a run returns. */
export interface TrainResult {
  /** Final checkpoint directory. */
  checkpoint: string;
  /** Loss of every optimizer step this run took, in order. */
  losses: number[];
  /** The step the run ended at, counted from the start of training (resumed steps included). */
  lastStep: number;
  /** True when the run stopped before `steps` (Ctrl-C, or a `stopAfter` hook). */
  stopped: boolean;
  /** The last validation loss; undefined when the run never validated. */
  valLoss?: number;
  /** Text sampled after the final checkpoint; undefined when `sampleTokens` is 0. */
  sample?: string;
}

/** Where a run's lines go: `console` by default; give your own to capture or silence them. */
export interface Logger {
  /** One line of output (progress, notices, warnings). */
  log(line: string): void;
}

/** One optimizer step, as {@linkcode TrainOptions.onStep} receives it. */
export interface StepRecord {
  /** The step just taken, counted from the start of training (resumed steps included). */
  step: number;
  /** Steps the run is for; undefined while a time budget has not decided them. */
  steps?: number;
  /** Mean training loss of the step. */
  loss: number;
  /** The learning rate it used. */
  lr: number;
  /** The global gradient norm before clipping. */
  gradNorm: number;
  /**
   * Tokens trained on per second, over the last 10 steps (a step run ahead is read back
   * with the one before it on some backends, so one step's own time can read near 0).
   */
  tokensPerS: number;
  /** Model FLOP/s over the last 10 steps (6N + 12LCT per token). */
  flopsPerS: number;
  /** Milliseconds from the step's start to its readback. */
  ms: number;
  /** Bytes of GPU memory the run holds. */
  memBytes: number;
  /** fp16: the loss scale the step used. */
  lossScale?: number;
  /** fp16: the step overflowed and was skipped. */
  skipped?: boolean;
}

/** What a caller of {@linkcode train} may add besides the config. */
export interface TrainOptions {
  /** Where the run's lines go (default: console; only rank 0 writes). */
  logger?: Logger;
  /**
   * Stops the run: after the current step (a validation or HellaSwag pass under way is cut
   * short), with a checkpoint; before the first step, with nothing written. The library
   * installs no signal handlers: tasks/train.ts aborts this on Ctrl-C or SIGTERM.
   */
  signal?: AbortSignal;
  /** Called after every optimizer step with its numbers (only on rank 0). */
  onStep?: (record: StepRecord) => void;
  /** Stop after the step this returns true for (used by tests to interrupt). */
  stopAfter?: (step: number) => boolean;
  /**
   * Begin step n+1 on the GPU before step n is read back, where nothing depends on step n's
   * outcome (no loss scaler, one process, no `stopAfter`, not before a save, an evaluation
   * or the last step): the host's encoding and the readback wait overlap the GPU's work.
   * Same numbers either way; default true.
   */
  runAhead?: boolean;
  /** Extension points of each optimizer step (run before the data-parallel ones). */
  step?: StepHooks;
  /** Called with the trained graph (and so its weights) before it is freed. */
  afterRun?: (model: GPT2) => Promise<void>;
  /**
   * Train data-parallel over these ranks (src/parallel; `initDist()` under mpirun): rank 0
   * writes the logs, samples and checkpoints, every rank trains.
   */
  dist?: Dist;
}

export { flopsPerToken, vocabularyHint } from "./run_setup.ts";

/**
 * Runs (or resumes) training. `settings` is any part of a TrainConfig: the rest comes from a
 * resumed checkpoint's run, then the table's defaults ({@linkcode resolveTrainConfig}). The
 * run directory is locked for the run's length; one that holds checkpoints is refused unless
 * resuming or `overwrite` is set.
 *
 * @example Train gpt2-mini on a text file
 * ```ts
 * import { createRuntime, train } from "@webgpu-gpt2/core";
 *
 * const rt = await createRuntime();
 * const result = await train(rt, {
 *   modelName: "gpt2-mini",
 *   data: "corpus.txt", // tokenized once into cacheDir
 *   out: "runs/mini",
 *   steps: 200,
 * }, {
 *   onStep: (s) => console.log(s.step, s.loss, s.tokensPerS),
 *   logger: { log: () => {} },
 * });
 * console.log(result.checkpoint, result.losses.at(-1), result.valLoss);
 *
 * // Later: continue to 400 steps with everything else as that run had it.
 * await train(rt, { out: "runs/mini", resume: "latest", steps: 400 });
 * ```
 */
export async function train(
  rt: Runtime,
  settings: TrainSettings,
  options: TrainOptions = {},
): Promise<TrainResult> {
  const N = options.dist?.size ?? 1, lead = (options.dist?.rank ?? 0) === 0;
  const c = await resolveTrainConfig(settings, { ranks: N });
  const BT = c.batch * c.seq * N;
  if (c.totalBatch % BT !== 0) {
    throw new RangeError(
      `--total-batch ${c.totalBatch} is not a multiple of batch x seq` +
        (N > 1 ? ` x ranks = ${c.batch} x ${c.seq} x ${N}` : "") + ` = ${BT}: pick a multiple`,
    );
  }
  if (!(Number.isInteger(c.keep) && c.keep >= 1)) {
    throw new RangeError(`--keep ${c.keep} would delete every checkpoint: keep at least 1`);
  }
  const existed = await Deno.stat(c.out).then(() => true, () => false);
  // Rank 0 owns the run directory; the other ranks only read it.
  const lock = lead
    ? await lockRunDir(c.out).catch((e) => {
      throw new Error(
        `Cannot use ${c.out} as the run directory: ${(e as Error).message}: choose a ` +
          "writable --out",
      );
    })
    : { notice: undefined, release: async () => {} };
  try {
    // Only the lock's holder writes checkpoints: temporaries there are a dead run's.
    const recovered = lead ? await recoverCheckpoints(`${c.out}/checkpoints`) : [];
    const earlier = await listCheckpoints(`${c.out}/checkpoints`);
    if (earlier.length && !c.resume && !c.overwrite) {
      throw new Error(
        `${c.out} already holds ${earlier.length} checkpoint(s) of an earlier run (newest ` +
          `${earlier[earlier.length - 1]}): continue it with --resume latest, start over with ` +
          "--overwrite (deletes them and its log), or train into another --out",
      );
    }
    return await trainLocked(rt, c, options, earlier, [...recovered, lock.notice ?? ""]);
  } finally {
    await lock.release();
    if (!existed && lead) await Deno.remove(c.out).catch(() => {}); // only if still empty
  }
}

/** The run itself, in a locked directory whose checkpoints were `earlier`. */
async function trainLocked(
  rt: Runtime,
  config: TrainConfig,
  options: TrainOptions,
  earlier: string[],
  notices: string[],
): Promise<TrainResult> {
  const tRun = performance.now();
  const lead = (options.dist?.rank ?? 0) === 0;
  const logger = options.logger ?? console;
  const print = lead ? (line: string) => logger.log(line) : () => {};
  const { signal } = options;
  for (const line of [...(config.notices ?? []), ...notices]) if (line) print(line);
  let run: RunSetup;
  try {
    run = await setUpRun(rt, config, print, { hooks: options.step, dist: options.dist, signal });
  } catch (e) {
    if (!signal?.aborted) throw e;
    print("stopped before the first step: nothing was trained or saved");
    return { checkpoint: config.resume ?? "", losses: [], lastStep: 0, stopped: true };
  }
  try {
    const loop = await RunLoop.start(rt, config, run, { ...options, print, tRun, earlier });
    return await loop.run();
  } finally {
    run.destroy();
  }
}
