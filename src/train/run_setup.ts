/**
 * Everything a run holds before its first step: the checkpoint it resumes or starts from
 * (read once, checked before anything is written), the data, the weights and the training
 * graph, the optimizer, the step, the loader at its saved position, the schedule and the
 * evaluations.
 *
 * @module
 */

import type { Runtime } from "../gpu/runtime.ts";
import { GPT2_VOCAB_SIZE, type GPT2Config, parameterCount } from "../model/config.ts";
import { GPT2 } from "../model/gpt2.ts";
import { loadTensors, matchTensors } from "../model/weights.ts";
import { checkOptimizer, createOptimizer } from "../optim/registry.ts";
import type { Optimizer } from "../optim/optimizer.ts";
import { makeSchedule, type Schedule } from "../optim/schedule.ts";
import { type LoaderCursor, openShards, type ShardInfo, TokenLoader } from "../data/loader.ts";
import { loadCheckpoint, type LoadedCheckpoint } from "../io/checkpoint.ts";
import { savedTensors } from "../io/safetensors.ts";
import { type HellaSwagItem, readHellaSwag } from "../eval/hellaswag.ts";
import type { TrainConfig } from "./config.ts";
import { prepareData, type PreparedData } from "./corpus.ts";
import { type RunEvals, runEvals } from "./evals.ts";
import { LossScaler } from "./loss_scale.ts";
import { type StepHooks, TrainStep } from "./step.ts";
import type { Dist } from "../parallel/dist.ts";
import {
  type DataParallel,
  dataParallel,
  type Shard,
  shardLayout,
  zeroShards,
} from "./data_parallel.ts";

/** A run ready for its first step. */
export interface RunSetup {
  /** The architecture trained (a resumed or `init` checkpoint's own). */
  cfg: GPT2Config;
  /** The tokenized data. */
  data: PreparedData;
  /** The training graph (its weights are the run's). */
  model: GPT2;
  /** The optimizer over the weights. */
  opt: Optimizer;
  /** fp16: the dynamic loss scaler. */
  scaler?: LossScaler;
  /** One optimizer step. */
  step: TrainStep;
  /** The training batches, at the resumed position. */
  loader: TokenLoader;
  /** The learning-rate schedule. */
  schedule: Schedule;
  /** Validation, samples, HellaSwag. */
  evals: RunEvals;
  /** The step the run starts after (0 for a new run). */
  startStep: number;
  /** Data parallelism over several ranks (undefined in one process). */
  dp?: DataParallel;
  /** The next micro-batch of this rank. */
  nextBatch(): { inputs: ArrayLike<number>; targets: ArrayLike<number> };
  /** Frees the graphs, the optimizer and the weights. */
  destroy(): void;
}

/** What {@linkcode setUpRun} takes besides the config. */
export interface SetUpOptions {
  /** Extension points of each optimizer step (run before the data-parallel ones). */
  hooks?: StepHooks;
  /** The ranks of a data-parallel run. */
  dist?: Dist;
  /** Aborts the setup between its phases (data, graph, optimizer, evaluations). */
  signal?: AbortSignal;
}

/** Reads the sources, then builds the run on the GPU (see the module doc). */
export async function setUpRun(
  rt: Runtime,
  c: TrainConfig,
  print: (line: string) => void,
  options: SetUpOptions = {},
): Promise<RunSetup> {
  const { hooks: stepHooks, dist, signal } = options;
  signal?.throwIfAborted();
  // N ranks share each optimizer step's tokens: rank r reads rows [r*B, (r+1)*B) of the
  // N*B rows the loader serves, and the loss gradient is pre-divided by N.
  const N = dist?.size ?? 1;
  const BT = c.batch * c.seq, accum = c.totalBatch / (BT * N);
  const src = await readSources(c, print, options);

  // ---- the GPU side
  const { cfg, data, resumed, init } = src;
  if (c.optimizerInBackward && (accum !== 1 || N > 1 || c.optimizerOffload)) {
    throw new RangeError(
      "--optimizer-in-backward updates each block inside one backward: it needs one process, " +
        `one micro-step per update (--total-batch ${BT}, not ${c.totalBatch}) and optimizer ` +
        "state on the GPU (no --optimizer-offload)",
    );
  }
  const matmul = c.matmul ? { impl: c.matmul } : undefined;
  const model = await GPT2.create(rt, cfg, {
    B: c.batch,
    T: c.seq,
    seed: c.seed,
    dloss: 1 / (BT * accum * N),
    matmul,
    recompute: c.recompute,
    logitsChunkRows: c.logitsChunkRows,
    precision: c.precision,
    gradDtype: c.gradDtype,
    weightDtype: c.weightDtype,
    sharedBlockGrads: c.optimizerInBackward,
  });
  const made: { destroy(): void }[] = [model];
  try {
    signal?.throwIfAborted();
    if (c.precision === "fp16" && model.precision !== "fp16") {
      const sixteen = c.gradDtype === "f16" || c.weightDtype === "f16";
      print(
        "precision: this adapter has no shader-f16, so training runs in fp32" +
          (sixteen ? " with f32 weights and gradients" : ""),
      );
    }
    const scaler = model.precision === "fp16"
      ? new LossScaler({ init: c.lossScale, window: c.lossScaleWindow })
      : undefined;
    if (c.zero && N === 1) print("--zero: one process, so there is no state to shard");
    // ZeRO-1: this rank's optimizer covers its shard of the tensors only.
    const shard = c.zero && N > 1 ? zeroShards(model.layout, N)[dist!.rank] : undefined;
    const opt = await runOptimizer(rt, c, model, shard);
    made.push(opt);
    const evals = await runEvals(rt, {
      model,
      valShards: src.valShards,
      valBatches: c.valBatches,
      sampleTokens: c.sampleTokens,
      hsItems: src.hsItems,
      matmul,
    });
    made.push(evals);
    signal?.throwIfAborted();
    let at: Restored = { startStep: 0, optimizerSteps: 0 };
    if (resumed) at = restore(resumed, model, opt, scaler, data.dir, print);
    else if (init) loadTensors(init.model, model);
    const dp = dist && N > 1 ? dataParallel(dist, model, { zero: !!shard }) : undefined;
    if (dp) made.push(dp);
    const hooks = dp ? { ...dp.hooks, ...stepHooks } : stepHooks;
    const step = new TrainStep(rt, model, opt, {
      accum,
      scaler,
      optimizerSteps: at.optimizerSteps,
      hooks,
      gradClip: c.gradClip,
      normLayout: shard ? shardLayout(model.layout, shard) : undefined,
      inBackward: c.optimizerInBackward,
    });
    if (c.optimizerInBackward) {
      print(
        "optimizer in backward: gradients of one block at a time; every step runs the forward " +
          "and backward twice (the first for the global norm), about 2x the compute",
      );
    }
    made.push(step);
    const loader = new TokenLoader(src.trainShards, {
      batchSize: c.batch * N,
      seqLen: c.seq,
      shuffle: c.shuffle,
      seed: c.seed,
      cursor: at.cursor,
      vocabSize: cfg.vocabSize,
    });
    const schedule = scheduleFor(c, c.steps ?? Infinity);
    return {
      cfg,
      data,
      model,
      opt,
      scaler,
      step,
      loader,
      schedule,
      evals,
      startStep: at.startStep,
      dp,
      nextBatch: dp ? () => dp.shard(loader.nextBatch()) : () => loader.nextBatch(),
      destroy: () => made.reverse().forEach((m) => m.destroy()),
    };
  } catch (e) {
    made.reverse().forEach((m) => m.destroy());
    throw e;
  }
}

/** What a run reads before it touches the GPU or the disk, all of it checked. */
interface Sources {
  /** The architecture (a resumed or `init` checkpoint's own, else the config's). */
  cfg: GPT2Config;
  /** The checkpoint resumed, read whole. */
  resumed?: LoadedCheckpoint;
  /** The weights a new run starts from. */
  init?: LoadedCheckpoint;
  /** The HellaSwag items scored during the run. */
  hsItems: HellaSwagItem[];
  /** The tokenized data and its splits. */
  data: PreparedData;
  trainShards: ShardInfo[];
  valShards?: ShardInfo[];
}

/** Reads and checks the checkpoints, HellaSwag and the data (rank 0 tokenizes text first). */
async function readSources(
  c: TrainConfig,
  print: (line: string) => void,
  { dist, signal }: SetUpOptions,
): Promise<Sources> {
  const N = dist?.size ?? 1, lead = (dist?.rank ?? 0) === 0;
  checkOptimizer(c.optimizer, { ...c, stateBase: c.zero && N > 1 ? 0 : undefined });
  const hsItems = c.hellaswag && c.hellaswagEvery > 0
    ? (await readHellaSwag(c.hellaswag)).slice(0, c.hellaswagLimit)
    : [];
  const resumed = c.resume
    ? await loadCheckpoint(c.resume).catch((e) => {
      throw new Error(
        `Cannot resume from ${c.resume}: ${(e as Error).message} (--resume latest takes the ` +
          "newest intact one)",
      );
    })
    : undefined;
  const init = c.init ? await loadCheckpoint(c.init, { weightsOnly: true }) : undefined;
  for (const line of [...resumed?.notices ?? [], ...init?.notices ?? []]) print(`notice: ${line}`);
  if (resumed && !resumed.optimizer) {
    throw new Error(`Cannot resume from ${c.resume}: it has no optimizer.safetensors; use --init`);
  }
  const from = resumed?.config ?? init?.config ?? c.model;
  const cfg = c.noBias ? { ...from, bias: false } : from;
  const source = resumed ?? init;
  if (source) matchTensors(source.model, cfg); // shapes checked before anything is written
  // Rank 0 tokenizes a text file into the cache first; the others then find it there.
  if (!lead) await dist!.barrier();
  const data = await prepareData(c.data, c.cacheDir);
  if (lead && N > 1) await dist!.barrier();
  signal?.throwIfAborted();
  for (const w of data.warnings) print(`warning: ${w}`);
  const trainShards = await openShards(data.dir, { split: "train" });
  const valShards = await openShards(data.dir, { split: "val" }).catch(() => undefined);
  return { cfg, resumed, init, hsItems, data, trainShards, valShards };
}

/** The run's optimizer over the model's parameters (a ZeRO-1 `shard` of them). */
function runOptimizer(
  rt: Runtime,
  c: TrainConfig,
  model: GPT2,
  shard: Shard | undefined,
): Promise<Optimizer> {
  return createOptimizer(
    c.optimizer,
    rt,
    shard ? shardLayout(model.layout, shard) : model.layout,
    // The f16 copy is written by the update itself, unless ZeRO-1 gathers the parameters.
    {
      params: model.weights.paramParts,
      grads: model.weights.gradParts,
      half: shard ? undefined : model.weights.halfParts,
    },
    // The run's settings as they are: the optimizer's row takes what it uses.
    { ...c, stateBase: shard?.start },
  );
}

/** Where a resumed run stands. */
interface Restored {
  startStep: number;
  optimizerSteps: number;
  cursor?: LoaderCursor;
}

/** Loads a resumed checkpoint's weights, optimizer state, loss scale and data position. */
function restore(
  resumed: LoadedCheckpoint,
  model: GPT2,
  opt: Optimizer,
  scaler: LossScaler | undefined,
  dataDir: string,
  print: (line: string) => void,
): Restored {
  loadTensors(resumed.model, model);
  opt.writeState(savedTensors(resumed.optimizer!));
  const st = resumed.trainer!;
  if (scaler && typeof st.loss_scale === "number") {
    scaler.state = { scale: st.loss_scale, goodSteps: st.loss_scale_good_steps ?? 0 };
  }
  let cursor: LoaderCursor | undefined;
  if (st.data === dataDir) cursor = st.cursor;
  else print(`resume: new data ${dataDir} (was ${st.data}): reading it from the start`);
  return { startStep: st.step, optimizerSteps: st.optimizer_steps, cursor };
}

/**
 * The run's learning-rate schedule for `steps` in all (Infinity while a time budget has not
 * decided them: warmup, then the peak rate).
 */
export function scheduleFor(c: TrainConfig, steps: number): Schedule {
  return makeSchedule(c.schedule, {
    lr: c.lr,
    minLr: c.minLr,
    warmup: c.warmup,
    steps,
    decay: c.decaySteps,
  });
}

/**
 * What run_config.json and the log's start record hold: the settings as resolved (the
 * checkpoint's model, the data, accumulation, bytes per parameter, the adapter, the MFU formula).
 */
export function resolvedConfig(
  rt: Runtime,
  c: TrainConfig,
  run: RunSetup,
): Record<string, unknown> {
  const { notices: _notices, ...settings } = c;
  return {
    ...settings,
    model: run.cfg,
    data: run.data.description,
    data_dir: run.data.dir,
    accumulation: run.step.accum,
    ranks: run.dp?.dist.size ?? 1,
    parameters: parameterCount(run.cfg),
    optimizer_bytes_per_parameter: +(run.opt.stateBytes / parameterCount(run.cfg)).toFixed(3),
    adapter: rt.gpu.name,
    driver: rt.gpu.driver || undefined,
    backend: rt.gpu.backend,
    mfu_formula:
      "MFU = tokens/s x (6N + 12LCT) / peak FLOP/s (nanoGPT estimate_mfu; N without wpe)",
    resumed_from: c.resume,
    start_step: run.startStep,
  };
}

/** FLOPs per token for forward+backward: 6·N + 12·L·C·T (nanoGPT's estimate_mfu). */
export function flopsPerToken(cfg: GPT2Config, T: number): number {
  const N = parameterCount(cfg) - cfg.nCtx * cfg.nEmbd;
  return 6 * N + 12 * cfg.nLayer * cfg.nEmbd * T;
}

/** Why a model cannot read a token outside its vocabulary, and the fix (an error's tail). */
export function vocabularyHint(cfg: GPT2Config, modelName: string): string {
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
