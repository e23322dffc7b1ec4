/**
 * A growable byte buffer that the stream appends to and the batcher cuts from the front,
 * plus the rule for where a text file may be cut without changing its BPE tokens.
 *
 * @module
 */

/** FIFO of bytes with amortised O(1) append and cut. */
export class ByteQueue {
  #buf = new Uint8Array(1 << 16);
  #start = 0;
  #end = 0;

  get length(): number {
    return this.#end - this.#start;
  }

  /** The queued bytes as one view (valid until the next push or take). */
  view(): Uint8Array {
    return this.#buf.subarray(this.#start, this.#end);
  }

  push(chunk: Uint8Array): void {
    if (this.#end + chunk.length > this.#buf.length) {
      const live = this.length;
      let size = this.#buf.length;
      while (size < live + chunk.length) size *= 2;
      const next = size === this.#buf.length ? this.#buf : new Uint8Array(size);
      if (next === this.#buf) next.copyWithin(0, this.#start, this.#end);
      else next.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = next;
      this.#start = 0;
      this.#end = live;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /** Removes and returns a copy of the first `n` bytes. */
  take(n: number): Uint8Array {
    const out = this.#buf.slice(this.#start, this.#start + n);
    this.#start += n;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return out;
  }

  /** Drops the first `n` bytes. */
  drop(n: number): void {
    this.#start += n;
    if (this.#start === this.#end) this.#start = this.#end = 0;
  }
}

// Printable ASCII other than space: never whitespace, never part of a multi-byte character.
const solid = (b: number) => b > 0x20 && b < 0x7f;
const space = (b: number) => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;

/**
 * Finds a cut in `bytes` at or after `from`: just before an ASCII space, tab, CR or LF that
 * follows a non-space ASCII character. GPT-2's pre-tokenizer has no lookbehind and its only
 * lookahead, `\s+(?!\S)`, belongs to pieces made of whitespace; the piece ending before such
 * a cut is a word, number or punctuation run that never extends into whitespace, so both
 * sides split exactly as the whole text does and tokenizing them separately gives identical
 * tokens. Returns -1 when there is no such place.
 */
export function findSafeCut(bytes: Uint8Array, from: number): number {
  for (let i = Math.max(from, 1); i < bytes.length; i++) {
    if (space(bytes[i]) && solid(bytes[i - 1])) return i;
  }
  return -1;
}

/** Moves `at` back to the start of a UTF-8 character, for forced cuts. */
export function utf8Boundary(bytes: Uint8Array, at: number): number {
  let i = at;
  while (i > 0 && (bytes[i] & 0xc0) === 0x80) i--;
  return i > 0 ? i : at;
}

/** Offset just past the `n`-th newline in `bytes`, or -1 when there are fewer. */
export function afterNewlines(bytes: Uint8Array, n: number): number {
  let at = 0;
  for (let k = 0; k < n; k++) {
    const nl = bytes.indexOf(0x0a, at);
    if (nl < 0) return -1;
    at = nl + 1;
  }
  return at;
}

/** Number of newline bytes in `bytes`. */
export function countNewlines(bytes: Uint8Array): number {
  let n = 0;
  let at = bytes.indexOf(0x0a);
  while (at >= 0) {
    n++;
    at = bytes.indexOf(0x0a, at + 1);
  }
  return n;
}
