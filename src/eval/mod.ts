/**
 * Evaluation: sampling (temperature, top-k, top-p; with or without a KV cache), HellaSwag in
 * two scoring styles, a checkpoint opened as a model, and the sampling and evaluation tables.
 *
 * @example
 * ```ts
 * import { createRuntime } from "@webgpu-gpt2/core";
 * import { openCheckpointModel, scoreItems, readHellaSwag, summarize } from "@webgpu-gpt2/core/eval";
 *
 * const rt = await createRuntime();
 * const items = (await readHellaSwag("hellaswag_val.jsonl")).slice(0, 100);
 * const model = await openCheckpointModel(rt, "runs/gpt2-mini/checkpoints/step_00000200", {
 *   B: 8,
 *   T: 192,
 * });
 * console.log(summarize(items, await scoreItems(model, items)));
 * ```
 *
 * @module
 */

export {
  generate,
  generateCached,
  type GenerateOptions,
  sampleToken,
  type SamplingOptions,
} from "./generate.ts";
export {
  type HellaSwagItem,
  type HellaSwagResult,
  type ItemScore,
  parseHellaSwagJsonl,
  parseHellaSwagText,
  readHellaSwag,
  scoreItems,
  summarize,
} from "./hellaswag.ts";
export { openCheckpointModel } from "./checkpoint_model.ts";
export { EVAL_CONFIG, type EvalConfig, SAMPLE_CONFIG, type SampleConfig } from "./config.ts";
