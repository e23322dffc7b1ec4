/**
 * Opening any GPT-2 checkpoint directory (ours or Hugging Face's) as a model
 * for evaluation or sampling.
 *
 * @module
 */

import type { Runtime } from "../gpu/runtime.ts";
import { GPT2 } from "../model/gpt2.ts";
import type { MatmulOptions } from "../model/ops/matmul.ts";
import type { Precision } from "../model/plan.ts";
import { loadCheckpoint } from "../io/checkpoint.ts";
import { loadTensors } from "../model/weights.ts";

/**
 * A forward-only model of shape (B, T) holding the checkpoint's weights
 * (`precision` fp16 runs it in mixed precision where the adapter can). Only config.json and
 * model.safetensors are read, checked against the checkpoint's checksums and for NaN or
 * Infinity; `notice` hears what the user should know (a checkpoint without checksums).
 */
export async function openCheckpointModel(
  rt: Runtime,
  dir: string,
  shape: { B: number; T: number; precision?: Precision; notice?: (line: string) => void },
  mm: MatmulOptions = {},
): Promise<GPT2> {
  const ck = await loadCheckpoint(dir, { weightsOnly: true });
  for (const line of ck.notices ?? []) shape.notice?.(line);
  const T = Math.min(shape.T, ck.config.nCtx);
  const model = await GPT2.create(rt, ck.config, {
    B: shape.B,
    T,
    seed: null,
    inference: true,
    matmul: mm,
    precision: shape.precision,
  });
  try {
    loadTensors(ck.model, model);
  } catch (e) {
    model.destroy();
    throw e;
  }
  return model;
}
