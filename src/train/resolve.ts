/**
 * From the settings a caller gives to the complete {@linkcode TrainConfig} a run uses: each
 * key is the caller's value, else (resuming, unless its row says `fresh`) the resumed run's,
 * else the table's default (src/train/config_table.ts). A resume checks the checkpoint first,
 * refuses a shape or optimizer setting that differs from it, and notes each other change.
 * `deno task train` and a library caller of {@linkcode train} share this one merge.
 *
 * @module
 */

import { type GPT2Config, resolveConfig, validateConfig } from "../model/config.ts";
import { matchTensors } from "../model/weights.ts";
import { latestResumable, readTrainerState, resumeProblem } from "../io/checkpoint.ts";
import type { ConfigRow, TrainConfig } from "./config.ts";
import { configDefault, TRAIN_CONFIG } from "./config_table.ts";

/**
 * What {@linkcode train} takes: any part of a TrainConfig. `model` may be a whole
 * GPT2Config or changes to the `modelName` preset's shape.
 */
export type TrainSettings = Omit<Partial<TrainConfig>, "model"> & {
  /** The architecture, or changes to the preset `modelName` names. */
  model?: Partial<GPT2Config>;
};

/** What {@linkcode resolveTrainConfig} takes besides the settings. */
export interface ResolveOptions {
  /** Processes that train together (the default total batch is one micro-batch each). */
  ranks?: number;
}

type Row = ConfigRow<unknown> & { key: keyof TrainConfig };
const ROWS: Row[] = (Object.entries(TRAIN_CONFIG) as [keyof TrainConfig, ConfigRow<unknown>][])
  .map(([key, r]) => ({ key, ...r }));

const SHAPE_KEYS = ["nLayer", "nHead", "nEmbd", "nCtx", "vocabSize"] as const;

/**
 * The complete config for `settings` (see the module doc). `resume: "latest"` becomes the
 * newest intact checkpoint under `out`; what it skipped, and what a resume changes, are
 * lines of `notices`. Errors say what to change; nothing is written.
 *
 * @example
 * ```ts
 * import { resolveTrainConfig } from "@webgpu-gpt2/core/train";
 *
 * const c = await resolveTrainConfig({ modelName: "gpt2-mini", steps: 100 });
 * console.log(c.lr, c.out); // 0.001 runs/gpt2-mini
 * ```
 */
export async function resolveTrainConfig(
  settings: TrainSettings,
  options: ResolveOptions = {},
): Promise<TrainConfig> {
  const s = settings as Partial<Record<keyof TrainConfig, unknown>>;
  const notices = [...settings.notices ?? []];
  // With `init` and no model name the model is the checkpoint's: name it after the directory.
  const initName = settings.init !== undefined && settings.modelName === undefined
    ? `init:${settings.init.replace(/\/+$/, "").split("/").pop()!.replace(/\.bin$/i, "")}`
    : undefined;
  const name = settings.modelName ?? initName ?? configDefault("modelName");
  const out = settings.out || `runs/${name.replace(/^init:/, "")}`;
  const resume = await resumeDir(settings.resume, out, notices);
  const base: Partial<TrainConfig> = resume
    ? (await readTrainerState(resume)).config as Partial<TrainConfig>
    : {};
  if (base.model) keepShape(base as TrainConfig, settings, resume!);
  const config = {} as Record<keyof TrainConfig, unknown>;
  for (const r of ROWS) {
    config[r.key] = s[r.key] ?? (r.resume === "fresh" ? undefined : base[r.key]) ?? r.default;
  }
  const c = config as unknown as TrainConfig;
  c.model = base.model ?? modelOf(settings.model, initName ? configDefault("modelName") : name);
  c.modelName = settings.modelName ?? base.modelName ?? name;
  c.out = settings.out || base.out || out;
  c.resume = resume;
  c.totalBatch ||= c.batch * c.seq * (options.ranks ?? 1);
  // "constant" means constant: no warmup unless asked for.
  if (settings.warmup === undefined && base.warmup === undefined && c.schedule === "constant") {
    c.warmup = 0;
  }
  for (
    const [key, flag] of [["gradDtype", "grad-dtype"], ["weightDtype", "weight-dtype"]] as const
  ) {
    if (c[key] === "f16" && c.precision !== "fp16") {
      throw new TypeError(
        `--${flag} f16 needs --precision fp16 (16-bit weights and gradients live with its f16 ` +
          "kernels and loss scale): add --precision fp16",
      );
    }
  }
  if (c.matmul?.startsWith("sm") && c.precision !== "fp16") {
    throw new TypeError(
      `--matmul ${c.matmul} is a tensor-core kernel for f16 products: add --precision fp16, ` +
        "or use another kernel",
    );
  }
  if (resume) {
    for (const r of ROWS.filter((r) => r.resume === "fixed")) {
      const was = base[r.key] ?? r.default;
      if (s[r.key] !== undefined && c[r.key] !== was) {
        throw new TypeError(
          `--resume ${resume}: --${r.flag} ${c[r.key]} differs from the checkpoint's ${was}; ` +
            "its optimizer state cannot be converted: drop the flag",
        );
      }
    }
    for (const r of ROWS) {
      if (!r.flag || s[r.key] === undefined || r.resume === "fresh" || r.key === "out") continue;
      const was = base[r.key], now = c[r.key];
      if (was !== undefined && JSON.stringify(was) !== JSON.stringify(now)) {
        notices.push(`resume: --${r.flag} ${JSON.stringify(now)} (was ${JSON.stringify(was)})`);
      }
    }
    await refuseFinished(c, resume);
  }
  c.notices = [...new Set(notices)]; // a config resolved twice says each thing once
  return c;
}

/** The checkpoint `resume` names, checked ("latest": the newest intact one under `out`). */
async function resumeDir(
  resume: string | undefined,
  out: string,
  notices: string[],
): Promise<string | undefined> {
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
  }
  return resume;
}

/** A whole GPT2Config as given, or the preset `name` with the given changes. */
function modelOf(model: Partial<GPT2Config> | undefined, name: string): GPT2Config {
  const whole = model && SHAPE_KEYS.every((k) => model[k] !== undefined);
  return whole ? validateConfig({ ...model } as GPT2Config) : resolveConfig(name, model);
}

/** A resumed model keeps its shape: settings that ask for another are an error. */
function keepShape(base: TrainConfig, settings: TrainSettings, resume: string): void {
  // A model name asks for a preset's shape only when it is not the run's own.
  const preset = settings.modelName !== undefined && settings.modelName !== base.modelName
    ? resolveConfig(settings.modelName)
    : {};
  const given = Object.fromEntries(
    Object.entries(settings.model ?? {}).filter(([, v]) => v !== undefined),
  );
  const want: GPT2Config = { ...base.model, ...preset, ...given };
  const diff = (Object.keys(base.model) as (keyof GPT2Config)[])
    .filter((k) => want[k] !== base.model[k])
    .map((k) => `${k} ${want[k]} (the checkpoint has ${base.model[k]})`);
  if (diff.length) {
    throw new TypeError(
      `--resume ${resume}: ${diff.join(", ")}: a resumed run keeps its model's shape; drop ` +
        "the shape flags, or start a new run from these weights with --init " + resume,
    );
  }
}

/** A resumed run that already reached its steps: say so instead of doing nothing. */
async function refuseFinished(c: TrainConfig, resume: string): Promise<void> {
  if (c.steps === undefined || c.time !== undefined) return;
  const st = await readTrainerState(resume);
  if (st.step < c.steps) return;
  throw new RangeError(
    `${resume} is at step ${st.step} and the run was for ${c.steps} steps: it is finished. ` +
      `To train further give a larger total, e.g. --steps ${2 * c.steps} (the schedule is ` +
      "recomputed for it), or --time D",
  );
}
