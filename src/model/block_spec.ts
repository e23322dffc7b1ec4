/**
 * The block spec: every parameter and every activation of GPT-2, written once. The parameter
 * layout (src/model/params.ts), the initialisation (src/model/init.ts), the activation plan
 * (src/model/plan.ts and through it src/train/memory_plan.ts), the training graph
 * (src/model/block.ts, src/model/passes.ts) and the decoder (src/model/decode.ts) are all
 * derived from these tables. A new layer adds its rows here and its dispatches in block.ts.
 *
 * Widths are elements per position: a batched graph allocates B*T rows of each, the
 * decoder one row.
 *
 * @module
 */

import type { GPT2Config } from "./config.ts";

// ---- parameters

/** How a parameter starts (GPT-2 / nanoGPT / llm.c). */
export type ParamInit = "normal" | "residual" | "ones" | "zeros";

/** One parameter tensor, by its Hugging Face name (without the `h.{l}.` of block tensors). */
export interface ParamSpec {
  /** Hugging Face name, e.g. "attn.c_attn.weight" (block) or "wte.weight" (model). */
  name: string;
  /** Hugging Face shape (Conv1D weights are [in, out]; wte is [V, C], unpadded). */
  shape: (cfg: GPT2Config) => number[];
  /** normal: N(0, 0.02); residual: scaled by 1/sqrt(2L); ones; zeros. */
  init: ParamInit;
  /** A bias: absent from a model with `bias: false` (files still carry it, zero). */
  bias?: boolean;
}

/** A size as a function of the config. */
type Size = (cfg: GPT2Config) => number;

const vec = (n: Size) => (cfg: GPT2Config) => [n(cfg)];
const mat = (i: Size, o: Size) => (cfg: GPT2Config) => [i(cfg), o(cfg)];
const C = (cfg: GPT2Config) => cfg.nEmbd;
const C3 = (cfg: GPT2Config) => 3 * cfg.nEmbd;
const C4 = (cfg: GPT2Config) => 4 * cfg.nEmbd;
const NH = (cfg: GPT2Config) => cfg.nHead;
const ONE = () => 1;

/** A LayerNorm's two tensors. */
const layerNorm = (name: string): ParamSpec[] => [
  { name: `${name}.weight`, shape: vec(C), init: "ones" },
  { name: `${name}.bias`, shape: vec(C), init: "zeros", bias: true },
];

/** A Conv1D linear layer's two tensors. */
const linear = (name: string, inp: Size, out: Size, init: ParamInit = "normal"): ParamSpec[] => [
  { name: `${name}.weight`, shape: mat(inp, out), init },
  { name: `${name}.bias`, shape: vec(out), init: "zeros", bias: true },
];

/** The tensors before the blocks. */
export const EMBEDDING_PARAMS: readonly ParamSpec[] = [
  { name: "wte.weight", shape: (cfg) => [cfg.vocabSize, cfg.nEmbd], init: "normal" },
  { name: "wpe.weight", shape: (cfg) => [cfg.nCtx, cfg.nEmbd], init: "normal" },
];

/** One block's tensors, in the flat buffer's (and llm.c's) order. */
export const BLOCK_PARAMS: readonly ParamSpec[] = [
  ...layerNorm("ln_1"),
  ...linear("attn.c_attn", C, C3),
  ...linear("attn.c_proj", C, C, "residual"),
  ...layerNorm("ln_2"),
  ...linear("mlp.c_fc", C, C4),
  ...linear("mlp.c_proj", C4, C, "residual"),
];

/** The tensors after the blocks. */
export const HEAD_PARAMS: readonly ParamSpec[] = layerNorm("ln_f");

/**
 * Every parameter of the model with its full name, in the flat buffer's order (`files`:
 * every tensor a GPT-2 file holds, biases included whatever the config says).
 */
export function modelParams(cfg: GPT2Config, o: { files?: boolean } = {}): ParamSpec[] {
  const blocks: ParamSpec[] = [];
  for (let l = 0; l < cfg.nLayer; l++) {
    for (const p of BLOCK_PARAMS) blocks.push({ ...p, name: `h.${l}.${p.name}` });
  }
  const all = [...EMBEDDING_PARAMS, ...blocks, ...HEAD_PARAMS];
  return cfg.bias === false && !o.files ? all.filter((p) => !p.bias) : all;
}

// ---- activations

/**
 * Which recompute modes share one copy of an activation over all layers (the backward
 * recomputes it per layer) instead of keeping one per layer: `mlp` ones are shared under
 * both `mlp` and `block`, `block` ones under `block` only, `kept` ones never.
 */
export type SharedUnder = "mlp" | "block" | "kept";

/** One buffer of the graph: its width and element type. */
export interface BufferSpec {
  /** Elements per position. */
  width: Size;
  /** f16 under mixed precision (matmul inputs, attention and GELU outputs); else f32. */
  half?: boolean;
}

/** One activation of a block. */
export interface ActivationSpec extends BufferSpec {
  /** See {@linkcode SharedUnder}. */
  shared: SharedUnder;
}

/** A block's activations, in the order the forward writes them. */
export const BLOCK_ACTIVATIONS = {
  ln1: { width: C, half: true, shared: "block" },
  ln1Mean: { width: ONE, shared: "block" },
  ln1Rstd: { width: ONE, shared: "block" },
  qkv: { width: C3, half: true, shared: "block" },
  atty: { width: C, half: true, shared: "block" },
  /** Log-sum-exp of each attention row (flash attention keeps no T x T matrix). */
  lse: { width: NH, shared: "block" },
  attproj: { width: C, shared: "block" },
  res2: { width: C, shared: "block" },
  ln2: { width: C, half: true, shared: "block" },
  ln2Mean: { width: ONE, shared: "block" },
  ln2Rstd: { width: ONE, shared: "block" },
  fch: { width: C4, half: true, shared: "mlp" },
  fchGelu: { width: C4, half: true, shared: "mlp" },
  fcproj: { width: C, shared: "block" },
  /** The block's output: the residual stream, what `block` recompute keeps. */
  res3: { width: C, shared: "kept" },
} as const satisfies Record<string, ActivationSpec>;

/** The name of a block activation. */
export type BlockActivation = keyof typeof BLOCK_ACTIVATIONS;

/** A buffer per block activation. */
export type BlockActs = Record<BlockActivation, GPUBuffer>;

/** Scratch gradients the backward of every block reuses. */
export const BLOCK_SCRATCH = {
  /** The residual stream's gradient: read as a block's output gradient, then added to. */
  dresidual: { width: C },
  /** The LayerNorms' output gradients. */
  dBtc: { width: C },
  dAtty: { width: C },
  dQkv: { width: C3, half: true },
  dFchGelu: { width: C4 },
  dFch: { width: C4, half: true },
  /** Flash attention's D. */
  attnDelta: { width: NH },
} as const satisfies Record<string, BufferSpec>;

/** The name of a scratch gradient. */
export type BlockScratchName = keyof typeof BLOCK_SCRATCH;

/** A buffer per scratch gradient. */
export type BlockScratch = Record<BlockScratchName, GPUBuffer>;

/** A name's buffer label: camelCase to snake_case (ln1Mean -> ln1_mean). */
export const snakeCase = (name: string): string =>
  name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** What the backward pass recomputes instead of storing. */
export type Recompute = "none" | "mlp" | "block";

/** True when `field` is one shared copy, not one per layer, under `recompute`. */
export function isShared(field: BlockActivation, recompute: Recompute): boolean {
  const s: SharedUnder = BLOCK_ACTIVATIONS[field].shared;
  return recompute === "block" ? s !== "kept" : recompute === "mlp" && s === "mlp";
}
