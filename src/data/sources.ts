/**
 * Where text comes from: turns command-line source specs (files, folders, globs, http(s)
 * URLs, or the `slimpajama` shorthand) into an ordered list of {@linkcode Source}s, and picks
 * deterministic subsets of them.
 *
 * Subset membership is a pure function of the seed and a source's key: each source hashes
 * to a number u in [0, 1) and is kept when `from <= u < from + fraction`. Two runs with the
 * same seed and non-overlapping `[from, from + fraction)` ranges therefore never share a
 * source, whatever else changes between them.
 *
 * @module
 */

/** How the bytes of a source are compressed. */
export type Compression = "none" | "gzip" | "zstd";

/** One input file or URL. */
export interface Source {
  /** A path or an http(s) URL. */
  location: string;
  /** Stable identity for subsets and the manifest (the URL path for SlimPajama chunks). */
  key: string;
  /** `txt`: the whole file is one document; `jsonl`: one JSON document per line. */
  format: "txt" | "jsonl";
  /** How the bytes are compressed (from the name's extension). */
  compression: Compression;
  /** Size in bytes when known without reading (local files). */
  size?: number;
}

/** The subset of sources to keep; see the module doc. */
export interface SubsetOptions {
  /** Fraction of sources to keep, in (0, 1]. */
  fraction: number;
  /** Lower end of the kept hash range, in [0, 1). Default 0. */
  from?: number;
  /** Seed mixed into every hash. Default 0. */
  seed?: number;
}

/** Base URL of SlimPajama-627B's files on the Hugging Face hub. */
export const SLIMPAJAMA_BASE =
  "https://huggingface.co/datasets/cerebras/SlimPajama-627B/resolve/main";

/** Options for {@linkcode slimpajamaSources}. */
export interface SlimPajamaOptions {
  /** Split directory. Default `train`. */
  split?: string;
  /** Chunk numbers. Default 1..10. */
  chunks?: number[];
  /** Files per chunk (`example_train_0` .. `example_train_{n-1}`). Default 5912. */
  filesPerChunk?: number;
  /** Mirror base URL. Default {@linkcode SLIMPAJAMA_BASE}. */
  base?: string;
}

/**
 * The SlimPajama chunk files as sources, in chunk then file order.
 *
 * @example
 * ```ts
 * const first = slimpajamaSources({ chunks: [1], filesPerChunk: 2 })[0];
 * // first.key === "train/chunk1/example_train_0.jsonl.zst"
 * ```
 */
export function slimpajamaSources(options: SlimPajamaOptions = {}): Source[] {
  const split = options.split ?? "train";
  const chunks = options.chunks ?? [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  const files = options.filesPerChunk ?? 5912;
  const base = (options.base ?? SLIMPAJAMA_BASE).replace(/\/+$/, "");
  const out: Source[] = [];
  for (const c of chunks) {
    for (let k = 0; k < files; k++) {
      const key = `${split}/chunk${c}/example_${split}_${k}.jsonl.zst`;
      out.push({ location: `${base}/${key}`, key, format: "jsonl", compression: "zstd" });
    }
  }
  return out;
}

/**
 * Maps a seed and a key to a well-mixed number in [0, 1) (53 bits, from two 32-bit lanes).
 *
 * @example
 * ```ts
 * const u = unitHash(7, "train/chunk1/example_train_0.jsonl.zst"); // 0 <= u < 1
 * ```
 */
export function unitHash(seed: number, key: string): number {
  let a = 0x9e3779b9 ^ Math.imul(seed | 0, 0x85ebca6b);
  let b = 0x632be5ab ^ Math.imul((seed / 4294967296) | 0, 0xc2b2ae35) ^ key.length;
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
    b ^= b >>> 15;
  }
  // Final avalanche so that keys differing only in their last character spread evenly.
  a ^= a >>> 16;
  a = Math.imul(a, 0x85ebca6b) ^ Math.imul(b, 0x27d4eb2f);
  a ^= a >>> 13;
  a = Math.imul(a, 0xc2b2ae35);
  a ^= a >>> 16;
  b ^= b >>> 16;
  b = Math.imul(b, 0x2c1b3c6d) ^ a;
  b ^= b >>> 12;
  b = Math.imul(b, 0x297a2d39);
  b ^= b >>> 15;
  return ((a >>> 0) * 2097152 + (b >>> 11)) / 9007199254740992;
}

/**
 * Keeps the sources whose hash falls in `[from, from + fraction)`, preserving their order.
 *
 * @example
 * ```ts
 * const first = selectSubset(all, { fraction: 0.5, seed: 1 });
 * const other = selectSubset(all, { fraction: 0.3, from: 0.5, seed: 1 }); // disjoint
 * ```
 */
export function selectSubset(sources: Source[], options: SubsetOptions): Source[] {
  const from = options.from ?? 0;
  const to = from + options.fraction;
  if (!(options.fraction > 0 && options.fraction <= 1)) {
    throw new RangeError(`Invalid subset fraction ${options.fraction}: use a number in (0, 1]`);
  }
  if (!(from >= 0 && from < 1) || to > 1 + 1e-12) {
    throw new RangeError(
      `Invalid subset range [${from}, ${to}): --subset-from plus --subset must not exceed 1`,
    );
  }
  const seed = options.seed ?? 0;
  return sources.filter((s) => {
    const u = unitHash(seed, s.key);
    return u >= from && u < to;
  });
}

/** The file types read, by name ending: the one table behind classify and the messages. */
const KINDS: { ext: string; kind: Pick<Source, "format" | "compression"> }[] = [
  { ext: ".txt", kind: { format: "txt", compression: "none" } },
  { ext: ".txt.gz", kind: { format: "txt", compression: "gzip" } },
  { ext: ".txt.zst", kind: { format: "txt", compression: "zstd" } },
  { ext: ".jsonl", kind: { format: "jsonl", compression: "none" } },
  { ext: ".jsonl.gz", kind: { format: "jsonl", compression: "gzip" } },
  { ext: ".jsonl.zst", kind: { format: "jsonl", compression: "zstd" } },
  { ext: ".json.gz", kind: { format: "jsonl", compression: "gzip" } },
  { ext: ".json.zst", kind: { format: "jsonl", compression: "zstd" } },
];

/** The name endings that {@linkcode classify} understands, for messages. */
export const SOURCE_EXTENSIONS: readonly string[] = KINDS.map((k) => k.ext);

/** Classifies a file name by extension, or returns undefined for unsupported files. */
export function classify(name: string): Pick<Source, "format" | "compression"> | undefined {
  const lower = name.toLowerCase().replace(/[?#].*$/, "");
  const hit = KINDS.find((k) => lower.endsWith(k.ext));
  return hit ? { ...hit.kind } : undefined;
}

/** Options for {@linkcode resolveSources}. */
export interface ResolveOptions {
  /** Expansion settings for the `slimpajama` shorthand. */
  slimpajama?: SlimPajamaOptions;
  /** Told which files of a folder were skipped as being of no type that is read. */
  onWarning?: (message: string) => void;
}

/**
 * Expands source specs into sources: URLs stay as they are, folders are walked recursively,
 * globs (`*`, `**`, `?`) are matched, and `slimpajama` becomes the dataset's chunk URLs.
 * Files inside folders and glob matches are sorted so that runs are reproducible.
 *
 * @example
 * ```ts
 * const sources = await resolveSources(["data/*.jsonl.zst", "https://example.com/a.txt"]);
 * ```
 */
export async function resolveSources(
  specs: string[],
  options: ResolveOptions = {},
): Promise<Source[]> {
  const out: Source[] = [];
  for (const spec of specs) {
    if (spec === "slimpajama") {
      out.push(...slimpajamaSources(options.slimpajama));
    } else if (/^https?:\/\//i.test(spec)) {
      const kind = classify(new URL(spec).pathname);
      if (!kind) throw unsupported(spec);
      out.push({ location: spec, key: spec, ...kind });
    } else if (/[*?[]/.test(spec)) {
      const matches = await expandGlob(spec);
      if (matches.length === 0) {
        throw new Error(`No files match ${spec}: check the pattern and the working directory`);
      }
      for (const m of matches) out.push(await localSource(m));
    } else {
      const info = await statOrThrow(spec);
      if (info.isDirectory) {
        const all = (await walk(spec)).sort();
        const files = all.filter((f) => classify(f) !== undefined);
        const skipped = all.filter((f) => classify(f) === undefined);
        if (files.length === 0) {
          const found = skipped.length === 0
            ? "it holds no files"
            : `it holds only ${plural(skipped.length, "file")} of other types: ` +
              describeFiles(skipped, spec);
          throw new Error(
            `No files to read under ${spec}: ${found}; give a folder of ` +
              `${SOURCE_EXTENSIONS.join(", ")} files`,
          );
        }
        if (skipped.length > 0) {
          options.onWarning?.(
            `Skipped ${plural(skipped.length, "file")} of other types under ${spec}: ` +
              `${describeFiles(skipped, spec)}; only ${
                SOURCE_EXTENSIONS.join(", ")
              } files are read`,
          );
        }
        for (const f of files) out.push(await localSource(f));
      } else {
        out.push(await localSource(spec));
      }
    }
  }
  return out;
}

function unsupported(spec: string): Error {
  return new TypeError(`Unsupported source ${spec}: use ${SOURCE_EXTENSIONS.join(", ")} files`);
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;

/**
 * Counts files by extension, most common first, with the first names of each (relative to
 * `root`): "2 .md (README.md, notes.md), 1 with no extension (LICENSE)".
 */
function describeFiles(paths: string[], root: string): string {
  const prefix = root.replace(/\/+$/, "") + "/";
  const groups = new Map<string, string[]>();
  for (const p of paths) {
    const name = p.startsWith(prefix) ? p.slice(prefix.length) : p;
    const base = name.slice(name.lastIndexOf("/") + 1);
    const ext = /.(\.[^.]+)$/.exec(base)?.[1].toLowerCase() ?? "";
    groups.set(ext, [...groups.get(ext) ?? [], name]);
  }
  const sorted = [...groups].sort((a, b) => b[1].length - a[1].length);
  const parts = sorted.slice(0, 4).map(([ext, names]) => {
    const shown = names.slice(0, 2).join(", ") + (names.length > 2 ? ", ..." : "");
    return `${names.length} ${ext || "with no extension"} (${shown})`;
  });
  if (sorted.length > 4) parts.push(`${plural(sorted.length - 4, "more type")}`);
  return parts.join(", ");
}

async function statOrThrow(path: string): Promise<Deno.FileInfo> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`Source not found: ${path}; check the path`);
    }
    throw e;
  }
}

async function localSource(path: string): Promise<Source> {
  const kind = classify(path);
  if (!kind) throw unsupported(path);
  const info = await statOrThrow(path);
  return { location: path, key: path, ...kind, size: info.size };
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir.replace(/\/+$/, "")}/${entry.name}`;
    if (entry.isDirectory) out.push(...await walk(path));
    else if (entry.isFile) out.push(path);
  }
  return out;
}

/** Turns a glob into a regular expression over `/`-separated paths. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      // `**/` matches zero or more whole folders; a bare `**` matches anything.
      if (glob[i + 2] === "/") {
        re += "(?:[^/]*/)*";
        i += 2;
      } else {
        re += ".*";
        i++;
      }
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 1);
      if (end < 0) re += "\\[";
      else {
        re += "[" + glob.slice(i + 1, end).replace(/^!/, "^").replace(/\\/g, "\\\\") + "]";
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

async function expandGlob(glob: string): Promise<string[]> {
  const parts = glob.split("/");
  const fixed: string[] = [];
  for (const p of parts) {
    if (/[*?[]/.test(p)) break;
    fixed.push(p);
  }
  const root = fixed.length === 0 ? "." : fixed.join("/") || "/";
  const info = await Deno.stat(root).catch(() => undefined);
  if (!info?.isDirectory) return [];
  const re = globToRegExp(fixed.length === 0 ? `./${glob}` : glob);
  const files = await walk(root);
  return files.filter((f) => re.test(f)).sort();
}
