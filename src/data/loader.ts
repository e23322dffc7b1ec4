/**
 * The training-side reader: opens llm.c shards, checks their headers, and serves batches of
 * B x T input tokens with their next-token targets, in order or in a seeded shuffle, from a
 * cursor that can be saved with a checkpoint and restored exactly.
 *
 * A shard of n tokens holds floor((n - 1) / (B*T)) windows; window w covers tokens
 * [w*B*T, (w+1)*B*T] (one extra token for the last target). Batches are read from the file
 * on demand, so a 200 MB shard never has to sit in memory.
 *
 * @module
 */
import { decodeShardHeader, SHARD_HEADER_BYTES } from "./shard.ts";

/** A checked shard file. */
export interface ShardInfo {
  /** Path of the .bin shard. */
  path: string;
  /** Number of tokens the shard holds, from its header. */
  tokens: number;
}

/** Options for {@linkcode openShards}. */
export interface OpenShardsOptions {
  /** Which split to take from a folder: files named `*_train_*.bin` or `*_val_*.bin`. */
  split?: "train" | "val";
}

/**
 * Lists and checks shards: a folder (its `*_<split>_NNNNNN.bin` files, sorted), one file,
 * or an explicit list of files.
 *
 * @example
 * ```ts
 * const train = await openShards("out/shakespeare");
 * const val = await openShards("out/shakespeare", { split: "val" });
 * ```
 */
export async function openShards(
  source: string | string[],
  options: OpenShardsOptions = {},
): Promise<ShardInfo[]> {
  let paths: string[];
  if (Array.isArray(source)) paths = source;
  else {
    const info = await Deno.stat(source).catch(() => undefined);
    if (!info) {
      throw new Error(`Cannot open shards: ${source} does not exist; run \`deno task data\``);
    }
    if (info.isDirectory) {
      const split = options.split ?? "train";
      const pattern = new RegExp(`_${split}_\\d+\\.bin$`);
      paths = [];
      for await (const e of Deno.readDir(source)) {
        if (e.isFile && pattern.test(e.name)) paths.push(`${source.replace(/\/+$/, "")}/${e.name}`);
      }
      paths.sort();
      if (paths.length === 0) {
        throw new Error(
          `Cannot open shards: no ${split} shards in ${source}; build them with \`deno task data\``,
        );
      }
    } else paths = [source];
  }
  const out: ShardInfo[] = [];
  for (const path of paths) {
    using file = await Deno.open(path, { read: true });
    const size = (await file.stat()).size;
    const head = new Uint8Array(SHARD_HEADER_BYTES);
    let got = 0;
    while (got < head.length) {
      const n = await file.read(head.subarray(got));
      if (n === null) break;
      got += n;
    }
    const { tokens } = decodeShardHeader(head.subarray(0, got), path, size);
    out.push({ path, tokens });
  }
  return out;
}

/** A shard holds a token at or above the loader's `vocabSize`; the message names file and offset. */
export class OutOfVocabularyError extends RangeError {
  /** A message naming the shard file, the token index and byte offset, and the token. */
  constructor(message: string) {
    super(message);
    this.name = "OutOfVocabularyError";
  }
}

/** Where a {@linkcode TokenLoader} is: the next batch is window `window` of shard `shard`. */
export interface LoaderCursor {
  /** Completed passes over every shard (0 in the first). */
  epoch: number;
  /** Position in this epoch's shard order. */
  shard: number;
  /** Position in this shard's window order. */
  window: number;
}

/** Options for {@linkcode TokenLoader}. */
export interface LoaderOptions {
  /** B: rows per batch. */
  batchSize: number;
  /** T: tokens per row. */
  seqLen: number;
  /** Visit shards and windows in a seeded random order, reshuffled every epoch. */
  shuffle?: boolean;
  /** Seed of the shuffle (default 0). */
  seed?: number;
  /** Start here instead of at the first batch (a cursor saved with a checkpoint). */
  cursor?: LoaderCursor;
  /** The model's vocabulary: a token at or above it is an error naming the file and offset. */
  vocabSize?: number;
}

/** One batch; both arrays hold B*T token ids, row-major, and are reused by the next call. */
export interface TokenBatch {
  /** Input token ids [B*T]. */
  inputs: Int32Array;
  /** Next-token targets [B*T]: each input's following token in the shard. */
  targets: Int32Array;
}

/**
 * Serves B x T batches from shards.
 *
 * @example
 * ```ts
 * const loader = new TokenLoader(await openShards("out/tiny"), { batchSize: 4, seqLen: 64 });
 * const { inputs, targets } = loader.nextBatch();
 * const saved = loader.cursor; // JSON-serialisable
 * loader.cursor = saved;
 * ```
 */
export class TokenLoader {
  /** B: rows per batch. */
  readonly batchSize: number;
  /** T: tokens per row. */
  readonly seqLen: number;
  /** Whether shards and windows are read in a seeded random order. */
  readonly shuffle: boolean;
  /** Seed of the shuffle. */
  readonly seed: number;
  /** Tokens at or above this are an error (default 65536: any u16 token). */
  readonly vocabSize: number;
  #shards: ShardInfo[];
  #windows: number[];
  #cursor: LoaderCursor = { epoch: 0, shard: 0, window: 0 };
  #shardOrder: number[] = [];
  #orderEpoch = -1;
  #windowOrder: Uint32Array | undefined;
  #windowKey = "";
  #file: Deno.FsFile | undefined;
  #filePath = "";
  #raw: Uint8Array;
  #batch: TokenBatch;

  /**
   * A loader over the shards (those too small for one batch are skipped); throws when no
   * shard holds a whole batch.
   */
  constructor(shards: ShardInfo[], options: LoaderOptions) {
    const { batchSize: B, seqLen: T } = options;
    if (!(Number.isInteger(B) && B > 0 && Number.isInteger(T) && T > 0)) {
      throw new RangeError(`Invalid batch shape ${B} x ${T}: use positive integers`);
    }
    this.batchSize = B;
    this.seqLen = T;
    this.shuffle = options.shuffle ?? false;
    this.seed = options.seed ?? 0;
    this.vocabSize = options.vocabSize ?? 65536;
    this.#windows = shards.map((s) => s.tokens > B * T ? Math.floor((s.tokens - 1) / (B * T)) : 0);
    const usable = shards.filter((_, i) => this.#windows[i] > 0);
    if (usable.length === 0) {
      const most = Math.max(0, ...shards.map((s) => s.tokens));
      throw new RangeError(
        `Shards too small for ${B} x ${T} batches: the largest holds ${most} tokens and a ` +
          `batch needs ${B * T + 1}; lower the batch size or sequence length`,
      );
    }
    this.#shards = usable;
    this.#windows = this.#windows.filter((w) => w > 0);
    this.#raw = new Uint8Array(2 * (B * T + 1));
    this.#batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
    if (options.cursor) this.cursor = options.cursor;
  }

  /** Batches in one pass over every shard. */
  get batchesPerEpoch(): number {
    return this.#windows.reduce((a, b) => a + b, 0);
  }

  /** The position of the next batch; a copy, safe to store. */
  get cursor(): LoaderCursor {
    return { ...this.#cursor };
  }

  set cursor(c: LoaderCursor) {
    const ok = [c.epoch, c.shard, c.window].every((v) => Number.isInteger(v) && v >= 0);
    if (!ok || c.shard >= this.#shards.length) {
      throw new RangeError(
        `Invalid loader cursor ${
          JSON.stringify(c)
        }: it does not fit these ${this.#shards.length} ` +
          `shards; restore it only with the shards and batch shape it was saved with`,
      );
    }
    this.#cursor = { ...c };
  }

  /** Goes back to the first batch of epoch 0 (validation passes start here). */
  reset(): void {
    this.#cursor = { epoch: 0, shard: 0, window: 0 };
  }

  /** Reads the next batch and advances the cursor. */
  nextBatch(): TokenBatch {
    const c = this.#cursor;
    const shard = this.#shardAt(c.epoch, c.shard);
    if (c.window >= this.#windows[shard]) {
      throw new RangeError(`Invalid loader cursor: window ${c.window} is past the shard's end`);
    }
    const window = this.#windowAt(c.epoch, shard, c.window);
    const BT = this.batchSize * this.seqLen;
    this.#read(this.#shards[shard].path, SHARD_HEADER_BYTES + 2 * window * BT);
    const view = new DataView(this.#raw.buffer);
    const { inputs, targets } = this.#batch;
    let prev = view.getUint16(0, true);
    let worst = prev;
    for (let i = 0; i < BT; i++) {
      const next = view.getUint16(2 * (i + 1), true);
      inputs[i] = prev;
      targets[i] = next;
      prev = next;
      if (next > worst) worst = next;
    }
    if (worst >= this.vocabSize) this.#badToken(shard, window);
    c.window++;
    if (c.window >= this.#windows[shard]) {
      c.window = 0;
      c.shard++;
      if (c.shard >= this.#shards.length) {
        c.shard = 0;
        c.epoch++;
      }
    }
    return this.#batch;
  }

  /** Closes the open shard file. */
  close(): void {
    this.#file?.close();
    this.#file = undefined;
  }

  /** Closes the open shard file (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }

  #badToken(shard: number, window: number): never {
    const BT = this.batchSize * this.seqLen;
    const view = new DataView(this.#raw.buffer);
    let i = 0;
    while (view.getUint16(2 * i, true) < this.vocabSize) i++;
    const id = view.getUint16(2 * i, true);
    throw new OutOfVocabularyError(
      `${this.#shards[shard].path}: token ${i + window * BT} (byte ${
        SHARD_HEADER_BYTES + 2 * (i + window * BT)
      }) is ${id}, outside the vocabulary [0, ${this.vocabSize})`,
    );
  }

  #shardAt(epoch: number, position: number): number {
    if (!this.shuffle) return position;
    if (this.#orderEpoch !== epoch) {
      this.#shardOrder = Array.from(permutation(this.#shards.length, this.seed, epoch, -1));
      this.#orderEpoch = epoch;
    }
    return this.#shardOrder[position];
  }

  #windowAt(epoch: number, shard: number, position: number): number {
    if (!this.shuffle) return position;
    const key = `${epoch}/${shard}`;
    if (this.#windowKey !== key) {
      this.#windowOrder = permutation(this.#windows[shard], this.seed, epoch, shard);
      this.#windowKey = key;
    }
    return this.#windowOrder![position];
  }

  #read(path: string, offset: number): void {
    if (this.#filePath !== path) {
      this.close();
      this.#file = Deno.openSync(path, { read: true });
      this.#filePath = path;
    }
    const file = this.#file!;
    file.seekSync(offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < this.#raw.length) {
      const n = file.readSync(this.#raw.subarray(got));
      if (n === null) {
        throw new RangeError(`Cannot read ${path}: the file ended early; rebuild the shard`);
      }
      got += n;
    }
  }
}

/** A seeded Fisher-Yates permutation of 0..n-1 (mulberry32 generator). */
function permutation(n: number, seed: number, epoch: number, salt: number): Uint32Array {
  let state = (Math.imul(seed | 0, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca77) ^
    Math.imul(salt + 2, 0xc2b2ae3d)) >>> 0;
  const random = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const t = out[i];
    out[i] = out[j];
    out[j] = t;
  }
  return out;
}
