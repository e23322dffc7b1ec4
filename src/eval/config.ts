/**
 * The settings of sampling (`deno task sample`, `generate`, a training run's
 * samples) and of evaluation (`deno task eval`): one table each (src/table.ts rows), from
 * which the CLIs' flags, their `--help` and the library's defaults come.
 *
 * Sampling defaults: temperature 0.8 and the 40 likeliest tokens, nucleus off (top-p 1),
 * seed 0. They were the CLI's and the training samples' already; the library's `generate`
 * used to sample at temperature 1 over every token, which on small models reads as noise.
 *
 * @module
 */

import type { ConfigRow, ConfigTable } from "../table.ts";
import type { Precision } from "../model/plan.ts";
import { BACKEND_ROW, type BackendChoice } from "../gpu/backend.ts";

/** What `deno task sample` and `generate` take. */
export interface SampleConfig {
  /** Text to continue; undefined: the start of a document (token 50256). */
  prompt?: string;
  /** Most tokens to generate. */
  maxTokens: number;
  /** Divides the logits; 0 is greedy. */
  temperature: number;
  /** Sample among the K likeliest tokens (0: all). */
  topK: number;
  /** Nucleus: the smallest set with this probability (1: all). */
  topP: number;
  /** Seed of the sampling random generator. */
  seed: number;
  /** Context window in tokens; undefined: the model's n_positions, at most 1024. */
  ctx?: number;
  /** Stop at the end-of-text token. */
  stopAtEot: boolean;
  /** fp16: f16 activations, KV cache and weights where the adapter has shader-f16. */
  precision: Precision;
  /** WebGPU implementation for the CLI (src/gpu/backend.ts); `generate` uses its runtime's. */
  backend?: BackendChoice;
}

const precision = (help: string): ConfigRow<Precision> => ({
  flag: "precision",
  kind: "string",
  choices: ["fp32", "fp16"],
  default: "fp32",
  help,
});

/** The sampling table. */
export const SAMPLE_CONFIG: ConfigTable<SampleConfig> = {
  prompt: {
    flag: "prompt",
    kind: "string",
    default: undefined,
    arg: "TEXT",
    help: "text to continue (default: start of a document, token 50256)",
  },
  maxTokens: {
    flag: "max-tokens",
    kind: "number",
    rule: "non-negative-integer",
    default: 128,
    help: "tokens to generate",
  },
  temperature: {
    flag: "temperature",
    kind: "number",
    rule: "non-negative",
    default: 0.8,
    help: "0 = greedy",
  },
  topK: {
    flag: "top-k",
    kind: "number",
    rule: "non-negative-integer",
    default: 40,
    arg: "K",
    help: "sample from the K most likely tokens (0 = all)",
  },
  topP: {
    flag: "top-p",
    kind: "number",
    rule: "probability",
    default: 1,
    arg: "P",
    help: "nucleus sampling: the smallest set with probability P",
  },
  seed: {
    flag: "seed",
    kind: "number",
    rule: "non-negative-integer",
    default: 0,
    arg: "S",
    help: "sampling seed",
  },
  ctx: {
    flag: "ctx",
    kind: "number",
    rule: "positive-integer",
    default: undefined,
    arg: "T",
    help: "context window in tokens (default: the model's n_positions, at most 1024; above " +
      "n_positions is an error). A longer prompt keeps its last T tokens, with a warning",
  },
  stopAtEot: {
    flag: "stop-at-eot",
    kind: "boolean",
    default: false,
    help: "stop at the end-of-text token",
  },
  precision: precision(
    "fp16: f16 activations, KV cache and weights where the adapter has shader-f16",
  ),
  backend: BACKEND_ROW,
};

/** What `deno task eval` takes besides the checkpoint. */
export interface EvalConfig {
  /** HellaSwag file, or "download"; undefined: download unless `loss` is given. */
  hellaswag?: string;
  /** Score only the first N items. */
  limit?: number;
  /** Items per GPU batch (8 rows each: 4 endings x 2 styles). */
  batchItems: number;
  /** Longest row in tokens. */
  seq: number;
  /** Validation loss on these token shards (a folder's val split, or a .bin). */
  loss?: string;
  /** Batches for `loss`. */
  lossBatches: number;
  /** Rows per batch for `loss`. */
  batch: number;
  /** fp16: f16 activations and weights, f32 sums, where the adapter has shader-f16. */
  precision: Precision;
  /** Also write the result as JSON to this file. */
  json?: string;
  /** Where the downloaded HellaSwag file is kept. */
  cacheDir: string;
  /** WebGPU implementation (src/gpu/backend.ts); unset: WEBGPU_GPT2_BACKEND, else Deno's own. */
  backend?: BackendChoice;
}

/** The evaluation table. */
export const EVAL_CONFIG: ConfigTable<EvalConfig> = {
  hellaswag: {
    flag: "hellaswag",
    kind: "string",
    default: undefined,
    arg: "PATH|download",
    help: "HellaSwag validation: hellaswag_val.jsonl (rowanz/hellaswag) or llama.cpp's 6-line " +
      'text format; "download" fetches the official jsonl once into --cache-dir (default when ' +
      "--loss is not given)",
  },
  limit: {
    flag: "limit",
    kind: "number",
    rule: "positive-integer",
    default: undefined,
    help: "score only the first N items",
  },
  batchItems: {
    flag: "batch-items",
    kind: "number",
    rule: "positive-integer",
    default: 2,
    arg: "K",
    help: "items per GPU batch (8 rows each: 4 endings x 2 styles)",
  },
  seq: {
    flag: "seq",
    kind: "number",
    rule: "positive-integer",
    default: 192,
    arg: "T",
    help: "longest row in tokens (longer rows lose context)",
  },
  loss: {
    flag: "loss",
    kind: "string",
    default: undefined,
    arg: "DIR",
    help: "validation loss on token shards (a folder's val split, or a .bin)",
  },
  lossBatches: {
    flag: "loss-batches",
    kind: "number",
    rule: "positive-integer",
    default: 50,
    help: "batches for --loss",
  },
  batch: {
    flag: "batch",
    kind: "number",
    rule: "positive-integer",
    default: 4,
    arg: "B",
    help: "rows per batch for --loss (with --seq)",
  },
  precision: precision(
    "fp16: f16 activations and weights, f32 sums, where the adapter has shader-f16",
  ),
  json: {
    flag: "json",
    kind: "string",
    default: undefined,
    arg: "FILE",
    help: "also write the result as JSON",
  },
  cacheDir: {
    flag: "cache-dir",
    kind: "string",
    default: "runs/data",
    arg: "DIR",
    help: "where the downloaded jsonl is kept",
  },
  backend: BACKEND_ROW,
};
