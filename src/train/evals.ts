/**
 * What a run measures besides its training loss, each over the training weights through a
 * graph of its own shape: validation loss, text samples and HellaSwag.
 *
 * @module
 */

import type { Runtime } from "../gpu/runtime.ts";
import { GPT2 } from "../model/gpt2.ts";
import type { MatmulOptions } from "../model/ops/matmul.ts";
import type { Weights } from "../model/weights.ts";
import { type ShardInfo, TokenLoader } from "../data/loader.ts";
import { decodeTokens, EOT } from "../data/tokenizer.ts";
import { generate } from "../eval/generate.ts";
import {
  type HellaSwagItem,
  type HellaSwagResult,
  itemRows,
  scoreItems,
  summarize,
} from "../eval/hellaswag.ts";

/** The evaluations of a run; each graph shares the training weights. */
export interface RunEvals {
  /**
   * Mean validation loss over `batches` batches (undefined without a validation split, or
   * when `signal` stops it part way).
   */
  validate(signal?: AbortSignal): Promise<number | undefined>;
  /** Text sampled from an end-of-text token, seeded by `seed`. */
  sample(seed: number): Promise<string>;
  /** HellaSwag over the items (undefined when there are none, or when `signal` stops it). */
  hellaswag(signal?: AbortSignal): Promise<HellaSwagResult | undefined>;
  /** Frees the evaluation graphs. */
  destroy(): void;
}

/** What the evaluations need. */
export interface EvalSetup {
  /** The training graph: validation runs through it (same batch shape). */
  model: GPT2;
  /** The validation shards, if the data has them. */
  valShards?: ShardInfo[];
  /** Validation batches averaged (at most one epoch). */
  valBatches: number;
  /** Tokens per sample. */
  sampleTokens: number;
  /** HellaSwag items to score (none: no HellaSwag graph is built). */
  hsItems: HellaSwagItem[];
  /** Options for the evaluation graphs' matmuls. */
  matmul?: MatmulOptions;
}

/** HellaSwag items scored between checks of the stop signal. */
const HELLASWAG_PIECE = 64;

/** Builds the sampling and HellaSwag graphs over `model`'s weights. */
export async function runEvals(rt: Runtime, s: EvalSetup): Promise<RunEvals> {
  const { model } = s, weights: Weights = model.weights, cfg = weights.config;
  const sampler = await GPT2.create(rt, cfg, {
    B: 1,
    T: Math.min(cfg.nCtx, model.T),
    inference: true,
    weights,
    matmul: s.matmul,
  });
  const hsModel = s.hsItems.length
    ? await GPT2.create(rt, cfg, {
      B: 16,
      T: Math.min(
        cfg.nCtx,
        Math.max(...s.hsItems.flatMap((it) =>
          itemRows(it, "completion").map((r) => r.ctx.length + r.end.length)
        )),
      ),
      inference: true,
      weights,
      matmul: s.matmul,
    })
    : undefined;
  return {
    async validate(signal) {
      if (!s.valShards || s.valBatches <= 0) return undefined;
      const val = new TokenLoader(s.valShards, { batchSize: model.B, seqLen: model.T });
      let sum = 0;
      const n = Math.min(s.valBatches, val.batchesPerEpoch);
      for (let i = 0; i < n; i++) {
        if (signal?.aborted) return undefined;
        const b = val.nextBatch();
        sum += await model.forward(b.inputs, b.targets);
      }
      return sum / n;
    },
    async sample(seed) {
      const ids = await generate(sampler, [EOT], {
        maxTokens: s.sampleTokens, // temperature and top-k: the library's (src/eval/config.ts)
        seed,
        stopToken: EOT,
      });
      return decodeTokens(ids);
    },
    async hellaswag(signal) {
      if (!hsModel) return undefined;
      // In pieces, so that a stop request waits for one piece at most.
      const scores = [];
      for (let i = 0; i < s.hsItems.length; i += HELLASWAG_PIECE) {
        if (signal?.aborted) return undefined;
        scores.push(...await scoreItems(hsModel, s.hsItems.slice(i, i + HELLASWAG_PIECE)));
      }
      return summarize(s.hsItems, scores);
    },
    destroy() {
      sampler.destroy();
      hsModel?.destroy();
    },
  };
}
