/**
 * Text generation: sampling (temperature, top-k, top-p), with a KV-cache
 * decoder (O(T) per token, {@linkcode generateCached}) or by full forward
 * passes over a sliding window ({@linkcode generate}, the reference the cached
 * path is tested against).
 *
 * @module
 */

import type { GPT2 } from "../model/gpt2.ts";
import { mulberry32 } from "../model/init.ts";
import type { Decoder } from "../model/decode.ts";
import { SAMPLE_CONFIG } from "./config.ts";

/** Sampling options. */
export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate (fewer when `stopToken` comes first). */
  maxTokens: number;
  /** Seed of the sampling random generator (default 0): same seed, same text. */
  seed?: number;
  /** Stop at this token (not included). */
  stopToken?: number;
}

/**
 * Sampling knobs: temperature (0 = greedy), top-k and top-p (nucleus). Unset ones take
 * SAMPLE_CONFIG's defaults (src/eval/config.ts), the same as `deno task sample`'s.
 */
export interface SamplingOptions {
  /** Divides the logits before sampling (default 0.8); 0 or less picks the likeliest token. */
  temperature?: number;
  /** Sample among the `topK` likeliest tokens only (default 40; 0: all). */
  topK?: number;
  /**
   * Sample among the likeliest tokens whose probabilities add up to `topP` only (nucleus;
   * default 1: all).
   */
  topP?: number;
}

/** Picks a token from logits (greedy when temperature is 0). */
export function sampleToken(
  logits: Float32Array,
  o: SamplingOptions,
  random: () => number,
): number {
  const temperature = o.temperature ?? SAMPLE_CONFIG.temperature.default;
  const topK = o.topK ?? SAMPLE_CONFIG.topK.default, topP = o.topP ?? SAMPLE_CONFIG.topP.default;
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (temperature <= 0) return best;
  let ids = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  if (topK > 0 && topK < ids.length) ids = ids.slice(0, topK);
  let w = ids.map((i) => Math.exp((logits[i] - logits[best]) / temperature));
  if (topP < 1) {
    const total = w.reduce((a, b) => a + b, 0);
    let acc = 0, keep = 0;
    while (keep < w.length && acc < topP * total) acc += w[keep++];
    ids = ids.slice(0, Math.max(1, keep));
    w = w.slice(0, Math.max(1, keep));
  }
  let r = random() * w.reduce((a, b) => a + b, 0);
  for (let j = 0; j < ids.length; j++) {
    r -= w[j];
    if (r <= 0) return ids[j];
  }
  return ids[ids.length - 1];
}

/**
 * Continues `prompt` (token ids, at least one) with a batch-1 model.
 *
 * @example
 * ```ts
 * const gen = await GPT2.create(rt, cfg, { B: 1, T: 64, inference: true, sharedParams: model });
 * const ids = await generate(gen, [50256], { maxTokens: 32, temperature: 0.8, topK: 40 });
 * ```
 */
export async function generate(
  model: GPT2,
  prompt: number[],
  options: GenerateOptions,
): Promise<number[]> {
  if (model.B !== 1) throw new RangeError(`generate needs a model with B = 1, got B = ${model.B}`);
  if (prompt.length === 0) throw new RangeError("generate needs a prompt of at least one token");
  const T = model.T;
  const random = mulberry32(options.seed ?? SAMPLE_CONFIG.seed.default);
  const ids = [...prompt];
  const out: number[] = [];
  const window = new Array<number>(T).fill(0);
  for (let n = 0; n < options.maxTokens; n++) {
    const ctx = ids.slice(-T);
    for (let i = 0; i < T; i++) window[i] = i < ctx.length ? ctx[i] : 0;
    await model.forward(window);
    const logits = await model.readLogits(ctx.length - 1, 1);
    const next = sampleToken(logits, options, random);
    if (next === options.stopToken) break;
    ids.push(next);
    out.push(next);
  }
  return out;
}

/**
 * Continues `prompt` with a KV-cache {@linkcode Decoder}: O(T) per token.
 * `onToken` sees each token as it is chosen (for streaming).
 */
export async function generateCached(
  decoder: Decoder,
  prompt: number[],
  options: GenerateOptions,
  onToken?: (token: number) => void | Promise<void>,
): Promise<number[]> {
  const random = mulberry32(options.seed ?? SAMPLE_CONFIG.seed.default);
  const out: number[] = [];
  let logits = await decoder.start(prompt);
  for (let n = 0; n < options.maxTokens; n++) {
    const next = sampleToken(logits, options, random);
    if (next === options.stopToken) break;
    out.push(next);
    await onToken?.(next);
    if (n + 1 < options.maxTokens) logits = await decoder.next(next);
  }
  return out;
}
