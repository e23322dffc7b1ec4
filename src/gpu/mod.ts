/**
 * The WebGPU runtime: device and limits, buffer arena with memory accounting,
 * pipeline cache, dispatches and the timestamp profiler.
 *
 * @module
 */

export * from "./arena.ts";
export * from "./debug.ts";
export * from "./device.ts";
export * from "./dispatch.ts";
export * from "./dtype.ts";
export * from "./pipelines.ts";
export * from "./profiler.ts";
export * from "./runtime.ts";
export * from "./kernel.ts";
export * from "./autotune.ts";
export * from "./define_kernel.ts";
