/**
 * Train and evaluate GPT-2 language models on any GPU through WebGPU, with WGSL
 * kernels. Works from a local checkout or imported by URL.
 *
 * @example Train step on a small GPT-2
 * ```ts
 * import { createRuntime, GPT2, resolveConfig } from "./mod.ts";
 *
 * const rt = await createRuntime();
 * const cfg = resolveConfig("gpt2", { nLayer: 2, nCtx: 64 });
 * const model = await GPT2.create(rt, cfg, { B: 1, T: 8, seed: 1337 });
 * const tokens = [464, 2068, 7586, 21831, 18045, 625, 262, 16931];
 * const targets = [...tokens.slice(1), 13];
 * const loss = await model.forwardBackward(tokens, targets); // about ln(50257) = 10.8
 * const dwte = await model.readTensor("wte.weight", true); // gradients, HF names
 * ```
 *
 * @example A single kernel
 * ```ts
 * import { createRuntime, linearForward, readF32, runDispatches } from "./mod.ts";
 *
 * const rt = await createRuntime(); // throws NoAdapterError with a fix when there is no GPU
 * const [BT, C, OC] = [4, 8, 12];
 * const inp = rt.arena.allocWith("inp", "activations", new Float32Array(BT * C).fill(1));
 * const w = rt.arena.allocWith("w", "parameters", new Float32Array(C * OC).fill(0.5));
 * const out = rt.arena.alloc("out", "activations", BT * OC * 4);
 * const dispatches = await linearForward(rt, { BT, C, OC, bias: false }, {
 *   inp: { buffer: inp },
 *   weight: { buffer: w },
 *   out: { buffer: out },
 * });
 * await runDispatches(rt.device, dispatches);
 * console.log(await readF32(rt.device, out)); // every element is 8 * 0.5 = 4
 * ```
 *
 * @module
 */

export * from "./src/gpu/mod.ts";
export {
  matmul,
  MATMUL_IMPLS,
  matmulBiasBackward,
  type MatmulImpl,
  type MatmulOperands,
  type MatmulOptions,
  type MatmulShape,
  type Operand,
  parseMatmulImpl,
} from "./src/model/ops/matmul.ts";
export {
  Autotuner,
  type AutotunerOptions,
  dispatchTimer,
  tuneCachePath,
  type TuneResult,
  tunerFor,
  type TuneSpec,
  type TuneTimer,
  withTuner,
} from "./src/gpu/autotune.ts";
export { linearBackward, linearForward, type LinearShape } from "./src/model/ops/linear.ts";
export {
  checkSequenceLength,
  GPT2_VOCAB_SIZE,
  type GPT2Config,
  paddedVocab,
  parameterCount,
  PRESETS,
  resolveConfig,
  validateConfig,
} from "./src/model/config.ts";
export {
  parameterLayout,
  parameterShapes,
  type ParamLayout,
  type TensorView,
} from "./src/model/params.ts";
export { GPT2, type GPT2Options, IGNORE_TARGET } from "./src/model/gpt2.ts";
export {
  encodeModel,
  exportTensors,
  loadTensors,
  matchTensors,
  type TensorShapes,
  Weights,
  type WeightsLike,
  type WeightsOptions,
} from "./src/model/weights.ts";
export { type TensorRange } from "./src/model/ops/tensor.ts";
export { Decoder } from "./src/model/decode.ts";
export { type Precision, type Recompute } from "./src/model/plan.ts";
export { AdamW, ADAMW_DEFAULTS, type AdamWConfig } from "./src/optim/adamw.ts";
export type { Optimizer, SavedState, StateTensor, StepOptions } from "./src/optim/optimizer.ts";
export {
  createOptimizer,
  type OptimizerBuffers,
  type OptimizerKind,
  OPTIMIZERS,
  type OptimizerSettings,
} from "./src/optim/registry.ts";
export { LowBitAdamW, type LowBitConfig, type StatePiece } from "./src/optim/lowbit.ts";
export {
  LossScaler,
  type LossScalerOptions,
  type LossScalerState,
} from "./src/train/loss_scale.ts";
export {
  lrAt,
  makeSchedule,
  parsePiecewise,
  type Schedule,
  type ScheduleOptions,
  type Segment,
} from "./src/optim/schedule.ts";
export {
  type Logger,
  type ResolveOptions,
  resolveTrainConfig,
  type StepRecord,
  train,
  type TrainConfig,
  type TrainOptions,
  type TrainResult,
  type TrainSettings,
} from "./src/train/trainer.ts";
export {
  BatchError,
  type MicroBatch,
  type StepHooks,
  type StepOutcome,
  TrainStep,
  type TrainStepOptions,
} from "./src/train/step.ts";
export { TRAIN_CONFIG } from "./src/train/config_table.ts";
export { type ConfigRow, type ConfigTable, type NumberRule } from "./src/table.ts";
export {
  type DataParallel,
  dataParallel,
  type ExchangeTimes,
  type Shard,
  shardLayout,
  zeroShards,
} from "./src/train/data_parallel.ts";
export { type GradMark } from "./src/model/passes.ts";
export {
  type Dist,
  type DistOptions,
  type EnvReader,
  type FloatArray,
  gpuSelectionEnv,
  type GpuSelectionOptions,
  initDist,
  initRanks,
  singleProcess,
} from "./src/parallel/dist.ts";
export {
  generate,
  generateCached,
  type GenerateOptions,
  sampleToken,
  type SamplingOptions,
} from "./src/eval/generate.ts";
export {
  type HellaSwagItem,
  type HellaSwagResult,
  type ItemScore,
  parseHellaSwagJsonl,
  parseHellaSwagText,
  readHellaSwag,
  scoreItems,
  summarize,
} from "./src/eval/hellaswag.ts";
export { openCheckpointModel } from "./src/eval/checkpoint_model.ts";
export {
  listCheckpoints,
  loadCheckpoint,
  type LoadedCheckpoint,
  saveCheckpoint,
  TRAINER_STATE_VERSION,
  type TrainerState,
  type TrainerStateFields,
} from "./src/io/checkpoint.ts";
export { hfConfigJson } from "./src/io/hf.ts";
export { gpt2TokenizerFiles } from "./src/io/hf_tokenizer.ts";
export {
  decodeLlmc,
  encodeLlmc,
  LLMC_MAGIC,
  type LlmcModel,
  loadLlmcCheckpoint,
} from "./src/io/llmc.ts";
export {
  encodeSafetensors,
  parseSafetensors,
  readSafetensors,
  type SafeDtype,
  type SafeTensorInfo,
  type SafeTensorsFile,
  tensorF32,
  type TensorToWrite,
} from "./src/io/safetensors.ts";
export {
  type LoaderCursor,
  type LoaderOptions,
  openShards,
  type OpenShardsOptions,
  OutOfVocabularyError,
  type ShardInfo,
  type TokenBatch,
  TokenLoader,
} from "./src/data/loader.ts";
export { decodeTokens, encodeOrdinary, EOT } from "./src/data/tokenizer.ts";
