/**
 * The token shard format shared with llm.c: a 1024-byte header of 256 little-endian int32
 * (`[0]` magic 20240520, `[1]` version 1, `[2]` token count, the rest zero) followed by the
 * tokens as little-endian uint16. Writers go through a temporary name and a rename so that a
 * reader (or `--resume`) never sees a half-written shard.
 *
 * @module
 */

/** Magic number in `header[0]` of every shard (llm.c's `20240520`). */
export const SHARD_MAGIC = 20240520;
/** Format version in `header[1]`; version 1 stores uint16 tokens. */
export const SHARD_VERSION = 1;
/** Header size in bytes: 256 int32. */
export const SHARD_HEADER_BYTES = 1024;
/** Suffix of a shard being written; it is renamed away only once the file is complete. */
export const TEMP_SUFFIX = ".tmp";

/** What a shard header says about its file. */
export interface ShardHeader {
  /** Number of uint16 tokens after the header. */
  tokens: number;
  /** Format version (always 1 today). */
  version: number;
}

/** Builds the 1024-byte header for a shard of `tokens` tokens. */
export function encodeShardHeader(tokens: number): Uint8Array {
  if (!Number.isInteger(tokens) || tokens < 0 || tokens > 0x7fffffff) {
    throw new RangeError(`Cannot write a shard header: token count ${tokens} is out of range`);
  }
  const header = new Int32Array(256);
  header[0] = SHARD_MAGIC;
  header[1] = SHARD_VERSION;
  header[2] = tokens;
  // Int32Array uses the platform byte order; every platform Deno runs on is little-endian,
  // which the format requires, so the bytes can be written as they are.
  return new Uint8Array(header.buffer);
}

/**
 * Parses and checks a shard header.
 *
 * @param bytes the first 1024 bytes of the file
 * @param name the file name, used in error messages
 * @param fileBytes the file size, when known, to detect truncated shards
 * @example
 * ```ts
 * const head = decodeShardHeader(encodeShardHeader(10), "a.bin");
 * console.log(head.tokens); // 10
 * ```
 */
export function decodeShardHeader(
  bytes: Uint8Array,
  name: string,
  fileBytes?: number,
): ShardHeader {
  if (bytes.byteLength < SHARD_HEADER_BYTES) {
    throw new RangeError(
      `Cannot read shard ${name}: the file is ${bytes.byteLength} bytes, shorter than the ` +
        `1024-byte header; delete it and rebuild the shards with \`deno task data\``,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, SHARD_HEADER_BYTES);
  const magic = view.getInt32(0, true);
  const version = view.getInt32(4, true);
  const tokens = view.getInt32(8, true);
  if (magic !== SHARD_MAGIC) {
    throw new TypeError(
      `Cannot read shard ${name}: bad magic number ${magic}, expected ${SHARD_MAGIC}; ` +
        `it is not an llm.c token shard, rebuild it with \`deno task data\``,
    );
  }
  if (version !== SHARD_VERSION) {
    throw new TypeError(
      `Cannot read shard ${name}: unsupported version ${version}, expected ${SHARD_VERSION}; ` +
        `rebuild it with \`deno task data\``,
    );
  }
  if (tokens < 0) {
    throw new RangeError(`Cannot read shard ${name}: negative token count ${tokens}; rebuild it`);
  }
  if (fileBytes !== undefined && fileBytes !== SHARD_HEADER_BYTES + 2 * tokens) {
    throw new RangeError(
      `Cannot read shard ${name}: the header promises ${tokens} tokens ` +
        `(${SHARD_HEADER_BYTES + 2 * tokens} bytes) but the file has ${fileBytes} bytes; ` +
        `it is truncated or corrupt, rebuild it with \`deno task data\``,
    );
  }
  return { tokens, version };
}

/** Serialises a complete shard (header and tokens) into one buffer. */
export function encodeShard(tokens: Uint16Array): Uint8Array {
  const out = new Uint8Array(SHARD_HEADER_BYTES + tokens.byteLength);
  out.set(encodeShardHeader(tokens.length), 0);
  out.set(new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength), SHARD_HEADER_BYTES);
  return out;
}

/**
 * Writes a shard atomically: to `path + ".tmp"`, then renamed to `path`.
 * Returns the SHA-256 of the whole file as hex, which the manifest records.
 *
 * @example
 * ```ts
 * const sha = await writeShard("out/x_train_000001.bin", new Uint16Array([50256, 15496]));
 * ```
 */
export async function writeShard(path: string, tokens: Uint16Array): Promise<string> {
  const bytes = encodeShard(tokens);
  const temp = path + TEMP_SUFFIX;
  await Deno.writeFile(temp, bytes);
  const sha = await sha256Hex(bytes);
  await Deno.rename(temp, path);
  return sha;
}

/**
 * Reads a whole shard into memory after checking its header.
 *
 * @example
 * ```ts
 * const tokens = await readShard("out/x_val_000000.bin");
 * ```
 */
export async function readShard(path: string): Promise<Uint16Array> {
  const bytes = await Deno.readFile(path);
  const head = decodeShardHeader(bytes, path, bytes.byteLength);
  const copy = bytes.slice(SHARD_HEADER_BYTES, SHARD_HEADER_BYTES + 2 * head.tokens);
  return new Uint16Array(copy.buffer, 0, head.tokens);
}

/** SHA-256 of `bytes` as lowercase hex. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>),
  );
  let hex = "";
  for (const b of digest) hex += b.toString(16).padStart(2, "0");
  return hex;
}

/** llm.c's shard file name: `<name>_<split>_<index as 6 digits>.bin`. */
export function shardFileName(name: string, split: "train" | "val", index: number): string {
  return `${name}_${split}_${String(index).padStart(6, "0")}.bin`;
}
