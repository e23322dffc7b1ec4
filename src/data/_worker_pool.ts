/**
 * A pool of tokenizer workers. Results are handed back through one promise per batch, and the
 * pipeline awaits them in submission order, so the output does not depend on which worker
 * finished first: 1 worker and N workers write byte-identical shards.
 *
 * @module
 */
import { type BatchRequest, type BatchResult, tokenizeBatch } from "./_tokenize_batch.ts";

interface Pending {
  resolve: (r: BatchResult) => void;
  reject: (e: Error) => void;
}

/** Runs {@linkcode tokenizeBatch} on `size` workers, or on the calling thread when size is 0. */
export class TokenizerPool {
  /** Workers (0: the calling thread tokenizes). */
  readonly size: number;
  #workers: Worker[] = [];
  #load: number[] = [];
  #pending = new Map<number, Pending & { worker: number }>();
  #nextId = 0;
  #failed: Error | undefined;

  /** Starts `size` workers (0: none; batches are tokenized on the calling thread). */
  constructor(size: number) {
    this.size = size;
    for (let i = 0; i < size; i++) {
      const worker = new Worker(new URL("./_tokenize_worker.ts", import.meta.url), {
        type: "module",
      });
      worker.onmessage = (e) => this.#onMessage(e.data);
      worker.onerror = (e) => {
        e.preventDefault();
        this.#fail(new Error(`Tokenizer worker failed: ${e.message}`));
      };
      this.#workers.push(worker);
      this.#load.push(0);
    }
  }

  /** Queues one batch; its byte buffer is transferred, so the caller must not reuse it. */
  submit(req: BatchRequest): Promise<BatchResult> {
    if (this.#failed) return Promise.reject(this.#failed);
    if (this.size === 0) {
      try {
        return Promise.resolve(tokenizeBatch(req));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    let w = 0;
    for (let i = 1; i < this.size; i++) if (this.#load[i] < this.#load[w]) w = i;
    const id = this.#nextId++;
    this.#load[w]++;
    const promise = new Promise<BatchResult>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, worker: w });
      const bytes = req.bytes;
      const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
      const owned = whole ? bytes : bytes.slice();
      this.#workers[w].postMessage({ id, req: { ...req, bytes: owned } }, [
        owned.buffer as ArrayBuffer,
      ]);
    });
    // Batches abandoned by a stopped build are rejected on close() and never awaited; mark
    // them handled so that is not reported as an unhandled rejection.
    promise.catch(() => {});
    return promise;
  }

  /** Stops every worker; pending batches are rejected. */
  close(): void {
    for (const w of this.#workers) w.terminate();
    this.#workers = [];
    this.#fail(new Error("Tokenizer pool closed: no more batches can be tokenized"));
  }

  #onMessage(data: { id: number; result?: BatchResult; error?: string }): void {
    const p = this.#pending.get(data.id);
    if (!p) return;
    this.#pending.delete(data.id);
    this.#load[p.worker]--;
    if (data.error !== undefined) p.reject(new Error(`Tokenizer worker failed: ${data.error}`));
    else p.resolve(data.result!);
  }

  #fail(error: Error): void {
    this.#failed ??= error;
    for (const p of this.#pending.values()) p.reject(error);
    this.#pending.clear();
  }
}
