/**
 * The training loop: gradient accumulation to a total batch in tokens, a learning-rate
 * schedule, periodic validation, samples, HellaSwag and checkpoints, exact resume, the
 * divergence guard, and a clean save when the caller's AbortSignal fires. One optimizer step is a
 * {@linkcode TrainStep} (src/train/step.ts); what the run holds is built by setUpRun
 * (src/train/run_setup.ts); the settings and their defaults are one table
 * (src/train/config.ts).
 *
 * @module
 */

import type { Runtime } from "../gpu/runtime.ts";
import { matchTensors } from "../model/weights.ts";
import { describeSchedule, lrAt } from "../optim/schedule.ts";
import { type LoaderCursor, OutOfVocabularyError } from "../data/loader.ts";
import {
  latestResumable,
  listCheckpoints,
  pruneCheckpoints,
  stepDirName,
  stepOfDir,
} from "../io/checkpoint.ts";
import { formatDuration } from "../format.ts";
import type { TrainConfig } from "./config.ts";
import { resolveTrainConfig, type TrainSettings } from "./resolve.ts";
import { DivergenceError, DivergenceGuard } from "./guard.ts";
import { formatStepLine, formatSummary, RunLog } from "./log.ts";
import { lockRunDir, recoverCheckpoints, setAside } from "./run_dir.ts";
import {
  flopsPerToken,
  resolvedConfig,
  type RunSetup,
  scheduleFor,
  setUpRun,
  vocabularyHint,
} from "./run_setup.ts";
import { runLength, StepBudget } from "./budget.ts";
import { saveStep } from "./checkpointing.ts";
import { BatchError, type StepHooks } from "./step.ts";
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
  /** Tokens trained on per second, over this step. */
  tokensPerS: number;
  /** Model FLOP/s over this step (6N + 12LCT per token). */
  flopsPerS: number;
  /** Milliseconds the step took. */
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
  const { signal, onStep } = options;
  const checkpoints = `${config.out}/checkpoints`;
  for (const line of [...(config.notices ?? []), ...notices]) if (line) print(line);
  let run: RunSetup;
  try {
    run = await setUpRun(rt, config, print, { hooks: options.step, dist: options.dist, signal });
  } catch (e) {
    if (!signal?.aborted) throw e;
    print("stopped before the first step: nothing was trained or saved");
    return { checkpoint: config.resume ?? "", losses: [], lastStep: 0, stopped: true };
  }
  const { cfg, data, model, scaler, loader, evals, startStep } = run;
  // The settings as they stand: --time decides `steps` once, after the first steps.
  const c: TrainConfig = { ...config };
  const length = runLength(c);
  let steps = length.seconds === undefined ? length.steps! : Infinity;
  const budget = length.seconds === undefined ? undefined : new StepBudget({
    seconds: length.seconds,
    cap: length.steps,
    valEvery: c.valEvery,
    valBatches: c.valBatches,
  });
  try {
    // ---- output: nothing in the run directory changes before this point
    const log = new RunLog(c.out, c.modelName, lead);
    if (!c.resume && earlier.length && lead) { // only with --overwrite (train() refuses otherwise)
      await Deno.remove(checkpoints, { recursive: true });
      print(`overwrite: removed ${earlier.length} checkpoint(s) of the earlier run in ${c.out}`);
    }
    await log.open(c.resume ? startStep : undefined);
    const writeRunConfig = async () => {
      const resolved = resolvedConfig(rt, c, run);
      if (lead) {
        await Deno.writeTextFile(
          `${c.out}/run_config.json`,
          JSON.stringify(resolved, null, 2) + "\n",
        );
      }
      return resolved;
    };
    const resolved = await writeRunConfig();
    print(`config ${JSON.stringify(resolved, null, 2)}`);
    print(`lr: ${describeSchedule(run.schedule)}`);
    if (budget) {
      print(`time: about ${formatDuration(length.seconds!)}; steps decided after the first few`);
    }
    await log.write({ event: "start", time: new Date().toISOString(), config: resolved });
    const writeCurve = () => log.writeCurve();
    const target = { config: c, run, root: checkpoints, lead };
    /** Saves step `step`; the old ones are pruned by the caller once it is trusted. */
    const save = async (step: number, valLoss?: number, keep?: number, at = loader.cursor) => {
      const dir = await saveStep(target, step, { valLoss, keep, cursor: at });
      if (lead) await log.write({ event: "checkpoint", step, dir });
      return dir;
    };

    const losses: number[] = [];
    let step = startStep;
    let lastCheckpoint = "";
    /** Set after a periodic save: older checkpoints go once the next step's loss passes. */
    let prunePending = false;
    let stopAfter = false;
    const stopping = () => stopAfter || !!signal?.aborted;
    const factor = c.divergence;
    const guard = new DivergenceGuard({
      factor,
      window: c.divergenceWindow,
      maxOverflows: c.maxOverflows,
    }, log.train.map(([, l]) => l)); // a resume's median starts from its log
    /**
     * Bad data mid-run: saves the steps done (none of this step's update is applied yet, and
     * `cursor` is where the step began) and returns a note saying where they are.
     */
    const keepProgress = async (cursor: LoaderCursor): Promise<string> => {
      if (step === startStep || lastCheckpoint === `${checkpoints}/${stepDirName(step)}`) return "";
      return ` (steps up to ${step} are saved in ${await save(step, valLoss, c.keep, cursor)})`;
    };
    /**
     * Stops a diverging run: the checkpoint that holds the weights that gave the bad
     * loss (saved after step `suspect`) is moved aside as diverged_step_N, so that
     * --resume latest never picks it, and the error names the last good one.
     */
    const diverged = async (why: string, suspect: number): Promise<never> => {
      const bad = `${checkpoints}/${stepDirName(suspect)}`;
      const aside = lead && suspect > startStep && lastCheckpoint === bad
        ? await setAside(checkpoints, suspect)
        : undefined;
      const movedNote = aside ? ` Its checkpoint of step ${suspect} was moved to ${aside}.` : "";
      // "Good": what --resume latest would take (checksums match, weights finite).
      const { dir: good, skipped } = await latestResumable(checkpoints, matchTensors);
      const damaged = skipped.length ? ` Newer ones fail their checks: ${skipped.join("; ")}.` : "";
      await log.write({ event: "diverged", step, why });
      await writeCurve();
      throw new DivergenceError(
        `Training diverged at step ${step}: ${why}. Nothing was saved for this step.${movedNote}` +
          `${damaged} ` +
          (good
            ? `The last good checkpoint is ${good}: resume it with --resume ${good} and a lower --lr`
            : "There is no earlier checkpoint: start again with a lower --lr") +
          (factor > 0 ? `, or turn the loss test off with --divergence 0` : ""),
      );
    };
    let valLoss: number | undefined;
    const fpt = flopsPerToken(cfg, c.seq);
    const t0 = performance.now();
    const errorsBefore = rt.gpu.errors.length;
    while (step < steps && !stopping()) {
      const tStep = performance.now();
      const lr = lrAt(run.schedule, step);
      const stepCursor = loader.cursor;
      let r;
      try {
        r = await run.step.run(lr, run.nextBatch);
      } catch (e) {
        if (!(e instanceof BatchError)) throw e; // bad data: say why, keep the steps done
        const why = e.cause instanceof OutOfVocabularyError ? vocabularyHint(cfg, c.modelName) : "";
        throw new RangeError(e.message + why + (await keepProgress(stepCursor)));
      }
      const { loss, norm, overflow, lossScale: scale } = r;
      losses.push(loss);
      step++;
      const now = performance.now();
      const decision = steps === Infinity ? budget?.afterStep(step, now - tRun) : undefined;
      let decided = decision?.steps;
      // Under data parallelism rank 0's decision is every rank's, at the same step.
      if (run.dp && budget && steps === Infinity) {
        decided = (await run.dp.fromLead(decided ?? 0)) || undefined;
      }
      if (decided) {
        steps = c.steps = decided;
        run.schedule = scheduleFor(c, steps);
        if (decision) print(decision.line);
        print(`lr: ${describeSchedule(run.schedule)}`);
        await log.write({ event: "budget", step, steps, s_per_step: decision?.perStep });
        await writeRunConfig();
      }
      const dt = (now - tStep) / 1000;
      const tokPerS = c.totalBatch / dt;
      const flops = tokPerS * fpt;
      const elapsed = (now - t0) / 1000;
      print(formatStepLine({
        step,
        steps: Number.isFinite(steps) ? steps : undefined,
        loss,
        lr,
        norm,
        tokensPerS: tokPerS,
        flops,
        peakTflops: c.peakTflops,
        memBytes: rt.arena.currentBytes,
        etaS: Number.isFinite(steps)
          ? (elapsed / (step - startStep)) * (steps - step)
          : length.seconds! - (now - tRun) / 1000,
        overflow: overflow ? { scale, newScale: scaler!.scale } : undefined,
      }));
      await log.write({
        step,
        loss,
        lr,
        norm,
        tokens_per_s: tokPerS,
        gflops: flops / 1e9,
        ms: dt * 1000,
        ...(scaler ? { loss_scale: scale, skipped: overflow } : {}),
      });
      log.train.push([step, loss]);
      if (lead) {
        onStep?.({
          step,
          steps: Number.isFinite(steps) ? steps : undefined,
          loss,
          lr,
          gradNorm: norm,
          tokensPerS: tokPerS,
          flopsPerS: flops,
          ms: dt * 1000,
          memBytes: rt.arena.currentBytes,
          ...(scaler ? { lossScale: scale, skipped: overflow } : {}),
        });
      }
      if (rt.gpu.errors.length > errorsBefore) {
        throw new Error(
          `WebGPU reported errors during step ${step}: ${
            rt.gpu.errors.slice(errorsBefore).join("; ")
          }`,
        );
      }
      const bad = guard.check(step, loss, norm, overflow);
      const tooMany = guard.overflowError(
        scaler?.scale ?? 1,
        c.lossScale,
        lastCheckpoint,
      );
      if (tooMany) throw tooMany;
      if (bad) await diverged(bad.why, bad.suspect);
      if (prunePending && lead) { // the newest checkpoint's weights just gave a sane loss
        await pruneCheckpoints(checkpoints, c.keep, stepOfDir(lastCheckpoint));
        prunePending = false;
      }
      const last = step === steps;
      // Evaluations run on rank 0; the others wait for it in the next collective. A stop
      // request cuts them short (the step is saved without them).
      if (lead && c.valEvery > 0 && (step % c.valEvery === 0 || last) && !stopping()) {
        const v = await evals.validate(signal);
        if (v !== undefined) {
          valLoss = v;
          print(`step ${step} | val loss ${valLoss.toFixed(4)}`);
          log.val.push([step, valLoss]);
          await log.write({ step, val_loss: valLoss });
        }
      }
      const hsEvery = c.hellaswagEvery;
      if (lead && hsEvery > 0 && (step % hsEvery === 0 || last) && !stopping()) {
        const h = await evals.hellaswag(signal);
        if (h) {
          print(
            `step ${step} | hellaswag n=${h.n} acc_norm ${h.completion.acc_norm.toFixed(4)} ` +
              `(harness ${h.harness.acc_norm.toFixed(4)})`,
          );
          await log.write({ step, hellaswag: h });
        }
      }
      if (lead && c.sampleEvery > 0 && step % c.sampleEvery === 0 && !last && !stopping()) {
        const text = await evals.sample(c.seed + step);
        print(`step ${step} | sample: ${JSON.stringify(text)}`);
        await log.write({ step, sample: text });
      }
      if (step % 10 === 0 || last) await writeCurve();
      if (c.saveEvery > 0 && step % c.saveEvery === 0 && !last) {
        lastCheckpoint = await save(step, valLoss);
        prunePending = true;
      }
      if (options.stopAfter?.(step)) stopAfter = true;
      // Ctrl-C reaches the ranks at different steps: all stop after the same one.
      if (run.dp) stopAfter = await run.dp.agree(stopping());
    }
    // Final (or interrupted) checkpoint, then a sample.
    await writeCurve();
    lastCheckpoint = await save(step, valLoss, c.keep);
    const stopped = step < steps;
    const text = lead && c.sampleTokens > 0 && !signal?.aborted
      ? await evals.sample(c.seed + step)
      : undefined;
    if (text !== undefined) {
      print(`sample at step ${step}: ${JSON.stringify(text)}`);
      await log.write({ step, sample: text });
    }
    print(`${stopped ? "stopped" : "done"} at step ${step}: checkpoint ${lastCheckpoint}`);
    await log.write({ event: "end", step, checkpoint: lastCheckpoint });
    await options.afterRun?.(model);
    if (losses.length) {
      print(formatSummary({ ...c, steps, stopped }, losses, step - startStep, t0, valLoss, {
        checkpoint: lastCheckpoint,
        dataDir: data.dir,
      }));
    }
    return { checkpoint: lastCheckpoint, losses, lastStep: step, stopped, valLoss, sample: text };
  } finally {
    run.destroy();
  }
}
