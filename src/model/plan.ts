/**
 * The activation plan: every activation and scratch buffer a GPT2 allocates,
 * computed from the config before anything is made. GPT2 allocates from this
 * list, so src/train/memory_plan.ts (which adds parameters, gradients and
 * optimizer state) and the arena agree.
 *
 * Recomputation trades compute for memory: `mlp` keeps one shared copy of the
 * MLP's two 4C-wide activations and recomputes them per layer in the backward
 * pass; `block` keeps only each block's output (the residual stream) and
 * recomputes the whole block.
 *
 * Precision: with `fp16`, the activations that feed matmuls and the two
 * gradients that come out of non-linear kernels (attention and GELU) are f16
 * (`half` in src/model/block_spec.ts); the residual stream, LayerNorm statistics,
 * logits and the other gradients stay f32.
 *
 * Every block activation and scratch gradient, its width, dtype and sharing, comes from
 * the block spec (src/model/block_spec.ts): nothing here names one.
 *
 * @module
 */

import type { MemoryCategory } from "../gpu/arena.ts";
import { type DType, dtypeBytes } from "../gpu/dtype.ts";
import {
  BLOCK_ACTIVATIONS,
  BLOCK_SCRATCH,
  type BlockActivation,
  type BufferSpec,
  isShared,
  type Recompute,
  snakeCase,
} from "./block_spec.ts";
import { type GPT2Config, paddedVocab } from "./config.ts";

export type { Recompute };

/** Floating-point precision of a model: fp32 throughout, or mixed fp16 and fp32. */
export type Precision = "fp32" | "fp16";

/** One buffer of the plan. */
export interface PlannedBuffer {
  label: string;
  category: MemoryCategory;
  bytes: number;
  dtype: DType;
}

/** Options that decide the plan. */
export interface PlanOptions {
  B: number;
  T: number;
  inference?: boolean;
  recompute?: Recompute;
  logitsChunkRows?: number;
  /** Default fp32. */
  precision?: Precision;
}

/** The model's buffers outside the blocks (the final LayerNorm's output feeds lm_head). */
export const MODEL_BUFFERS = {
  encoded: { width: (cfg) => cfg.nEmbd },
  lnf: { width: (cfg) => cfg.nEmbd, half: true },
  lnfMean: { width: () => 1 },
  lnfRstd: { width: () => 1 },
} as const satisfies Record<string, BufferSpec>;

/** A buffer's element type at a precision. */
export function bufferDType(spec: BufferSpec, precision: Precision = "fp32"): DType {
  return precision === "fp16" && spec.half ? "f16" : "f32";
}

/** The buffer label a layer's activation lives in: per layer, or one shared "work" copy. */
export function layerBufferLabel(l: number, field: BlockActivation, recompute: Recompute): string {
  return isShared(field, recompute) ? `work.${snakeCase(field)}` : `h.${l}.${snakeCase(field)}`;
}

/** Rows of logits per chunk (see GPT2Options.logitsChunkRows). */
export function logitsChunkRows(BT: number, Vp: number, rows?: number): number {
  const chunk = rows ?? (BT * Vp * 4 <= 256 * 2 ** 20 ? BT : 512);
  if (chunk < BT && chunk % 64 !== 0) {
    throw new RangeError(`logitsChunkRows ${chunk} must be a multiple of 64 (or at least B*T)`);
  }
  return Math.min(chunk, BT);
}

/** The arena's rounding: at least 16 bytes, a multiple of 16. */
export const arenaBytes = (bytes: number): number => Math.max(16, Math.ceil(bytes / 16) * 16);

/** Activation and scratch buffers of a model (not parameters, gradients or optimizer). */
export function activationBuffers(cfg: GPT2Config, o: PlanOptions): PlannedBuffer[] {
  const BT = o.B * o.T, Vp = paddedVocab(cfg.vocabSize);
  const recompute = o.inference ? "none" : o.recompute ?? "none";
  const out: PlannedBuffer[] = [];
  const add = (label: string, category: MemoryCategory, floats: number, dtype: DType = "f32") =>
    out.push({ label, category, bytes: arenaBytes(floats * dtypeBytes(dtype)), dtype });
  const addSpec = (label: string, category: MemoryCategory, spec: BufferSpec) =>
    add(label, category, BT * spec.width(cfg), bufferDType(spec, o.precision));
  add("inputs", "activations", 3 * Math.ceil(BT / 64) * 64);
  addSpec("encoded", "activations", MODEL_BUFFERS.encoded);
  const seen = new Set<string>();
  for (let l = 0; l < cfg.nLayer; l++) {
    for (const [f, spec] of Object.entries(BLOCK_ACTIVATIONS)) {
      const label = layerBufferLabel(l, f as BlockActivation, recompute);
      if (!seen.has(label)) addSpec(label, "activations", spec);
      seen.add(label);
    }
  }
  for (const name of ["lnf", "lnfMean", "lnfRstd"] as const) {
    addSpec(snakeCase(name), "activations", MODEL_BUFFERS[name]);
  }
  add("logits", "activations", logitsChunkRows(BT, Vp, o.logitsChunkRows) * Vp);
  add("losses", "activations", BT);
  if (!o.inference) {
    for (const [name, spec] of Object.entries(BLOCK_SCRATCH)) {
      addSpec(snakeCase(name), "scratch", spec);
    }
  }
  return out;
}
