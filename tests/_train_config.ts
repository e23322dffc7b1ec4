/**
 * A complete, small TrainConfig for tests; each test overrides what it studies.
 *
 * @module
 */

import type { TrainSettings } from "../src/train/resolve.ts";
import { rng } from "./_harness.ts";

/** Small GPT-2 sizes with GPT-2's vocabulary (the tests tokenize real text). */
export const SMALL_MODEL = { nLayer: 2, nHead: 2, nEmbd: 32, nCtx: 64, vocabSize: 50257 };

/**
 * A run writing to `out` on `data`, quiet (no validation, samples or periodic saves): what the
 * tests share beyond the table's defaults (train() fills the rest).
 */
export function testTrainConfig(
  out: string,
  data: string,
  over: TrainSettings = {},
): TrainSettings {
  return {
    modelName: "test",
    model: SMALL_MODEL,
    data,
    out,
    batch: 2,
    seq: 32,
    totalBatch: 64,
    steps: 8,
    lr: 3e-3,
    minLr: 3e-4,
    warmup: 2,
    seed: 7,
    valEvery: 0,
    valBatches: 0,
    sampleTokens: 0,
    saveEvery: 0,
    keep: 2,
    cacheDir: `${out}/cache`,
    ...over,
  };
}

/** Text the tests write themselves: seeded pseudo-sentences of `sentence` words. */
export function syntheticText(words: number, seed: number, sentence = 9): string {
  const vocab = [
    "the",
    "whale",
    "sea",
    "ship",
    "captain",
    "white",
    "deep",
    "sailor",
    "storm",
    "and",
  ];
  const u = rng(seed);
  const out: string[] = [];
  for (let i = 0; i < words; i++) {
    out.push(vocab[Math.floor(u() * vocab.length)] + (i % sentence === sentence - 1 ? "." : ""));
  }
  return out.join(" ");
}
