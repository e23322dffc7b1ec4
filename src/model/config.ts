/**
 * GPT-2 model configurations: presets, custom sizes, and validation that says
 * which value cannot work and why.
 *
 * Letters used everywhere: L layers, NH heads, C channels, HS = C / NH head
 * size, maxT context (position table), V vocabulary, Vp padded vocabulary.
 *
 * @module
 */

import { modelParams } from "./block_spec.ts";

/** A GPT-2 architecture. */
export interface GPT2Config {
  /** Number of transformer blocks (L). */
  nLayer: number;
  /** Number of attention heads (NH). */
  nHead: number;
  /** Channels (C). */
  nEmbd: number;
  /** Context length: rows of the position table (maxT). */
  nCtx: number;
  /** Vocabulary size (V); GPT-2's is 50257. */
  vocabSize: number;
  /**
   * Linear and LayerNorm layers have biases (default true, GPT-2's); false is nanoGPT's
   * bias=False: no bias tensors, no bias adds or gradients (exports write zero biases).
   */
  bias?: boolean;
}

/** GPT-2's BPE vocabulary size. */
export const GPT2_VOCAB_SIZE = 50257;

/** Named presets. `tiny` is for tests. */
export const PRESETS: Readonly<Record<string, GPT2Config>> = {
  tiny: { nLayer: 2, nHead: 2, nEmbd: 16, nCtx: 16, vocabSize: 101 },
  /** A small GPT-2 (7M parameters, most in wte) that trains in minutes on a CPU adapter. */
  "gpt2-mini": { nLayer: 4, nHead: 4, nEmbd: 128, nCtx: 256, vocabSize: GPT2_VOCAB_SIZE },
  gpt2: { nLayer: 12, nHead: 12, nEmbd: 768, nCtx: 1024, vocabSize: GPT2_VOCAB_SIZE },
  "gpt2-medium": { nLayer: 24, nHead: 16, nEmbd: 1024, nCtx: 1024, vocabSize: GPT2_VOCAB_SIZE },
  "gpt2-medium-4096": {
    nLayer: 26,
    nHead: 16,
    nEmbd: 1024,
    nCtx: 4096,
    vocabSize: GPT2_VOCAB_SIZE,
  },
  "gpt2-large": { nLayer: 36, nHead: 20, nEmbd: 1280, nCtx: 1024, vocabSize: GPT2_VOCAB_SIZE },
  "gpt2-xl": { nLayer: 48, nHead: 25, nEmbd: 1600, nCtx: 1024, vocabSize: GPT2_VOCAB_SIZE },
  /** gpt2-xl's shape (1.5B) with a 4096-token context: the 12 GB-card target of the memory work. */
  "gpt2-xl-4096": { nLayer: 48, nHead: 25, nEmbd: 1600, nCtx: 4096, vocabSize: GPT2_VOCAB_SIZE },
};

/**
 * The padded vocabulary: V rounded up to a multiple of 128 (50257 -> 50304),
 * so classifier rows and matmul tiles are aligned. Padding rows of wte are zero
 * and never show in loss, logits or exported weights.
 */
export function paddedVocab(V: number): number {
  return Math.ceil(V / 128) * 128;
}

/**
 * A preset by name, or a preset with some values replaced.
 *
 * @example
 * ```ts
 * const cfg = resolveConfig("gpt2", { nCtx: 256 });
 * ```
 */
export function resolveConfig(name: string, overrides: Partial<GPT2Config> = {}): GPT2Config {
  const base = PRESETS[name];
  if (!base) {
    throw new RangeError(
      `Unknown model "${name}": choose one of ${Object.keys(PRESETS).join(", ")}`,
    );
  }
  const cfg = { ...base };
  for (const [k, v] of Object.entries(overrides)) {
    if (v !== undefined) (cfg as Record<string, unknown>)[k] = v;
  }
  return validateConfig(cfg);
}

/** Checks a config and returns it; a value that cannot work is a RangeError naming it. */
export function validateConfig(cfg: GPT2Config): GPT2Config {
  for (const k of ["nLayer", "nHead", "nEmbd", "nCtx", "vocabSize"] as const) {
    if (!Number.isInteger(cfg[k]) || cfg[k] < 1) {
      throw new RangeError(`Model config ${k} must be a positive integer, got ${cfg[k]}`);
    }
  }
  if (cfg.bias !== undefined && typeof cfg.bias !== "boolean") {
    throw new RangeError(`Model config bias must be true or false, got ${cfg.bias}`);
  }
  if (cfg.nEmbd % cfg.nHead !== 0) {
    throw new RangeError(
      `Model config nEmbd ${cfg.nEmbd} is not divisible by nHead ${cfg.nHead}: ` +
        "each head needs nEmbd / nHead channels",
    );
  }
  if (cfg.nEmbd % 4 !== 0) {
    throw new RangeError(
      `Model config nEmbd ${cfg.nEmbd} is not a multiple of 4: the kernels load vec4`,
    );
  }
  if (cfg.vocabSize > 65535) {
    throw new RangeError(
      `Model config vocabSize ${cfg.vocabSize} is over 65535: token shards store uint16 ids`,
    );
  }
  return cfg;
}

/** Checks a sequence length against the position table. */
export function checkSequenceLength(cfg: GPT2Config, T: number): void {
  if (!Number.isInteger(T) || T < 1) {
    throw new RangeError(`Sequence length must be a positive integer, got ${T}`);
  }
  if (T > cfg.nCtx) {
    throw new RangeError(
      `Sequence length ${T} is longer than the model's position table (nCtx ${cfg.nCtx}): ` +
        "use a shorter sequence or a model with a larger nCtx",
    );
  }
}

/** Number of parameters, without vocabulary padding (what Hugging Face reports). */
export function parameterCount(cfg: GPT2Config): number {
  return modelParams(cfg).reduce((n, p) => n + p.shape(cfg).reduce((a, b) => a * b, 1), 0);
}
