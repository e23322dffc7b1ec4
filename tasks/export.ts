/**
 * `deno task export CHECKPOINT (--llmc OUT.bin | --hf OUT_DIR) [--dtype D]`:
 * writes a checkpoint (ours, a Hugging Face directory, or an llm.c .bin) as an
 * llm.c model file, or as a Hugging Face directory that transformers'
 * `from_pretrained` loads as is (weights, config, generation config and the
 * GPT-2 tokenizer files). Outputs are written under a temporary name and
 * renamed into place; an existing output is refused.
 *
 * @module
 */

import { loadCheckpoint } from "../src/io/checkpoint.ts";
import { hfConfigJson } from "../src/io/hf.ts";
import { hfShape, matchTensors } from "../src/model/weights.ts";
import { gpt2TokenizerFiles } from "../src/io/hf_tokenizer.ts";
import { encodeLlmc } from "../src/io/llmc.ts";
import { encodeSafetensors, type SafeDtype, tensorF32 } from "../src/io/safetensors.ts";
import { parameterLayout } from "../src/model/params.ts";
import { parseCheckpointArgs, runMain } from "./_cli.ts";

const HELP = `Usage: deno task export CHECKPOINT (--llmc OUT.bin | --hf OUT_DIR) [--dtype D]

CHECKPOINT is a checkpoint directory of ours, a Hugging Face GPT-2 directory, or an llm.c .bin.
  --llmc OUT.bin   an llm.c model file (llm.c's train_gpt2 loads it; --dtype fp32 or bf16)
  --hf OUT_DIR     a Hugging Face directory: model.safetensors, config.json,
                   generation_config.json, vocab.json, merges.txt and tokenizer configs
                   (--dtype fp32, fp16 or bf16)
  --dtype D        fp32 (default), fp16 or bf16
  -h, --help       this text`;

const DTYPES: Record<string, SafeDtype> = { fp32: "F32", fp16: "F16", bf16: "BF16" };
const TORCH: Record<SafeDtype, string> = { F32: "float32", F16: "float16", BF16: "bfloat16" };

async function refuseExisting(path: string): Promise<void> {
  if (await Deno.stat(path).then(() => true, () => false)) {
    throw new Error(`${path} already exists: remove it or choose another output`);
  }
}

/** Runs the export; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const args = parseCheckpointArgs(argv, "export", { strings: ["llmc", "hf", "dtype"] });
  if (args === "help") {
    console.log(HELP);
    return 0;
  }
  const { v, dir } = args;
  const llmc = v.llmc as string | undefined, hf = v.hf as string | undefined;
  if ((llmc === undefined) === (hf === undefined)) {
    throw new TypeError("Give one of --llmc OUT.bin or --hf OUT_DIR: see deno task export --help");
  }
  const dtype = String(v.dtype ?? "fp32");
  if (!DTYPES[dtype] || (llmc !== undefined && dtype === "fp16")) {
    throw new TypeError(
      `--dtype must be ${llmc !== undefined ? "fp32 or bf16 for llm.c" : "fp32, fp16 or bf16"}, ` +
        `got "${dtype}"`,
    );
  }
  const out = (llmc ?? hf)!;
  await refuseExisting(out);
  const ck = await loadCheckpoint(dir, { weightsOnly: true });
  for (const line of ck.notices ?? []) console.error(`notice: ${line}`);
  const keys = matchTensors(ck.model, ck.config);
  const tensor = (name: string) => tensorF32(ck.model, keys.get(name)!);
  const tmp = `${out}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    if (llmc !== undefined) {
      await Deno.writeFile(tmp, encodeLlmc(ck.config, tensor, { dtype: dtype as "fp32" | "bf16" }));
    } else {
      await Deno.mkdir(tmp, { recursive: true });
      const tensors = parameterLayout(ck.config).tensors.map((t) => ({
        name: t.name,
        shape: hfShape(t, ck.config),
        data: tensor(t.name),
      }));
      const sd = DTYPES[dtype];
      await Deno.writeFile(
        `${tmp}/model.safetensors`,
        encodeSafetensors(tensors, { dtype: sd, metadata: { format: "pt" } }),
      );
      const config = { ...hfConfigJson(ck.config), torch_dtype: TORCH[sd] };
      const generation = { _from_model_config: true, bos_token_id: 50256, eos_token_id: 50256 };
      const files: Record<string, string> = {
        "config.json": JSON.stringify(config, null, 2) + "\n",
        "generation_config.json": JSON.stringify(generation, null, 2) + "\n",
        // GPT-2's tokenizer only fits a model with its vocabulary (not the test model tiny).
        ...(ck.config.vocabSize === 50257 ? gpt2TokenizerFiles(ck.config.nCtx) : {}),
      };
      for (const [name, text] of Object.entries(files)) {
        await Deno.writeTextFile(`${tmp}/${name}`, text);
      }
    }
    await Deno.rename(tmp, out);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  console.log(
    `export: ${dir} -> ${out} (${llmc !== undefined ? "llm.c" : "Hugging Face"}, ${dtype})`,
  );
  return 0;
}

if (import.meta.main) await runMain(main);
