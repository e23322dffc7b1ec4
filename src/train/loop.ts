/**
 * The loop of a run that {@linkcode setUpRun} built, in a locked run directory: the steps,
 * the time budget's decision, the step line, log and callback, the GPU-error and divergence
 * checks, the periodic evaluations and checkpoints, and the final save. One object holds what
 * the steps share (where the run stands, the last checkpoint, the guard) so that each phase
 * of a step is a method of its own.
 *
 * @module
 */

import type { Runtime } from "../gpu/runtime.ts";
import { matchTensors } from "../model/weights.ts";
import { describeSchedule, lrAt } from "../optim/schedule.ts";
import { type LoaderCursor, OutOfVocabularyError } from "../data/loader.ts";
import { latestResumable, pruneCheckpoints, stepDirName, stepOfDir } from "../io/checkpoint.ts";
import { formatDuration } from "../format.ts";
import type { TrainConfig } from "./config.ts";
import { DivergenceError, DivergenceGuard } from "./guard.ts";
import { formatStepLine, formatSummary, RunLog } from "./log.ts";
import { setAside } from "./run_dir.ts";
import {
  flopsPerToken,
  resolvedConfig,
  type RunSetup,
  scheduleFor,
  vocabularyHint,
} from "./run_setup.ts";
import { type RunLength, runLength, StepBudget } from "./budget.ts";
import { saveStep, type SaveTarget } from "./checkpointing.ts";
import { BatchError, type StepOutcome } from "./step.ts";
import type { TrainOptions, TrainResult } from "./trainer.ts";

/** A run between its setup and its end (see the module doc). */
export class RunLoop {
  readonly #rt: Runtime;
  /** The settings as they stand: a time budget decides `steps` once, after the first steps. */
  readonly #c: TrainConfig;
  readonly #run: RunSetup;
  readonly #options: TrainOptions;
  readonly #print: (line: string) => void;
  readonly #lead: boolean;
  readonly #log: RunLog;
  readonly #target: SaveTarget;
  readonly #length: RunLength;
  readonly #budget?: StepBudget;
  #guard!: DivergenceGuard;
  readonly #fpt: number;
  readonly #tRun: number;
  #t0 = 0;
  #errorsBefore = 0;
  #steps: number;
  #step: number;
  readonly #losses: number[] = [];
  #lastCheckpoint = "";
  /** Set after a periodic save: older checkpoints go once the next step's loss passes. */
  #prunePending = false;
  #stopAfter = false;
  #valLoss?: number;
  /** The last steps' times (seconds), for tokens/s. */
  readonly #recent: number[] = [];
  /** The step begun ahead (see TrainOptions.runAhead): its readback, or why it failed. */
  #ahead?: { end?: () => Promise<StepOutcome>; error?: unknown; cursor: LoaderCursor };

  private constructor(
    rt: Runtime,
    config: TrainConfig,
    run: RunSetup,
    options: TrainOptions,
    print: (line: string) => void,
    tRun: number,
  ) {
    this.#rt = rt;
    this.#c = { ...config };
    this.#run = run;
    this.#options = options;
    this.#print = print;
    this.#tRun = tRun;
    this.#lead = (options.dist?.rank ?? 0) === 0;
    const c = this.#c;
    this.#log = new RunLog(c.out, c.modelName, this.#lead);
    this.#target = { config: c, run, root: `${c.out}/checkpoints`, lead: this.#lead };
    this.#length = runLength(c);
    const { seconds, steps } = this.#length;
    this.#steps = seconds === undefined ? steps! : Infinity;
    this.#budget = seconds === undefined ? undefined : new StepBudget({
      seconds,
      cap: steps,
      valEvery: c.valEvery,
      valBatches: c.valBatches,
    });
    this.#fpt = flopsPerToken(run.cfg, c.seq);
    this.#step = run.startStep;
  }

  /**
   * Opens the run's output (an `--overwrite` removes the `earlier` checkpoints first), writes
   * run_config.json and the log's start record, and says how the run is set.
   */
  static async start(
    rt: Runtime,
    config: TrainConfig,
    run: RunSetup,
    options: TrainOptions & { print: (line: string) => void; tRun: number; earlier: string[] },
  ): Promise<RunLoop> {
    const loop = new RunLoop(rt, config, run, options, options.print, options.tRun);
    const c = loop.#c, earlier = options.earlier, print = loop.#print;
    // ---- output: nothing in the run directory changes before this point
    if (!c.resume && earlier.length && loop.#lead) { // only with --overwrite
      await Deno.remove(loop.#target.root, { recursive: true });
      print(`overwrite: removed ${earlier.length} checkpoint(s) of the earlier run in ${c.out}`);
    }
    await loop.#log.open(c.resume ? run.startStep : undefined);
    loop.#guard = new DivergenceGuard({
      factor: c.divergence,
      window: c.divergenceWindow,
      maxOverflows: c.maxOverflows,
    }, loop.#log.train.map(([, l]) => l)); // a resume's median starts from its log
    const resolved = await loop.#writeRunConfig();
    print(`config ${JSON.stringify(resolved, null, 2)}`);
    print(`lr: ${describeSchedule(run.schedule)}`);
    if (loop.#budget) {
      print(
        `time: about ${formatDuration(loop.#length.seconds!)}; steps decided after the first few`,
      );
    }
    await loop.#log.write({ event: "start", time: new Date().toISOString(), config: resolved });
    return loop;
  }

  /** Steps until the end, a stop request or an error; then the final save. */
  async run(): Promise<TrainResult> {
    this.#t0 = performance.now();
    this.#errorsBefore = this.#rt.gpu.errors.length;
    const { dp } = this.#run;
    try {
      // A step begun ahead is always finished, reported and saved, stop or not.
      while (this.#ahead || (this.#step < this.#steps && !this.#stopping())) {
        await this.#oneStep();
        // Ctrl-C reaches the ranks at different steps: all stop after the same one.
        if (dp) this.#stopAfter = await dp.agree(this.#stopping());
      }
    } finally {
      // An error with a step in flight: read it back before the buffers go.
      await this.#ahead?.end?.().catch(() => {});
      this.#ahead = undefined;
    }
    return await this.#finish();
  }

  /** One step: taken (or finished, if begun ahead), reported, checked, evaluated, saved. */
  async #oneStep(): Promise<void> {
    const tStep = performance.now();
    const lr = lrAt(this.#run.schedule, this.#step);
    const r = await this.#takeStep(lr);
    this.#losses.push(r.loss);
    const step = ++this.#step;
    const now = performance.now();
    await this.#decideSteps(now);
    await this.#report(r, lr, (now - tStep) / 1000, now);
    await this.#check(r);
    const last = step === this.#steps;
    await this.#evaluate(last);
    if (step % 10 === 0 || last) await this.#log.writeCurve();
    if (this.#c.saveEvery > 0 && step % this.#c.saveEvery === 0 && !last) {
      this.#lastCheckpoint = await this.#save(step);
      this.#prunePending = true;
    }
    if (this.#options.stopAfter?.(step)) this.#stopAfter = true;
  }

  #stopping(): boolean {
    return this.#stopAfter || !!this.#options.signal?.aborted;
  }

  async #writeRunConfig(): Promise<Record<string, unknown>> {
    const resolved = resolvedConfig(this.#rt, this.#c, this.#run);
    if (this.#lead) {
      await Deno.writeTextFile(
        `${this.#c.out}/run_config.json`,
        JSON.stringify(resolved, null, 2) + "\n",
      );
    }
    return resolved;
  }

  /** Saves step `step`; the old ones are pruned by the caller once it is trusted. */
  async #save(step: number, keep?: number, cursor?: LoaderCursor): Promise<string> {
    const dir = await saveStep(this.#target, step, { valLoss: this.#valLoss, keep, cursor });
    if (this.#lead) await this.#log.write({ event: "checkpoint", step, dir });
    return dir;
  }

  /** One optimizer step; bad data ends the run with why and where the steps done are. */
  async #takeStep(lr: number): Promise<StepOutcome> {
    const run = this.#run, c = this.#c;
    const ahead = this.#ahead;
    this.#ahead = undefined;
    const cursor = ahead?.cursor ?? run.loader.cursor;
    try {
      if (ahead?.error) throw ahead.error;
      const end = ahead?.end ?? (await run.step.begin(lr, run.nextBatch)).end;
      if (this.#mayRunAhead(this.#step + 1)) {
        const at = run.loader.cursor, next = lrAt(run.schedule, this.#step + 1);
        this.#ahead = await run.step.begin(next, run.nextBatch).then(
          (b) => ({ end: b.end, cursor: at }),
          (error) => ({ error, cursor: at }), // thrown when its turn comes
        );
      }
      return await end();
    } catch (e) {
      if (!(e instanceof BatchError)) throw e; // bad data: say why, keep the steps done
      const why = e.cause instanceof OutOfVocabularyError
        ? vocabularyHint(run.cfg, c.modelName)
        : "";
      throw new RangeError(e.message + why + (await this.#keepProgress(cursor)));
    }
  }

  /**
   * Whether step `step + 1` may begin before `step` is read back: nothing after `step` needs
   * the weights as they are after it (a save, an evaluation, the end) nor its outcome to
   * encode the next (other ranks, a stop request or a `stopAfter` hook; under a loss scaler
   * the step begun ahead runs again if this one overflows: src/train/step.ts).
   */
  #mayRunAhead(step: number): boolean {
    const c = this.#c, o = this.#options;
    if (o.runAhead === false || o.stopAfter || this.#run.dp || !this.#run.step.canRunAhead) {
      return false;
    }
    if (!Number.isFinite(this.#steps) || step + 1 > this.#steps || this.#stopping()) return false;
    const at = (every: number) => every > 0 && step % every === 0;
    return !at(c.saveEvery) && !at(c.valEvery) && !at(c.hellaswagEvery) && !at(c.sampleEvery);
  }

  /**
   * Bad data mid-run: saves the steps done (none of this step's update is applied yet, and
   * `cursor` is where the step began) and returns a note saying where they are.
   */
  async #keepProgress(cursor: LoaderCursor): Promise<string> {
    const step = this.#step;
    if (
      step === this.#run.startStep ||
      this.#lastCheckpoint === `${this.#target.root}/${stepDirName(step)}`
    ) return "";
    return ` (steps up to ${step} are saved in ${await this.#save(step, this.#c.keep, cursor)})`;
  }

  /** A time budget decides the run's steps once, after the first steps (rank 0 for all). */
  async #decideSteps(now: number): Promise<void> {
    const run = this.#run, budget = this.#budget, step = this.#step;
    if (this.#steps !== Infinity) return;
    const decision = budget?.afterStep(step, now - this.#tRun);
    let decided = decision?.steps;
    // Under data parallelism rank 0's decision is every rank's, at the same step.
    if (run.dp && budget) decided = (await run.dp.fromLead(decided ?? 0)) || undefined;
    if (!decided) return;
    this.#steps = this.#c.steps = decided;
    run.schedule = scheduleFor(this.#c, decided);
    if (decision) this.#print(decision.line);
    this.#print(`lr: ${describeSchedule(run.schedule)}`);
    await this.#log.write({ event: "budget", step, steps: decided, s_per_step: decision?.perStep });
    await this.#writeRunConfig();
  }

  /** The step's line, log record and callback. */
  async #report(r: StepOutcome, lr: number, dt: number, now: number): Promise<void> {
    const { loss, norm, overflow, lossScale: scale } = r;
    const c = this.#c, step = this.#step, steps = this.#steps, scaler = this.#run.scaler;
    // Over the last 10 steps: with a step run ahead, Deno's readback of step n waits for n+1
    // too, so the step before a save or an evaluation reads ~0 s and the one after it double.
    const recent = this.#recent;
    recent.push(dt);
    if (recent.length > 10) recent.shift();
    const tokPerS = c.totalBatch * recent.length / recent.reduce((a, b) => a + b, 0);
    if (step === this.#run.startStep + 1) recent.length = 0; // the first compiles the kernels
    const flops = tokPerS * this.#fpt;
    const elapsed = (now - this.#t0) / 1000;
    const memBytes = this.#rt.arena.currentBytes;
    const known = Number.isFinite(steps) ? steps : undefined;
    this.#print(formatStepLine({
      step,
      steps: known,
      loss,
      lr,
      norm,
      tokensPerS: tokPerS,
      flops,
      peakTflops: c.peakTflops,
      memBytes,
      etaS: known !== undefined
        ? (elapsed / (step - this.#run.startStep)) * (steps - step)
        : this.#length.seconds! - (now - this.#tRun) / 1000,
      overflow: overflow ? { scale, newScale: scaler!.scale } : undefined,
    }));
    await this.#log.write({
      step,
      loss,
      lr,
      norm,
      tokens_per_s: tokPerS,
      gflops: flops / 1e9,
      ms: dt * 1000,
      ...(scaler ? { loss_scale: scale, skipped: overflow } : {}),
    });
    this.#log.train.push([step, loss]);
    if (!this.#lead) return;
    this.#options.onStep?.({
      step,
      steps: known,
      loss,
      lr,
      gradNorm: norm,
      tokensPerS: tokPerS,
      flopsPerS: flops,
      ms: dt * 1000,
      memBytes,
      ...(scaler ? { lossScale: scale, skipped: overflow } : {}),
    });
  }

  /** GPU errors, divergence and overflows end the run; a trusted checkpoint prunes the rest. */
  async #check(r: StepOutcome): Promise<void> {
    const rt = this.#rt, step = this.#step, c = this.#c;
    if (rt.gpu.errors.length > this.#errorsBefore) {
      throw new Error(
        `WebGPU reported errors during step ${step}: ${
          rt.gpu.errors.slice(this.#errorsBefore).join("; ")
        }`,
      );
    }
    const bad = this.#guard.check(step, r.loss, r.norm, r.overflow);
    const tooMany = this.#guard.overflowError(
      this.#run.scaler?.scale ?? 1,
      c.lossScale,
      this.#lastCheckpoint,
    );
    if (tooMany) throw tooMany;
    if (bad) await this.#diverged(bad.why, bad.suspect);
    if (this.#prunePending && this.#lead) { // the newest checkpoint's weights gave a sane loss
      await pruneCheckpoints(this.#target.root, c.keep, stepOfDir(this.#lastCheckpoint));
      this.#prunePending = false;
    }
  }

  /**
   * Stops a diverging run: the checkpoint that holds the weights that gave the bad
   * loss (saved after step `suspect`) is moved aside as diverged_step_N, so that
   * --resume latest never picks it, and the error names the last good one.
   */
  async #diverged(why: string, suspect: number): Promise<never> {
    const root = this.#target.root, step = this.#step;
    const bad = `${root}/${stepDirName(suspect)}`;
    const aside = this.#lead && suspect > this.#run.startStep && this.#lastCheckpoint === bad
      ? await setAside(root, suspect)
      : undefined;
    const movedNote = aside ? ` Its checkpoint of step ${suspect} was moved to ${aside}.` : "";
    // "Good": what --resume latest would take (checksums match, weights finite).
    const { dir: good, skipped } = await latestResumable(root, matchTensors);
    const damaged = skipped.length ? ` Newer ones fail their checks: ${skipped.join("; ")}.` : "";
    await this.#log.write({ event: "diverged", step, why });
    await this.#log.writeCurve();
    throw new DivergenceError(
      `Training diverged at step ${step}: ${why}. Nothing was saved for this step.${movedNote}` +
        `${damaged} ` +
        (good
          ? `The last good checkpoint is ${good}: resume it with --resume ${good} and a lower --lr`
          : "There is no earlier checkpoint: start again with a lower --lr") +
        (this.#c.divergence > 0 ? `, or turn the loss test off with --divergence 0` : ""),
    );
  }

  /**
   * Validation, HellaSwag and samples when due. They run on rank 0; the others wait for it in
   * the next collective. A stop request cuts them short (the step is saved without them).
   */
  async #evaluate(last: boolean): Promise<void> {
    const c = this.#c, step = this.#step, evals = this.#run.evals, signal = this.#options.signal;
    const due = (every: number) =>
      this.#lead && every > 0 && !this.#stopping() &&
      (step % every === 0 || last);
    if (due(c.valEvery)) {
      const v = await evals.validate(signal);
      if (v !== undefined) {
        this.#valLoss = v;
        this.#print(`step ${step} | val loss ${v.toFixed(4)}`);
        this.#log.val.push([step, v]);
        await this.#log.write({ step, val_loss: v });
      }
    }
    if (due(c.hellaswagEvery)) {
      const h = await evals.hellaswag(signal);
      if (h) {
        this.#print(
          `step ${step} | hellaswag n=${h.n} acc_norm ${h.completion.acc_norm.toFixed(4)} ` +
            `(harness ${h.harness.acc_norm.toFixed(4)})`,
        );
        await this.#log.write({ step, hellaswag: h });
      }
    }
    if (due(c.sampleEvery) && !last) {
      const text = await evals.sample(c.seed + step);
      this.#print(`step ${step} | sample: ${JSON.stringify(text)}`);
      await this.#log.write({ step, sample: text });
    }
  }

  /** The final (or interrupted) checkpoint, a sample, the summary. */
  async #finish(): Promise<TrainResult> {
    const c = this.#c, step = this.#step, steps = this.#steps, print = this.#print;
    await this.#log.writeCurve();
    const checkpoint = this.#lastCheckpoint = await this.#save(step, c.keep);
    const stopped = step < steps;
    const text = this.#lead && c.sampleTokens > 0 && !this.#options.signal?.aborted
      ? await this.#run.evals.sample(c.seed + step)
      : undefined;
    if (text !== undefined) {
      print(`sample at step ${step}: ${JSON.stringify(text)}`);
      await this.#log.write({ step, sample: text });
    }
    print(`${stopped ? "stopped" : "done"} at step ${step}: checkpoint ${checkpoint}`);
    await this.#log.write({ event: "end", step, checkpoint });
    await this.#options.afterRun?.(this.#run.model);
    const losses = this.#losses, valLoss = this.#valLoss;
    if (losses.length) {
      const done = step - this.#run.startStep;
      print(formatSummary({ ...c, steps, stopped }, losses, done, this.#t0, valLoss, {
        checkpoint,
        dataDir: this.#run.data.dir,
      }));
    }
    return { checkpoint, losses, lastStep: step, stopped, valLoss, sample: text };
  }
}
