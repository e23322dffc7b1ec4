/**
 * `deno task export CHECKPOINT (--llmc OUT.bin | --hf OUT_DIR) [--dtype D]`:
 * writes a checkpoint (ours, a Hugging Face directory, or an llm.c .bin) as an
 * llm.c model file, or as a Hugging Face directory that transformers'
 * `from_pretrained` loads as is (weights, config, generation config and the
 * GPT-2 tokenizer files). Outputs are written under a temporary name
 * (`OUT.tmp-HOST-PID-RANDOM`) and renamed into place; an existing output is refused. A
 * failed or interrupted (Ctrl-C) export removes its temporary output, and a later export to
 * the same OUT removes those of exports on this machine whose process is gone.
 *
 * @module
 */

import { loadCheckpoint, type LoadedCheckpoint } from "../src/io/checkpoint.ts";
import { hfConfigJson } from "../src/io/hf.ts";
import { fileTensors } from "../src/model/weights.ts";
import { gpt2TokenizerFiles } from "../src/io/hf_tokenizer.ts";
import { encodeLlmc } from "../src/io/llmc.ts";
import { encodeSafetensors, type SafeDtype } from "../src/io/safetensors.ts";
import { processAlive } from "../src/dir_lock.ts";
import { flagHelp, parseCheckpointArgs, runMain, tableFlags } from "./_cli.ts";
import { EXPORT_CONFIG } from "../src/io/export_config.ts";
import { basename, dirname, join } from "node:path";

const HELP = `Usage: deno task export CHECKPOINT (--llmc OUT.bin | --hf OUT_DIR) [--dtype D]

CHECKPOINT is a checkpoint directory of ours, a Hugging Face GPT-2 directory, or an llm.c .bin.
${flagHelp(tableFlags(EXPORT_CONFIG))}
  -h, --help            this text`;

const DTYPES: Record<string, SafeDtype> = { fp32: "F32", fp16: "F16", bf16: "BF16" };
const TORCH: Record<SafeDtype, string> = { F32: "float32", F16: "float16", BF16: "bfloat16" };

async function refuseExisting(path: string): Promise<void> {
  if (await Deno.stat(path).then(() => true, () => false)) {
    throw new Error(`${path} already exists: remove it or choose another output`);
  }
}

/** This machine in a temporary name (what a hostname may hold, nothing else). */
const host = () => Deno.hostname().replace(/[^A-Za-z0-9.-]/g, "_");

/**
 * Removes the temporary outputs of `out` that an export on this machine left when it died
 * (`OUT.tmp-HOST-PID-RANDOM` whose process is gone), saying so; of those it cannot judge
 * (another machine's, or an older version's `OUT.tmp-RANDOM`) it says they may be left over.
 * Names of any other form are never touched.
 */
async function removeStaleTemps(out: string): Promise<void> {
  const dir = dirname(out), base = basename(out).replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const ours = new RegExp(`^${base}\\.tmp-(?:(.+)-(\\d+)-)?[0-9a-f]{8}$`);
  const entries: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) entries.push(e.name);
  } catch {
    return; // no such folder: nothing was left there, and the export will say why it fails
  }
  for (const name of entries) {
    const m = ours.exec(name);
    if (!m) continue;
    const [, from, pid] = m, path = join(dir, name);
    const elsewhere = from !== undefined && from !== host();
    const alive = pid === undefined ? undefined : processAlive(Number(pid));
    if (elsewhere || alive === undefined) {
      console.error(
        `export: ${path} may be left by an interrupted export` +
          (elsewhere ? ` on ${from}` : "") + ": remove it if no export is running",
      );
    } else if (!alive) {
      await Deno.remove(path, { recursive: true });
      console.error(
        `export: removed ${path}, left by an interrupted export (process ${pid} is gone)`,
      );
    }
  }
}

/**
 * Writes the export of `ck` at `tmp` (a file for llm.c, a directory for Hugging Face); `step`
 * awaits each write (and throws when the export is to stop).
 */
async function writeExport(
  tmp: string,
  ck: LoadedCheckpoint,
  as: { llmc: boolean; dtype: string },
  step: <T>(write: Promise<T>) => Promise<T>,
): Promise<void> {
  const tensors = fileTensors(ck.model, ck.config);
  const byName = new Map(tensors.map((t) => [t.name, t.data]));
  const tensor = (name: string) => byName.get(name)!;
  if (as.llmc) {
    const dtype = as.dtype as "fp32" | "bf16";
    await step(Deno.writeFile(tmp, encodeLlmc(ck.config, tensor, { dtype })));
    return;
  }
  await step(Deno.mkdir(tmp, { recursive: true }));
  const sd = DTYPES[as.dtype];
  await step(Deno.writeFile(
    `${tmp}/model.safetensors`,
    encodeSafetensors(tensors, { dtype: sd, metadata: { format: "pt" } }),
  ));
  const config = { ...hfConfigJson(ck.config), torch_dtype: TORCH[sd] };
  const generation = { _from_model_config: true, bos_token_id: 50256, eos_token_id: 50256 };
  const files: Record<string, string> = {
    "config.json": JSON.stringify(config, null, 2) + "\n",
    "generation_config.json": JSON.stringify(generation, null, 2) + "\n",
    // GPT-2's tokenizer only fits a model with its vocabulary (not the test model tiny).
    ...(ck.config.vocabSize === 50257 ? gpt2TokenizerFiles(ck.config.nCtx) : {}),
  };
  for (const [name, text] of Object.entries(files)) {
    await step(Deno.writeTextFile(`${tmp}/${name}`, text));
  }
}

/** Runs the export; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const args = parseCheckpointArgs(argv, "export", EXPORT_CONFIG);
  if (args === "help") {
    console.log(HELP);
    return 0;
  }
  const { config: { llmc, hf, dtype }, dir } = args;
  if ((llmc === undefined) === (hf === undefined)) {
    throw new TypeError("Give one of --llmc OUT.bin or --hf OUT_DIR: see deno task export --help");
  }
  if (!DTYPES[dtype] || (llmc !== undefined && dtype === "fp16")) {
    throw new TypeError(
      `--dtype must be ${llmc !== undefined ? "fp32 or bf16 for llm.c" : "fp32, fp16 or bf16"}, ` +
        `got "${dtype}"`,
    );
  }
  const out = (llmc ?? hf)!;
  await refuseExisting(out);
  await removeStaleTemps(out);
  const ck = await loadCheckpoint(dir, { weightsOnly: true });
  for (const line of ck.notices ?? []) console.error(`notice: ${line}`);
  const tmp = `${out}.tmp-${host()}-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  // Ctrl-C stops the export after the write under way and removes what was written; a second
  // one stops at once. (The CLI owns the process: the library never sees a signal.)
  const STOP = new Error("interrupted");
  let stop = false;
  const onSignal = () => {
    if (stop) {
      console.error(`export: stopped; ${tmp} is left: the next export to ${out} removes it`);
      Deno.exit(130);
    }
    stop = true;
  };
  const step = async <T>(write: Promise<T>): Promise<T> => {
    const done = await write;
    if (stop) throw STOP;
    return done;
  };
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const sig of signals) Deno.addSignalListener(sig, onSignal);
  try {
    await writeExport(tmp, ck, { llmc: llmc !== undefined, dtype }, step);
    await Deno.rename(tmp, out); // complete: a Ctrl-C from here on changes nothing
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (e !== STOP) throw e;
    console.error(`export: interrupted; nothing was written to ${out}`);
    return 130;
  } finally {
    for (const sig of signals) Deno.removeSignalListener(sig, onSignal);
  }
  console.log(
    `export: ${dir} -> ${out} (${llmc !== undefined ? "llm.c" : "Hugging Face"}, ${dtype})`,
  );
  return 0;
}

if (import.meta.main) await runMain(main);
