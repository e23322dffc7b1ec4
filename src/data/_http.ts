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
  const retries = options.retries ?? 6;
  const backoff = options.backoffMs ?? 500;
  let offset = 0;
  let size: number | undefined;
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  let discard = 0;
  let failures = 0;
  const idle = options.idleTimeoutMs ?? 60_000;
  // One controller per connection, so a stalled one can be dropped without stopping the run.
  let connection: AbortController | undefined;

  async function connect(): Promise<void> {
    while (true) {
      const headers: Record<string, string> = { ...options.headers };
      if (options.hfToken && isHuggingFace(url)) {
        headers["Authorization"] = `Bearer ${options.hfToken}`;
      }
      if (offset > 0) headers["Range"] = `bytes=${offset}-`;
      let response: Response;
      try {
        connection = new AbortController();
        const signals = [connection.signal, ...(options.signal ? [options.signal] : [])];
        response = await fetch(url, { headers, signal: AbortSignal.any(signals) });
      } catch (e) {
        if (options.signal?.aborted) throw e;
        await retryOrThrow(`cannot connect: ${(e as Error).message}`);
        continue;
      }
      const status = response.status;
      if (status === 200 || status === 206) {
        if (status === 200) {
          const length = Number(response.headers.get("content-length") ?? NaN);
          if (size === undefined && Number.isFinite(length)) {
            size = length;
            options.onSize?.(length);
          }
          discard = offset;
        } else {
          const range = /bytes (\d+)-\d+\/(\d+|\*)/.exec(
            response.headers.get("content-range") ?? "",
          );
          discard = range ? offset - Number(range[1]) : 0;
          if (range && range[2] !== "*" && size === undefined) {
            size = Number(range[2]);
            options.onSize?.(size);
          }
        }
        reader = response.body!.getReader();
        return;
      }
      await response.body?.cancel();
      if (status === 416 && size !== undefined && offset >= size) return;
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
        await retryOrThrow(`HTTP ${status}`);
        continue;
      }
      throw new HttpError(`Cannot download ${url}: HTTP ${status}`, status);
    }
  }

  async function retryOrThrow(why: string): Promise<void> {
    failures++;
    if (failures > retries) {
      throw new Error(
        `Cannot download ${url}: ${why} after ${retries} retries at byte ${offset}; ` +
          `check the network and run again with --resume`,
      );
    }
    const delay = backoff * 2 ** (failures - 1);
    options.onRetry?.(`${url}: ${why} at byte ${offset}, retrying in ${delay} ms`);
    await sleep(delay, options.signal);
  }

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (true) {
        if (!reader) {
          if (size !== undefined && offset >= size) return controller.close();
          await connect();
          if (!reader) return controller.close();
        }
        let result: ReadableStreamReadResult<Uint8Array>;
        const current = connection;
        let stalled = false;
        const timer = setTimeout(() => {
          stalled = true;
          current?.abort();
        }, idle);
        try {
          result = await reader.read();
        } catch (e) {
          reader = undefined;
          if (options.signal?.aborted) throw e;
          const why = stalled
            ? `no data for ${idle} ms`
            : `connection dropped (${(e as Error).message})`;
          await retryOrThrow(why);
          continue;
        } finally {
          clearTimeout(timer);
        }
        if (result.done) {
          reader = undefined;
          if (size === undefined || offset >= size) return controller.close();
          await retryOrThrow("body ended early");
          continue;
        }
        let chunk = result.value;
        if (discard > 0) {
          const n = Math.min(discard, chunk.length);
          discard -= n;
          chunk = chunk.subarray(n);
          if (chunk.length === 0) continue;
        }
        offset += chunk.length;
        failures = 0;
        controller.enqueue(chunk);
        return;
      }
    },
    async cancel(reason) {
      await reader?.cancel(reason);
    },
  });
}
