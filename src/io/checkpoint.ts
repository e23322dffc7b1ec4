/**
 * Checkpoint directories that Hugging Face GPT-2 tools load, plus the
 * trainer's own state beside them:
 *
 *   model.safetensors       HF names, Conv1D [in, out], no padding rows (F32)
 *   config.json             GPT2Config fields
 *   optimizer.safetensors   AdamW m and v per tensor (F32, bit-exact resume)
 *   trainer_state.json      step, schedule, data cursor, RNG, run config
 *
 * A checkpoint is written into a temporary directory and renamed into place,
 * so a crash never leaves a half-written `step_N`; the last K are kept.
 *
 * @module
 */

import type { GPT2Config } from "../model/config.ts";
import { configFromHf, hfConfigJson } from "./hf.ts";
import { loadLlmcCheckpoint } from "./llmc.ts";
import {
  encodeSafetensors,
  readSafetensors,
  readSafetensorsHeader,
  type SafeTensorsFile,
  type TensorToWrite,
} from "./safetensors.ts";

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);
/** Files of a checkpoint directory. */
export const CHECKPOINT_FILES = {
  model: "model.safetensors",
  config: "config.json",
  optimizer: "optimizer.safetensors",
  trainer: "trainer_state.json",
} as const;

/** What a saved checkpoint holds, parsed and checked. */
export interface LoadedCheckpoint {
  /** The directory (or llm.c model file) it was read from. */
  dir: string;
  /** The architecture, from config.json. */
  config: GPT2Config;
  /** The weights (model.safetensors), Hugging Face names. */
  model: SafeTensorsFile;
  /** The optimizer state (optimizer.safetensors); undefined when the file is absent. */
  optimizer?: SafeTensorsFile;
  /** trainer_state.json, checked (step, schedule, data cursor, run config, ...). */
  trainer?: TrainerState;
}

/** Directory name of step `n` (sorts by step). */
export function stepDirName(step: number): string {
  return `step_${String(step).padStart(8, "0")}`;
}

/** Version of trainer_state.json this package writes; a newer one is refused on resume. */
export const TRAINER_STATE_VERSION = 1;

/** Checks a weights file's tensor shapes against a config (throws naming the file). */
export type WeightsCheck = (
  header: { path: string; tensors: Map<string, { shape: number[] }> },
  config: GPT2Config,
) => unknown;

/**
 * trainer_state.json: where a run stands after a step. Version 1; files without `version`
 * (written before it existed) read as version 1.
 */
export interface TrainerState {
  /** Format version, at most {@linkcode TRAINER_STATE_VERSION}. */
  version: number;
  /** Optimizer steps taken, counted from the start of training (skipped ones included). */
  step: number;
  /** Updates applied (fp16 overflow skips do not count): AdamW's t. */
  optimizer_steps: number;
  /** fp16: the loss scale and the clean steps since it last changed. */
  loss_scale?: number;
  /** fp16: clean steps in a row at `loss_scale`. */
  loss_scale_good_steps?: number;
  /** Tokens trained on. */
  tokens?: number;
  /** The shard directory the run reads. */
  data?: string;
  /** The data loader's position (restores the next batch exactly). */
  cursor?: unknown;
  /** The run's seed. */
  seed?: number;
  /** The learning-rate schedule, resolved. */
  schedule?: unknown;
  /** The run's settings (a TrainConfig), the base of a resume. */
  config?: Record<string, unknown>;
  /** The last validation loss. */
  val_loss?: number;
  /** When it was written (ISO 8601). */
  time?: string;
}

/**
 * Checks parsed trainer_state.json and fills defaults of older versions; returns what is
 * wrong as a string instead (`dirStep`: the step a step_N directory's name says).
 */
export function parseTrainerState(json: unknown, dirStep?: number): TrainerState | string {
  if (typeof json !== "object" || json === null) return "is not a JSON object";
  const st = json as Record<string, unknown>;
  const version = st.version ?? 1;
  if (typeof version !== "number" || version > TRAINER_STATE_VERSION) {
    return `has version ${version}; this package reads up to ${TRAINER_STATE_VERSION}: upgrade it`;
  }
  const step = st.step;
  if (typeof step !== "number" || !Number.isInteger(step) || step < 0) {
    return `has no valid "step"`;
  }
  if (dirStep !== undefined && dirStep !== step) {
    return `says step ${step} but the directory is step ${dirStep}`;
  }
  const config = typeof st.config === "object" && st.config !== null
    ? st.config as Record<string, unknown>
    : undefined;
  return {
    ...st,
    version,
    step,
    optimizer_steps: typeof st.optimizer_steps === "number" ? st.optimizer_steps : step,
    config,
  } as TrainerState;
}

/**
 * Writes a checkpoint atomically as `<root>/step_N`. A `step_N` already there is
 * replaced only once the new one is complete (moved aside, the new one renamed in,
 * then the old one removed). Unless `keep` is undefined, all but the newest `keep`
 * checkpoints are removed afterwards ({@linkcode pruneCheckpoints}). Returns the
 * final directory.
 */
export async function saveCheckpoint(
  root: string,
  step: number,
  contents: {
    config: GPT2Config;
    model: Uint8Array;
    optimizer?: TensorToWrite[];
    trainer?: Record<string, unknown>;
  },
  keep: number | undefined = 3,
): Promise<string> {
  if (keep !== undefined) checkKeep(keep);
  await Deno.mkdir(root, { recursive: true });
  const final = `${root}/${stepDirName(step)}`;
  const tag = crypto.randomUUID().slice(0, 8);
  const tmp = `${root}/.tmp-${stepDirName(step)}-${tag}`;
  await Deno.mkdir(tmp);
  try {
    await Deno.writeFile(`${tmp}/${CHECKPOINT_FILES.model}`, contents.model);
    await Deno.writeTextFile(
      `${tmp}/${CHECKPOINT_FILES.config}`,
      JSON.stringify(hfConfigJson(contents.config), null, 2) + "\n",
    );
    if (contents.optimizer) {
      await Deno.writeFile(
        `${tmp}/${CHECKPOINT_FILES.optimizer}`,
        encodeSafetensors(contents.optimizer),
      );
    }
    if (contents.trainer) {
      await Deno.writeTextFile(
        `${tmp}/${CHECKPOINT_FILES.trainer}`,
        JSON.stringify({ version: TRAINER_STATE_VERSION, ...contents.trainer }, null, 2) + "\n",
      );
    }
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  const old = `${root}/.old-${stepDirName(step)}-${tag}`;
  const replacing = await Deno.rename(final, old).then(() => true, () => false);
  await Deno.rename(tmp, final);
  if (replacing) await Deno.remove(old, { recursive: true });
  if (keep !== undefined) await pruneCheckpoints(root, keep);
  return final;
}

function checkKeep(keep: number): void {
  if (!(Number.isInteger(keep) && keep >= 1)) {
    throw new RangeError(
      `--keep ${keep} would delete every checkpoint, the newest included: keep at least 1`,
    );
  }
}

/** Removes all but the newest `keep` (at least 1) checkpoints under `root`. */
export async function pruneCheckpoints(root: string, keep: number): Promise<string[]> {
  checkKeep(keep);
  const all = await listCheckpoints(root);
  const gone = all.slice(0, Math.max(0, all.length - keep));
  for (const dir of gone) await Deno.remove(dir, { recursive: true });
  return gone;
}

/** Checkpoint directories under `root`, oldest first (temporary ones excluded). */
export async function listCheckpoints(root: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(root)) {
      if (e.isDirectory && /^step_\d+$/.test(e.name)) out.push(`${root}/${e.name}`);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

/**
 * Reads and checks a checkpoint (or any HF GPT-2 directory, or an llm.c model
 * file); nothing is written.
 */
export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
  if (/\.bin$/i.test(dir) && (await Deno.stat(dir).catch(() => undefined))?.isFile) {
    return await loadLlmcCheckpoint(dir); // an llm.c model file
  }
  const configPath = `${dir}/${CHECKPOINT_FILES.config}`;
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(configPath));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`Not a checkpoint directory: ${configPath} does not exist`);
    }
    throw new Error(`Invalid ${configPath}: ${(e as Error).message}`);
  }
  const config = configFromHf(json, configPath);
  const model = await readSafetensors(`${dir}/${CHECKPOINT_FILES.model}`);
  const optPath = `${dir}/${CHECKPOINT_FILES.optimizer}`;
  const optimizer = (await exists(optPath)) ? await readSafetensors(optPath) : undefined;
  const trainerPath = `${dir}/${CHECKPOINT_FILES.trainer}`;
  let trainer: TrainerState | undefined;
  if (await exists(trainerPath)) {
    let json;
    try {
      json = JSON.parse(await Deno.readTextFile(trainerPath));
    } catch (e) {
      throw new Error(`Invalid ${trainerPath}: ${(e as Error).message}; the checkpoint is damaged`);
    }
    const st = parseTrainerState(json, stepOfDir(dir));
    if (typeof st === "string") throw new Error(`Invalid ${trainerPath}: ${st}`);
    trainer = st;
  }
  return { dir, config, model, optimizer, trainer };
}

/** The step a `step_N` directory's name says, or undefined for another name. */
export function stepOfDir(dir: string): number | undefined {
  const m = /(?:^|\/)step_(\d+)\/?$/.exec(dir);
  return m ? Number(m[1]) : undefined;
}

/**
 * What keeps `dir` from being resumed, or undefined when nothing does. Reads
 * config.json, trainer_state.json and the two safetensors headers (checked
 * against the file sizes, and by `checkWeights` against the config's shapes), not the
 * tensors themselves.
 */
export async function resumeProblem(
  dir: string,
  checkWeights: WeightsCheck,
): Promise<string | undefined> {
  for (const f of [CHECKPOINT_FILES.config, CHECKPOINT_FILES.model]) {
    if (!(await exists(`${dir}/${f}`))) return `${f} is missing`;
  }
  if (!(await exists(`${dir}/${CHECKPOINT_FILES.optimizer}`))) {
    return `${CHECKPOINT_FILES.optimizer} is missing (weights alone: start a new run with --init)`;
  }
  if (!(await exists(`${dir}/${CHECKPOINT_FILES.trainer}`))) {
    return `${CHECKPOINT_FILES.trainer} is missing, so the step, schedule and data position ` +
      "are unknown";
  }
  const json = async (file: string) => {
    const path = `${dir}/${file}`;
    try {
      return JSON.parse(await Deno.readTextFile(path));
    } catch (e) {
      throw new Error(`Invalid ${path}: ${(e as Error).message}; the checkpoint is damaged`);
    }
  };
  try {
    const configPath = `${dir}/${CHECKPOINT_FILES.config}`;
    const config = configFromHf(await json(CHECKPOINT_FILES.config), configPath);
    checkWeights(await readSafetensorsHeader(`${dir}/${CHECKPOINT_FILES.model}`), config);
    await readSafetensorsHeader(`${dir}/${CHECKPOINT_FILES.optimizer}`);
    const st = parseTrainerState(await json(CHECKPOINT_FILES.trainer), stepOfDir(dir));
    if (typeof st === "string") return `${CHECKPOINT_FILES.trainer} ${st}`;
    if (!st.config) return `${CHECKPOINT_FILES.trainer} has no run "config"`;
  } catch (e) {
    return (e as Error).message;
  }
  return undefined;
}

/**
 * The newest checkpoint under `root` that {@linkcode resumeProblem} passes (undefined
 * when none does), with a line for each newer one it skipped and why.
 */
export async function latestResumable(
  root: string,
  checkWeights: WeightsCheck,
): Promise<{ dir?: string; skipped: string[] }> {
  const skipped: string[] = [];
  for (const dir of (await listCheckpoints(root)).reverse()) {
    const problem = await resumeProblem(dir, checkWeights);
    if (problem === undefined) return { dir, skipped };
    skipped.push(`${dir}: ${problem}`);
  }
  return { skipped };
}
