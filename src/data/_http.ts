/**
 * A byte stream over HTTP that survives dropped connections: when a read fails or the body
 * ends before Content-Length, it reconnects with `Range: bytes=N-` and carries on from byte N,
 * retrying with exponential backoff. Servers that ignore Range are handled by discarding the
 * bytes already delivered.
 *
 * @module
 */

/** Options for {@linkcode httpStream}. */
export interface HttpOptions {
  /** Extra request headers (Authorization for HF_TOKEN). */
  headers?: Record<string, string>;
  /** Attempts per connection after a failure before giving up. Default 6. */
  retries?: number;
  /** First backoff delay in ms; doubles each retry. Default 500. */
  backoffMs?: number;
  /**
   * A Hugging Face token, sent as a bearer token to huggingface.co and hf.co only, so that it
   * never leaks to other hosts.
   */
  hfToken?: string;
  /**
   * Milliseconds without a byte before a connection counts as stalled and is reopened with
   * Range. Default 60000.
   */
  idleTimeoutMs?: number;
  /** Called once with the total size when the server reports it. */
  onSize?: (bytes: number) => void;
  /** Called after a dropped connection, before the retry, for logging. */
  onRetry?: (message: string) => void;
  /** Stops the download (the stream errors with the signal's reason). */
  signal?: AbortSignal;
}

/** An HTTP failure that retrying will not fix (404, 401, ...). */
export class HttpError extends Error {
  readonly status: number;
  constructor(message: string, status: number) {
    super(message);
    this.name = "HttpError";
    this.status = status;
  }
}

/** True for URLs on the Hugging Face hub, the only hosts that get HF_TOKEN. */
export function isHuggingFace(url: string): boolean {
  const host = new URL(url).hostname.toLowerCase();
  return /(^|\.)(huggingface\.co|hf\.co)$/.test(host);
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });

/**
 * Streams the body of `url`, resuming with Range requests after dropped connections.
 *
 * @example
 * ```ts
 * for await (const chunk of httpStream("https://example.com/a.jsonl.zst")) console.log(chunk.length);
 * ```
 */
export function httpStream(url: string, options: HttpOptions = {}): ReadableStream<Uint8Array> {
  const download = new ResumableDownload(url, options);
  return new ReadableStream<Uint8Array>({
    pull: (controller) => download.pull(controller),
    cancel: (reason) => download.cancel(reason),
  });
}

/** One download: how far it got, its open connection, and the failures since the last byte. */
class ResumableDownload {
  readonly #url: string;
  readonly #options: HttpOptions;
  readonly #retries: number;
  readonly #backoff: number;
  readonly #idle: number;
  #offset = 0;
  #size: number | undefined;
  #reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  #discard = 0;
  #failures = 0;
  // One controller per connection, so a stalled one can be dropped without stopping the run.
  #connection: AbortController | undefined;

  constructor(url: string, options: HttpOptions) {
    this.#url = url;
    this.#options = options;
    this.#retries = options.retries ?? 6;
    this.#backoff = options.backoffMs ?? 500;
    this.#idle = options.idleTimeoutMs ?? 60_000;
  }

  /** Enqueues the next chunk of the body, reconnecting as often as it takes. */
  async pull(controller: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    while (true) {
      if (!this.#reader) {
        if (this.#size !== undefined && this.#offset >= this.#size) return controller.close();
        await this.#connect();
        if (!this.#reader) return controller.close();
      }
      const result = await this.#read(this.#reader);
      if (result === undefined) continue;
      if (result.done) {
        this.#reader = undefined;
        if (this.#size === undefined || this.#offset >= this.#size) return controller.close();
        await this.#retryOrThrow("body ended early");
        continue;
      }
      let chunk = result.value;
      if (this.#discard > 0) {
        const n = Math.min(this.#discard, chunk.length);
        this.#discard -= n;
        chunk = chunk.subarray(n);
        if (chunk.length === 0) continue;
      }
      this.#offset += chunk.length;
      this.#failures = 0;
      controller.enqueue(chunk);
      return;
    }
  }

  async cancel(reason: unknown): Promise<void> {
    await this.#reader?.cancel(reason);
  }

  /**
   * One read of the open connection, dropped when no byte comes for the idle timeout;
   * undefined when the read failed and the retry's backoff is over.
   */
  async #read(
    reader: ReadableStreamDefaultReader<Uint8Array>,
  ): Promise<ReadableStreamReadResult<Uint8Array> | undefined> {
    const current = this.#connection;
    let stalled = false;
    const timer = setTimeout(() => {
      stalled = true;
      current?.abort();
    }, this.#idle);
    try {
      return await reader.read();
    } catch (e) {
      this.#reader = undefined;
      if (this.#options.signal?.aborted) throw e;
      const why = stalled
        ? `no data for ${this.#idle} ms`
        : `connection dropped (${(e as Error).message})`;
      await this.#retryOrThrow(why);
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Opens a connection from the current offset (no reader: nothing is left to read). */
  async #connect(): Promise<void> {
    const url = this.#url, options = this.#options;
    while (true) {
      const headers: Record<string, string> = { ...options.headers };
      if (options.hfToken && isHuggingFace(url)) {
        headers["Authorization"] = `Bearer ${options.hfToken}`;
      }
      if (this.#offset > 0) headers["Range"] = `bytes=${this.#offset}-`;
      let response: Response;
      try {
        this.#connection = new AbortController();
        const signals = [this.#connection.signal, ...(options.signal ? [options.signal] : [])];
        response = await fetch(url, { headers, signal: AbortSignal.any(signals) });
      } catch (e) {
        if (options.signal?.aborted) throw e;
        await this.#retryOrThrow(`cannot connect: ${(e as Error).message}`);
        continue;
      }
      const status = response.status;
      if (status === 200 || status === 206) {
        this.#accept(response);
        return;
      }
      await response.body?.cancel();
      if (status === 416 && this.#size !== undefined && this.#offset >= this.#size) return;
      if (status === 401 || status === 403) {
        throw new HttpError(
          `Cannot download ${url}: HTTP ${status}; set HF_TOKEN to a token that can read it`,
          status,
        );
      }
      if (status === 404) {
        throw new HttpError(`Cannot download ${url}: HTTP 404 (not found); check the URL`, status);
      }
      if (status === 429 || status >= 500) {
        await this.#retryOrThrow(`HTTP ${status}`);
        continue;
      }
      throw new HttpError(`Cannot download ${url}: HTTP ${status}`, status);
    }
  }

  /**
   * Reads the size and the bytes to skip from a 200 (the whole body) or 206 (from where the
   * range starts) response, and keeps its reader.
   */
  #accept(response: Response): void {
    if (response.status === 200) {
      const length = Number(response.headers.get("content-length") ?? NaN);
      if (this.#size === undefined && Number.isFinite(length)) {
        this.#size = length;
        this.#options.onSize?.(length);
      }
      this.#discard = this.#offset;
    } else {
      const range = /bytes (\d+)-\d+\/(\d+|\*)/.exec(
        response.headers.get("content-range") ?? "",
      );
      this.#discard = range ? this.#offset - Number(range[1]) : 0;
      if (range && range[2] !== "*" && this.#size === undefined) {
        this.#size = Number(range[2]);
        this.#options.onSize?.(this.#size);
      }
    }
    this.#reader = response.body!.getReader();
  }

  async #retryOrThrow(why: string): Promise<void> {
    this.#failures++;
    if (this.#failures > this.#retries) {
      throw new Error(
        `Cannot download ${this.#url}: ${why} after ${this.#retries} retries at byte ` +
          `${this.#offset}; check the network and run again with --resume`,
      );
    }
    const delay = this.#backoff * 2 ** (this.#failures - 1);
    this.#options.onRetry?.(
      `${this.#url}: ${why} at byte ${this.#offset}, retrying in ${delay} ms`,
    );
    await sleep(delay, this.#options.signal);
  }
}
