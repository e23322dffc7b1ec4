/// <reference lib="deno.worker" />
/**
 * Tokenizer worker: answers each {@linkcode BatchRequest} with its {@linkcode BatchResult},
 * transferring the token buffers back instead of copying them.
 *
 * @module
 */
import { type BatchRequest, tokenizeBatch } from "./_tokenize_batch.ts";

self.onmessage = (event: MessageEvent<{ id: number; req: BatchRequest }>) => {
  const { id, req } = event.data;
  try {
    const result = tokenizeBatch(req);
    self.postMessage({ id, result }, [
      result.tokens.buffer as ArrayBuffer,
      result.counts.buffer as ArrayBuffer,
    ]);
  } catch (e) {
    self.postMessage({ id, error: e instanceof Error ? e.message : String(e) });
  }
};
