/**
 * The training loop: gradient accumulation to a total batch in tokens, AdamW
 * with GPU clipping, a learning-rate schedule, periodic validation, samples and
 * checkpoints, exact resume, and a clean save on Ctrl-C (SIGINT/SIGTERM).
 * With `precision: "fp16"`, mixed precision with dynamic loss scaling: a step
 * whose gradients overflow is skipped whole and the scale halved
 * (src/train/loss_scale.ts).
 *
 * One command encoder per micro-step (the inputs differ per micro-step); the
 * loss and gradient norm come back in one mapped read per optimizer step.
 *
 * @module
 */

import { formatBytes } from "../gpu/arena.ts";
import { encodeDispatches } from "../gpu/dispatch.ts";
import type { Runtime } from "../gpu/runtime.ts";
import { GPT2_VOCAB_SIZE, type GPT2Config, parameterCount } from "../model/config.ts";
import { GPT2 } from "../model/gpt2.ts";
import type { MatmulImpl } from "../model/ops/matmul.ts";
import type { Precision, Recompute } from "../model/plan.ts";
import { AdamW, type Optimizer } from "../optim/adamw.ts";
import { LowBitAdamW } from "../optim/lowbit.ts";
import { describeSchedule, lrAt, makeSchedule, type Schedule } from "../optim/schedule.ts";
import {
  type LoaderCursor,
  openShards,
  OutOfVocabularyError,
  TokenLoader,
} from "../data/loader.ts";
import { decodeTokens, EOT } from "../data/tokenizer.ts";
import {
  listCheckpoints,
  loadCheckpoint,
  pruneCheckpoints,
  resumeProblem,
  saveCheckpoint,
  stepDirName,
} from "../io/checkpoint.ts";
import { lockRunDir } from "./run_dir.ts";
import { encodeModel, loadTensors, matchTensors } from "../io/hf.ts";
import { generate } from "../eval/generate.ts";
import { itemRows, readHellaSwag, scoreItems, summarize } from "../eval/hellaswag.ts";
import { prepareData } from "./corpus.ts";
import { LossScaler } from "./loss_scale.ts";
import { formatDuration, JsonlLog, lossCurveSvg } from "./log.ts";

/** Everything a run needs; `deno task train` fills it from flags. */
export interface TrainConfig {
  /** Model name, for logs and the loss curve's title. */
  modelName: string;
  /** The architecture to train (a resumed or `init` checkpoint's own config wins). */
  model: GPT2Config;
  /** Shard folder, .bin shard or .txt file; undefined: the default corpus. */
  data?: string;
  /** Run directory: log.jsonl, loss.svg, checkpoints/. */
  out: string;
  /** Sequences per micro-batch (B). */
  batch: number;
  /** Tokens per sequence (T). */
  seq: number;
  /** Tokens per optimizer step; a multiple of batch*seq (gradient accumulation). */
  totalBatch: number;
  /** Optimizer steps to reach (a resumed run continues up to this). */
  steps: number;
  /** Learning-rate schedule: constant, cosine, wsd or a piecewise spec (see makeSchedule). */
  schedule: string;
  /** Peak learning rate. */
  lr: number;
  /** Final learning rate of cosine and wsd. */
  minLr: number;
  /** Optimizer steps of linear warmup to `lr`. */
  warmup: number;
  /** wsd: steps of the final decay. */
  decaySteps?: number;
  /** AdamW's decoupled weight decay (matrices and embeddings only). */
  weightDecay: number;
  /** AdamW's first-moment decay rate. */
  beta1: number;
  /** AdamW's second-moment decay rate. */
  beta2: number;
  /** AdamW's epsilon, added to the root of the second moment. */
  eps: number;
  /** Clip the global gradient norm to this; 0 disables clipping. */
  gradClip: number;
  /** adamw (fp32 state), adamw8bit or adamw4bit. */
  optimizer?: "adamw" | "adamw8bit" | "adamw4bit";
  /** 8-bit block size (default 256). */
  optimizerBlock?: number;
  /** Low-bit optimizers: keep wte and wpe state in fp32. */
  optimizerFp32Embeddings?: boolean;
  /** Low-bit optimizers: keep the state in CPU memory, streamed through the GPU per tensor. */
  optimizerOffload?: boolean;
  /** Activations the backward recomputes (none, mlp, block). */
  recompute?: Recompute;
  /** Rows of logits per chunk (default: all up to 256 MiB, else 512). */
  logitsChunkRows?: number;
  /** fp16: mixed precision where the adapter has shader-f16 (default fp32). */
  precision?: Precision;
  /** Mixed precision: the first loss scale (default 65536). */
  lossScale?: number;
  /** Mixed precision: clean steps in a row before the loss scale doubles (default 2000). */
  lossScaleWindow?: number;
  /** Seeds parameter initialisation, the data shuffle and the samples. */
  seed: number;
  /** Read shards and windows in a seeded random order, reshuffled every epoch. */
  shuffle: boolean;
  /** Steps between validations (and one at the last step); 0 never validates. */
  valEvery: number;
  /** Batches of the validation split averaged per validation (at most one epoch). */
  valBatches: number;
  /** Steps between printed samples; 0 prints none during the run. */
  sampleEvery: number;
  /** Tokens per sample; 0 also skips the sample after the final checkpoint. */
  sampleTokens: number;
  /** Steps between checkpoints; 0 saves only the final one. */
  saveEvery: number;
  /** How many of the newest checkpoints to keep (at least 1); older ones are removed. */
  keep: number;
  /** Start from this Hugging Face GPT-2 directory (fine-tuning). */
  init?: string;
  /** Continue from this checkpoint directory. */
  resume?: string;
  /** HellaSwag file (jsonl or llama.cpp text) scored every `hellaswagEvery` steps. */
  hellaswag?: string;
  /** Steps between HellaSwag scorings (and one at the last step); 0 or unset never scores. */
  hellaswagEvery?: number;
  /** Items scored each time (the first N). */
  hellaswagLimit?: number;
  /** Peak TFLOP/s of the device, for MFU; unknown when 0. */
  peakTflops: number;
  /** Matmul kernel for every product (default: regblock on CPU adapters, tiled on GPUs). */
  matmul?: MatmulImpl;
  /** Where tokenized text files are cached. */
  cacheDir: string;
  /** Start over in a run directory that holds checkpoints: they and the log are removed. */
  overwrite?: boolean;
  /**
   * Divergence guard: stop when a step's loss exceeds this many times the median of the
   * last `divergenceWindow` steps (default 3; 0 turns the loss test off; a non-finite loss
   * or gradient norm always stops).
   */
  divergence?: number;
  /** Steps whose median loss the divergence guard compares against (default 50). */
  divergenceWindow?: number;
  /** fp16: stop after this many overflowed (skipped) steps in a row (default 20). */
  maxOverflows?: number;
  /** Lines printed before the run starts (what a resume changed, checkpoints skipped). */
  notices?: string[];
}

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

/** Hooks for callers that want more than the printed lines. */
export interface TrainHooks {
  /** One line of output (default: console.log). */
  print?: (line: string) => void;
  /** Stop after the step this returns true for (used by tests to interrupt). */
  stopAfter?: (step: number) => boolean;
}

/** FLOPs per token for forward+backward: 6·N + 12·L·C·T (nanoGPT's estimate_mfu). */
export function flopsPerToken(cfg: GPT2Config, T: number): number {
  const N = parameterCount(cfg) - cfg.nCtx * cfg.nEmbd;
  return 6 * N + 12 * cfg.nLayer * cfg.nEmbd * T;
}

/** A run stopped by the divergence guard (or by fp16 overflowing step after step). */
export class DivergenceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DivergenceError";
  }
}

/** Why a model cannot read a token outside its vocabulary, and the fix (an error's tail). */
function vocabularyHint(cfg: GPT2Config, modelName: string): string {
  if (cfg.vocabSize >= GPT2_VOCAB_SIZE) {
    return ": the shard is damaged or was built with another tokenizer; rebuild it with " +
      "`deno task data`";
  }
  return `: the data holds GPT-2 tokens (vocabulary ${GPT2_VOCAB_SIZE}) and this model's ` +
    `vocabulary is ${cfg.vocabSize}` +
    (modelName === "tiny"
      ? " (tiny is a test model with a 101-token vocabulary): use --model gpt2-mini or larger"
      : ": use a preset with GPT-2's vocabulary (gpt2-mini or larger)");
}

/** The median of a non-empty list. */
function median(xs: number[]): number {
  const a = [...xs].sort((x, y) => x - y), m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
}

/**
 * Runs (or resumes) training. The run directory is locked for the run's length;
 * one that holds checkpoints is refused unless resuming or `overwrite` is set.
 *
 * @example Train gpt2-mini on a text file
 * ```ts
 * import { createRuntime, resolveConfig, train } from "@webgpu-gpt2/core";
 *
 * const rt = await createRuntime();
 * const result = await train(rt, {
 *   modelName: "gpt2-mini",
 *   model: resolveConfig("gpt2-mini"),
 *   data: "corpus.txt", // tokenized once into cacheDir
 *   out: "runs/mini",
 *   batch: 4,
 *   seq: 256,
 *   totalBatch: 8 * 256, // two micro-batches per optimizer step
 *   steps: 200,
 *   schedule: "cosine",
 *   lr: 1e-3,
 *   minLr: 1e-4,
 *   warmup: 20,
 *   weightDecay: 0.1,
 *   beta1: 0.9,
 *   beta2: 0.95,
 *   eps: 1e-8,
 *   gradClip: 1,
 *   seed: 1337,
 *   shuffle: true,
 *   valEvery: 50,
 *   valBatches: 10,
 *   sampleEvery: 100,
 *   sampleTokens: 64,
 *   saveEvery: 100,
 *   keep: 2,
 *   peakTflops: 0,
 *   cacheDir: "runs/data",
 * }, { print: (line) => console.log(line) });
 * console.log(result.checkpoint, result.losses.at(-1), result.valLoss);
 * ```
 */
export async function train(
  rt: Runtime,
  config: TrainConfig,
  hooks: TrainHooks = {},
): Promise<TrainResult> {
  const c = config;
  const BT = c.batch * c.seq;
  if (c.totalBatch % BT !== 0) {
    throw new RangeError(
      `--total-batch ${c.totalBatch} is not a multiple of batch x seq = ${BT}: pick a multiple`,
    );
  }
  if (!(Number.isInteger(c.keep) && c.keep >= 1)) {
    throw new RangeError(`--keep ${c.keep} would delete every checkpoint: keep at least 1`);
  }
  if (c.resume) {
    const problem = await resumeProblem(c.resume);
    if (problem) throw new Error(`Cannot resume from ${c.resume}: ${problem}`);
  }
  const existed = await Deno.stat(c.out).then(() => true, () => false);
  const lock = await lockRunDir(c.out);
  try {
    const earlier = await listCheckpoints(`${c.out}/checkpoints`);
    if (earlier.length && !c.resume && !c.overwrite) {
      throw new Error(
        `${c.out} already holds ${earlier.length} checkpoint(s) of an earlier run (newest ` +
          `${earlier[earlier.length - 1]}): continue it with --resume latest, start over with ` +
          "--overwrite (deletes them and its log), or train into another --out",
      );
    }
    return await trainLocked(rt, c, hooks, { earlier, lockNotice: lock.notice });
  } finally {
    await lock.release();
    if (!existed) await Deno.remove(c.out).catch(() => {}); // only if still empty
  }
}

/** The run itself, in a locked directory whose checkpoints were `earlier`. */
async function trainLocked(
  rt: Runtime,
  c: TrainConfig,
  hooks: TrainHooks,
  { earlier, lockNotice }: { earlier: string[]; lockNotice?: string },
): Promise<TrainResult> {
  const print = hooks.print ?? ((l: string) => console.log(l));
  const checkpoints = `${c.out}/checkpoints`;
  const BT = c.batch * c.seq;
  const accum = c.totalBatch / BT;
  for (const line of [...(c.notices ?? []), ...(lockNotice ? [lockNotice] : [])]) print(line);

  // ---- resume / init: read and check everything before touching the GPU or disk
  const hsItems = c.hellaswag && (c.hellaswagEvery ?? 0) > 0
    ? (await readHellaSwag(c.hellaswag)).slice(0, c.hellaswagLimit ?? 500)
    : [];
  const resumed = c.resume ? await loadCheckpoint(c.resume) : undefined;
  const init = c.init ? await loadCheckpoint(c.init) : undefined;
  if (resumed && !resumed.optimizer) {
    throw new Error(`Cannot resume from ${c.resume}: it has no optimizer.safetensors; use --init`);
  }
  const cfg = resumed?.config ?? init?.config ?? c.model;
  const source = resumed ?? init;
  if (source) matchTensors(source.model, cfg); // shapes checked before anything is written
  const data = await prepareData(c.data, c.cacheDir);
  for (const w of data.warnings) print(`warning: ${w}`);
  const trainShards = await openShards(data.dir, { split: "train" });
  const valShards = await openShards(data.dir, { split: "val" }).catch(() => undefined);

  const model = await GPT2.create(rt, cfg, {
    B: c.batch,
    T: c.seq,
    seed: c.seed,
    dloss: 1 / (BT * accum),
    matmul: c.matmul ? { impl: c.matmul } : undefined,
    recompute: c.recompute,
    logitsChunkRows: c.logitsChunkRows,
    precision: c.precision,
  });
  if (c.precision === "fp16" && model.precision !== "fp16") {
    print("precision: this adapter has no shader-f16, so training runs in fp32");
  }
  const scaler = model.precision === "fp16"
    ? new LossScaler({ init: c.lossScale, window: c.lossScaleWindow })
    : undefined;
  const sampler = await GPT2.create(rt, cfg, {
    B: 1,
    T: Math.min(cfg.nCtx, c.seq),
    inference: true,
    sharedParams: model,
    matmul: c.matmul ? { impl: c.matmul } : undefined,
  });
  const hyper = {
    beta1: c.beta1,
    beta2: c.beta2,
    eps: c.eps,
    weightDecay: c.weightDecay,
    gradClip: c.gradClip,
  };
  const bufs = { params: model.params, grads: model.grads };
  const kind = c.optimizer ?? "adamw";
  if (kind === "adamw" && c.optimizerOffload) {
    throw new RangeError(
      "--optimizer-offload works with adamw8bit and adamw4bit: pick one of them",
    );
  }
  const opt: Optimizer = kind === "adamw"
    ? await AdamW.create(rt, model.layout, bufs, hyper)
    : await LowBitAdamW.create(rt, model.layout, bufs, {
      ...hyper,
      bits: kind === "adamw8bit" ? 8 : 4,
      block8: c.optimizerBlock ?? 256,
      fp32Embeddings: c.optimizerFp32Embeddings ?? false,
      offload: c.optimizerOffload ?? false,
    });
  const hsModel = hsItems.length
    ? await GPT2.create(rt, cfg, {
      B: 16,
      T: Math.min(
        cfg.nCtx,
        Math.max(...hsItems.flatMap((it) =>
          itemRows(it, "completion").map((r) => r.ctx.length + r.end.length)
        )),
      ),
      inference: true,
      sharedParams: model,
      matmul: c.matmul ? { impl: c.matmul } : undefined,
    })
    : undefined;
  const staging = rt.device.createBuffer({
    label: "train.readback",
    size: (accum * BT + 4) * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  let startStep = 0;
  /** Updates applied (skipped overflow steps do not count): AdamW's t. */
  let optimizerSteps = 0;
  let cursor: LoaderCursor | undefined;
  if (resumed) {
    loadTensors(resumed.model, model);
    opt.writeState(resumed.optimizer!);
    const st = resumed.trainer ?? {};
    startStep = Number(st.step ?? 0);
    optimizerSteps = Number(st.optimizer_steps ?? startStep);
    if (scaler && typeof st.loss_scale === "number") {
      scaler.state = { scale: st.loss_scale, goodSteps: Number(st.loss_scale_good_steps ?? 0) };
    }
    if (st.data === data.dir) cursor = st.cursor as LoaderCursor;
    else print(`resume: new data ${data.dir} (was ${st.data}): reading it from the start`);
  } else if (init) {
    loadTensors(init.model, model);
  }
  const loader = new TokenLoader(trainShards, {
    batchSize: c.batch,
    seqLen: c.seq,
    shuffle: c.shuffle,
    seed: c.seed,
    cursor,
    vocabSize: cfg.vocabSize,
  });
  const schedule: Schedule = makeSchedule(c.schedule, {
    lr: c.lr,
    minLr: c.minLr,
    warmup: c.warmup,
    steps: c.steps,
    decay: c.decaySteps,
  });

  // ---- output: nothing in the run directory changes before this point
  const log = new JsonlLog(`${c.out}/log.jsonl`);
  const trainPts: [number, number][] = [], valPts: [number, number][] = [];
  if (resumed) {
    // The log continues from the resumed step: what a crash logged past it goes.
    for (const r of await log.truncateAfter(startStep)) {
      if (typeof r.step !== "number") continue;
      if (typeof r.loss === "number") trainPts.push([r.step, r.loss]);
      if (typeof r.val_loss === "number") valPts.push([r.step, r.val_loss]);
    }
  } else {
    if (earlier.length) { // only with --overwrite (train() refuses otherwise)
      await Deno.remove(checkpoints, { recursive: true });
      print(`overwrite: removed ${earlier.length} checkpoint(s) of the earlier run in ${c.out}`);
    }
    await Deno.remove(log.path).catch(() => {}); // a new run starts a new log
  }
  const fpt = flopsPerToken(cfg, c.seq);
  const { notices: _notices, ...settings } = c;
  const resolved = {
    ...settings,
    model: cfg,
    data: data.description,
    data_dir: data.dir,
    accumulation: accum,
    parameters: parameterCount(cfg),
    optimizer_bytes_per_parameter: +(opt.stateBytes / parameterCount(cfg)).toFixed(3),
    adapter: rt.gpu.name,
    mfu_formula:
      "MFU = tokens/s x (6N + 12LCT) / peak FLOP/s (nanoGPT estimate_mfu; N without wpe)",
    resumed_from: c.resume,
    start_step: startStep,
  };
  print(`config ${JSON.stringify(resolved, null, 2)}`);
  print(`lr: ${describeSchedule(schedule)}`);
  await Deno.writeTextFile(`${c.out}/run_config.json`, JSON.stringify(resolved, null, 2) + "\n");
  await log.write({ event: "start", time: new Date().toISOString(), config: resolved });
  const writeCurve = () =>
    Deno.writeTextFile(
      `${c.out}/loss.svg`,
      lossCurveSvg([
        { name: "train", color: "#1f77b4", points: trainPts },
        { name: "val", color: "#d62728", points: valPts },
      ], `${c.modelName} loss`),
    );

  const evaluate = async (): Promise<number | undefined> => {
    if (!valShards || c.valBatches <= 0) return undefined;
    const val = new TokenLoader(valShards, { batchSize: c.batch, seqLen: c.seq });
    let sum = 0;
    const n = Math.min(c.valBatches, val.batchesPerEpoch);
    for (let i = 0; i < n; i++) {
      const b = val.nextBatch();
      sum += await model.forward(b.inputs, b.targets);
    }
    return sum / n;
  };
  const sample = async (step: number) => {
    const ids = await generate(sampler, [EOT], {
      maxTokens: c.sampleTokens,
      temperature: 0.8,
      topK: 40,
      seed: c.seed + step,
      stopToken: EOT,
    });
    return decodeTokens(ids);
  };
  /** Saves step `step`; the old ones are pruned by the caller once it is trusted. */
  const save = async (step: number, valLoss?: number, keep?: number, at = loader.cursor) => {
    const dir = await saveCheckpoint(checkpoints, step, {
      config: cfg,
      model: await encodeModel(model),
      optimizer: await opt.readState(),
      trainer: {
        step,
        optimizer_steps: optimizerSteps,
        loss_scale: scaler?.scale,
        loss_scale_good_steps: scaler?.goodSteps,
        tokens: step * c.totalBatch,
        data: data.dir,
        cursor: at,
        seed: c.seed,
        schedule,
        config: { ...settings, model: cfg },
        val_loss: valLoss,
        time: new Date().toISOString(),
      },
    }, keep);
    await log.write({ event: "checkpoint", step, dir });
    return dir;
  };

  // ---- Ctrl-C: finish the step, save, exit cleanly; a second one aborts
  let stopRequested = false;
  const onSignal = () => {
    if (stopRequested) Deno.exit(130);
    stopRequested = true;
    print("\nstopping: saving a checkpoint after this step (Ctrl-C again to abort without saving)");
  };
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);

  const losses: number[] = [];
  let step = startStep;
  let lastCheckpoint = "";
  /** Set after a periodic save: older checkpoints go once the next step's loss passes. */
  let prunePending = false;
  let overflowsInARow = 0;
  const factor = c.divergence ?? 3, window = c.divergenceWindow ?? 50;
  const maxOverflows = c.maxOverflows ?? 20;
  /** Losses of the last `window` applied steps (a resume starts from the log's). */
  const recent = trainPts.slice(-window).map(([, l]) => l);
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
    let movedNote = "";
    const bad = `${checkpoints}/${stepDirName(suspect)}`;
    if (suspect > startStep && lastCheckpoint === bad) {
      const aside = `${checkpoints}/diverged_${stepDirName(suspect)}`;
      await Deno.remove(aside, { recursive: true }).catch(() => {});
      await Deno.rename(bad, aside);
      movedNote = ` Its checkpoint of step ${suspect} was moved to ${aside}.`;
    }
    const all = await listCheckpoints(checkpoints);
    const good = all.length ? all[all.length - 1] : undefined;
    await log.write({ event: "diverged", step, why });
    await writeCurve();
    throw new DivergenceError(
      `Training diverged at step ${step}: ${why}. Nothing was saved for this step.${movedNote} ` +
        (good
          ? `The last good checkpoint is ${good}: resume it with --resume ${good} and a lower --lr`
          : "There is no earlier checkpoint: start again with a lower --lr") +
        (factor > 0 ? `, or turn the loss test off with --divergence 0` : ""),
    );
  };
  let valLoss: number | undefined;
  const t0 = performance.now();
  const errorsBefore = rt.gpu.errors.length;
  try {
    while (step < c.steps && !stopRequested) {
      const tStep = performance.now();
      const lr = lrAt(schedule, step);
      const scale = scaler?.scale ?? 1;
      if (scaler) model.setLossScale(scale);
      opt.setStep(optimizerSteps + 1, lr, { lossScale: scale, skipOnOverflow: !!scaler });
      const stepCursor = loader.cursor;
      for (let micro = 0; micro < accum; micro++) {
        try {
          const b = loader.nextBatch();
          model.setBatch(b.inputs, b.targets);
        } catch (e) {
          if (!(e instanceof RangeError)) throw e; // bad data: say why, keep the steps done
          const why = e instanceof OutOfVocabularyError ? vocabularyHint(cfg, c.modelName) : "";
          throw new RangeError(e.message + why + (await keepProgress(stepCursor)));
        }
        const enc = rt.device.createCommandEncoder();
        model.encodeTrain(enc, micro > 0);
        enc.copyBufferToBuffer(model.losses, 0, staging, micro * BT * 4, BT * 4);
        const last = micro === accum - 1;
        if (last) {
          encodeDispatches(enc, opt.offloaded ? opt.normDispatches! : opt.dispatches, rt.profiler);
          enc.copyBufferToBuffer(opt.stats, 0, staging, accum * BT * 4, 16);
        }
        rt.profiler?.resolve(enc);
        rt.device.queue.submit([enc.finish()]);
        await rt.profiler?.collect();
        if (last && opt.offloaded) await opt.runOffloaded!();
      }
      model.markParamsChanged(); // the f16 copy is refreshed before the next pass
      await staging.mapAsync(GPUMapMode.READ);
      const back = new Float32Array(staging.getMappedRange());
      let sum = 0;
      for (let i = 0; i < accum * BT; i++) sum += back[i];
      const norm = back[accum * BT + 1] / scale;
      const overflow = scaler !== undefined && back[accum * BT + 2] > 0;
      staging.unmap();
      if (!overflow) optimizerSteps++;
      scaler?.update(overflow);
      overflowsInARow = overflow ? overflowsInARow + 1 : 0;
      const loss = sum / (accum * BT);
      losses.push(loss);
      step++;
      const dt = (performance.now() - tStep) / 1000;
      const tokPerS = c.totalBatch / dt;
      const flops = tokPerS * fpt;
      const mfu = c.peakTflops > 0
        ? `${((100 * flops) / (c.peakTflops * 1e12)).toFixed(1)}%`
        : "n/a";
      const elapsed = (performance.now() - t0) / 1000;
      const eta = (elapsed / (step - startStep)) * (c.steps - step);
      const mem = rt.arena.currentBytes;
      print(
        `step ${String(step).padStart(String(c.steps).length)}/${c.steps} | loss ${
          loss.toFixed(4)
        } | ` +
          `lr ${lr.toExponential(2)} | norm ${norm.toFixed(3)} | ${tokPerS.toFixed(0)} tok/s | ` +
          `${(flops / 1e9).toFixed(1)} GFLOP/s | MFU ${mfu} | mem ${formatBytes(mem)} | ` +
          `ETA ${formatDuration(eta)}` +
          (overflow ? ` | overflow: step skipped, loss scale ${scale} -> ${scaler!.scale}` : ""),
      );
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
      trainPts.push([step, loss]);
      if (rt.gpu.errors.length > errorsBefore) {
        throw new Error(
          `WebGPU reported errors during step ${step}: ${
            rt.gpu.errors.slice(errorsBefore).join("; ")
          }`,
        );
      }
      if (overflowsInARow >= maxOverflows) {
        throw new DivergenceError(
          `${overflowsInARow} fp16 steps in a row overflowed and were skipped (loss scale now ` +
            `${scaler!.scale}, started at ${c.lossScale ?? 65536}): the gradients do not fit in ` +
            "fp16 at this scale. Lower --loss-scale (65536 is usual), lower --lr, or train with " +
            "--precision fp32" +
            (lastCheckpoint ? `; the last checkpoint is ${lastCheckpoint}` : ""),
        );
      }
      if (!overflow) {
        const typical = recent.length ? median(recent) : NaN;
        // A bad loss condemns the weights it was computed with (step - 1's); a bad
        // gradient norm, the update this step just applied.
        if (!Number.isFinite(loss)) await diverged(`the loss is ${loss}`, step - 1);
        if (factor > 0 && loss > factor * typical) {
          await diverged(
            `the loss ${loss.toPrecision(4)} is ${(loss / typical).toFixed(1)}x the median ` +
              `${typical.toFixed(4)} of the last ${recent.length} steps (--divergence ${factor})`,
            step - 1,
          );
        }
        if (!Number.isFinite(norm)) await diverged(`the gradient norm is ${norm}`, step);
        recent.push(loss);
        if (recent.length > window) recent.shift();
      }
      if (prunePending) { // the newest checkpoint's weights just gave a sane loss
        await pruneCheckpoints(checkpoints, c.keep);
        prunePending = false;
      }
      const last = step === c.steps;
      if (c.valEvery > 0 && (step % c.valEvery === 0 || last)) {
        valLoss = await evaluate();
        if (valLoss !== undefined) {
          print(`step ${step} | val loss ${valLoss.toFixed(4)}`);
          valPts.push([step, valLoss]);
          await log.write({ step, val_loss: valLoss });
        }
      }
      if (hsModel && (step % c.hellaswagEvery! === 0 || last)) {
        const r = summarize(hsItems, await scoreItems(hsModel, hsItems));
        print(
          `step ${step} | hellaswag n=${r.n} acc_norm ${r.completion.acc_norm.toFixed(4)} ` +
            `(harness ${r.harness.acc_norm.toFixed(4)})`,
        );
        await log.write({ step, hellaswag: r });
      }
      if (c.sampleEvery > 0 && step % c.sampleEvery === 0 && !last) {
        const text = await sample(step);
        print(`step ${step} | sample: ${JSON.stringify(text)}`);
        await log.write({ step, sample: text });
      }
      if (step % 10 === 0 || last) await writeCurve();
      if (c.saveEvery > 0 && step % c.saveEvery === 0 && !last) {
        lastCheckpoint = await save(step, valLoss);
        prunePending = true;
      }
      if (hooks.stopAfter?.(step)) stopRequested = true;
    }
    // Final (or interrupted) checkpoint, then a sample.
    await writeCurve();
    lastCheckpoint = await save(step, valLoss, c.keep);
    const text = c.sampleTokens > 0 ? await sample(step) : undefined;
    if (text !== undefined) {
      print(`sample at step ${step}: ${JSON.stringify(text)}`);
      await log.write({ step, sample: text });
    }
    print(
      `${
        stopRequested && step < c.steps ? "stopped" : "done"
      } at step ${step}: checkpoint ${lastCheckpoint}`,
    );
    await log.write({ event: "end", step, checkpoint: lastCheckpoint });
    if (losses.length) {
      const ran = step - startStep, secs = (performance.now() - t0) / 1000;
      print(
        [
          `summary: ${ran} steps in ${formatDuration(secs)}, ${
            (ran * c.totalBatch).toLocaleString("en-US")
          } tokens; train loss ${losses[0].toFixed(3)} -> ${losses[losses.length - 1].toFixed(3)}` +
          (valLoss !== undefined ? `, val loss ${valLoss.toFixed(3)}` : ""),
          `  checkpoint  ${lastCheckpoint}`,
          `  loss curve  ${c.out}/loss.svg`,
          `  continue    deno task train --out ${c.out} --resume latest --steps ${c.steps + ran}`,
          `  evaluate    deno task eval ${lastCheckpoint} --loss ${data.dir}`,
          `  sample      deno task sample ${lastCheckpoint} --prompt "The whale"`,
        ].join("\n"),
      );
    }
    return {
      checkpoint: lastCheckpoint,
      losses,
      lastStep: step,
      stopped: step < c.steps,
      valLoss,
      sample: text,
    };
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
    staging.destroy();
    opt.destroy();
    sampler.destroy();
    hsModel?.destroy();
    model.destroy();
  }
}
