/**
 * File formats: checkpoint directories (atomic, versioned, checksummed), Hugging Face
 * safetensors and config.json, GPT-2's tokenizer files, and llm.c model files.
 *
 * @example
 * ```ts
 * import { listCheckpoints, loadCheckpoint } from "@webgpu-gpt2/core/io";
 *
 * const dirs = await listCheckpoints("runs/gpt2-mini/checkpoints");
 * const ck = await loadCheckpoint(dirs[dirs.length - 1]);
 * console.log(ck.config, ck.trainer?.step);
 * ```
 *
 * @module
 */

export {
  CHECKPOINT_FILES,
  latestResumable,
  listCheckpoints,
  loadCheckpoint,
  type LoadedCheckpoint,
  readTrainerState,
  resumeProblem,
  saveCheckpoint,
  stepDirName,
  TRAINER_STATE_VERSION,
  type TrainerState,
  type TrainerStateFields,
  type WeightsCheck,
} from "./checkpoint.ts";
export { configFromHf, hfConfigJson } from "./hf.ts";
export { type Checksums, CHECKSUMS_FILE, type FileChecksum } from "./integrity.ts";
export { gpt2TokenizerFiles } from "./hf_tokenizer.ts";
export { decodeLlmc, encodeLlmc, LLMC_MAGIC, type LlmcModel, loadLlmcCheckpoint } from "./llmc.ts";
export {
  encodeSafetensors,
  parseSafetensors,
  readSafetensors,
  type SafeDtype,
  type SafeTensorInfo,
  SafeTensorsError,
  type SafeTensorsFile,
  tensorF32,
  type TensorToWrite,
} from "./safetensors.ts";
export { EXPORT_CONFIG, type ExportConfig } from "./export_config.ts";
