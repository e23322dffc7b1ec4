/**
 * GPT-2 byte-pair encoding (OpenAI's `r50k_base`, 50,257 tokens) for building shards.
 *
 * Corpus text is encoded "ordinarily": a literal `<|endoftext|>` inside a document is plain
 * text, never the special token, so a document cannot forge a document boundary. Boundaries
 * come only from {@linkcode EOT}, which the pipeline puts before every document as llm.c does.
 *
 * The encoder uses the rank table that ships with gpt-tokenizer but its own pre-tokenizer
 * loop, merge and cache: the library's per-hit LRU bookkeeping (a Map delete and re-insert on
 * every cached word) and its UTF-8 decode on every pair lookup ran at 1-2 MB/s on text with a
 * long tail of words; this runs several times faster with identical ids (a test compares
 * them). Tokens are handled as byte strings, one char code 0-255 per UTF-8 byte, so merges
 * are string slices and Map lookups, and an ASCII word is its own key.
 *
 * @module
 */
// A full npm: specifier rather than an import-map name, so that the module still resolves
// when the package is imported by URL (import maps do not travel with remote modules).
import table from "npm:gpt-tokenizer@4.0.0/bpeRanks/r50k_base";

/** The end-of-text token that separates documents. */
export const EOT = 50256;
/** Number of token ids in GPT-2's vocabulary. */
export const VOCAB_SIZE = 50257;

// GPT-2's pre-tokenizer pattern (openai/gpt-2 encoder.py), in JavaScript's unicode syntax.
const SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const utf8 = new TextEncoder();

function byteString(bytes: ArrayLike<number>): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

const RANKS = new Map<string, number>();
/** Byte strings by token id, for decoding. */
const BYTES: string[] = [];
for (let rank = 0; rank < table.length; rank++) {
  const v = table[rank];
  if (v === undefined) continue;
  const key = typeof v === "string" ? byteString(utf8.encode(v)) : byteString(v);
  RANKS.set(key, rank);
  BYTES[rank] = key;
}

/** A growable uint16 token list that encoders append to without per-word arrays. */
export class TokenBuffer {
  data: Uint16Array;
  length = 0;

  constructor(capacity = 1024) {
    this.data = new Uint16Array(capacity);
  }

  push(token: number): void {
    if (this.length === this.data.length) this.#grow(this.length + 1);
    this.data[this.length++] = token;
  }

  pushAll(tokens: ArrayLike<number>): void {
    if (this.length + tokens.length > this.data.length) this.#grow(this.length + tokens.length);
    for (let i = 0; i < tokens.length; i++) this.data[this.length++] = tokens[i];
  }

  /** The tokens so far, as a right-sized copy. */
  toArray(): Uint16Array {
    return this.data.slice(0, this.length);
  }

  #grow(min: number): void {
    let size = this.data.length * 2;
    while (size < min) size *= 2;
    const next = new Uint16Array(size);
    next.set(this.data.subarray(0, this.length));
    this.data = next;
  }
}

// Cache of word -> token (a number) or tokens (an array). Cleared wholesale when full: far
// cheaper than LRU bookkeeping, and the frequent words come back within a few documents.
const CACHE_LIMIT = 400_000;
let cache = new Map<string, number | number[]>();

/** Runs the BPE merges on one pre-tokenized word given as a byte string. */
function merge(word: string): number[] {
  const n = word.length;
  // bounds[i]..bounds[i+1] is part i; pair[i] is the rank of parts i and i+1 merged.
  const bounds: number[] = [];
  for (let i = 0; i <= n; i++) bounds.push(i);
  const pair: number[] = [];
  for (let i = 0; i < n - 1; i++) pair.push(RANKS.get(word.slice(i, i + 2)) ?? Infinity);
  while (bounds.length > 2) {
    let best = Infinity;
    let at = -1;
    for (let i = 0; i < pair.length; i++) {
      if (pair[i] < best) {
        best = pair[i];
        at = i;
      }
    }
    if (at < 0) break;
    bounds.splice(at + 1, 1);
    pair.splice(at, 1);
    if (at < pair.length) {
      pair[at] = RANKS.get(word.slice(bounds[at], bounds[at + 2])) ?? Infinity;
    }
    if (at > 0) pair[at - 1] = RANKS.get(word.slice(bounds[at - 1], bounds[at + 1])) ?? Infinity;
  }
  const out: number[] = [];
  for (let i = 0; i < bounds.length - 1; i++) {
    const rank = RANKS.get(word.slice(bounds[i], bounds[i + 1]));
    // Every single byte is a token, so a part without a rank means a corrupt table.
    if (rank === undefined) {
      throw new Error("GPT-2 rank table is incomplete: reinstall gpt-tokenizer");
    }
    out.push(rank);
  }
  return out;
}

function encodeWord(word: string): number | number[] {
  let ascii = true;
  for (let i = 0; i < word.length; i++) {
    if (word.charCodeAt(i) > 0x7f) {
      ascii = false;
      break;
    }
  }
  const key = ascii ? word : byteString(utf8.encode(word));
  const whole = RANKS.get(key);
  if (whole !== undefined) return whole;
  const tokens = merge(key);
  return tokens.length === 1 ? tokens[0] : tokens;
}

/**
 * Appends the GPT-2 tokens of `text` to `out`. Special-token text such as `<|endoftext|>`
 * is encoded as ordinary text.
 */
export function encodeInto(text: string, out: TokenBuffer): void {
  SPLIT.lastIndex = 0;
  let m: RegExpExecArray | null;
  while ((m = SPLIT.exec(text)) !== null) {
    const word = m[0];
    let hit = cache.get(word);
    if (hit === undefined) {
      hit = encodeWord(word);
      if (cache.size >= CACHE_LIMIT) cache = new Map();
      cache.set(word, hit);
    }
    if (typeof hit === "number") out.push(hit);
    else out.pushAll(hit);
  }
}

/**
 * Encodes text to GPT-2 token ids, treating special-token text as plain text.
 *
 * @example
 * ```ts
 * encodeOrdinary("Hello world"); // [15496, 995]
 * ```
 */
export function encodeOrdinary(text: string): number[] {
  const out = new TokenBuffer(Math.max(16, text.length >> 2));
  encodeInto(text, out);
  return Array.from(out.data.subarray(0, out.length));
}

/**
 * Decodes GPT-2 token ids back to text; EOT becomes `<|endoftext|>`.
 *
 * @example
 * ```ts
 * decodeTokens([15496, 995]); // "Hello world"
 * ```
 */
export function decodeTokens(tokens: Iterable<number>): string {
  const bytes: number[] = [];
  for (const t of tokens) {
    const s = t === EOT ? "<|endoftext|>" : BYTES[t];
    if (s === undefined) {
      throw new RangeError(`Cannot decode token ${t}: it is not a GPT-2 token id (0-50256)`);
    }
    for (let i = 0; i < s.length; i++) bytes.push(s.charCodeAt(i));
  }
  // A cut inside a multi-byte character decodes as U+FFFD rather than throwing.
  return new TextDecoder().decode(new Uint8Array(bytes));
}
