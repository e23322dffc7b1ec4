/**
 * The settings of `deno task export`: one table (src/table.ts rows) from which its flags and
 * `--help` come.
 *
 * @module
 */

import type { ConfigTable } from "../table.ts";

/** What `deno task export` takes besides the checkpoint: one of `llmc` or `hf`. */
export interface ExportConfig {
  /** Write an llm.c model file here. */
  llmc?: string;
  /** Write a Hugging Face directory here. */
  hf?: string;
  /** fp32, fp16 (Hugging Face only) or bf16. */
  dtype: string;
}

/** The export table. */
export const EXPORT_CONFIG: ConfigTable<ExportConfig> = {
  llmc: {
    flag: "llmc",
    kind: "string",
    default: undefined,
    arg: "OUT.bin",
    help: "an llm.c model file (llm.c's train_gpt2 loads it; --dtype fp32 or bf16)",
  },
  hf: {
    flag: "hf",
    kind: "string",
    default: undefined,
    arg: "OUT_DIR",
    help: "a Hugging Face directory: model.safetensors, config.json, generation_config.json, " +
      "vocab.json, merges.txt and tokenizer configs (--dtype fp32, fp16 or bf16)",
  },
  dtype: {
    flag: "dtype",
    kind: "string",
    default: "fp32",
    arg: "D",
    help: "fp32, fp16 or bf16",
  },
};
