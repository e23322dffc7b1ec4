/**
 * safetensors: read and write (Hugging Face's format: an 8-byte little-endian
 * header length, a JSON header of {name: {dtype, shape, data_offsets}}, then
 * the raw little-endian tensor bytes). Reads F32, F16 and BF16 into float32;
 * writes F32 (exact, for resume) or F16/BF16.
 *
 * @module
 */

/** Dtypes this module reads and writes. */
export type SafeDtype = "F32" | "F16" | "BF16";

const BYTES: Record<SafeDtype | "U8", number> = { F32: 4, F16: 2, BF16: 2, U8: 1 };

/** One tensor as stored in the header. */
export interface SafeTensorInfo {
  /** Element type as the header names it, e.g. "F32", "F16", "BF16" or "U8". */
  dtype: string;
  /** Dimensions, outermost first. */
  shape: number[];
  /** Start and end (exclusive) of the tensor's bytes in the data section. */
  data_offsets: [number, number];
}

/** A parsed file: header, metadata, and the data section. */
export interface SafeTensorsFile {
  /** Where the file was read from ("<memory>" for bytes parsed without a path). */
  path: string;
  /** The header's tensors by name. */
  tensors: Map<string, SafeTensorInfo>;
  /** The header's `__metadata__` strings (empty when there are none). */
  metadata: Record<string, string>;
  /** The bytes after the header. */
  data: Uint8Array;
  /** Where `data` starts in the file (undefined when the bytes did not come from this file). */
  dataOffset?: number;
}

/** Errors in a safetensors file; the message names the file and the problem. */
export class SafeTensorsError extends Error {
  /** An error about the file at `path`. */
  constructor(path: string, detail: string) {
    super(`Invalid safetensors file ${path}: ${detail}`);
    this.name = "SafeTensorsError";
  }
}

/** Parses a safetensors file in memory, checking every offset against the file size. */
export function parseSafetensors(bytes: Uint8Array, path = "<memory>"): SafeTensorsFile {
  const headerLen = headerLength(bytes.subarray(0, 8), bytes.length, path);
  const data = bytes.subarray(8 + headerLen);
  return {
    ...parseHeader(bytes.subarray(8, 8 + headerLen), data, data.length, path),
    dataOffset: 8 + headerLen,
  };
}

/**
 * Reads only the header of a safetensors file and checks it against the file's size: a
 * truncated or foreign file fails here without reading the tensors. `data` is empty.
 */
export async function readSafetensorsHeader(path: string): Promise<SafeTensorsFile> {
  try {
    using file = await Deno.open(path, { read: true });
    const size = (await file.stat()).size;
    const first = await readExactly(file, Math.min(8, size));
    const headerLen = headerLength(first, size, path);
    const header = await readExactly(file, headerLen);
    return parseHeader(header, new Uint8Array(0), size - 8 - headerLen, path);
  } catch (e) {
    if (e instanceof SafeTensorsError) throw e;
    throw new Error(`Cannot read ${path}: ${(e as Error).message}`);
  }
}

/** Reads into `into` until it is full or the file ends; returns the bytes read. */
export async function readInto(file: Deno.FsFile, into: Uint8Array): Promise<number> {
  let got = 0;
  while (got < into.length) {
    const n = await file.read(into.subarray(got));
    if (n === null) break;
    got += n;
  }
  return got;
}

async function readExactly(file: Deno.FsFile, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  return out.subarray(0, await readInto(file, out));
}

function headerLength(first: Uint8Array, fileBytes: number, path: string): number {
  if (fileBytes < 8) throw new SafeTensorsError(path, `${fileBytes} bytes is too short`);
  const headerLen = Number(new DataView(first.buffer, first.byteOffset, 8).getBigUint64(0, true));
  if (headerLen > fileBytes - 8 || headerLen > 100_000_000) {
    throw new SafeTensorsError(
      path,
      `header length ${headerLen} runs past the end of the file (${fileBytes} bytes); ` +
        "the file is truncated or not safetensors",
    );
  }
  return headerLen;
}

function parseHeader(
  headerBytes: Uint8Array,
  data: Uint8Array,
  dataBytes: number,
  path: string,
): SafeTensorsFile {
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder().decode(headerBytes));
  } catch (e) {
    throw new SafeTensorsError(path, `header is not JSON (${(e as Error).message})`);
  }
  const tensors = new Map<string, SafeTensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = raw as Record<string, string>;
      continue;
    }
    const t = raw as SafeTensorInfo;
    const [begin, end] = t.data_offsets ?? [];
    if (!Array.isArray(t.shape) || typeof begin !== "number" || typeof end !== "number") {
      throw new SafeTensorsError(path, `tensor "${name}" has no shape or data_offsets`);
    }
    if (end > dataBytes || begin > end) {
      throw new SafeTensorsError(
        path,
        `tensor "${name}" needs bytes ${begin}..${end} but the data section holds ` +
          `${dataBytes}: the file is truncated`,
      );
    }
    const elems = t.shape.reduce((a, b) => a * b, 1);
    const size = BYTES[t.dtype as SafeDtype | "U8"];
    if (size && elems * size !== end - begin) {
      throw new SafeTensorsError(
        path,
        `tensor "${name}" has shape [${t.shape}] (${elems} x ${t.dtype}) but ${end - begin} bytes`,
      );
    }
    tensors.set(name, t);
  }
  return { path, tensors, metadata, data };
}

/** Reads and parses a safetensors file. */
export async function readSafetensors(path: string): Promise<SafeTensorsFile> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`Cannot read ${path}: ${(e as Error).message}`);
  }
  return parseSafetensors(bytes, path);
}

// ---- non-finite values

/** A float tensor's NaN and Infinity values: how many, and the first one's element and kind. */
export interface NonFinite {
  /** How many elements are NaN or +-Infinity. */
  count: number;
  /** The first one's element index (row-major). */
  first: number;
  /** What the first one is. */
  value: "NaN" | "Infinity" | "-Infinity";
}

// Per float dtype: element bytes, the exponent mask (all ones: NaN or Inf), the mantissa mask.
const SPECIAL: Record<string, [number, number, number]> = {
  F32: [4, 0x7f800000, 0x7fffff],
  F16: [2, 0x7c00, 0x3ff],
  BF16: [2, 0x7f80, 0x7f],
};

/**
 * The NaN and Infinity values of tensor `name` (F32, F16 or BF16), or undefined when it has
 * none or holds another dtype (raw U8 state is not floats). Reads the bits, converts nothing.
 */
export function nonFinite(file: SafeTensorsFile, name: string): NonFinite | undefined {
  const t = file.tensors.get(name);
  if (!t) throw new SafeTensorsError(file.path, `no tensor "${name}"`);
  const special = SPECIAL[t.dtype];
  if (!special) return undefined;
  const [size, exp, mant] = special;
  let raw = file.data.subarray(t.data_offsets[0], t.data_offsets[1]);
  if (raw.byteOffset % size !== 0) raw = raw.slice(); // typed views need aligned bytes
  const bits = size === 4
    ? new Uint32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4)
    : new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
  let count = 0, first = -1;
  for (let i = 0; i < bits.length; i++) {
    if ((bits[i] & exp) === exp) {
      if (count++ === 0) first = i;
    }
  }
  if (count === 0) return undefined;
  const b = bits[first];
  const value = b & mant ? "NaN" : b >>> (8 * size - 1) ? "-Infinity" : "Infinity";
  return { count, first, value };
}

/**
 * Throws when any float tensor holds NaN or Infinity: the message names the file, the
 * tensor, the first bad element (its index, and its byte in the file where known), how many
 * there are, and ends with `fix` (what the reader should do).
 */
export function checkFinite(file: SafeTensorsFile, fix: string): void {
  for (const [name, t] of file.tensors) {
    const bad = nonFinite(file, name);
    if (!bad) continue;
    const index: number[] = [];
    let rest = bad.first;
    for (let d = t.shape.length - 1; d >= 0; d--) {
      index.unshift(rest % t.shape[d]);
      rest = Math.floor(rest / t.shape[d]);
    }
    const byte = file.dataOffset === undefined
      ? ""
      : `, byte ${file.dataOffset + t.data_offsets[0] + bad.first * SPECIAL[t.dtype][0]}`;
    throw new Error(
      `${file.path}: tensor "${name}" holds ${bad.value} at element ${bad.first} ` +
        `([${index.join(", ")}]${byte}), ${bad.count} non-finite value(s) in all: ${fix}`,
    );
  }
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** A tensor's values as float32 (F32, F16 or BF16 in the file). */
export function tensorF32(file: SafeTensorsFile, name: string): Float32Array<ArrayBuffer> {
  const t = file.tensors.get(name);
  if (!t) throw new SafeTensorsError(file.path, `no tensor "${name}"`);
  const [begin, end] = t.data_offsets;
  const raw = file.data.subarray(begin, end);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const n = t.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  switch (t.dtype) {
    case "F32":
      for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
      break;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = f16ToF32(view.getUint16(2 * i, true));
      break;
    case "BF16": {
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = view.getUint16(2 * i, true) << 16;
      break;
    }
    default:
      throw new SafeTensorsError(
        file.path,
        `tensor "${name}" has dtype ${t.dtype}: only F32, F16 and BF16 are supported`,
      );
  }
  return out;
}

function f32ToF16(x: number): number {
  const f = new Float32Array([x]), u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000, exp = ((u >>> 23) & 0xff) - 127 + 15, mant = u & 0x7fffff;
  if (((u >>> 23) & 0xff) === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    const m = (mant | 0x800000) >> (1 - exp);
    return sign | ((m + 0x1000) >> 13);
  }
  return (sign | (exp << 10) | (mant >> 13)) + ((mant >> 12) & 1);
}

/** A tensor to write. */
export interface TensorToWrite {
  /** Name in the header, e.g. "h.0.mlp.c_fc.weight". */
  name: string;
  /** Dimensions, outermost first; their product must equal `data.length`. */
  shape: number[];
  /** Floats are written in the file's dtype; bytes (raw optimizer state) as U8. */
  data: Float32Array | Uint8Array;
}

/** A U8 tensor's bytes (a copy). */
export function tensorBytes(file: SafeTensorsFile, name: string): Uint8Array<ArrayBuffer> {
  const t = file.tensors.get(name);
  if (!t) throw new SafeTensorsError(file.path, `no tensor "${name}"`);
  if (t.dtype !== "U8") {
    throw new SafeTensorsError(file.path, `tensor "${name}" is ${t.dtype}, not U8`);
  }
  return file.data.slice(t.data_offsets[0], t.data_offsets[1]);
}

/** Serialises tensors (in the given order) with optional string metadata. */
export function encodeSafetensors(
  tensors: TensorToWrite[],
  options: { dtype?: SafeDtype; metadata?: Record<string, string> } = {},
): Uint8Array<ArrayBuffer> {
  const dtype = options.dtype ?? "F32";
  const header: Record<string, unknown> = {};
  if (options.metadata) header.__metadata__ = options.metadata;
  let offset = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) {
      throw new RangeError(`Tensor "${t.name}" has shape [${t.shape}] but ${t.data.length} values`);
    }
    const dt = t.data instanceof Uint8Array ? "U8" : dtype;
    header[t.name] = { dtype: dt, shape: t.shape, data_offsets: [offset, offset + n * BYTES[dt]] };
    offset += n * BYTES[dt];
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((json.length + 8) % 8)) % 8); // data section 8-byte aligned
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let p = 8 + head.length;
  for (const t of tensors) {
    if (t.data instanceof Uint8Array) {
      out.set(t.data, p);
      p += t.data.length;
    } else if (dtype === "F32") {
      out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), p);
      p += t.data.byteLength;
    } else {
      const u = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
      for (let i = 0; i < t.data.length; i++, p += 2) {
        view.setUint16(
          p,
          dtype === "F16" ? f32ToF16(t.data[i]) : (u[i] + 0x7fff + ((u[i] >> 16) & 1)) >>> 16,
          true,
        );
      }
    }
  }
  return out;
}

/**
 * A file's tensors as a name lookup (has, f32 values, raw bytes): the shape in which
 * optimizers take their saved state back, without knowing the file format.
 */
export function savedTensors(file: SafeTensorsFile): {
  path: string;
  has(name: string): boolean;
  f32(name: string): Float32Array<ArrayBuffer>;
  bytes(name: string): Uint8Array<ArrayBuffer>;
} {
  return {
    path: file.path,
    has: (name) => file.tensors.has(name),
    f32: (name) => tensorF32(file, name),
    bytes: (name) => tensorBytes(file, name),
  };
}
