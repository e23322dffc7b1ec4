/**
 * A run's checkpoints: the typed trainer state of a step (what a resume needs), written with
 * the weights and the optimizer state by src/io/checkpoint.ts, and a save failure turned into
 * what is safe and what to do. Every rank calls {@linkcode saveStep} at the same step (ZeRO-1
 * gathers the optimizer state on rank 0); only rank 0 writes.
 *
 * @module
 */

import type { LoaderCursor } from "../data/loader.ts";
import { encodeModel } from "../model/weights.ts";
import {
  listCheckpoints,
  saveCheckpoint,
  stepDirName,
  type TrainerStateFields,
} from "../io/checkpoint.ts";
import type { TrainConfig } from "./config.ts";
import type { RunSetup } from "./run_setup.ts";

/** Where and what a run saves. */
export interface SaveTarget {
  /** The run's settings, saved as the base of a resume. */
  config: TrainConfig;
  /** The run's parts (weights, optimizer, scaler, loader, schedule). */
  run: RunSetup;
  /** The checkpoints folder (RUN/checkpoints). */
  root: string;
  /** This rank writes (rank 0). */
  lead: boolean;
}

/** What trainer_state.json holds after `step` (the loader at `cursor`). */
export function trainerState(
  t: SaveTarget,
  step: number,
  cursor: LoaderCursor,
  valLoss?: number,
): TrainerStateFields {
  const { config: c, run } = t;
  const { notices: _notices, ...settings } = c;
  return {
    step,
    optimizer_steps: run.step.optimizerSteps,
    loss_scale: run.scaler?.scale,
    loss_scale_good_steps: run.scaler?.goodSteps,
    tokens: step * c.totalBatch,
    data: run.data.dir,
    cursor,
    seed: c.seed,
    schedule: run.schedule,
    config: { ...settings, model: run.cfg },
    val_loss: valLoss,
    time: new Date().toISOString(),
  };
}

/**
 * Saves step `step` as RUN/checkpoints/step_N (all but the newest `keep` go when it is
 * given) and returns its directory; a failure is an Error that says what is safe.
 */
export async function saveStep(
  t: SaveTarget,
  step: number,
  options: { valLoss?: number; keep?: number; cursor?: LoaderCursor } = {},
): Promise<string> {
  const { run, root } = t;
  const cursor = options.cursor ?? run.loader.cursor;
  const state = run.dp
    ? await run.dp.gatherState(() => run.opt.readState())
    : await run.opt.readState();
  if (!t.lead) return `${root}/${stepDirName(step)}`; // rank 0 writes it
  try {
    return await saveCheckpoint(root, step, {
      config: run.cfg,
      model: await encodeModel(run.model),
      optimizer: state!,
      trainer: trainerState(t, step, cursor, options.valLoss),
    }, options.keep);
  } catch (e) {
    throw new Error(saveFailure(step, root, e, await listCheckpoints(root)));
  }
}

/** Why a checkpoint could not be written, what is safe, and what to do. */
function saveFailure(step: number, root: string, e: unknown, complete: string[]): string {
  const err = e as Error & { code?: string };
  const reason = e instanceof Deno.errors.PermissionDenied
    ? "permission denied: choose a writable --out"
    : err.code === "ENOSPC" || /No space left/i.test(err.message)
    ? "the disk is full: free some space"
    : `${err.message}`;
  const last = complete[complete.length - 1];
  return `Cannot write the checkpoint of step ${step} under ${root}: ${reason}. Nothing partial ` +
    "was left. " +
    (last
      ? `The last complete checkpoint is ${last}: continue from it with --resume latest`
      : "No earlier checkpoint exists");
}
