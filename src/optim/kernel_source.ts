/**
 * The one place optimizer WGSL is put together: a kernel's text is its parts in order, never
 * an edit of another kernel's text. Every optimizer kernel starts with the GradStats struct
 * (generated from {@linkcode GRAD_STATS}); the AdamW kernels add the shared update
 * (kernels/adamw_update.wgsl), the low-bit ones the shared maps, nearest code and max tree
 * (kernels/lowbit_common.wgsl); the fp32 kernel's variants differ in `store_param` only.
 *
 * @module
 */

import { GRAD_STATS_WGSL } from "./optimizer.ts";
import adamwUpdateSrc from "../../kernels/adamw_update.wgsl" with { type: "text" };
import lowbitCommonSrc from "../../kernels/lowbit_common.wgsl" with { type: "text" };

/** Which shared parts a kernel needs before its own text. */
export interface KernelParts {
  /** The AdamW Step uniform and adamw_update (kernels/adamw_update.wgsl). */
  adamw?: boolean;
  /** qmap, nearest and block_max (kernels/lowbit_common.wgsl). */
  lowbit?: boolean;
  /**
   * store_param(i, p) for kernels/adamw.wgsl: "f32" writes params[i]; "f16" also writes the
   * parameters' f16 copy at binding 7 (mixed precision, fused: no cast pass after the step).
   */
  store?: "f32" | "f16";
}

const STORE: Record<"f32" | "f16", string> = {
  f32: "fn store_param(i: u32, p: f32) { params[i] = p; }\n",
  f16: "@group(0) @binding(7) var<storage, read_write> half: array<f16>;\n" +
    "fn store_param(i: u32, p: f32) {\n  params[i] = p;\n  half[r.p0 + i] = f16(p);\n}\n",
};

/** `body` with the GradStats struct and the shared parts it names before it. */
export function optimizerKernel(body: string, parts: KernelParts = {}): string {
  return [
    parts.store === "f16" ? "enable f16;\n" : "",
    GRAD_STATS_WGSL,
    parts.adamw ? adamwUpdateSrc : "",
    parts.lowbit ? lowbitCommonSrc : "",
    body,
    parts.store ? STORE[parts.store] : "",
  ].join("\n");
}
