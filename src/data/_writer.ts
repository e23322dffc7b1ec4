/**
 * Accumulates one split's tokens (train or val) into shards. Tokens arrive tagged with their
 * stream position; anything before the writer's resume point is ignored, which is how
 * `--resume` avoids duplicates when the reader restarts from an earlier position.
 *
 * @module
 */
import { comparePositions, type ManifestShard, type StreamPosition } from "./manifest.ts";
import { shardFileName, writeShard } from "./shard.ts";
import { EOT } from "./tokenizer.ts";

/** Counts of line problems so far, which each shard records as of its end. */
export interface LineTally {
  /** Malformed JSON lines skipped. */
  malformed: number;
  /** Invalid UTF-8 sequences replaced by U+FFFD. */
  invalidUtf8: number;
}

/** Called after each shard is on disk under its final name. */
export type ShardSink = (shard: ManifestShard) => Promise<void>;

/** Collects the tokens of one split and writes full shards. */
export class SplitWriter {
  readonly split: "train" | "val";
  /** Total tokens this split may take (val first-N mode), or Infinity. */
  readonly limit: number;
  /** Tokens already in completed shards (and so on disk). */
  written = 0;
  #dir: string;
  #name: string;
  #shardTokens: number;
  #index: number;
  #buf = new Uint16Array(1 << 16);
  #fill = 0;
  #resumeAt: StreamPosition | undefined;
  #sink: ShardSink;
  #tally: () => LineTally;

  constructor(options: {
    dir: string;
    name: string;
    split: "train" | "val";
    shardTokens: number;
    limit: number;
    firstIndex: number;
    resumeAt?: StreamPosition;
    written?: number;
    sink: ShardSink;
    tally: () => LineTally;
  }) {
    this.split = options.split;
    this.limit = options.limit;
    this.#dir = options.dir;
    this.#name = options.name;
    this.#shardTokens = options.shardTokens;
    this.#index = options.firstIndex;
    this.#resumeAt = options.resumeAt;
    this.written = options.written ?? 0;
    this.#sink = options.sink;
    this.#tally = options.tally;
  }

  /** Tokens taken so far, counting the shard still in memory. */
  get taken(): number {
    return this.written + this.#fill;
  }

  /** True once the split has reached its limit. */
  get full(): boolean {
    return this.taken >= this.limit;
  }

  /**
   * Offers `tokens`, the tokens of unit (source, unit) starting at token `offset` of that
   * unit. Returns how many were consumed (fewer only when the limit is reached).
   */
  async add(source: number, unit: number, tokens: Uint16Array, offset: number): Promise<number> {
    let skip = 0;
    const r = this.#resumeAt;
    if (r) {
      const order = comparePositions({ source, unit, offset: 0 }, { ...r, offset: 0 });
      if (order < 0) return tokens.length;
      if (order === 0) skip = Math.max(0, Math.min(tokens.length, r.offset - offset));
      if (order > 0 || offset + tokens.length >= r.offset) this.#resumeAt = undefined;
    }
    let at = skip;
    while (at < tokens.length && !this.full) {
      const room = Math.min(this.#shardTokens - this.#fill, this.limit - this.taken);
      const n = Math.min(room, tokens.length - at);
      this.#reserve(this.#fill + n);
      this.#buf.set(tokens.subarray(at, at + n), this.#fill);
      this.#fill += n;
      at += n;
      if (this.#fill === this.#shardTokens || this.full) {
        await this.#flush({ source, unit, offset: offset + at });
      }
    }
    return at;
  }

  /** Writes whatever is buffered as a final, shorter shard. */
  async finish(end: StreamPosition): Promise<void> {
    if (this.#fill > 0) await this.#flush(end);
  }

  #reserve(n: number): void {
    if (n <= this.#buf.length) return;
    let size = this.#buf.length;
    while (size < n) size *= 2;
    const grown = new Uint16Array(Math.min(size, Math.max(n, this.#shardTokens)));
    grown.set(this.#buf.subarray(0, this.#fill));
    this.#buf = grown;
  }

  async #flush(end: StreamPosition): Promise<void> {
    const tokens = this.#buf.subarray(0, this.#fill);
    const file = shardFileName(this.#name, this.split, this.#index);
    const sha256 = await writeShard(`${this.#dir}/${file}`, tokens);
    let documents = 0;
    for (let i = 0; i < tokens.length; i++) if (tokens[i] === EOT) documents++;
    const shard: ManifestShard = {
      file,
      split: this.split,
      index: this.#index,
      tokens: tokens.length,
      documents,
      sha256,
      end,
      ...this.#tally(),
    };
    this.written += this.#fill;
    this.#fill = 0;
    this.#index++;
    await this.#sink(shard);
  }
}
