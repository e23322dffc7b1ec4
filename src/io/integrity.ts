/**
 * checksums.json: the SHA-256 and size of every file of a checkpoint directory, written last
 * into the temporary directory (before the rename that makes the checkpoint visible) and
 * checked when a file is read, so that bytes damaged after the save (a disk error, a stray
 * write, a partial copy) are refused instead of trained or evaluated on.
 *
 * ```json
 * { "format": "webgpu-gpt2-checksums", "version": 1, "algorithm": "sha256",
 *   "files": { "model.safetensors": { "bytes": 28123456, "sha256": "9f2c…" }, … } }
 * ```
 *
 * One file beside the others, not a field of trainer_state.json: it covers trainer_state.json
 * too, weights-only checkpoints (no trainer state) get one, and a reader that needs only the
 * weights checks only the weights. Hashing uses node:crypto's incremental SHA-256 (about
 * 1 GB/s on one core here, 2-4x crypto.subtle.digest, and it takes chunks), over bytes that are
 * in memory anyway: while the file is written, and chunk by chunk while it is read.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { checkFinite, parseSafetensors, readInto, type SafeTensorsFile } from "./safetensors.ts";

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

/** The file's name inside a checkpoint directory. */
export const CHECKSUMS_FILE = "checksums.json";
/** The version this package writes; a newer one is refused. */
export const CHECKSUMS_VERSION = 1;
const FORMAT = "webgpu-gpt2-checksums";

/** One file's entry. */
export interface FileChecksum {
  /** Size in bytes. */
  bytes: number;
  /** SHA-256 of the whole file, lowercase hex. */
  sha256: string;
}

/** A parsed checksums.json: each file's entry by name. */
export type Checksums = Map<string, FileChecksum>;

/** SHA-256 of `bytes` as lowercase hex. */
export function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Writes `bytes` to `path` and returns its entry, hashing while the write runs. */
export async function writeHashed(path: string, bytes: Uint8Array): Promise<FileChecksum> {
  const writing = Deno.writeFile(path, bytes);
  try {
    return { bytes: bytes.length, sha256: sha256(bytes) };
  } finally {
    await writing;
  }
}

/** Writes `<dir>/checksums.json` for the given entries. */
export async function writeChecksums(
  dir: string,
  files: Record<string, FileChecksum>,
): Promise<void> {
  const json = { format: FORMAT, version: CHECKSUMS_VERSION, algorithm: "sha256", files };
  await Deno.writeTextFile(`${dir}/${CHECKSUMS_FILE}`, JSON.stringify(json, null, 2) + "\n");
}

/**
 * Reads `<dir>/checksums.json`: undefined when there is none (a checkpoint saved before they
 * were written, or not ours); an unreadable or newer one is an error naming the file.
 */
export async function readChecksums(dir: string): Promise<Checksums | undefined> {
  const path = `${dir}/${CHECKSUMS_FILE}`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`Cannot read ${path}: ${(e as Error).message}`);
  }
  const bad = (why: string) => new Error(`Invalid ${path}: ${why}; the checkpoint is damaged`);
  let json;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw bad((e as Error).message);
  }
  if (json?.format !== FORMAT || typeof json.files !== "object" || json.files === null) {
    throw bad(`not a "${FORMAT}" file`);
  }
  if (typeof json.version !== "number") throw bad(`it has no "version"`);
  if (json.version > CHECKSUMS_VERSION) {
    throw new Error(
      `${path} has version ${json.version}; this package reads up to ${CHECKSUMS_VERSION}: ` +
        "upgrade it",
    );
  }
  if (json.algorithm !== "sha256") throw bad(`unknown algorithm "${json.algorithm}"`);
  const out: Checksums = new Map();
  for (const [name, e] of Object.entries(json.files as Record<string, FileChecksum>)) {
    if (typeof e?.bytes !== "number" || !/^[0-9a-f]{64}$/.test(String(e.sha256))) {
      throw bad(`the entry of ${name} has no "bytes" and "sha256"`);
    }
    out.set(name, e);
  }
  return out;
}

/** What is wrong with a file's size against its entry (undefined: nothing). */
export function sizeProblem(path: string, size: number, want: FileChecksum): string | undefined {
  if (size === want.bytes) return undefined;
  return `${path} has ${size} bytes but ${CHECKSUMS_FILE} says ${want.bytes}: the file was ` +
    "truncated or changed after the checkpoint was saved";
}

/** What is wrong with a file's bytes against its entry (undefined: nothing). */
export function hashProblem(path: string, sha256: string, want: FileChecksum): string | undefined {
  if (sha256 === want.sha256) return undefined;
  return `${path} does not match its SHA-256 in ${CHECKSUMS_FILE} (${sha256.slice(0, 12)}…, ` +
    `saved as ${want.sha256.slice(0, 12)}…): the file changed after the checkpoint was saved`;
}

const CHUNK = 64 << 20;

/**
 * Reads a whole file; with `want`, checks its size first and hashes it chunk by chunk while
 * the next chunk is read, and throws when it does not match (a message naming the file).
 */
export async function readVerified(path: string, want?: FileChecksum): Promise<Uint8Array> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new Error(`Cannot read ${path}: ${(e as Error).message}`);
  }
  using _ = file;
  const size = (await file.stat()).size;
  if (want) {
    const problem = sizeProblem(path, size, want);
    if (problem) throw new Error(problem);
  }
  const out = new Uint8Array(size);
  const hash = want ? createHash("sha256") : undefined;
  let got = 0, hashed = 0;
  while (got < size) {
    const reading = readInto(file, out.subarray(got, Math.min(size, got + CHUNK)));
    hash?.update(out.subarray(hashed, got)); // the chunk before, while this one is read
    hashed = got;
    const n = await reading;
    if (n === 0) throw new Error(`Cannot read ${path}: it ended at byte ${got} of ${size}`);
    got += n;
  }
  if (hash && want) {
    hash.update(out.subarray(hashed, got));
    const problem = hashProblem(path, hash.digest("hex"), want);
    if (problem) throw new Error(problem);
  }
  return out;
}

// ---- the files of a checkpoint directory

/**
 * What a full read finds wrong with checkpoint `dir` (undefined: nothing): a file that does
 * not match checksums.json, or NaN or Infinity in the weights or the optimizer state. Reads
 * the files (of `names` that exist) one at a time: missing files are for the caller to judge.
 */
export async function integrityProblem(
  dir: string,
  names: readonly string[],
): Promise<string | undefined> {
  try {
    const sums = await readChecksums(dir);
    for (const name of names) {
      if (!(await exists(`${dir}/${name}`))) continue;
      if (name.endsWith(".safetensors")) await readTensors(dir, name, sums);
      else if (sums) await readPart(dir, name, sums);
    }
  } catch (e) {
    return (e as Error).message;
  }
  return undefined;
}

/** A file of checkpoint `dir`, checked against `sums` where there are checksums. */
export async function readPart(
  dir: string,
  name: string,
  sums: Checksums | undefined,
  fix?: string,
): Promise<Uint8Array> {
  const path = `${dir}/${name}`;
  const want = sums?.get(name);
  const then = fix ? `; ${fix}` : "";
  if (sums && !want) {
    throw new Error(
      `${path} is not listed in ${CHECKSUMS_FILE}: it was added after the save${then}`,
    );
  }
  try {
    return await readVerified(path, want);
  } catch (e) {
    throw new Error((e as Error).message + (sums ? then : ""));
  }
}

/** A JSON file of checkpoint `dir`, checked against `sums` where there are checksums. */
export async function readJson(
  dir: string,
  name: string,
  sums?: Checksums,
  fix?: string,
): Promise<unknown> {
  const bytes = await readPart(dir, name, sums, fix);
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new Error(`Invalid ${dir}/${name}: ${(e as Error).message}; the checkpoint is damaged`);
  }
}

/** A safetensors file of checkpoint `dir`, parsed: its checksum (where known), every float finite. */
export async function readTensors(
  dir: string,
  name: string,
  sums: Checksums | undefined,
  fix?: string,
): Promise<SafeTensorsFile> {
  const path = `${dir}/${name}`;
  const file = parseSafetensors(await readPart(dir, name, sums, fix), path);
  checkFinite(file, `the file is damaged or its run had diverged${fix ? `; ${fix}` : ""}`);
  return file;
}
