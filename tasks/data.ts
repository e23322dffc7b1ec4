/**
 * `deno task data`: turns text corpora into llm.c token shards. Argument parsing and
 * printing only; the work is in src/data. Run with `--help` for every flag.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ProgressBar } from "../src/data/_progress.ts";
import {
  type BuildProgress,
  buildShards,
  resolveSources,
  selectSubset,
  type SlimPajamaOptions,
  type Source,
} from "../src/data/mod.ts";

/** The --help text; every flag is listed here. */
export const HELP = `Usage: deno task data [SOURCE...] [options]

Streams text into GPT-2 token shards (llm.c format: 1024-byte header, uint16 tokens) plus
manifest.json. SOURCE (also --input/--source, repeatable) is a file, a folder (walked
recursively), a glob (quote it: "data/**/*.jsonl.zst"), an http(s) URL, or "slimpajama".
Formats: .txt (one document per file), .jsonl, .jsonl.gz, .jsonl.zst (one document per line).

Output
  --out DIR              output folder (default out/data/NAME)
  --name NAME            shard prefix: NAME_val_000000.bin, NAME_train_000001.bin, ...
                         (default: the first source's base name, or "slimpajama")
  --shard-tokens N       tokens per shard; accepts 100M, 1e8 (default 100M)
  --val-tokens N         the first N tokens form the validation split (default 32768,
                         llm.c's tinyshakespeare split; use e.g. 10M for large corpora)
  --val-fraction F       instead, send a seeded fraction F of documents to validation
  --val-seed S           seed for --val-fraction (default 0)
  --resume               continue after the last complete shard listed in manifest.json
  --overwrite            delete this NAME's shards and manifest in --out first

Input
  --input, --source SRC  a source, as above (repeatable)
  --text-field NAME      JSONL field holding the text (default "text")
  --strict               fail on a malformed JSON line instead of warning and skipping it
  --subset F             keep a fraction F of the sources (files or SlimPajama chunks)
  --subset-from A        keep the sources whose seeded hash u lies in [A, A+F) (default 0)
  --subset-seed S        seed of that hash (default 0). Membership depends only on the seed
                         and the source's name, so ranges that do not overlap give disjoint
                         sources: "--subset 0.5" then "--subset-from 0.5 --subset 0.3".
  --slimpajama-chunks L  chunk numbers for "slimpajama", e.g. 1-10 or 1,3 (default 1-10)
  --slimpajama-files N   files per chunk, example_train_0..N-1 (default 5912)
  --slimpajama-split S   split folder (default train)
  --slimpajama-base URL  mirror to read SlimPajama from (default the Hugging Face hub)
  --retries N            HTTP retries per connection, with backoff and Range resume; a
                         connection silent for 60 s counts as dropped (default 6)

Run
  --workers N            tokenizer workers (default: all cores)
  --dry-run              print the resolved config and sources, then exit
  --quiet                no progress line
  -h, --help             this text

Environment: HF_TOKEN is sent as a bearer token to huggingface.co (and only there).
Ctrl-C stops cleanly: finished shards and manifest.json stay consistent, the partial shard
is discarded, and --resume continues from there. The output folder is locked (.lock, with
the pid) while a run writes it; a second run into it is refused.
A .gz file may hold several members and a .zst file several frames. A damaged or cut file
stops the run with its compressed byte offset; a damaged one's tokens leave the shards, so
--resume after a fresh download gives what a clean run gives. Invalid UTF-8 is replaced by
U+FFFD and counted per file.`;

/** Parses 100M, 2.5k, 1e8 or 100_000_000 into a non-negative integer. */
export function parseCount(text: string, flag: string): number {
  const m = /^([0-9._]+(?:e[0-9]+)?)([kmb]?)$/i.exec(text.trim());
  const scale = { "": 1, k: 1e3, m: 1e6, b: 1e9 }[(m?.[2] ?? "").toLowerCase()] ?? 1;
  const value = m ? Number(m[1].replaceAll("_", "")) * scale : NaN;
  if (!Number.isFinite(value) || value < 0 || !Number.isInteger(Math.round(value))) {
    throw new TypeError(`Invalid ${flag} ${JSON.stringify(text)}: use a count like 100M or 1e8`);
  }
  return Math.round(value);
}

function parseFraction(text: string, flag: string, allowZero = false): number {
  const v = Number(text);
  if (!Number.isFinite(v) || v < 0 || v > 1 || (!allowZero && v === 0)) {
    throw new RangeError(`Invalid ${flag} ${JSON.stringify(text)}: use a number in (0, 1]`);
  }
  return v;
}

function parseChunks(text: string): number[] {
  const out: number[] = [];
  for (const part of text.split(",")) {
    const [a, b] = part.split("-").map((v) => parseCount(v, "--slimpajama-chunks"));
    for (let c = a; c <= (b ?? a); c++) out.push(c);
  }
  return out;
}

function defaultName(specs: string[]): string {
  const first = specs[0] ?? "data";
  if (first === "slimpajama") return "slimpajama";
  if (/[*?[]/.test(first)) return "data";
  const base = first.replace(/[?#].*$/, "").replace(/\/+$/, "").split("/").pop() ?? "data";
  const stem = base.replace(/\.(jsonl|json|txt)(\.(gz|zst))?$/i, "").replace(/[^A-Za-z0-9_-]/g, "");
  return stem || "data";
}

/** The flags, strictly (an unknown one is an error). */
function parseDataArgs(args: string[]) {
  return parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      input: { type: "string", multiple: true },
      source: { type: "string", multiple: true },
      out: { type: "string" },
      name: { type: "string" },
      "shard-tokens": { type: "string", default: "100M" },
      "val-tokens": { type: "string" },
      "val-fraction": { type: "string" },
      "val-seed": { type: "string", default: "0" },
      resume: { type: "boolean", default: false },
      overwrite: { type: "boolean", default: false },
      "text-field": { type: "string", default: "text" },
      strict: { type: "boolean", default: false },
      subset: { type: "string" },
      "subset-from": { type: "string", default: "0" },
      "subset-seed": { type: "string", default: "0" },
      "slimpajama-chunks": { type: "string", default: "1-10" },
      "slimpajama-files": { type: "string", default: "5912" },
      "slimpajama-split": { type: "string", default: "train" },
      "slimpajama-base": { type: "string" },
      retries: { type: "string", default: "6" },
      workers: { type: "string" },
      "dry-run": { type: "boolean", default: false },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
}

/** Runs the CLI with `args`; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseDataArgs(args);
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const plan = await planBuild(values, positionals);
  console.log(`data: config ${JSON.stringify(plan.config)}`);
  if (values["dry-run"]) {
    for (const s of plan.sources) console.log(s.location);
    return 0;
  }
  return await runBuild(values, plan);
}

type DataValues = ReturnType<typeof parseDataArgs>["values"];

/** The build's sources and settings from the flags (resolved and checked, nothing written). */
async function planBuild(values: DataValues, positionals: string[]) {
  const specs = [...positionals, ...(values.input ?? []), ...(values.source ?? [])];
  if (specs.length === 0) {
    throw new TypeError(
      "No sources given: pass a file, folder, glob, URL or slimpajama; see --help",
    );
  }
  if (values["val-tokens"] !== undefined && values["val-fraction"] !== undefined) {
    throw new TypeError("Conflicting flags: use either --val-tokens or --val-fraction, not both");
  }
  const slimpajama: SlimPajamaOptions = {
    chunks: parseChunks(values["slimpajama-chunks"]),
    filesPerChunk: parseCount(values["slimpajama-files"], "--slimpajama-files"),
    split: values["slimpajama-split"],
    base: values["slimpajama-base"],
  };
  let sources: Source[] = await resolveSources(specs, {
    slimpajama,
    onWarning: (m) => console.error(`warning: ${m}`),
  });
  const subset = values.subset === undefined ? null : {
    fraction: parseFraction(values.subset, "--subset"),
    from: parseFraction(values["subset-from"], "--subset-from", true),
    seed: parseCount(values["subset-seed"], "--subset-seed"),
  };
  const all = sources.length;
  if (subset) sources = selectSubset(sources, subset);
  if (sources.length === 0) {
    throw new RangeError(`The subset keeps none of the ${all} sources: raise --subset`);
  }
  const name = values.name ?? defaultName(specs);
  const val = values["val-fraction"] !== undefined
    ? {
      fraction: parseFraction(values["val-fraction"], "--val-fraction", true),
      seed: parseCount(values["val-seed"], "--val-seed"),
    }
    : { tokens: parseCount(values["val-tokens"] ?? "32768", "--val-tokens") };
  const workers = values.workers === undefined
    ? navigator.hardwareConcurrency
    : parseCount(values.workers, "--workers");
  const config = {
    sources: sources.length,
    of: all,
    first: sources.slice(0, 3).map((s) => s.location),
    out: values.out ?? `out/data/${name}`,
    name,
    shardTokens: parseCount(values["shard-tokens"], "--shard-tokens"),
    val,
    textField: values["text-field"],
    subset,
    workers,
    strict: values.strict,
    resume: values.resume,
    hfToken: Deno.env.get("HF_TOKEN") ? "set" : "unset",
  };
  const outInfo = await Deno.stat(config.out).catch(() => undefined);
  if (outInfo && !outInfo.isDirectory) {
    throw new TypeError(
      `--out ${config.out} is a file, not a folder: give a folder for the shards`,
    );
  }
  return { sources, config, val, subset, workers, name };
}

/** Builds the shards with a progress bar; Ctrl-C stops after the shard under way. */
async function runBuild(
  values: DataValues,
  plan: Awaited<ReturnType<typeof planBuild>>,
): Promise<number> {
  const { sources, config, val, subset, workers, name } = plan;
  const controller = new AbortController();
  const onSigint = () => {
    if (controller.signal.aborted) Deno.exit(130);
    console.error("\ndata: stopping; finished shards are kept, run again with --resume");
    controller.abort();
  };
  Deno.addSignalListener("SIGINT", onSigint);
  const bar = values.quiet ? undefined : new ProgressBar();
  let last: BuildProgress | undefined;
  try {
    const result = await buildShards({
      sources,
      outDir: config.out,
      name,
      shardTokens: config.shardTokens,
      val,
      textField: config.textField,
      workers,
      strict: values.strict,
      resume: values.resume,
      overwrite: values.overwrite,
      subset,
      http: {
        retries: parseCount(values.retries, "--retries"),
        hfToken: Deno.env.get("HF_TOKEN"),
        onRetry: (m) => console.error(`\ndata: ${m}`),
      },
      signal: controller.signal,
      onProgress: (p) => {
        last = p;
        bar?.update(p);
      },
      onWarning: (m) => console.error(`\nwarning: ${m}`),
    });
    bar?.done(last);
    const t = result.manifest.totals;
    const rate = result.seconds > 0 ? result.textBytes / result.seconds / 1e6 : 0;
    console.log(
      `data: ${result.aborted ? "stopped" : "done"}: ${t.trainTokens} train + ${t.valTokens} ` +
        `val tokens, ${t.documents} documents, ${result.manifest.shards.length} shards in ` +
        `${config.out}; this run ${result.tokens} tokens in ${result.seconds.toFixed(1)} s ` +
        `(${rate.toFixed(1)} MB/s)`,
    );
    if (!result.aborted && t.trainTokens + t.valTokens <= t.documents) {
      console.error(
        `warning: the sources hold no text (${t.documents} empty documents): check the inputs`,
      );
    } else if (!result.aborted && t.trainTokens === 0) {
      console.error("warning: every token went to validation: lower --val-tokens");
    }
    return result.aborted ? 130 : 0;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
