/**
 * Checkpoint directories that Hugging Face GPT-2 tools load, plus the
 * trainer's own state beside them:
 *
 *   model.safetensors       HF names, Conv1D [in, out], no padding rows (F32)
 *   config.json             GPT2Config fields
 *   optimizer.safetensors   AdamW m and v per tensor (F32, bit-exact resume)
 *   trainer_state.json      step, schedule, data cursor, RNG, run config
 *   checksums.json          SHA-256 and size of each file above (./integrity.ts)
 *
 * A checkpoint is written into a temporary directory (checksums.json last) and
 * renamed into place, so a crash never leaves a half-written `step_N`; the last
 * K are kept. Reading one checks each file it reads against checksums.json and
 * refuses NaN or Infinity in the weights and the optimizer state.
 *
 * @module
 */

import type { GPT2Config } from "../model/config.ts";
import type { LoaderCursor } from "../data/loader.ts";
import { configFromHf, hfConfigJson } from "./hf.ts";
import { loadLlmcCheckpoint } from "./llmc.ts";
import {
  checkFinite,
  encodeSafetensors,
  readSafetensorsHeader,
  type SafeTensorsFile,
  type TensorToWrite,
} from "./safetensors.ts";
import {
  type Checksums,
  CHECKSUMS_FILE,
  type FileChecksum,
  integrityProblem,
  readChecksums,
  readJson,
  readTensors,
  sizeProblem,
  writeChecksums,
  writeHashed,
} from "./integrity.ts";

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
  /** Lines for the user (a checkpoint of ours saved before checksums.json existed). */
  notices?: string[];
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
  cursor?: LoaderCursor;
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
  /**
   * checksums.json's name, when the checkpoint was saved with one (then a checkpoint
   * without it is incomplete; an older one without it is read with a notice).
   */
  checksums?: string;
}

/**
 * What a save gives for trainer_state.json: the state without `version` and `checksums`,
 * which {@linkcode saveCheckpoint} writes (the version once, here).
 */
export type TrainerStateFields = Omit<TrainerState, "version" | "checksums">;

/**
 * Checks parsed trainer_state.json and fills defaults of older versions; returns what is
 * wrong as a string instead (`dirStep`: the step a step_N directory's name says).
 */
function parseTrainerState(json: unknown, dirStep?: number): TrainerState | string {
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
 * `dir`'s trainer_state.json, read (checked against `sums` where given) and validated: the
 * one reader of the file. An unreadable or invalid file is an Error naming it (`fix`: the
 * action to add).
 */
export async function readTrainerState(
  dir: string,
  sums?: Checksums,
  fix?: string,
): Promise<TrainerState> {
  const st = parseTrainerState(
    await readJson(dir, CHECKPOINT_FILES.trainer, sums, fix),
    stepOfDir(dir),
  );
  if (typeof st === "string") throw new Error(`Invalid ${dir}/${CHECKPOINT_FILES.trainer}: ${st}`);
  return st;
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
    trainer?: TrainerStateFields;
  },
  keep?: number,
): Promise<string> {
  if (keep !== undefined) checkKeep(keep);
  if (contents.trainer && contents.trainer.step !== step) {
    throw new RangeError(
      `The trainer state says step ${contents.trainer.step} but the checkpoint is of step ` +
        `${step}: save the state of the step being saved`,
    );
  }
  await Deno.mkdir(root, { recursive: true });
  const final = `${root}/${stepDirName(step)}`;
  const tag = crypto.randomUUID().slice(0, 8);
  const tmp = `${root}/.tmp-${stepDirName(step)}-${tag}`;
  await Deno.mkdir(tmp);
  try {
    const sums: Record<string, FileChecksum> = {};
    const put = async (name: string, bytes: Uint8Array) => {
      sums[name] = await writeHashed(`${tmp}/${name}`, bytes);
    };
    const json = (o: unknown) => new TextEncoder().encode(JSON.stringify(o, null, 2) + "\n");
    await put(CHECKPOINT_FILES.model, contents.model);
    await put(CHECKPOINT_FILES.config, json(hfConfigJson(contents.config)));
    if (contents.optimizer) {
      await put(CHECKPOINT_FILES.optimizer, encodeSafetensors(contents.optimizer));
    }
    if (contents.trainer) {
      const st: TrainerState = {
        ...contents.trainer,
        version: TRAINER_STATE_VERSION,
        checksums: CHECKSUMS_FILE,
      };
      await put(CHECKPOINT_FILES.trainer, json(st));
    }
    await writeChecksums(tmp, sums); // last: the files it lists are complete
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  const old = `${root}/.old-${stepDirName(step)}-${tag}`;
  const replacing = await Deno.rename(final, old).then(() => true, () => false);
  await Deno.rename(tmp, final);
  if (replacing) await Deno.remove(old, { recursive: true });
  if (keep !== undefined) await pruneCheckpoints(root, keep, step);
  return final;
}

function checkKeep(keep: number): void {
  if (!(Number.isInteger(keep) && keep >= 1)) {
    throw new RangeError(
      `--keep ${keep} would delete every checkpoint, the newest included: keep at least 1`,
    );
  }
}

/**
 * Removes all but the newest `keep` (at least 1) checkpoints under `root`; with `upTo`, of
 * those up to that step only. A newer one is left from a run that went further before an
 * older checkpoint was resumed (or was skipped as damaged): it is replaced when this run
 * saves that step, and counting it could delete the checkpoint just saved.
 */
export async function pruneCheckpoints(
  root: string,
  keep: number,
  upTo?: number,
): Promise<string[]> {
  checkKeep(keep);
  const all = (await listCheckpoints(root)).filter((d) =>
    upTo === undefined || stepOfDir(d)! <= upTo
  );
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

// ---- reading

/** Reading a checkpoint of ours that fails its checks: the action. */
const OLDER = "use an older checkpoint";

/**
 * Reads and checks a checkpoint (or any HF GPT-2 directory, or an llm.c model file); nothing
 * is written. Each file read is checked against checksums.json where the directory has one,
 * and the weights and the optimizer state must hold no NaN or Infinity. `weightsOnly` reads
 * config.json and model.safetensors alone (what evaluation, sampling, export and `--init`
 * use), so damage elsewhere does not stop them.
 */
export async function loadCheckpoint(
  dir: string,
  options: { weightsOnly?: boolean } = {},
): Promise<LoadedCheckpoint> {
  const kind = await pathKind(dir);
  if (kind === "file" && /\.bin$/i.test(dir)) {
    const ck = await loadLlmcCheckpoint(dir); // an llm.c model file
    checkFinite(ck.model, "the file is damaged: use another checkpoint");
    return ck;
  }
  if (kind !== "directory") {
    throw new Error(
      `Not a checkpoint: ${dir} ${kind === "missing" ? "does not exist" : "is a file"}; give ` +
        "a checkpoint directory (config.json + model.safetensors) or an llm.c .bin file",
    );
  }
  const sums = await readChecksums(dir);
  const path = (name: string) => `${dir}/${name}`;
  const hasTrainer = await exists(path(CHECKPOINT_FILES.trainer));
  const hasOptimizer = await exists(path(CHECKPOINT_FILES.optimizer));
  const ours = sums !== undefined || hasTrainer || hasOptimizer;
  const fix = ours ? OLDER : "use another checkpoint";
  const notices = !sums && ours
    ? [
      `${dir} has no ${CHECKSUMS_FILE} (saved by an older version): damage to its files cannot be detected`,
    ]
    : [];
  const configPath = path(CHECKPOINT_FILES.config);
  if (!(await exists(configPath))) {
    throw new Error(`Not a checkpoint directory: ${configPath} does not exist`);
  }
  const json = await readJson(dir, CHECKPOINT_FILES.config, sums, fix);
  const config = configFromHf(json as Record<string, unknown>, configPath);
  let trainer: TrainerState | undefined;
  if (hasTrainer && !options.weightsOnly) {
    const st = await readTrainerState(dir, sums, fix);
    if (!sums && st.checksums) throw new Error(`${missingChecksums(dir)}; ${OLDER}`);
    trainer = st;
  }
  const model = await readTensors(dir, CHECKPOINT_FILES.model, sums, fix);
  const optimizer = hasOptimizer && !options.weightsOnly
    ? await readTensors(dir, CHECKPOINT_FILES.optimizer, sums, fix)
    : undefined;
  return { dir, config, model, optimizer, trainer, notices };
}

function missingChecksums(dir: string): string {
  return `${dir}/${CHECKSUMS_FILE} is missing but ${CHECKPOINT_FILES.trainer} says the ` +
    "checkpoint was saved with one: the checkpoint is incomplete";
}

async function pathKind(path: string): Promise<"missing" | "file" | "directory"> {
  try {
    return (await Deno.stat(path)).isDirectory ? "directory" : "file";
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
      return "missing";
    }
    throw e;
  }
}

/** The step a `step_N` directory's name says, or undefined for another name. */
export function stepOfDir(dir: string): number | undefined {
  const m = /(?:^|\/)step_(\d+)\/?$/.exec(dir);
  return m ? Number(m[1]) : undefined;
}

/**
 * What keeps `dir` from being resumed, or undefined when nothing does. Reads
 * config.json, trainer_state.json, checksums.json and the two safetensors headers (checked
 * against the file sizes, and by `checkWeights` against the config's shapes), not the
 * tensors themselves: {@linkcode loadCheckpoint} checks those as it reads them.
 */
export async function resumeProblem(
  dir: string,
  checkWeights: WeightsCheck,
): Promise<string | undefined> {
  const notOne = await notACheckpoint(dir);
  if (notOne) return notOne;
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
    const st = await readTrainerState(dir);
    if (!st.config) return `${CHECKPOINT_FILES.trainer} has no run "config"`;
    const sums = await readChecksums(dir);
    if (!sums && st.checksums) return missingChecksums(dir);
    for (const name of sums ? Object.values(CHECKPOINT_FILES) : []) {
      const want = sums!.get(name), path = `${dir}/${name}`;
      if (!want) return `${name} is not listed in ${CHECKSUMS_FILE}`;
      const wrong = sizeProblem(path, (await Deno.stat(path)).size, want);
      if (wrong) return wrong; // a cheap look; the bytes are checked when they are read
    }
  } catch (e) {
    return (e as Error).message;
  }
  return undefined;
}

/**
 * Why `dir` is not a checkpoint directory at all (missing, a file, a run directory, a folder
 * of checkpoints), with what to pass instead; undefined when it may be one.
 */
async function notACheckpoint(dir: string): Promise<string | undefined> {
  const pass = "pass a checkpoint directory (RUN/checkpoints/step_N), or latest for the " +
    "newest intact one in --out";
  const kind = await pathKind(dir);
  if (kind === "missing") return `it does not exist: ${pass}`;
  if (kind === "file") {
    return /\.bin$/i.test(dir)
      ? `it is an llm.c model file, which holds weights only: start a new run from it with --init ${dir}`
      : `it is a file, not a checkpoint directory: ${pass}`;
  }
  if (await exists(`${dir}/${CHECKPOINT_FILES.config}`)) return undefined;
  if ((await listCheckpoints(`${dir}/checkpoints`)).length) {
    return `it is a run directory, not a checkpoint: pass ${dir}/checkpoints/step_N, or ` +
      `latest with --out ${dir}`;
  }
  if ((await listCheckpoints(dir)).length) {
    return `it holds checkpoints but is not one: pass one of them (${dir}/step_N), or latest`;
  }
  return undefined;
}

/**
 * The newest checkpoint under `root` that {@linkcode resumeProblem} and
 * {@linkcode integrityProblem} pass (undefined when none does), with a line for each newer
 * one it skipped and why. It reads the newest checkpoints whole: a checksum that does not
 * match, or NaN weights, make it take the next older one.
 */
export async function latestResumable(
  root: string,
  checkWeights: WeightsCheck,
): Promise<{ dir?: string; skipped: string[] }> {
  const skipped: string[] = [];
  for (const dir of (await listCheckpoints(root)).reverse()) {
    const problem = (await resumeProblem(dir, checkWeights)) ??
      (await integrityProblem(dir, Object.values(CHECKPOINT_FILES)));
    if (problem === undefined) return { dir, skipped };
    skipped.push(`${dir}: ${problem}`);
  }
  return { skipped };
}
