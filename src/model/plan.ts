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
 * ({@linkcode HALF_BUFFERS}); the residual stream, LayerNorm statistics,
 * logits and the other gradients stay f32.
 *
 * @module
 */

import type { MemoryCategory } from "../gpu/arena.ts";
import { type DType, dtypeBytes } from "../gpu/dtype.ts";
import { type GPT2Config, paddedVocab } from "./config.ts";

/** What the backward pass recomputes instead of storing. */
export type Recompute = "none" | "mlp" | "block";

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

/** Per-layer activations and whether each is kept per layer or shared. */
export const LAYER_FIELDS = [
  "ln1",
  "ln1_mean",
  "ln1_rstd",
  "qkv",
  "atty",
  "lse",
  "attproj",
  "res2",
  "ln2",
  "ln2_mean",
  "ln2_rstd",
  "fch",
  "fch_gelu",
  "fcproj",
  "res3",
] as const;

/** A layer activation's name. */
export type LayerField = typeof LAYER_FIELDS[number];

/**
 * Buffers (layer fields, and lnf, d_qkv, d_fch) held in f16 under fp16
 * precision: the inputs of matmuls and the outputs of attention and GELU.
 */
export const HALF_BUFFERS: ReadonlySet<string> = new Set([
  "ln1",
  "qkv",
  "atty",
  "ln2",
  "fch",
  "fch_gelu",
  "lnf",
  "d_qkv",
  "d_fch",
]);

/** A buffer's element type at a precision (`name` is a layer field or a model buffer). */
export function activationDType(name: string, precision: Precision = "fp32"): DType {
  return precision === "fp16" && HALF_BUFFERS.has(name) ? "f16" : "f32";
}

/** The buffer label a layer's field lives in: per layer, or one shared "work" copy. */
export function layerBufferLabel(l: number, field: LayerField, recompute: Recompute): string {
  const shared = (recompute === "block" && field !== "res3") ||
    (recompute === "mlp" && (field === "fch" || field === "fch_gelu"));
  return shared ? `work.${field}` : `h.${l}.${field}`;
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
  const { B, T } = o;
  const { nLayer: L, nHead: NH, nEmbd: C } = cfg;
  const BT = B * T, Vp = paddedVocab(cfg.vocabSize);
  const recompute = o.inference ? "none" : o.recompute ?? "none";
  const out: PlannedBuffer[] = [];
  const add = (label: string, category: MemoryCategory, floats: number, name = label) => {
    const dtype = activationDType(name, o.precision);
    out.push({ label, category, bytes: arenaBytes(floats * dtypeBytes(dtype)), dtype });
  };
  add("inputs", "activations", 3 * Math.ceil(BT / 64) * 64);
  add("encoded", "activations", BT * C);
  const width: Record<LayerField, number> = {
    ln1: BT * C,
    ln1_mean: BT,
    ln1_rstd: BT,
    qkv: BT * 3 * C,
    atty: BT * C,
    lse: B * NH * T,
    attproj: BT * C,
    res2: BT * C,
    ln2: BT * C,
    ln2_mean: BT,
    ln2_rstd: BT,
    fch: BT * 4 * C,
    fch_gelu: BT * 4 * C,
    fcproj: BT * C,
    res3: BT * C,
  };
  const seen = new Set<string>();
  for (let l = 0; l < L; l++) {
    for (const f of LAYER_FIELDS) {
      const label = layerBufferLabel(l, f, recompute);
      if (!seen.has(label)) add(label, "activations", width[f], f);
      seen.add(label);
    }
  }
  add("lnf", "activations", BT * C);
  add("lnf_mean", "activations", BT);
  add("lnf_rstd", "activations", BT);
  add("logits", "activations", logitsChunkRows(BT, Vp, o.logitsChunkRows) * Vp);
  add("losses", "activations", BT);
  if (!o.inference) {
    add("dresidual", "scratch", BT * C);
    add("d_btc", "scratch", BT * C);
    add("d_atty", "scratch", BT * C);
    add("d_qkv", "scratch", BT * 3 * C);
    add("d_fch_gelu", "scratch", BT * 4 * C);
    add("d_fch", "scratch", BT * 4 * C);
    add("attn_delta", "scratch", B * NH * T);
  }
  return out;
}
