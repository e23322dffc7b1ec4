/**
 * Train and evaluate GPT-2 language models on any GPU through WebGPU, with WGSL
 * kernels. Works from a local checkout or imported by URL.
 *
 * The root holds what a user needs: a runtime, `train`, `generate`, the model
 * configs and checkpoints. Each part has its own entry point with the rest:
 * `./model`, `./train`, `./optim`, `./data`, `./io`, `./eval`, `./gpu` and
 * `./parallel` (e.g. `@webgpu-gpt2/core/model`).
 *
 * @example Train gpt2-mini on a text file, then continue it
 * ```ts
 * import { createRuntime, train } from "./mod.ts";
 *
 * const rt = await createRuntime(); // throws NoAdapterError with a fix when there is no GPU
 * const result = await train(rt, { modelName: "gpt2-mini", data: "corpus.txt", steps: 200 }, {
 *   onStep: (s) => console.log(`step ${s.step}: loss ${s.loss.toFixed(3)}`),
 * });
 * // Everything else as that run had it: model, data, batch, learning rate ...
 * await train(rt, { out: "runs/gpt2-mini", resume: "latest", steps: 400 });
 * console.log(result.checkpoint);
 * ```
 *
 * @example Sample from a checkpoint
 * ```ts
 * import { createRuntime, decodeTokens, EOT, generate, openCheckpointModel } from "./mod.ts";
 *
 * const rt = await createRuntime();
 * const model = await openCheckpointModel(rt, "runs/gpt2-mini/checkpoints/step_00000200", {
 *   B: 1,
 *   T: 64,
 * });
 * // temperature 0.8 and top-k 40 by default, as `deno task sample`
 * console.log(decodeTokens(await generate(model, [EOT], { maxTokens: 32 })));
 * ```
 *
 * @module
 */

export { createRuntime, type Runtime } from "./src/gpu/runtime.ts";
export { NoAdapterError } from "./src/gpu/device.ts";
export { type GPT2Config, PRESETS, resolveConfig } from "./src/model/config.ts";
export { GPT2, type GPT2Options } from "./src/model/gpt2.ts";
export {
  DivergenceError,
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
export { TRAIN_CONFIG } from "./src/train/config_table.ts";
export {
  generate,
  generateCached,
  type GenerateOptions,
  type SamplingOptions,
} from "./src/eval/generate.ts";
export { SAMPLE_CONFIG, type SampleConfig } from "./src/eval/config.ts";
export { openCheckpointModel } from "./src/eval/checkpoint_model.ts";
export { listCheckpoints, loadCheckpoint, type LoadedCheckpoint } from "./src/io/checkpoint.ts";
export { decodeTokens, encodeOrdinary, EOT } from "./src/data/tokenizer.ts";
