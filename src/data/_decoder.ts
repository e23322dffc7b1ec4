/**
 * gzip and zstd decompression as pull streams that read every member or frame and fail
 * with the compressed byte offset and the decoder's reason.
 *
 * The decoders are node:zlib's, driven synchronously through their handles (`writeSync`
 * with a caller-owned output buffer, as node:zlib's own sync functions do) rather than
 * through the Transform stream, because in Deno 2.9 that stream is not safe to build on:
 * - a zstd decoding error destroys the stream without calling the pending write's
 *   callback, so a reader awaiting it waits forever (`deno task data` hung on a damaged
 *   file at 0% CPU);
 * - when one write fills more than one output buffer, the error of a later round is thrown
 *   from inside a nextTick callback, uncaught, and ends the process;
 * - the zstd decoder stops at the end of the first frame and the rest is dropped silently.
 * The web DecompressionStream is no better for gzip: it reads one member only ("failed to
 * write whole buffer" on `cat a.gz b.gz`) and calls every damage a checksum mismatch.
 *
 * Here each call decodes at most one output buffer, on the caller's pull, so memory stays
 * bounded whatever the compression ratio; errors are thrown synchronously into the pull.
 *
 * @module
 */
import { constants, createGunzip, createZstdDecompress } from "node:zlib";
import { ZstdFrameTracker } from "./_zstd_frames.ts";

/** Damaged or truncated compressed data; `offset` is a byte offset in the compressed input. */
export class CompressedDataError extends Error {
  /** The compressed byte offset where the failure was found. */
  readonly offset: number;
  /** True when the input ends early (a cut download) rather than holding wrong bytes. */
  readonly truncated: boolean;
  constructor(message: string, offset: number, truncated: boolean) {
    super(message);
    this.name = "CompressedDataError";
    this.offset = offset;
    this.truncated = truncated;
  }
}

interface ZlibHandle {
  writeSync(
    flush: number,
    input: Uint8Array,
    inOff: number,
    inLen: number,
    out: Uint8Array,
    outOff: number,
    outLen: number,
  ): void;
  reset(): void;
  onerror: (message: string, errno: number) => void;
}

const OUT_BYTES = 256 * 1024;

/** One node:zlib decoder, stepped synchronously; see the module doc for why. */
class SyncDecoder {
  readonly #stream: { destroy(): void; on(e: string, f: () => void): void };
  readonly #handle: ZlibHandle;
  readonly #state: Uint32Array;
  readonly #flush: number;
  #error: string | undefined;
  #out = new Uint8Array(OUT_BYTES);
  #outAt = 0;

  constructor(kind: "gzip" | "zstd") {
    const stream = kind === "gzip" ? createGunzip() : createZstdDecompress();
    const inner = stream as unknown as { _handle?: ZlibHandle; _writeState?: Uint32Array };
    if (
      typeof inner._handle?.writeSync !== "function" || !(inner._writeState instanceof Uint32Array)
    ) {
      stream.destroy();
      throw new Error(
        `Cannot decode ${kind}: this runtime's node:zlib has no decoder handle to drive; ` +
          `use Deno 2.9 or later`,
      );
    }
    this.#stream = stream;
    this.#handle = inner._handle;
    this.#state = inner._writeState;
    this.#flush = kind === "gzip" ? constants.Z_NO_FLUSH : constants.ZSTD_e_continue;
    // Errors reported through the handle are kept for the step that caused them, instead of
    // destroying the stream from a nextTick.
    this.#handle.onerror = (message) => this.#error ??= message;
    stream.on("error", () => {});
  }

  /**
   * Decodes from `input[at, at + length)` into free output space. Returns the bytes made
   * (a view that stays valid), how many input bytes were used, and whether the output space
   * ran out (then call again, with the rest of the input or none, to get more).
   * Throws the decoder's reason as a string-bearing Error.
   */
  step(
    input: Uint8Array,
    at: number,
    length: number,
    finish = false,
  ): { output: Uint8Array; used: number; full: boolean } {
    if (this.#out.length - this.#outAt < OUT_BYTES / 4) {
      this.#out = new Uint8Array(OUT_BYTES);
      this.#outAt = 0;
    }
    const room = this.#out.length - this.#outAt;
    try {
      const flush = finish ? constants.Z_FINISH : this.#flush;
      this.#handle.writeSync(flush, input, at, length, this.#out, this.#outAt, room);
    } catch (e) {
      this.#error ??= (e as Error).message;
    }
    if (this.#error !== undefined) {
      throw new Error(this.#error.replace(/^Zstd decompress error: /, ""));
    }
    const made = room - this.#state[0];
    const output = this.#out.subarray(this.#outAt, this.#outAt + made);
    this.#outAt += made;
    return { output, used: length - this.#state[1], full: this.#state[0] === 0 };
  }

  /** Readies the decoder for a new zstd frame. */
  reset(): void {
    this.#handle.reset();
  }

  close(): void {
    this.#stream.destroy();
  }
}

/** Where the decoder is in its input: the current chunk and the unit being fed. */
interface Feed {
  chunk: Uint8Array;
  /** Next byte of `chunk` to give the decoder. */
  at: number;
  /** End of the unit in `chunk` being fed. */
  end: number;
  /** Stream offset of `chunk[0]`. */
  base: number;
  /** Stream offset where the unit being fed began. */
  unit: number;
  /** The decoder may hold more output for input already given. */
  pending: boolean;
  /** gzip: past the last member, where only zero padding may follow. */
  trailing: boolean;
}

/** Largest gzip unit: bounds how far past the damage a gzip failure's offset can be. */
const GZIP_UNIT = 16 * 1024;

/**
 * Decompresses a gzip (every member) or zstd (every frame; skippable frames skipped) byte
 * stream, as `gzip -dc` and `zstd -dc` do. Fails with a {@linkcode CompressedDataError}
 * giving the compressed byte offset and the decoder's reason, also when the input ends
 * inside a member or frame.
 */
export function decompress(
  input: ReadableStream<Uint8Array>,
  kind: "gzip" | "zstd",
): ReadableStream<Uint8Array> {
  const reader = input.getReader();
  const decoding = new Decoding(reader, kind);
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let output;
      try {
        output = await decoding.next();
      } catch (e) {
        decoding.close();
        await reader.cancel().catch(() => {});
        throw e;
      }
      if (output) controller.enqueue(output);
      else {
        decoding.close();
        controller.close();
      }
    },
    async cancel(reason) {
      decoding.close();
      await reader.cancel(reason);
    },
  });
}

/** One decompression: the input, the decoder, where it is in both, and the zstd frames. */
class Decoding {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #kind: "gzip" | "zstd";
  readonly #decoder: SyncDecoder;
  readonly #frames: ZstdFrameTracker | undefined;
  readonly #feed: Feed = {
    chunk: new Uint8Array(0),
    at: 0,
    end: 0,
    base: 0,
    unit: 0,
    pending: false,
    trailing: false,
  };

  constructor(reader: ReadableStreamDefaultReader<Uint8Array>, kind: "gzip" | "zstd") {
    this.#reader = reader;
    this.#kind = kind;
    this.#decoder = new SyncDecoder(kind);
    this.#frames = kind === "zstd" ? new ZstdFrameTracker() : undefined;
  }

  /** The next output bytes (never empty), or undefined at the end of the input. */
  async next(): Promise<Uint8Array | undefined> {
    const feed = this.#feed;
    while (true) {
      if (feed.pending || feed.at < feed.end) {
        const output = this.#step();
        if (output.length > 0) return output;
      } else if (feed.at < feed.chunk.length) this.#nextUnit();
      else {
        const next = await this.#reader.read();
        if (next.done) {
          this.#finish();
          return undefined;
        }
        feed.base += feed.chunk.length;
        feed.chunk = next.value;
        feed.at = feed.end = 0;
      }
    }
  }

  close(): void {
    this.#decoder.close();
  }

  /** Throws a damage error at byte `at` (the unit being fed by default). */
  #damaged(reason: string, at = this.#feed.unit): never {
    const frames = this.#frames;
    const frame = frames ? ` (frame ${frames.frames}, from byte ${frames.frameStart})` : "";
    throw new CompressedDataError(
      `damaged ${this.#kind} data at byte ${at}${frame}: ${reason}`,
      at,
      false,
    );
  }

  /** One decoder step over the unit being fed; returns its output, possibly none. */
  #step(): Uint8Array {
    const feed = this.#feed, frames = this.#frames;
    if (feed.trailing) {
      const rest = feed.chunk.subarray(feed.at, feed.end);
      const bad = rest.findIndex((b) => b !== 0);
      if (bad >= 0) {
        this.#damaged("unexpected bytes after the last gzip member", feed.base + feed.at + bad);
      }
      feed.at = feed.end;
      return rest.subarray(0, 0);
    }
    let r;
    try {
      r = this.#decoder.step(feed.chunk, feed.at, feed.end - feed.at);
    } catch (e) {
      return this.#damaged((e as Error).message);
    }
    feed.at += r.used;
    feed.pending = r.full;
    if (!r.full && feed.at < feed.end) {
      // The decoder finished with input left: zero padding after a gzip stream's last member
      // (anything else it rejects itself), or a zstd frame it thinks ended before its blocks.
      if (frames) this.#damaged("the decoder stopped before the end of the frame");
      feed.trailing = true;
    }
    if (frames && !r.full && feed.at === feed.end && frames.atBoundary()) this.#decoder.reset();
    return r.output;
  }

  /**
   * Marks out the next unit of the chunk: a zstd frame header, block or skippable frame, or a
   * slice of gzip data.
   */
  #nextUnit(): void {
    const feed = this.#feed, frames = this.#frames;
    feed.unit = feed.base + feed.at;
    if (!frames) feed.end = Math.min(feed.chunk.length, feed.at + GZIP_UNIT);
    else {
      try {
        feed.end = frames.advance(feed.chunk, feed.at);
        feed.unit = frames.unitStart;
      } catch (e) {
        throw new CompressedDataError((e as Error).message, frames.offset, false);
      }
    }
  }

  /** At the end of the input: every frame complete, or the gzip stream ended properly. */
  #finish(): void {
    const feed = this.#feed, frames = this.#frames;
    const at = feed.base + feed.chunk.length;
    if (frames && !frames.atBoundary()) {
      throw new CompressedDataError(
        `the zstd data ends inside frame ${frames.frames} (from byte ${frames.frameStart}) ` +
          `at byte ${at}: the file is truncated`,
        at,
        true,
      );
    }
    if (frames || feed.trailing) return;
    try {
      this.#decoder.step(feed.chunk, feed.chunk.length, 0, true);
    } catch (e) {
      const reason = (e as Error).message;
      if (!/unexpected end of file/.test(reason)) this.#damaged(reason, at);
      throw new CompressedDataError(
        `the gzip data ends early at byte ${at}: the file is truncated`,
        at,
        true,
      );
    }
  }
}
