/**
 * Hugging Face GPT-2 interop: config.json (GPT2Config fields) and the mapping
 * between our flat parameters and model.safetensors (Conv1D weights [in, out],
 * no vocabulary padding, with or without a `transformer.` prefix).
 *
 * @module
 */

import { type GPT2Config, validateConfig } from "../model/config.ts";
import { parameterLayout } from "../model/params.ts";
import type { GPT2 } from "../model/gpt2.ts";
import {
  encodeSafetensors,
  type SafeDtype,
  SafeTensorsError,
  type SafeTensorsFile,
  tensorF32,
  type TensorToWrite,
} from "./safetensors.ts";

/** config.json as transformers writes it for GPT-2. */
export function hfConfigJson(cfg: GPT2Config): Record<string, unknown> {
  return {
    architectures: ["GPT2LMHeadModel"],
    model_type: "gpt2",
    activation_function: "gelu_new",
    n_layer: cfg.nLayer,
    n_head: cfg.nHead,
    n_embd: cfg.nEmbd,
    n_positions: cfg.nCtx,
    n_ctx: cfg.nCtx,
    vocab_size: cfg.vocabSize,
    layer_norm_epsilon: 1e-5,
    initializer_range: 0.02,
    resid_pdrop: 0.0,
    embd_pdrop: 0.0,
    attn_pdrop: 0.0,
    bos_token_id: 50256,
    eos_token_id: 50256,
    tie_word_embeddings: true,
    torch_dtype: "float32",
  };
}

/** Reads a GPT2Config from a parsed config.json, naming the file on bad values. */
export function configFromHf(json: Record<string, unknown>, path: string): GPT2Config {
  const num = (k: string, fallback?: string) => {
    const v = json[k] ?? (fallback ? json[fallback] : undefined);
    if (typeof v !== "number") {
      throw new Error(
        `Invalid ${path}: "${k}" is missing or not a number; is this a GPT-2 config?`,
      );
    }
    return v;
  };
  if (json.model_type !== undefined && json.model_type !== "gpt2") {
    throw new Error(
      `Invalid ${path}: model_type is "${json.model_type}", only "gpt2" is supported`,
    );
  }
  try {
    return validateConfig({
      nLayer: num("n_layer"),
      nHead: num("n_head"),
      nEmbd: num("n_embd"),
      nCtx: num("n_positions", "n_ctx"),
      vocabSize: num("vocab_size"),
    });
  } catch (e) {
    throw new Error(`Invalid ${path}: ${(e as Error).message}`);
  }
}

/** A parameter's shape in Hugging Face files: its own, except wte without padding rows. */
export function hfShape(t: { name: string; shape: number[] }, cfg: GPT2Config): number[] {
  return t.name === "wte.weight" ? [cfg.vocabSize, cfg.nEmbd] : t.shape;
}

/** The model's parameters as Hugging Face tensors (wte without padding rows). */
export async function exportTensors(model: GPT2): Promise<TensorToWrite[]> {
  const out: TensorToWrite[] = [];
  for (const t of model.layout.tensors) {
    out.push({
      name: t.name,
      shape: hfShape(t, model.config),
      data: await model.readTensor(t.name),
    });
  }
  return out;
}

/** model.safetensors bytes for the model (F32 by default). */
export async function encodeModel(
  model: GPT2,
  dtype: SafeDtype = "F32",
): Promise<Uint8Array<ArrayBuffer>> {
  return encodeSafetensors(await exportTensors(model), { dtype, metadata: { format: "pt" } });
}

/**
 * Checks that a file holds every parameter of `cfg` with the right shape, and
 * returns the key each parameter has in the file. Reads nothing else.
 */
export function matchTensors(file: SafeTensorsFile, cfg: GPT2Config): Map<string, string> {
  const keys = new Map<string, string>();
  for (const t of parameterLayout(cfg).tensors) {
    const key = file.tensors.has(t.name)
      ? t.name
      : file.tensors.has(`transformer.${t.name}`)
      ? `transformer.${t.name}`
      : undefined;
    if (!key) {
      throw new SafeTensorsError(
        file.path,
        `missing tensor "${t.name}" (nor "transformer.${t.name}"): not a GPT-2 checkpoint of ` +
          "this size",
      );
    }
    const want = hfShape(t, cfg);
    const got = file.tensors.get(key)!.shape;
    if (got.join(",") !== want.join(",")) {
      throw new SafeTensorsError(
        file.path,
        `tensor "${key}" has shape [${got}], the model needs [${want}]: check that config.json ` +
          "matches the weights",
      );
    }
    keys.set(t.name, key);
  }
  return keys;
}

/** Loads every parameter from a parsed model.safetensors into the model (checked first). */
export function loadTensors(file: SafeTensorsFile, model: GPT2): void {
  const keys = matchTensors(file, model.config); // all checks before any write
  for (const [name, key] of keys) model.writeTensor(name, tensorF32(file, key));
}
