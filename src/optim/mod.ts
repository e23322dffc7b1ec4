/**
 * Optimizers over a model's flat parameters (AdamW in fp32, 8-bit and 4-bit state, offload;
 * Adafactor),
 * the registry that names them, and learning-rate schedules.
 *
 * @example
 * ```ts
 * import { lrAt, makeSchedule } from "@webgpu-gpt2/core/optim";
 *
 * const s = makeSchedule("cosine", { lr: 1e-3, minLr: 1e-4, warmup: 10, steps: 100 });
 * console.log(lrAt(s, 50));
 * ```
 *
 * @module
 */

export { AdamW } from "./adamw.ts";
export { ADAMW_DEFAULTS, type AdamWConfig } from "./adamw_common.ts";
export type { Optimizer, SavedState, StateTensor } from "./optimizer.ts";
export { GRAD_STATS } from "./optimizer.ts";
export {
  createOptimizer,
  type OptimizerBuffers,
  type OptimizerKind,
  OPTIMIZERS,
  type OptimizerSettings,
  optimizerStateBytes,
  type OptionRow,
  type StatePlacement,
} from "./registry.ts";
export { Adafactor, type AdafactorConfig, type AdafactorTensor } from "./adafactor.ts";
export { LowBitAdamW, type LowBitConfig } from "./lowbit.ts";
export { type StatePiece } from "./lowbit_plan.ts";
export {
  describeSchedule,
  lrAt,
  makeSchedule,
  parsePiecewise,
  type Schedule,
  type ScheduleOptions,
  type Segment,
} from "./schedule.ts";
