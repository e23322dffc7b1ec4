/**
 * The one place optimizer WGSL is put together: a kernel's source is its parts in order, never
 * an edit of another kernel's text. The AdamW kernels start with the shared update
 * (kernels/adamw_update.wgsl), the low-bit ones add the shared maps, nearest code and max tree
 * (kernels/lowbit_common.wgsl). Bindings, uniforms, structs and constants are declared with
 * each kernel (src/gpu/define_kernel.ts generates their WGSL); the ones the shared update
 * reads are {@linkcode ADAMW_BINDINGS}.
 *
 * @module
 */

import type { BindingDecl } from "../gpu/define_kernel.ts";
import { ADAMW_STEP } from "./adamw_common.ts";
import { GRAD_STATS_STRUCT } from "./optimizer.ts";
import adamwUpdateSrc from "../../kernels/adamw_update.wgsl" with { type: "text" };
import lowbitCommonSrc from "../../kernels/lowbit_common.wgsl" with { type: "text" };
import paramStoreSrc from "../../kernels/param_store.wgsl" with { type: "text" };

/** Which shared parts a kernel needs before its own text. */
export interface KernelParts {
  /** adamw_update and its helpers (kernels/adamw_update.wgsl). */
  adamw?: boolean;
  /** qmap, nearest and block_max (kernels/lowbit_common.wgsl). */
  lowbit?: boolean;
}

/**
 * `body` with the shared parts it names before it, after the parameter store every
 * optimizer writes its parameters through (kernels/param_store.wgsl: f32 as they are, 16-bit
 * weights stochastically rounded).
 */
export function optimizerSource(body: string, parts: KernelParts = {}): string {
  return [
    paramStoreSrc,
    parts.adamw ? adamwUpdateSrc : "",
    parts.lowbit ? lowbitCommonSrc : "",
    body,
  ].join("\n");
}

/**
 * The bindings every AdamW kernel declares: the flat parameters and gradients it updates (f32,
 * or f16: 16-bit weights, 16-bit gradients), and
 * what kernels/adamw_update.wgsl reads, the gradient statistics (scale, skip) and the per-step
 * uniform `s`.
 */
export const ADAMW_BINDINGS = {
  params: { access: "read_write", type: "float" },
  grads: { access: "read", type: "float" },
  gstats: { access: "read", type: GRAD_STATS_STRUCT },
  s: { access: "uniform", type: ADAMW_STEP },
} as const satisfies Record<string, BindingDecl>;
