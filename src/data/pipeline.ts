/**
 * The shard builder behind `deno task data`: streams every source, tokenizes on a worker
 * pool, and writes llm.c shards plus `manifest.json`, resumably.
 *
 * Order is fixed by the input alone: batches are cut from the byte stream by content
 * (whole lines, or text cut at BPE-safe newlines), results are consumed in submission
 * order, and each token carries a stream position (source, unit, offset) so `--resume` can
 * restart from the last shard boundary without duplicating or skipping a document.
 *
 * @module
 */
import {
  afterNewlines,
  ByteQueue,
  countNewlines,
  findSafeCut,
  utf8Boundary,
} from "./_byte_queue.ts";
import { lockDir } from "../dir_lock.ts";
import type { HttpOptions } from "./_http.ts";
import { CompressedDataError } from "./_decoder.ts";
import { openSource } from "./_streams.ts";
import { LineReport } from "./_line_report.ts";
import type { BatchRequest, BatchResult } from "./_tokenize_batch.ts";
import { TokenizerPool } from "./_worker_pool.ts";
import { type LineTally, SplitWriter } from "./_writer.ts";
import {
  comparePositions,
  dropShardsFrom,
  type Manifest,
  type ManifestConfig,
  type ManifestShard,
  openManifest,
  type StreamPosition,
  updateTotals,
  writeManifest,
} from "./manifest.ts";
import { type Source, unitHash } from "./sources.ts";

/** Counters reported while building. */
export interface BuildProgress {
  /** Compressed bytes read from all sources. */
  rawBytes: number;
  /** Total compressed bytes when every source size is known. */
  totalBytes?: number;
  /** Decompressed bytes tokenized. */
  textBytes: number;
  /** Documents read. */
  documents: number;
  /** Tokens written. */
  tokens: number;
  /** Malformed lines skipped. */
  malformed: number;
  /** The source being read (from 0). */
  source: number;
  /** Sources in all. */
  sources: number;
}

/** Options for {@linkcode buildShards}. */
export interface BuildOptions {
  /** What to read, in order. */
  sources: Source[];
  /** Output folder; created when missing. */
  outDir: string;
  /** Shard name prefix. Default `data`. */
  name?: string;
  /** Tokens per shard. Default 100,000,000. */
  shardTokens?: number;
  /** Validation split: the first N tokens, or a seeded fraction of documents. Default none. */
  val?: { tokens: number } | { fraction: number; seed?: number };
  /** JSONL field with the text. Default `text`. */
  textField?: string;
  /** Tokenizer workers; 0 tokenizes on this thread. Default: the number of cores. */
  workers?: number;
  /** A started pool to use instead of making one (benches pass a warm pool). */
  pool?: TokenizerPool;
  /** Fail on a malformed JSON line instead of skipping it. */
  strict?: boolean;
  /** Continue after the last complete shard in `outDir`. */
  resume?: boolean;
  /** Delete existing shards and manifest of this name first. */
  overwrite?: boolean;
  /** Recorded in the manifest. */
  subset?: { fraction: number; from: number; seed: number } | null;
  /** Retries and timeouts of http(s) sources. */
  http?: HttpOptions;
  /** Bytes per JSONL batch and target bytes per text chunk. Default 256 KiB. */
  batchBytes?: number;
  /** Stops the build after the shard under way (the manifest stays consistent). */
  signal?: AbortSignal;
  /** Called with the counters as the build goes. */
  onProgress?: (p: BuildProgress) => void;
  /** Called with each warning (skipped lines, invalid UTF-8). */
  onWarning?: (message: string) => void;
  /** Called with each completed shard. */
  onShard?: (shard: ManifestShard) => void;
}

/** What a build did. */
export interface BuildResult {
  /** The folder's manifest after the build. */
  manifest: Manifest;
  /** True when stopped by the signal; the completed shards and manifest are consistent. */
  aborted: boolean;
  /** Tokens produced in this run (not counting those skipped by `--resume`). */
  tokens: number;
  /** Decompressed text bytes read in this run. */
  textBytes: number;
  /** Wall time of the build. */
  seconds: number;
}

/**
 * Builds token shards from `options.sources` into `options.outDir`.
 *
 * @example
 * ```ts
 * const sources = await resolveSources(["data/input.txt"]);
 * const { manifest } = await buildShards({ sources, outDir: "out/tiny", val: { tokens: 32768 } });
 * ```
 */
export async function buildShards(options: BuildOptions): Promise<BuildResult> {
  const t0 = performance.now();
  const dir = options.outDir;
  const name = options.name ?? "data";
  const shardTokens = options.shardTokens ?? 100_000_000;
  if (!(Number.isInteger(shardTokens) && shardTokens > 0 && shardTokens < 2 ** 31)) {
    throw new RangeError(`Invalid shard size ${shardTokens}: use a positive integer below 2^31`);
  }
  const val = options.val ?? null;
  const config: ManifestConfig = {
    name,
    sources: options.sources.map((s) => ({ key: s.key, location: s.location })),
    subset: options.subset ?? null,
    shardTokens,
    val: val === null
      ? null
      : "tokens" in val
      ? { tokens: val.tokens }
      : { fraction: val.fraction, seed: val.seed ?? 0 },
    textField: options.textField ?? "text",
  };
  // One build at a time: another one into the folder would delete or replace shards under
  // this one. Taken before the manifest is opened, so a refused run changes nothing.
  const lock = await lockDir(dir, {
    what: "output folder",
    instead: "write the shards into another --out",
  });
  if (lock.notice) options.onWarning?.(lock.notice);
  try {
    return await buildLocked(options, config, t0);
  } finally {
    await lock.release();
  }
}

// buildShards, under the output folder's lock.
async function buildLocked(
  options: BuildOptions,
  config: ManifestConfig,
  t0: number,
): Promise<BuildResult> {
  const manifest = await openManifest(options.outDir, config, options);
  if (manifest.complete) {
    return { manifest, aborted: false, tokens: 0, textBytes: 0, seconds: 0 };
  }
  const build = new ShardBuild(options, config, manifest);
  let aborted: boolean;
  try {
    aborted = await build.run();
  } finally {
    build.close();
  }
  return {
    manifest,
    aborted,
    tokens: build.progress.tokens,
    textBytes: build.progress.textBytes,
    seconds: (performance.now() - t0) / 1000,
  };
}

type InFlight = { promise: Promise<BatchResult>; s: number; unit: number; bytes: number };

/**
 * One build after the manifest is open: the sources are read from the restart position, cut
 * into batches, tokenized by the pool (at most `maxInFlight` batches at a time) and routed to
 * the split writers in order; the manifest is completed at the end.
 */
class ShardBuild {
  readonly progress: BuildProgress;
  readonly #options: BuildOptions;
  readonly #manifest: Manifest;
  readonly #dir: string;
  readonly #field: string;
  readonly #writers: ReturnType<typeof openWriters>;
  readonly #fraction?: number;
  readonly #valSeed: number;
  readonly #pool: TokenizerPool;
  readonly #ownPool: boolean;
  readonly #maxInFlight: number;
  readonly #batchBytes: number;
  readonly #lines: LineReport;
  #inFlight: InFlight[] = [];

  constructor(options: BuildOptions, config: ManifestConfig, manifest: Manifest) {
    this.#options = options;
    this.#manifest = manifest;
    this.#dir = options.outDir;
    this.#field = config.textField;
    this.#writers = openWriters(options, config, manifest);
    const val = options.val ?? null;
    this.#fraction = val !== null && "fraction" in val ? val.fraction : undefined;
    this.#valSeed = val !== null && "fraction" in val ? val.seed ?? 0 : 0;
    this.#ownPool = options.pool === undefined;
    this.#pool = options.pool ??
      new TokenizerPool(options.workers ?? navigator.hardwareConcurrency);
    this.#maxInFlight = Math.max(2, this.#pool.size * 3);
    this.#batchBytes = options.batchBytes ?? 256 * 1024;
    const sizes = options.sources.map((s) => s.size);
    const { restart, tally } = this.#writers;
    this.progress = {
      rawBytes: 0,
      totalBytes: sizes.every((s) => s !== undefined)
        ? sizes.reduce((a, b) => a! + b!, 0)
        : undefined,
      textBytes: 0,
      documents: 0,
      tokens: 0,
      malformed: tally.malformed,
      source: restart.source,
      sources: options.sources.length,
    };
    this.#lines = new LineReport(options.sources, tally, options);
  }

  /** Stops the pool when the build made it. */
  close(): void {
    if (this.#ownPool) this.#pool.close();
  }

  /** Reads every source from the restart position; returns true when aborted. */
  async run(): Promise<boolean> {
    const options = this.#options, { restart, tally, valWriter, trainWriter } = this.#writers;
    let aborted = false;
    for (let s = restart.source; s < options.sources.length && !aborted; s++) {
      this.progress.source = s;
      aborted = await this.#readSource(
        options.sources[s],
        s,
        s === restart.source ? restart.unit : 0,
      );
    }
    for (const job of this.#inFlight) {
      if (options.signal?.aborted) {
        aborted = true;
        break;
      }
      await this.#consume(job);
    }
    this.#inFlight = [];
    this.#lines.done();
    if (aborted) return true;
    const end = { source: options.sources.length, unit: 0, offset: 0 };
    await valWriter?.finish(end);
    await trainWriter.finish(end);
    const manifest = this.#manifest;
    manifest.complete = true;
    updateTotals(manifest);
    manifest.totals.malformed = tally.malformed;
    manifest.totals.invalidUtf8 = tally.invalidUtf8;
    await writeManifest(this.#dir, manifest);
    return false;
  }

  /** Sends one unit's tokens to its split (by hash of its key, or val until it is full). */
  async #route(src: Source, s: number, u: number, tokens: Uint16Array): Promise<void> {
    if (tokens.length === 0) return;
    const { valWriter, trainWriter } = this.#writers;
    if (valWriter && this.#fraction !== undefined) {
      const key = src.format === "txt" ? src.key : `${src.key}#${u}`;
      const w = unitHash(this.#valSeed, key) < this.#fraction ? valWriter : trainWriter;
      await w.add(s, u, tokens, 0);
      return;
    }
    let used = 0;
    if (valWriter && !valWriter.full) used = await valWriter.add(s, u, tokens, 0);
    if (used < tokens.length) await trainWriter.add(s, u, tokens.subarray(used), used);
  }

  /** Waits for a tokenized batch and routes its units, with their line problems, in order. */
  async #consume(job: InFlight): Promise<void> {
    const result = await job.promise;
    const src = this.#options.sources[job.s];
    const lines = this.#lines, progress = this.progress;
    lines.enter(job.s);
    // Issues are handled in line order between the units' tokens, so the counts a shard
    // records cover exactly the lines before its end position.
    let next = 0;
    let nextReplaced = 0;
    let at = 0;
    for (let k = 0; k < result.counts.length; k++) {
      while (result.issues[next]?.line === k) lines.issue(job.unit, result.issues[next++]);
      while (result.replaced[nextReplaced]?.line === k) {
        lines.replaced(job.unit + k, result.replaced[nextReplaced++].count);
      }
      const n = result.counts[k];
      await this.#route(src, job.s, job.unit + k, result.tokens.subarray(at, at + n));
      at += n;
    }
    progress.textBytes += job.bytes;
    progress.documents += result.documents;
    progress.tokens += result.tokens.length;
    progress.malformed = this.#writers.tally.malformed;
    this.#options.onProgress?.(progress);
  }

  async #submit(s: number, unit: number, req: BatchRequest): Promise<void> {
    // Read the length first: submitting transfers (detaches) the buffer.
    const bytes = req.bytes.length;
    this.#inFlight.push({ promise: this.#pool.submit(req), s, unit, bytes });
    while (this.#inFlight.length >= this.#maxInFlight) {
      await this.#consume(this.#inFlight.shift()!);
    }
  }

  // Streams one source into batches; returns true when aborted.
  async #readSource(src: Source, s: number, skipUnits: number): Promise<boolean> {
    const options = this.#options;
    const stream = await openSource(src, {
      // The stop signal also cancels a download stalled mid-read.
      http: { ...options.http, signal: options.http?.signal ?? options.signal },
      onRawBytes: (n) => this.progress.rawBytes += n,
    });
    const reader = stream.getReader();
    try {
      return await this.#batchSource(reader, s, skipUnits, src.format === "txt");
    } catch (e) {
      let failure = e;
      // A bad line in a compressed file is often the first sign of damage that the decoder
      // finds only further on (gzip checks its CRC at the end of a member): look there first.
      if (
        !(e instanceof ReadFailure) && src.compression !== "none" &&
        this.#lines.issueSource === s
      ) {
        const damage = await damageAhead(reader);
        if (damage) failure = new ReadFailure(damage);
      }
      if (!(failure instanceof ReadFailure)) throw failure;
      if (options.signal?.aborted) return true;
      throw await this.#readFailure(src, s, failure.error);
    } finally {
      await reader.cancel().catch(() => {});
    }
  }

  // Finishes what can be kept after a read failure and returns the error to throw.
  async #readFailure(src: Source, s: number, e: unknown): Promise<Error> {
    let removed = 0;
    if (e instanceof CompressedDataError && !e.truncated) {
      // Nothing from a damaged file is kept: the bytes decoded before the damage was found
      // may be wrong too.
      const jobs = this.#inFlight.splice(0);
      for (const job of jobs) job.promise.catch(() => {});
      for (const job of jobs) if (job.s < s) await this.#consume(job);
      removed = await dropShardsFrom(this.#dir, this.#manifest, s);
    } else {
      // Finish the batches read before the failure so their full shards reach the disk
      // and a later --resume starts as late as possible.
      for (const job of this.#inFlight.splice(0)) await this.#consume(job);
    }
    return new Error(readFailureMessage(src, e, removed), { cause: e });
  }

  // Cuts the stream of one source into batches and submits them; true when aborted.
  async #batchSource(
    reader: ReadableStreamDefaultReader<Uint8Array>,
    s: number,
    skipUnits: number,
    text: boolean,
  ): Promise<boolean> {
    const batchBytes = this.#batchBytes;
    const queue = new ByteQueue();
    let unit = 0;
    while (true) {
      let next: ReadableStreamReadResult<Uint8Array>;
      try {
        next = await reader.read();
      } catch (e) {
        throw new ReadFailure(e);
      }
      if (next.done) break;
      if (this.#options.signal?.aborted) return true;
      queue.push(next.value);
      while (queue.length >= batchBytes) {
        const bytes = queue.view();
        // Text is cut at the first BPE-safe place in [B, 8B) (B = batchBytes), or forcibly
        // at 8B when there is none; looking no further than 8B keeps the cuts a function of
        // the content alone, whatever sizes the chunks arrive in.
        const max = 8 * batchBytes;
        // JSONL batches end at the last newline within B bytes, or just after the one line
        // when that line alone is longer.
        let cut = text
          ? findSafeCut(bytes.subarray(0, Math.min(bytes.length, max + 1)), batchBytes)
          : bytes.lastIndexOf(0x0a, batchBytes - 1) + 1 || bytes.indexOf(0x0a, batchBytes) + 1;
        if (text && cut < 0 && bytes.length > max) cut = utf8Boundary(bytes, max);
        if (cut <= 0) break;
        unit = await this.#emit(s, unit, skipUnits, queue, cut, text);
      }
    }
    if (queue.length > 0) await this.#emit(s, unit, skipUnits, queue, queue.length, text);
    return false;
  }

  // Sends the first `cut` queued bytes as one batch, minus units before `skipUnits`.
  async #emit(
    s: number,
    unit: number,
    skipUnits: number,
    queue: ByteQueue,
    cut: number,
    text: boolean,
  ): Promise<number> {
    const field = this.#field;
    if (text) {
      if (unit < skipUnits) queue.drop(cut);
      else {
        await this.#submit(s, unit, {
          kind: "text",
          bytes: queue.take(cut),
          docStart: unit === 0,
          field,
        });
      }
      return unit + 1;
    }
    const bytes = queue.view().subarray(0, cut);
    const lines = countNewlines(bytes) + (bytes[cut - 1] === 0x0a ? 0 : 1);
    if (unit + lines <= skipUnits) {
      queue.drop(cut);
      return unit + lines;
    }
    let first = unit;
    if (unit < skipUnits) {
      const at = afterNewlines(bytes, skipUnits - unit);
      queue.drop(at);
      cut -= at;
      first = skipUnits;
    }
    await this.#submit(s, first, { kind: "jsonl", bytes: queue.take(cut), docStart: false, field });
    return unit + lines;
  }
}

/** A failure to read a source's bytes, as opposed to one found in them after reading. */
class ReadFailure extends Error {
  readonly error: unknown;
  constructor(error: unknown) {
    super(error instanceof Error ? error.message : String(error));
    this.error = error;
  }
}

/**
 * The split writers of a build, continuing after the shards `manifest` lists, the position
 * to restart reading from, and the line-problem counts as of there.
 */
function openWriters(options: BuildOptions, config: ManifestConfig, manifest: Manifest) {
  const dir = options.outDir;
  const { name, shardTokens } = config;
  const val = options.val ?? null;
  const last = (split: "train" | "val") => manifest.shards.filter((s) => s.split === split).at(-1);
  const lastVal = last("val");
  const lastTrain = last("train");
  // Line problems so far; each shard records them as of its end, so resume restores them.
  const tally: LineTally = { malformed: 0, invalidUtf8: 0 };
  const sink = async (shard: ManifestShard) => {
    manifest.shards.push(shard);
    updateTotals(manifest);
    await writeManifest(dir, manifest);
    options.onShard?.(shard);
  };
  const valWriter = val === null ? undefined : new SplitWriter({
    dir,
    name,
    split: "val",
    shardTokens,
    limit: "tokens" in val ? val.tokens : Infinity,
    firstIndex: lastVal ? lastVal.index + 1 : 0,
    resumeAt: lastVal?.end,
    written: manifest.totals.valTokens,
    sink,
    tally: () => ({ ...tally }),
  });
  const trainStart = lastTrain?.end ??
    (valWriter?.full && val !== null && "tokens" in val ? lastVal?.end : undefined);
  const trainWriter = new SplitWriter({
    dir,
    name,
    split: "train",
    shardTokens,
    limit: Infinity,
    firstIndex: lastTrain ? lastTrain.index + 1 : 1,
    resumeAt: trainStart,
    written: manifest.totals.trainTokens,
    sink,
    tally: () => ({ ...tally }),
  });
  const zero: StreamPosition = { source: 0, unit: 0, offset: 0 };
  const starts = [
    valWriter && !valWriter.full ? lastVal?.end ?? zero : undefined,
    trainStart ?? zero,
  ]
    .filter((p): p is StreamPosition => p !== undefined);
  const restart = starts.reduce((a, b) => comparePositions(a, b) <= 0 ? a : b);
  for (const s of manifest.shards.filter((s) => comparePositions(s.end, restart) <= 0)) {
    tally.malformed = Math.max(tally.malformed, s.malformed);
    tally.invalidUtf8 = Math.max(tally.invalidUtf8, s.invalidUtf8 ?? 0);
  }
  return { valWriter, trainWriter, restart, tally };
}

/** Reads a compressed source to its end to see whether its decoder finds damage there. */
async function damageAhead(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): Promise<CompressedDataError | undefined> {
  try {
    while (!(await reader.read()).done) {
      // Only the decoder's checks matter here.
    }
  } catch (e) {
    if (e instanceof CompressedDataError) return e;
  }
  return undefined;
}

/** The message for a source that could not be read, with what to do about it. */
function readFailureMessage(src: Source, e: unknown, removed: number): string {
  const reason = e instanceof Error ? e.message : String(e);
  const fetch = /^https?:\/\//i.test(src.location)
    ? "run again with --resume to download it afresh"
    : "download it again, then run with --resume";
  let hint = `check the source and run again with --resume`;
  if (e instanceof CompressedDataError && e.truncated) hint = fetch;
  else if (e instanceof CompressedDataError) {
    const kept = removed === 0
      ? "no shard holds its tokens"
      : removed === 1
      ? "the shard holding its tokens was removed"
      : `the ${removed} shards holding its tokens were removed`;
    hint = `${kept}: ${fetch}`;
  }
  return `Cannot read ${src.location}: ${reason}; ${hint}`;
}
