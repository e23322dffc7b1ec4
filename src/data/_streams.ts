/**
 * Opens a {@linkcode Source} as a stream of decompressed bytes: local files through
 * `Deno.open`, URLs through the resumable {@linkcode httpStream}, gzip and zstd through
 * {@linkcode decompress} (every member or frame; damage and truncation become errors that
 * give the compressed byte offset).
 *
 * @module
 */
import { decompress } from "./_decoder.ts";
import { type HttpOptions, httpStream } from "./_http.ts";
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
  return source.compression === "none" ? raw : decompress(raw, source.compression);
}
