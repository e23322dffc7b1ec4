/**
 * Opens a {@linkcode Source} as a stream of decompressed bytes: local files through
 * `Deno.open`, URLs through the resumable {@linkcode httpStream}, gzip through the web
 * DecompressionStream and zstd through node:zlib, with truncation turned into an error.
 *
 * @module
 */
import { createZstdDecompress } from "node:zlib";
import { type HttpOptions, httpStream } from "./_http.ts";
import { ZstdFrameTracker } from "./_zstd_frames.ts";
import type { Source } from "./sources.ts";

/** Options for {@linkcode openSource}. */
export interface OpenOptions {
  http?: HttpOptions;
  /** Counts compressed bytes as they arrive, for progress. */
  onRawBytes?: (n: number) => void;
}

/** Streams the decompressed bytes of `source`. */
export async function openSource(
  source: Source,
  options: OpenOptions = {},
): Promise<ReadableStream<Uint8Array>> {
  let raw: ReadableStream<Uint8Array>;
  if (/^https?:\/\//i.test(source.location)) {
    raw = httpStream(source.location, options.http);
  } else {
    raw = (await Deno.open(source.location, { read: true })).readable;
  }
  const count = options.onRawBytes;
  if (count) {
    raw = raw.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          count(chunk.length);
          controller.enqueue(chunk);
        },
      }),
    );
  }
  if (source.compression === "gzip") {
    return raw.pipeThrough(
      new DecompressionStream("gzip") as TransformStream<Uint8Array, Uint8Array>,
    );
  }
  if (source.compression === "zstd") return zstdDecompress(raw);
  return raw;
}

/**
 * Decompresses a zstd byte stream with node:zlib, rejecting input that ends inside a frame.
 * Built as a pull source rather than a TransformStream so that cancelling never waits on a
 * decoder flush that a stopped consumer would leave pending.
 */
export function zstdDecompress(input: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  // Larger output chunks than the 16 KiB default: fewer events and stream hops per MB.
  const zstd = createZstdDecompress({ chunkSize: 256 * 1024 });
  const tracker = new ZstdFrameTracker();
  const reader = input.getReader();
  const ready: Uint8Array[] = [];
  let failure: Error | undefined;
  let ended = false;
  let wake: (() => void) | undefined;
  const signal = () => {
    wake?.();
    wake = undefined;
  };
  zstd.on("data", (c: Uint8Array) => {
    ready.push(new Uint8Array(c.buffer, c.byteOffset, c.length));
    signal();
  });
  zstd.on("error", (e: Error) => {
    failure ??= e;
    signal();
  });
  zstd.on("end", () => {
    ended = true;
    signal();
  });
  let inputDone = false;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (true) {
        if (failure) throw failure;
        if (ready.length > 0) return controller.enqueue(ready.shift()!);
        if (ended) return controller.close();
        if (inputDone) {
          await new Promise<void>((resolve) => wake = resolve);
          continue;
        }
        const next = await reader.read();
        if (next.done) {
          inputDone = true;
          if (!tracker.atBoundary()) throw new Error("the zstd data ends inside a frame");
          zstd.end();
          continue;
        }
        tracker.push(next.value);
        await new Promise<void>((resolve, reject) => {
          zstd.write(next.value, (e?: Error | null) => e ? reject(e) : resolve());
        });
      }
    },
    async cancel(reason) {
      zstd.destroy();
      await reader.cancel(reason);
    },
  });
}
