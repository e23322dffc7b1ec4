/**
 * Text generation by repeated forward passes over a sliding window (no KV
 * cache yet: each token costs a full forward of T positions). Used for the
 * samples training prints; `deno task sample` with a KV cache supersedes it.
 *
 * @module
 */

import type { GPT2 } from "../model/gpt2.ts";
import { mulberry32 } from "../model/init.ts";

/** Sampling options. */
export interface GenerateOptions {
  maxTokens: number;
  /** 0 = greedy. */
  temperature?: number;
  topK?: number;
  seed?: number;
  /** Stop at this token (not included). */
  stopToken?: number;
}

/** Picks a token from logits with temperature and top-k (greedy when temperature is 0). */
export function sampleToken(
  logits: Float32Array,
  o: { temperature?: number; topK?: number },
  random: () => number,
): number {
  const temperature = o.temperature ?? 1;
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (temperature <= 0) return best;
  let ids = Array.from(logits.keys());
  if (o.topK && o.topK < ids.length) {
    ids = ids.sort((a, b) => logits[b] - logits[a]).slice(0, o.topK);
  }
  const w = ids.map((i) => Math.exp((logits[i] - logits[best]) / temperature));
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
 * const gen = await GPT2.create(rt, cfg, { B: 1, T: 64, inference: true, sharedParams: model.params });
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
  const random = mulberry32(options.seed ?? 0);
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
