/**
 * GPT-2's layers, one module each beside its kernel in kernels/: each builds the dispatches of
 * its layer for given shapes and buffers, once, and holds no state between steps.
 *
 * @module
 */

export * from "./tensor.ts";
export * from "./encoder.ts";
export * from "./layernorm.ts";
export * from "./matmul.ts";
export * from "./linear.ts";
export * from "./gelu.ts";
export * from "./residual.ts";
export * from "./attention.ts";
export * from "./attention_decode.ts";
export * from "./classifier.ts";
export * from "./cast.ts";
export * from "./reduce.ts";
