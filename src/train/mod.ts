/**
 * Training: {@linkcode train} (the run: resume, schedule, evaluations, checkpoints), its
 * configuration table, one optimizer step ({@linkcode TrainStep}), loss scaling and
 * data-parallel training over MPI ranks.
 *
 * @example
 * ```ts
 * import { createRuntime } from "@webgpu-gpt2/core";
 * import { train } from "@webgpu-gpt2/core/train";
 *
 * const rt = await createRuntime();
 * await train(rt, { modelName: "gpt2-mini", data: "corpus.txt", steps: 100 }, {
 *   onStep: (s) => console.log(s.step, s.loss),
 * });
 * ```
 *
 * @module
 */

export {
  DivergenceError,
  flopsPerToken,
  type Logger,
  type StepRecord,
  train,
  type TrainOptions,
  type TrainResult,
} from "./trainer.ts";
export { type ResolveOptions, resolveTrainConfig, type TrainSettings } from "./resolve.ts";
export type { TrainConfig } from "./config.ts";
export { configDefault, TRAIN_CONFIG } from "./config_table.ts";
export {
  checkChoice,
  checkNumber,
  type ConfigRow,
  type ConfigTable,
  type NumberRule,
  tableDefaults,
  withDefaults,
} from "../table.ts";
export {
  BatchError,
  type Begun,
  type MicroBatch,
  type StepHooks,
  type StepOutcome,
  TrainStep,
  type TrainStepOptions,
} from "./step.ts";
export { GradNorm, type GradNormStep } from "./grad_norm.ts";
export { LossScaler, type LossScalerOptions, type LossScalerState } from "./loss_scale.ts";
export {
  type DataParallel,
  dataParallel,
  type ExchangeTimes,
  type Shard,
  shardLayout,
  zeroShards,
} from "./data_parallel.ts";
