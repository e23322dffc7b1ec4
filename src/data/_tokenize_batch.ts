/**
 * One unit of tokenizer work, shared by the worker and the in-thread fallback so that both
 * produce identical tokens. A batch is raw bytes: whole JSON lines, or one chunk of a text
 * file cut at a boundary where BPE splits the same way with or without the cut. Decoding and
 * JSON parsing happen here, in the worker, so the main thread only moves bytes.
 *
 * @module
 */
import { encodeInto, EOT, TokenBuffer } from "./tokenizer.ts";

/** A batch sent to a tokenizer worker. */
export interface BatchRequest {
  /** `jsonl`: one unit per line; `text`: the whole batch is one unit. */
  kind: "jsonl" | "text";
  /** The raw bytes (transferred to the worker). */
  bytes: Uint8Array;
  /** For `text`: whether this chunk starts a document (and so gets an EOT first). */
  docStart: boolean;
  /** For `jsonl`: the field holding the document text. */
  field: string;
}

/** A problem with one line of a batch; `line` counts from 0 within the batch. */
export interface BatchIssue {
  /** The line, from 0 within the batch. */
  line: number;
  /** Not JSON, or JSON without the text field. */
  kind: "malformed" | "field";
  /** What is wrong. */
  message: string;
}

/** Tokens of a batch, with how many came from each unit (line or chunk). */
export interface BatchResult {
  /** The units' tokens, concatenated in order. */
  tokens: Uint16Array;
  /** Tokens of each unit. */
  counts: Uint32Array;
  /** Documents started in the batch. */
  documents: number;
  /** Lines skipped, and why. */
  issues: BatchIssue[];
  /** Invalid UTF-8 sequences decoded as U+FFFD, by line (0 for a text chunk); sparse. */
  replaced: { line: number; count: number }[];
}

// Keep U+FEFF: a chunk cut from the middle of a file must not lose one. A byte order mark
// that starts a file or a JSON line is dropped explicitly below instead.
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
const BOM = 0xfeff;

/** Tokenizes one batch; the units' tokens are concatenated in order. */
export function tokenizeBatch(req: BatchRequest): BatchResult {
  let text = decoder.decode(req.bytes);
  const replaced = replacements(req.bytes, text, req.kind === "jsonl");
  const out = new TokenBuffer(Math.max(1024, text.length >> 2));
  if (req.kind === "text") {
    if (req.docStart && text.charCodeAt(0) === BOM) text = text.slice(1);
    if (req.docStart) out.push(EOT);
    encodeInto(text, out);
    return {
      tokens: out.toArray(),
      counts: Uint32Array.of(out.length),
      documents: req.docStart ? 1 : 0,
      issues: [],
      replaced,
    };
  }
  const lines = text.split("\n");
  // A final newline ends the last line rather than starting an empty one.
  if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
  const counts = new Uint32Array(lines.length);
  const issues: BatchIssue[] = [];
  let documents = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].charCodeAt(0) === BOM ? lines[i].slice(1) : lines[i];
    if (line.trim() === "") continue;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch (e) {
      issues.push({ line: i, kind: "malformed", message: (e as Error).message });
      continue;
    }
    const value = record !== null && typeof record === "object"
      ? (record as Record<string, unknown>)[req.field]
      : undefined;
    if (typeof value !== "string") {
      const got = value === undefined ? "missing" : `a ${value === null ? "null" : typeof value}`;
      issues.push({ line: i, kind: "field", message: `field "${req.field}" is ${got}` });
      continue;
    }
    const before = out.length;
    out.push(EOT);
    encodeInto(value, out);
    counts[i] = out.length - before;
    documents++;
  }
  return { tokens: out.toArray(), counts, documents, issues, replaced };
}

/**
 * Counts the invalid UTF-8 sequences that decoding `bytes` to `text` replaced: the U+FFFD
 * characters of `text` less the ones `bytes` held already (EF BF BD), by line when `lines`
 * (newline bytes are never part of a replaced sequence, so lines of both correspond).
 */
function replacements(
  bytes: Uint8Array,
  text: string,
  lines: boolean,
): { line: number; count: number }[] {
  if (text.indexOf("\ufffd") < 0) return [];
  const out: { line: number; count: number }[] = [];
  let line = 0;
  let at = 0;
  let byteAt = 0;
  while (at <= text.length) {
    const nl = lines ? text.indexOf("\n", at) : -1;
    const end = nl < 0 ? text.length : nl;
    const byteNl = lines ? bytes.indexOf(0x0a, byteAt) : -1;
    const byteEnd = byteNl < 0 ? bytes.length : byteNl;
    let count = 0;
    for (let i = text.indexOf("\ufffd", at); i >= 0 && i < end; i = text.indexOf("\ufffd", i + 1)) {
      count++;
    }
    if (count > 0) {
      for (let i = byteAt; i + 2 < byteEnd; i++) {
        if (bytes[i] === 0xef && bytes[i + 1] === 0xbf && bytes[i + 2] === 0xbd) count--;
      }
      if (count > 0) out.push({ line, count });
    }
    if (nl < 0) break;
    at = end + 1;
    byteAt = byteEnd + 1;
    line++;
  }
  return out;
}
