import assert from "node:assert/strict";
import { openShards, TokenLoader } from "../src/data/loader.ts";
import {
  decodeShardHeader,
  encodeShard,
  encodeShardHeader,
  readShard,
  SHARD_MAGIC,
  writeShard,
} from "../src/data/shard.ts";

async function withShards(
  sizes: number[],
  fn: (dir: string, tokens: Uint16Array[]) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "data_loader_" });
  try {
    const all: Uint16Array[] = [];
    let next = 0;
    for (let i = 0; i < sizes.length; i++) {
      // Token k of the whole set is k mod 50000, so every window's content is predictable.
      const t = new Uint16Array(sizes[i]);
      for (let k = 0; k < t.length; k++) t[k] = (next++) % 50000;
      all.push(t);
      await writeShard(`${dir}/s_train_${String(i + 1).padStart(6, "0")}.bin`, t);
    }
    await writeShard(`${dir}/s_val_000000.bin`, new Uint16Array([1, 2, 3, 4, 5, 6, 7, 8, 9]));
    await fn(dir, all);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("shard: header layout is llm.c's and round-trips", async () => {
  const h = new Int32Array(encodeShardHeader(12345).buffer);
  assert.equal(h.length, 256);
  assert.deepEqual([h[0], h[1], h[2], h[3]], [SHARD_MAGIC, 1, 12345, 0]);
  const bytes = encodeShard(new Uint16Array([50256, 1, 65535]));
  assert.equal(bytes.length, 1024 + 6);
  assert.deepEqual([...bytes.subarray(1024)], [0x50, 0xc4, 1, 0, 0xff, 0xff]);
  const dir = await Deno.makeTempDir();
  try {
    await writeShard(`${dir}/a.bin`, new Uint16Array([7, 8, 9]));
    assert.deepEqual([...await readShard(`${dir}/a.bin`)], [7, 8, 9]);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["a.bin"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("shard: bad magic, version, short or truncated files give actionable errors", () => {
  const good = encodeShard(new Uint16Array(10));
  assert.throws(() => decodeShardHeader(good.subarray(0, 100), "x.bin"), /shorter than the/);
  const magic = good.slice();
  magic[0] ^= 1;
  assert.throws(() => decodeShardHeader(magic, "x.bin"), /x\.bin: bad magic.*deno task data/);
  const version = good.slice();
  version[4] = 2;
  assert.throws(() => decodeShardHeader(version, "x.bin"), /unsupported version 2/);
  assert.throws(() => decodeShardHeader(good, "x.bin", good.length - 2), /truncated or corrupt/);
  assert.equal(decodeShardHeader(good, "x.bin", good.length).tokens, 10);
});

Deno.test("loader: in order, windows follow the shards with shifted targets", async () => {
  await withShards([1000, 700], async (dir) => {
    const shards = await openShards(dir);
    assert.deepEqual(shards.map((s) => s.tokens), [1000, 700]);
    const B = 2, T = 50;
    using loader = new TokenLoader(shards, { batchSize: B, seqLen: T });
    // floor(999/100) + floor(699/100) = 9 + 6 windows.
    assert.equal(loader.batchesPerEpoch, 15);
    const starts: number[] = [];
    for (let i = 0; i < 16; i++) {
      const { inputs, targets } = loader.nextBatch();
      starts.push(inputs[0]);
      for (let k = 0; k < B * T; k++) assert.equal(targets[k], inputs[k] + 1);
    }
    assert.deepEqual(starts, [
      0,
      100,
      200,
      300,
      400,
      500,
      600,
      700,
      800,
      1000,
      1100,
      1200,
      1300,
      1400,
      1500,
      0,
    ]);
    assert.deepEqual(loader.cursor, { epoch: 1, shard: 0, window: 1 });
    const val = await openShards(dir, { split: "val" });
    using v = new TokenLoader(val, { batchSize: 2, seqLen: 4 });
    assert.deepEqual([...v.nextBatch().targets], [2, 3, 4, 5, 6, 7, 8, 9]);
  });
});

Deno.test("loader: seeded shuffle covers every window once per epoch and is reproducible", async () => {
  await withShards([1000, 700, 501], async (dir) => {
    const shards = await openShards(dir);
    const opts = { batchSize: 2, seqLen: 50, shuffle: true, seed: 9 };
    using a = new TokenLoader(shards, opts);
    using b = new TokenLoader(shards, opts);
    const n = a.batchesPerEpoch;
    const epoch0: number[] = [];
    for (let i = 0; i < n; i++) epoch0.push(a.nextBatch().inputs[0]);
    assert.equal(new Set(epoch0).size, n);
    assert.notDeepEqual(epoch0, [...epoch0].sort((x, y) => x - y));
    for (let i = 0; i < n; i++) assert.equal(b.nextBatch().inputs[0], epoch0[i]);
    const epoch1: number[] = [];
    for (let i = 0; i < n; i++) epoch1.push(a.nextBatch().inputs[0]);
    assert.deepEqual([...epoch1].sort(), [...epoch0].sort());
    assert.notDeepEqual(epoch1, epoch0);
  });
});

Deno.test("loader: a saved cursor restores the exact batch sequence", async () => {
  await withShards([1000, 700], async (dir) => {
    const shards = await openShards(dir);
    const opts = { batchSize: 2, seqLen: 30, shuffle: true, seed: 1 };
    using a = new TokenLoader(shards, opts);
    for (let i = 0; i < 23; i++) a.nextBatch();
    const saved = JSON.parse(JSON.stringify(a.cursor));
    const next = Array.from({ length: 10 }, () => [...a.nextBatch().inputs]);
    using b = new TokenLoader(shards, { ...opts, cursor: saved });
    for (const want of next) assert.deepEqual([...b.nextBatch().inputs], want);
    assert.throws(() => (b.cursor = { epoch: 0, shard: 5, window: 0 }), /Invalid loader cursor/);
  });
});

Deno.test("loader: clear errors for tiny shards and missing folders", async () => {
  await withShards([100], async (dir) => {
    const shards = await openShards(dir);
    assert.throws(
      () => new TokenLoader(shards, { batchSize: 4, seqLen: 64 }),
      /largest holds 100 tokens and a batch needs 257/,
    );
    await Deno.writeFile(`${dir}/bad_train_000009.bin`, new Uint8Array(2000));
    await assert.rejects(openShards(dir), /bad_train_000009\.bin: bad magic/);
  });
  await assert.rejects(openShards("/nonexistent/shards"), /does not exist/);
});
