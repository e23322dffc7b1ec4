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
import {
  encodeSafetensors,
  readSafetensors,
  type SafeTensorsFile,
  type TensorToWrite,
} from "./safetensors.ts";

/** Files of a checkpoint directory. */
export const CHECKPOINT_FILES = {
  model: "model.safetensors",
  config: "config.json",
  optimizer: "optimizer.safetensors",
  trainer: "trainer_state.json",
} as const;

/** What a saved checkpoint holds, parsed and checked. */
export interface LoadedCheckpoint {
  dir: string;
  config: GPT2Config;
  model: SafeTensorsFile;
  optimizer?: SafeTensorsFile;
  trainer?: Record<string, unknown>;
}

/** Directory name of step `n` (sorts by step). */
export function stepDirName(step: number): string {
  return `step_${String(step).padStart(8, "0")}`;
}

/**
 * Writes a checkpoint atomically as `<root>/step_N` and removes all but the
 * newest `keep` checkpoints. Returns the final directory.
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
  keep = 3,
): Promise<string> {
  await Deno.mkdir(root, { recursive: true });
  const final = `${root}/${stepDirName(step)}`;
  const tmp = `${root}/.tmp-${stepDirName(step)}-${crypto.randomUUID().slice(0, 8)}`;
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
        JSON.stringify(contents.trainer, null, 2) + "\n",
      );
    }
    await Deno.remove(final, { recursive: true }).catch(() => {});
    await Deno.rename(tmp, final);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  const all = await listCheckpoints(root);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) {
    await Deno.remove(old, { recursive: true });
  }
  return final;
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

/** Reads and checks a checkpoint (or any HF GPT-2 directory); nothing is written. */
export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
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
  const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
  const optPath = `${dir}/${CHECKPOINT_FILES.optimizer}`;
  const optimizer = (await exists(optPath)) ? await readSafetensors(optPath) : undefined;
  const trainerPath = `${dir}/${CHECKPOINT_FILES.trainer}`;
  let trainer: Record<string, unknown> | undefined;
  if (await exists(trainerPath)) {
    try {
      trainer = JSON.parse(await Deno.readTextFile(trainerPath));
    } catch (e) {
      throw new Error(`Invalid ${trainerPath}: ${(e as Error).message}; the checkpoint is damaged`);
    }
  }
  return { dir, config, model, optimizer, trainer };
}
