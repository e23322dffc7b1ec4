/**
 * GPT-2 itself: configs and presets, the flat parameter layout, the weights, a training or
 * inference graph of shape (B, T), the KV-cache decoder, and the layers' dispatch builders.
 *
 * @example
 * ```ts
 * import { createRuntime } from "@webgpu-gpt2/core";
 * import { GPT2, resolveConfig } from "@webgpu-gpt2/core/model";
 *
 * const rt = await createRuntime();
 * const model = await GPT2.create(rt, resolveConfig("gpt2", { nLayer: 2, nCtx: 64 }), {
 *   B: 1,
 *   T: 8,
 *   seed: 1337,
 * });
 * const tokens = [464, 2068, 7586, 21831, 18045, 625, 262, 16931];
 * const loss = await model.forwardBackward(tokens, [...tokens.slice(1), 13]);
 * ```
 *
 * @module
 */

export {
  checkSequenceLength,
  GPT2_VOCAB_SIZE,
  type GPT2Config,
  paddedVocab,
  parameterCount,
  PRESETS,
  resolveConfig,
  validateConfig,
} from "./config.ts";
export { parameterLayout, parameterShapes, type ParamLayout, type TensorView } from "./params.ts";
export { GPT2, type GPT2Options } from "./gpt2.ts";
export { IGNORE_TARGET } from "./batch.ts";
export {
  encodeModel,
  exportTensors,
  hfShape,
  loadTensors,
  matchTensors,
  type TensorShapes,
  Weights,
  type WeightsLike,
  type WeightsOptions,
} from "./weights.ts";
export { Decoder } from "./decode.ts";
export { type Precision, type Recompute } from "./plan.ts";
export { type GradMark } from "./passes.ts";
export { type TensorRange } from "./ops/tensor.ts";
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
} from "./ops/matmul.ts";
export { linearBackward, linearForward, type LinearShape } from "./ops/linear.ts";
