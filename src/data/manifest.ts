/**
 * `manifest.json`: what a shard folder holds and how it was made. It is rewritten (through a
 * temporary file and a rename) after every completed shard, so it always agrees with the
 * shards on disk; `--resume` reads each shard's `end` position to know where to continue.
 *
 * @module
 */
import { TEMP_SUFFIX } from "./shard.ts";
import { EOT } from "./tokenizer.ts";

/** A place in the input: token `offset` of unit `unit` (line or text chunk) of source `source`. */
export interface StreamPosition {
  /** Index of the source. */
  source: number;
  /** Line or text chunk of that source. */
  unit: number;
  /** Token in that unit. */
  offset: number;
}

/** One completed shard. */
export interface ManifestShard {
  /** File name in the folder. */
  file: string;
  /** The split it belongs to. */
  split: "train" | "val";
  /** Its place in the split, from 0. */
  index: number;
  /** Tokens it holds. */
  tokens: number;
  /** Documents that start in this shard (its EOT count). */
  documents: number;
  /** SHA-256 of the whole file. */
  sha256: string;
  /** The first input token not in this split up to and including this shard. */
  end: StreamPosition;
  /** Malformed lines skipped before `end`. */
  malformed: number;
  /** Invalid UTF-8 sequences replaced by U+FFFD before `end` (absent in older manifests). */
  invalidUtf8?: number;
}

/** The settings that must match for `--resume` to continue a folder. */
export interface ManifestConfig {
  /** Shard name prefix. */
  name: string;
  /** The sources, in order. */
  sources: { key: string; location: string }[];
  /** The subset of sources kept, if any. */
  subset: { fraction: number; from: number; seed: number } | null;
  /** Tokens per shard. */
  shardTokens: number;
  /** The validation split, if any. */
  val: { tokens: number } | { fraction: number; seed: number } | null;
  /** JSONL field with the text. */
  textField: string;
}

/** The whole manifest. */
export interface Manifest {
  /** The format's name. */
  format: "llm.c-shards";
  /** The format's version. */
  version: 1;
  /** The tokenizer of the tokens. */
  tokenizer: "gpt2";
  /** The end-of-text token that separates documents. */
  eot: number;
  /** The settings a resumed build must match. */
  config: ManifestConfig;
  /** The completed shards, in order. */
  shards: ManifestShard[];
  /** Sums over the shards. */
  totals: {
    /** Tokens in the train split. */
    trainTokens: number;
    /** Tokens in the validation split. */
    valTokens: number;
    /** Documents. */
    documents: number;
    /** Malformed lines skipped. */
    malformed: number;
    /** Invalid UTF-8 sequences replaced by U+FFFD (absent in older manifests). */
    invalidUtf8?: number;
  };
  /** True once every source was read to the end. */
  complete: boolean;
}

/** File name of the manifest inside an output folder. */
export const MANIFEST_FILE = "manifest.json";

/**
 * Reads `dir/manifest.json`, or returns undefined when there is none.
 *
 * @example
 * ```ts
 * const m = await readManifest("out/shakespeare");
 * console.log(m?.totals.trainTokens);
 * ```
 */
export async function readManifest(dir: string): Promise<Manifest | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${dir}/${MANIFEST_FILE}`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  const m = JSON.parse(text) as Manifest;
  if (m.format !== "llm.c-shards" || m.version !== 1) {
    throw new TypeError(
      `Cannot read ${dir}/${MANIFEST_FILE}: unknown format or version; rebuild the folder`,
    );
  }
  return m;
}

/** Writes the manifest atomically (temporary file, then rename). */
export async function writeManifest(dir: string, manifest: Manifest): Promise<void> {
  const path = `${dir}/${MANIFEST_FILE}`;
  await Deno.writeTextFile(path + ".tmp", JSON.stringify(manifest, null, 1) + "\n");
  await Deno.rename(path + ".tmp", path);
}

/** Orders stream positions: negative when `a` comes first. */
export function comparePositions(a: StreamPosition, b: StreamPosition): number {
  return a.source - b.source || a.unit - b.unit || a.offset - b.offset;
}

/** Recomputes the totals from the shard list. */
export function updateTotals(m: Manifest): void {
  let train = 0;
  let valTokens = 0;
  let documents = 0;
  for (const s of m.shards) {
    if (s.split === "train") train += s.tokens;
    else valTokens += s.tokens;
    documents += s.documents;
  }
  m.totals.trainTokens = train;
  m.totals.valTokens = valTokens;
  m.totals.documents = documents;
  m.totals.malformed = m.shards.reduce((a, s) => Math.max(a, s.malformed), 0);
  m.totals.invalidUtf8 = m.shards.reduce((a, s) => Math.max(a, s.invalidUtf8 ?? 0), 0);
}

/**
 * Removes from `manifest` (and then from disk) every shard holding tokens of source `source`
 * or later, so that a damaged source leaves nothing behind and `--resume` starts at it.
 * The manifest is rewritten first: a crash in between leaves unlisted files, which
 * `--resume` deletes. Returns the number of shards removed.
 */
export async function dropShardsFrom(
  dir: string,
  manifest: Manifest,
  source: number,
): Promise<number> {
  const from: StreamPosition = { source, unit: 0, offset: 0 };
  const gone = manifest.shards.filter((s) => comparePositions(s.end, from) > 0);
  if (gone.length === 0) return 0;
  manifest.shards = manifest.shards.filter((s) => comparePositions(s.end, from) <= 0);
  updateTotals(manifest);
  await writeManifest(dir, manifest);
  for (const s of gone) await Deno.remove(`${dir}/${s.file}`).catch(() => {});
  return gone.length;
}

/**
 * Loads `dir`'s manifest for `--resume` (checking that `config` matches and removing shard
 * files it does not list), or clears the folder and writes a fresh manifest.
 */
export async function openManifest(
  dir: string,
  config: ManifestConfig,
  options: { resume?: boolean; overwrite?: boolean },
): Promise<Manifest> {
  const existing = await readManifest(dir);
  if (existing && options.resume) {
    const want = JSON.stringify(config);
    const have = JSON.stringify(existing.config);
    if (want !== have) {
      throw new Error(
        `Cannot resume ${dir}: its manifest was made with different sources or settings; ` +
          `rerun with the original flags, or pass --overwrite to start again`,
      );
    }
    // Complete shards are listed in the manifest; anything else (a .tmp from an interrupted
    // write, or a shard renamed just before the manifest was updated) is redone.
    const listed = new Set(existing.shards.map((s) => s.file));
    for await (const e of Deno.readDir(dir)) {
      const ours = e.name.startsWith(`${config.name}_`) &&
        (e.name.endsWith(".bin") || e.name.endsWith(".bin" + TEMP_SUFFIX));
      if (ours && !listed.has(e.name)) await Deno.remove(`${dir}/${e.name}`);
    }
    return existing;
  }
  if (existing && !options.overwrite) {
    throw new Error(
      `Output folder ${dir} already holds shards: pass --resume to continue it, ` +
        `--overwrite to replace it, or choose another --out`,
    );
  }
  for await (const e of Deno.readDir(dir)) {
    if (
      e.name.startsWith(`${config.name}_`) &&
      (e.name.endsWith(".bin") || e.name.endsWith(".bin" + TEMP_SUFFIX))
    ) await Deno.remove(`${dir}/${e.name}`);
  }
  const manifest: Manifest = {
    format: "llm.c-shards",
    version: 1,
    tokenizer: "gpt2",
    eot: EOT,
    config,
    shards: [],
    totals: { trainTokens: 0, valTokens: 0, documents: 0, malformed: 0, invalidUtf8: 0 },
    complete: false,
  };
  await writeManifest(dir, manifest);
  return manifest;
}
