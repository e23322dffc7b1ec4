/**
 * The run's configuration: TrainConfig, documented field by field (the shape of a table row
 * and the checks rows name are src/table.ts's, re-exported here).
 * The table itself is src/train/config_table.ts; the compiler ties it to TrainConfig: a key
 * without a row, or a row whose default is not of its key's type, does not compile.
 *
 * @module
 */

import type { GPT2Config } from "../model/config.ts";
import type { MatmulImpl } from "../model/ops/matmul.ts";
import type { BackendChoice } from "../gpu/backend.ts";
import type { DType } from "../gpu/dtype.ts";
import type { Precision, Recompute } from "../model/plan.ts";

export {
  checkChoice,
  checkNumber,
  type ConfigRow,
  type ConfigTable,
  type NumberRule,
} from "../table.ts";

/**
 * Everything a run needs, complete: `resolveTrainConfig` (src/train/resolve.ts) fills
 * it from a caller's part of it, a resumed run and the table's defaults.
 */
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
  /**
   * Optimizer steps to reach (a resumed run continues up to this). Undefined: as many as fit
   * in `time`; with `time` too, the most it may choose.
   */
  steps?: number;
  /**
   * Train for about this many seconds from the start of the run: the speed of the first steps
   * decides `steps`, once (src/train/budget.ts). Default 300 when `steps` is not given.
   */
  time?: number;
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
  /** A name from OPTIMIZERS (src/optim/registry.ts): adamw, adamw8bit, adamw4bit, ... */
  optimizer: string;
  /** The optimizer's own settings, "key=value,..." (its registry row's options). */
  optimizerOptions?: string;
  /** 8-bit block size (default 256). */
  optimizerBlock: number;
  /** Low-bit optimizers: keep wte and wpe state in fp32. */
  optimizerFp32Embeddings: boolean;
  /** Low-bit optimizers: keep the state in CPU memory, streamed through the GPU per tensor. */
  optimizerOffload: boolean;
  /** Update each block within the backward (LOMO's two passes): one block's gradients in memory. */
  optimizerInBackward: boolean;
  /** Data-parallel runs: shard the optimizer state over the ranks (ZeRO-1). */
  zero: boolean;
  /** Activations the backward recomputes (none, mlp, block). */
  recompute: Recompute;
  /** Linear and LayerNorm layers without biases (the model config's `bias: false`). */
  noBias: boolean;
  /** Rows of logits per chunk (default: all up to 256 MiB, else 512). */
  logitsChunkRows?: number;
  /** fp16: mixed precision where the adapter has shader-f16 (default fp32). */
  precision: Precision;
  /** f16: 16-bit gradients (fp16 only; default f32). */
  gradDtype: DType;
  /** f16: 16-bit weights, stochastically rounded, no f32 copy on the GPU (fp16 only; default f32). */
  weightDtype: DType;
  /** Mixed precision: the first loss scale (default 65536). */
  lossScale: number;
  /** Mixed precision: clean steps in a row before the loss scale doubles (default 2000). */
  lossScaleWindow: number;
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
  hellaswagEvery: number;
  /** Items scored each time (the first N). */
  hellaswagLimit: number;
  /** Peak TFLOP/s of the device, for MFU; unknown when 0. */
  peakTflops: number;
  /** Matmul kernel for every product (default auto: the autotuner's choice per shape). */
  matmul?: MatmulImpl;
  /** WebGPU implementation (src/gpu/backend.ts); unset: WEBGPU_GPT2_BACKEND, else Deno's own. */
  backend?: BackendChoice;
  /** Where tokenized text files are cached. */
  cacheDir: string;
  /** Start over in a run directory that holds checkpoints: they and the log are removed. */
  overwrite: boolean;
  /**
   * Divergence guard: stop when a step's loss exceeds this many times the median of the
   * last `divergenceWindow` steps (default 3; 0 turns the loss test off; a non-finite loss
   * or gradient norm always stops).
   */
  divergence: number;
  /** Steps whose median loss the divergence guard compares against (default 50). */
  divergenceWindow: number;
  /** fp16: stop after this many overflowed (skipped) steps in a row (default 20). */
  maxOverflows: number;
  /** Lines printed before the run starts (what a resume changed, checkpoints skipped). */
  notices?: string[];
}
