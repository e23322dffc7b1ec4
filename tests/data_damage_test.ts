/**
 * Compressed inputs as users have them: zstd files of several frames, multi-member gzip,
 * damaged and truncated files. Each case runs `deno task data` as a user would and asserts
 * the message and what is left on disk. Damaged files run in a child process with a
 * deadline, so a hang fails the test instead of stalling the suite.
 */
import assert from "node:assert/strict";
import { constants, gzipSync, zstdCompressSync } from "node:zlib";
import { readManifest } from "../src/data/manifest.ts";
import {
  concat,
  jsonlBytes,
  makeDocs,
  runData,
  runDataChild,
  shardBytes,
} from "./fixtures/data/_fixtures.ts";

const DOCS = makeDocs(1200, 60, 11);

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "data_damage_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** `deno task data ARGS`, quiet and on this thread: its exit code, or its error. */
async function data(args: string[]): Promise<{ code?: number; error?: string }> {
  const r = await runData([...args, "--quiet", "--workers", "0"]);
  return { code: r.code, error: r.error };
}

/** A zstd skippable frame (as pzstd writes before each frame) holding `payload`. */
function skippable(payload: Uint8Array, variant = 0): Uint8Array {
  const head = new Uint8Array(8);
  new DataView(head.buffer).setUint32(0, 0x184d2a50 + variant, true);
  new DataView(head.buffer).setUint32(4, payload.length, true);
  return concat(head, payload);
}

/** The documents in `n` zstd frames (alternately with and without a checksum). */
function zstdFrames(docs: string[], n: number): Uint8Array[] {
  const size = Math.ceil(docs.length / n);
  return Array.from(
    { length: n },
    (_, k) =>
      new Uint8Array(zstdCompressSync(jsonlBytes(docs.slice(k * size, (k + 1) * size)), {
        params: { [constants.ZSTD_c_checksumFlag]: k % 2 },
      })),
  );
}

/** Asserts that folders `a` and `b` hold the same shards, byte for byte. */
async function sameShards(a: string, b: string): Promise<void> {
  const got = await shardBytes(a);
  const want = await shardBytes(b);
  assert.deepEqual([...got.keys()], [...want.keys()]);
  for (const [name, bytes] of want) assert.deepEqual(got.get(name), bytes, name);
}

/** A copy of `bytes` with `n` bytes from `at` flipped. */
function damage(bytes: Uint8Array, at: number, n = 200): Uint8Array {
  const out = Uint8Array.from(bytes);
  for (let i = at; i < at + n; i++) out[i] ^= 0x5a;
  return out;
}

/** The names in `dir` that are shards or their temporary files. */
async function shardFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) if (/\.bin(\.tmp)?$/.test(e.name)) names.push(e.name);
  return names.sort();
}

Deno.test("damage: a .jsonl.zst of several frames and skippable frames reads every document", async () => {
  await withTemp(async (dir) => {
    const [a, b, c, d] = zstdFrames(DOCS, 4);
    const tag = new Uint8Array([1, 2, 3, 4]);
    await Deno.writeFile(
      `${dir}/multi.jsonl.zst`,
      concat(skippable(tag), a, b, skippable(tag, 15), c, skippable(new Uint8Array(0), 3), d),
    );
    await Deno.writeFile(`${dir}/plain.jsonl`, jsonlBytes(DOCS));
    const common = ["--shard-tokens", "20k", "--val-tokens", "5k", "--name", "x"];
    const zst = await data([`${dir}/multi.jsonl.zst`, "--out", `${dir}/zst`, ...common]);
    assert.equal(zst.code, 0, zst.error);
    const plain = await data([`${dir}/plain.jsonl`, "--out", `${dir}/plain`, ...common]);
    assert.equal(plain.code, 0, plain.error);
    const m = (await readManifest(`${dir}/zst`))!;
    assert.equal(m.totals.documents, DOCS.length);
    await sameShards(`${dir}/zst`, `${dir}/plain`);
  });
});

Deno.test("damage: a damaged .jsonl.zst fails promptly with the file, byte offset and reason", async () => {
  await withTemp(async (dir) => {
    // One frame as zstd writes it, and a highly compressible file of four frames (one read
    // there decodes to more than one output buffer) damaged in its third frame.
    const one = zstdFrames(DOCS, 1)[0];
    const rich = zstdFrames([...DOCS, ...DOCS, ...DOCS, ...DOCS, ...DOCS, ...DOCS], 4);
    const third = rich[0].length + rich[1].length;
    const cases = [
      { name: "one", bytes: one, at: one.length >> 1, frame: "frame 1, from byte 0" },
      {
        name: "rich",
        bytes: concat(...rich),
        at: third + (rich[2].length >> 1),
        frame: `frame 3, from byte ${third}`,
      },
    ];
    for (const c of cases) {
      const path = `${dir}/${c.name}.jsonl.zst`;
      await Deno.writeFile(path, damage(c.bytes, c.at));
      const out = `${dir}/out_${c.name}`;
      const r = await runDataChild([
        path,
        "--out",
        out,
        "--shard-tokens",
        "4k",
        "--quiet",
        "--workers",
        "1",
      ]);
      assert.equal(r.code, 1, r.stderr);
      const m = r.stderr.match(
        /error: Cannot read (\S+): damaged zstd data at byte (\d+) \(([^)]+)\): [A-Z][^;]+; (.*)/,
      );
      assert.ok(m, r.stderr);
      assert.equal(m[1], path);
      // The offset is the start of the block holding the damage (blocks are at most 128 KiB).
      const offset = Number(m[2]);
      assert.ok(offset <= c.at && offset > c.at - 131075, `${c.name}: byte ${offset}`);
      assert.equal(m[3], c.frame);
      assert.match(m[4], /download it again, then run with --resume$/);
      assert.ok(r.seconds < 30, `${c.name}: ${r.seconds} s`);
      // Nothing of the damaged file stays: no shard, no temporary file, an incomplete manifest.
      const manifest = (await readManifest(out))!;
      assert.deepEqual([manifest.shards.length, manifest.complete], [0, false]);
      assert.deepEqual(await shardFiles(out), []);
    }
  });
});

Deno.test("damage: a multi-member .gz reads every member", async () => {
  await withTemp(async (dir) => {
    const half = DOCS.length >> 1;
    const members = [DOCS.slice(0, half), DOCS.slice(half)].map((d) => gzipSync(jsonlBytes(d)));
    // Zero padding after the last member is allowed, as gzip allows it.
    await Deno.writeFile(`${dir}/two.jsonl.gz`, concat(...members, new Uint8Array(16)));
    const r = await data([`${dir}/two.jsonl.gz`, "--out", `${dir}/o`]);
    assert.equal(r.code, 0, r.error);
    assert.equal((await readManifest(`${dir}/o`))!.totals.documents, DOCS.length);
  });
});

Deno.test("damage: damaged gzip is named as such, not as missing text, and none of it is kept", async () => {
  await withTemp(async (dir) => {
    const good = `${dir}/a.jsonl`;
    await Deno.writeFile(good, jsonlBytes(DOCS.slice(0, 300)));
    // A wrong byte in deflate data decodes silently to other text (here a renamed field)
    // until the member's CRC is checked at its end.
    const lines = new TextDecoder().decode(jsonlBytes([...DOCS, ...DOCS, ...DOCS])).split("\n");
    lines[700] = lines[700].replace('"text"', '"tezt"');
    const raw = new TextEncoder().encode(lines.join("\n"));
    const gz = new Uint8Array(gzipSync(raw));
    const bad = `${dir}/b.jsonl.gz`;
    await Deno.writeFile(bad, damage(gz, gz.length - 8, 1));
    const args = [good, bad, "--out", `${dir}/o`, "--shard-tokens", "4k", "--val-tokens", "3k"];
    const r = await data(args);
    assert.match(
      r.error ?? "",
      new RegExp(
        `^Cannot read ${bad}: damaged gzip data at byte \\d+: incorrect data check; ` +
          `the \\d+ shards holding its tokens were removed: download it again, then run ` +
          `with --resume$`,
      ),
    );
    // The shards left hold only the first file's tokens and are all listed.
    const m = (await readManifest(`${dir}/o`))!;
    assert.ok(m.shards.length > 2 && m.shards.every((s) => s.end.source === 0), `${m.shards}`);
    assert.deepEqual(await shardFiles(`${dir}/o`), m.shards.map((s) => s.file).sort());
    // With a good copy in its place, --resume gives what a clean run gives.
    await Deno.writeFile(bad, gzipSync(jsonlBytes(DOCS)));
    const resumed = await data([...args, "--resume"]);
    assert.equal(resumed.code, 0, resumed.error);
    const clean = await data([...args.slice(0, 2), "--out", `${dir}/clean`, ...args.slice(4)]);
    assert.equal(clean.code, 0, clean.error);
    await sameShards(`${dir}/o`, `${dir}/clean`);
  });
});

Deno.test("damage: flipped bytes inside gzip data fail with the offset, and truncation says so", async () => {
  await withTemp(async (dir) => {
    const gz = new Uint8Array(gzipSync(jsonlBytes(DOCS)));
    const path = `${dir}/c.jsonl.gz`;
    await Deno.writeFile(path, damage(gz, gz.length >> 1));
    const r = await data([path, "--out", `${dir}/o`]);
    const m = (r.error ?? "").match(/^Cannot read (\S+): damaged gzip data at byte (\d+): /);
    assert.ok(m, r.error);
    assert.ok(Number(m[2]) >= (gz.length >> 1) - 16384 && Number(m[2]) < gz.length, m[2]);
    await Deno.writeFile(path, gz.subarray(0, gz.length - 100));
    const cut = await data([path, "--out", `${dir}/o2`]);
    assert.equal(
      cut.error,
      `Cannot read ${path}: the gzip data ends early at byte ${gz.length - 100}: the file is ` +
        `truncated; download it again, then run with --resume`,
    );
  });
});
