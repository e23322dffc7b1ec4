/**
 * Hugging Face GPT-2's config.json, to and from GPT2Config. The tensors' names and shapes
 * (Conv1D weights [in, out], no vocabulary padding) are the weights' business:
 * src/model/weights.ts.
 *
 * @module
 */

import { type GPT2Config, validateConfig } from "../model/config.ts";

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
    // nanoGPT's bias=False (the file's biases are zero); GPT-2 readers ignore the key.
    ...cfg.bias === false && { bias: false },
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
      ...json.bias === false && { bias: false },
    });
  } catch (e) {
    throw new Error(`Invalid ${path}: ${(e as Error).message}`);
  }
}
