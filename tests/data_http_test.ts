import assert from "node:assert/strict";
import { zstdCompressSync } from "node:zlib";
import { httpStream } from "../src/data/_http.ts";
import { buildShards } from "../src/data/pipeline.ts";
import { resolveSources } from "../src/data/sources.ts";
import { jsonlBytes, makeDocs, shardBytes } from "./fixtures/data/_fixtures.ts";

/**
 * A local server for one .jsonl.zst file (only 127.0.0.1 is ever contacted). The first full
 * download sends half the body and then kills the connection; Range requests are honoured;
 * `/flaky` answers 503 once; anything else is 404.
 */
function serve(body: Uint8Array<ArrayBuffer>) {
  const log: string[] = [];
  let dropped = false;
  let stalled = false;
  let flaky = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    const range = req.headers.get("range");
    log.push(`${path} ${range ?? "-"}`);
    if (path === "/flaky/c.jsonl.zst" && flaky++ === 0) {
      return new Response("busy", { status: 503 });
    }
    if (!path.endsWith("/c.jsonl.zst")) return new Response("no", { status: 404 });
    if (range) {
      const start = Number(/bytes=(\d+)-/.exec(range)![1]);
      return new Response(body.slice(start), {
        status: 206,
        headers: { "content-range": `bytes ${start}-${body.length - 1}/${body.length}` },
      });
    }
    if (!stalled && path.startsWith("/stall/")) {
      // Half the body, then silence with the connection left open.
      stalled = true;
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(body.slice(0, body.length >> 1));
        },
        pull: () => new Promise<void>(() => {}),
      });
      return new Response(stream, { headers: { "content-length": String(body.length) } });
    }
    if (!dropped && path.startsWith("/drop/")) {
      dropped = true;
      const half = body.length >> 1;
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(body.slice(0, half));
        },
        async pull(c) {
          await new Promise((r) => setTimeout(r, 20));
          c.error(new Error("connection dropped on purpose"));
        },
      });
      return new Response(stream, { headers: { "content-length": String(body.length) } });
    }
    return new Response(body);
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  return { server, base, log };
}

const DOCS = makeDocs(600, 80, 11);
const BODY = new Uint8Array(zstdCompressSync(jsonlBytes(DOCS)));

Deno.test("http: a dropped download resumes with Range and matches the local build", async () => {
  const { server, base, log } = serve(BODY);
  const dir = await Deno.makeTempDir({ prefix: "data_http_" });
  try {
    await Deno.writeFile(`${dir}/c.jsonl.zst`, BODY);
    const common = { shardTokens: 5000, val: { tokens: 1000 }, workers: 1 };
    await buildShards({
      ...common,
      sources: await resolveSources([`${dir}/c.jsonl.zst`]),
      outDir: `${dir}/local`,
    });
    const retries: string[] = [];
    await buildShards({
      ...common,
      sources: await resolveSources([`${base}/drop/c.jsonl.zst`]),
      outDir: `${dir}/remote`,
      http: { retries: 3, backoffMs: 5, onRetry: (m) => retries.push(m) },
    });
    assert.equal(retries.length, 1, retries.join("\n"));
    assert.match(log[1], /^\/drop\/c\.jsonl\.zst bytes=\d+-$/);
    const local = await shardBytes(`${dir}/local`);
    const remote = await shardBytes(`${dir}/remote`);
    assert.ok(local.size >= 3);
    assert.deepEqual([...remote.keys()], [...local.keys()]);
    for (const [n, b] of local) assert.deepEqual(remote.get(n), b, n);
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("http: 503 is retried with backoff; 404 is an error naming the URL", async () => {
  const { server, base } = serve(BODY);
  try {
    let n = 0;
    for await (const c of httpStream(`${base}/flaky/c.jsonl.zst`, { backoffMs: 5 })) n += c.length;
    assert.equal(n, BODY.length);
    const dir = await Deno.makeTempDir();
    try {
      await assert.rejects(
        buildShards({
          sources: await resolveSources([`${base}/missing/x.jsonl.zst`]),
          outDir: dir,
          workers: 0,
          http: { retries: 1, backoffMs: 5 },
        }),
        new RegExp(`Cannot download ${base}/missing/x\\.jsonl\\.zst: HTTP 404`),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  } finally {
    await server.shutdown();
  }
});

Deno.test("http: a stalled connection is dropped after the idle timeout and resumed", async () => {
  const { server, base, log } = serve(BODY);
  try {
    const retries: string[] = [];
    const chunks: Uint8Array[] = [];
    const stream = httpStream(`${base}/stall/c.jsonl.zst`, {
      idleTimeoutMs: 200,
      backoffMs: 5,
      onRetry: (m) => retries.push(m),
    });
    for await (const c of stream) chunks.push(c);
    const got = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of chunks) {
      got.set(c, at);
      at += c.length;
    }
    assert.deepEqual(got, BODY);
    assert.equal(retries.length, 1);
    assert.match(retries[0], /no data for 200 ms/);
    assert.match(log[1], /^\/stall\/c\.jsonl\.zst bytes=\d+-$/);
  } finally {
    await server.shutdown();
  }
});
