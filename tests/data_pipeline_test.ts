import assert from "node:assert/strict";
import { buildShards } from "../src/data/pipeline.ts";
import { readManifest } from "../src/data/manifest.ts";
import { readShard, sha256Hex } from "../src/data/shard.ts";
import { resolveSources } from "../src/data/sources.ts";
import { encodeOrdinary, EOT } from "../src/data/tokenizer.ts";
import { makeDocs, readSplit, shardBytes, writeDocs } from "./fixtures/data/_fixtures.ts";

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "data_pipeline_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function expected(docs: string[]): number[] {
  const out: number[] = [];
  for (const d of docs) {
    out.push(EOT);
    for (const t of encodeOrdinary(d)) out.push(t);
  }
  return out;
}

const DOCS = makeDocs(400, 60, 7);

Deno.test("pipeline: .jsonl, .jsonl.gz and .jsonl.zst give the same tokens, in order", async () => {
  await withTemp(async (dir) => {
    const want = expected(DOCS);
    for (const ext of [".jsonl", ".jsonl.gz", ".jsonl.zst"]) {
      const path = await writeDocs(dir, `in${ext}`, DOCS);
      const out = `${dir}/out${ext}`;
      const { manifest } = await buildShards({
        sources: await resolveSources([path]),
        outDir: out,
        shardTokens: 5000,
        val: { tokens: 3000 },
        workers: 0,
        batchBytes: 8192,
      });
      const tokens = [...await readSplit(out, "val"), ...await readSplit(out, "train")];
      assert.deepEqual(tokens, want, ext);
      assert.equal(manifest.totals.documents, DOCS.length);
      assert.equal(manifest.totals.valTokens, 3000);
      assert.equal(manifest.totals.trainTokens, want.length - 3000);
      assert.ok(manifest.complete);
      const first = manifest.shards[1];
      assert.equal(first.file, "data_train_000001.bin");
      assert.equal(first.sha256, await sha256Hex(await Deno.readFile(`${out}/${first.file}`)));
    }
  });
});

Deno.test("pipeline: 1 worker and 2 workers write byte-identical shards", async () => {
  await withTemp(async (dir) => {
    const a = await writeDocs(dir, "a.jsonl.zst", DOCS);
    const b = await writeDocs(dir, "b.txt", DOCS.slice(0, 100));
    const sources = await resolveSources([a, b]);
    for (const workers of [1, 2]) {
      await buildShards({
        sources,
        outDir: `${dir}/w${workers}`,
        shardTokens: 4096,
        val: { fraction: 0.1, seed: 3 },
        workers,
        batchBytes: 4096,
      });
    }
    const one = await shardBytes(`${dir}/w1`);
    const two = await shardBytes(`${dir}/w2`);
    assert.ok(one.size > 4);
    assert.deepEqual([...one.keys()], [...two.keys()]);
    for (const [name, bytes] of one) assert.deepEqual(bytes, two.get(name), name);
  });
});

Deno.test("pipeline: --resume after a stop gives the same shards as one run", async () => {
  await withTemp(async (dir) => {
    const a = await writeDocs(dir, "a.jsonl.zst", DOCS.slice(0, 200));
    const b = await writeDocs(dir, "b.jsonl", DOCS.slice(200));
    const c = await writeDocs(dir, "c.txt", DOCS.slice(0, 50));
    // Malformed lines spread through a file check that the skipped-line count survives resume.
    const d = `${dir}/d.jsonl`;
    const lines = DOCS.slice(50, 150).map((t, i) =>
      i % 7 === 3 ? "{broken" : JSON.stringify({ text: t })
    );
    await Deno.writeTextFile(d, lines.join("\n") + "\n");
    const sources = await resolveSources([a, d, b, c]);
    for (const val of [{ tokens: 2500 }, { fraction: 0.2, seed: 1 }]) {
      const base = { sources, shardTokens: 3000, val, workers: 1, batchBytes: 2048 };
      await buildShards({ ...base, outDir: `${dir}/full`, overwrite: true });
      // Stop after every k-th shard, then resume, until done.
      for (const k of [1, 3]) {
        const out = `${dir}/part${k}`;
        let done = false;
        let first = true;
        while (!done) {
          const controller = new AbortController();
          let seen = 0;
          const result = await buildShards({
            ...base,
            outDir: out,
            resume: !first,
            overwrite: first,
            signal: controller.signal,
            onShard: () => {
              if (++seen === k) controller.abort();
            },
          });
          first = false;
          done = !result.aborted;
          // A stop leaves no temporary shard behind and every listed shard on disk.
          const listed = (await readManifest(out))!.shards.map((s) => s.file).sort();
          const onDisk = [...(await shardBytes(out)).keys()];
          assert.deepEqual(onDisk, listed);
        }
        const full = await shardBytes(`${dir}/full`);
        const part = await shardBytes(out);
        assert.deepEqual([...part.keys()], [...full.keys()], JSON.stringify(val));
        for (const [n, bytes] of full) assert.deepEqual(part.get(n), bytes, `${n} k=${k}`);
        const m1 = (await readManifest(`${dir}/full`))!;
        const m2 = (await readManifest(out))!;
        assert.equal(m1.totals.malformed, 14);
        assert.deepEqual(m2.totals, m1.totals);
        await Deno.remove(out, { recursive: true });
      }
    }
  });
});

Deno.test("pipeline: a malformed JSON line is skipped with file and line, or fails with --strict", async () => {
  await withTemp(async (dir) => {
    const lines = DOCS.slice(0, 5).map((t) => JSON.stringify({ text: t }));
    lines.splice(2, 0, '{"text": "broken');
    const path = `${dir}/bad.jsonl`;
    await Deno.writeTextFile(path, lines.join("\n") + "\n");
    const sources = await resolveSources([path]);
    const warnings: string[] = [];
    const { manifest } = await buildShards({
      sources,
      outDir: `${dir}/out`,
      workers: 0,
      onWarning: (m) => warnings.push(m),
    });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /bad\.jsonl line 3/);
    assert.equal(manifest.totals.malformed, 1);
    assert.deepEqual(await readSplit(`${dir}/out`, "train"), expected(DOCS.slice(0, 5)));
    await assert.rejects(
      buildShards({ sources, outDir: `${dir}/strict`, workers: 0, strict: true }),
      /Malformed JSON in .*bad\.jsonl line 3/,
    );
  });
});

Deno.test("pipeline: a missing or non-text field is an error naming the file and line", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/field.jsonl`;
    await Deno.writeTextFile(path, `{"text": "ok"}\n{"text": 5}\n`);
    await assert.rejects(
      buildShards({ sources: await resolveSources([path]), outDir: `${dir}/o1`, workers: 0 }),
      /No text in .*field\.jsonl line 2: field "text" is a number; set --text-field/,
    );
    await Deno.writeTextFile(path, `{"content": "ok"}\n`);
    const { manifest } = await buildShards({
      sources: await resolveSources([path]),
      outDir: `${dir}/o2`,
      workers: 0,
      textField: "content",
    });
    assert.equal(manifest.totals.trainTokens, 2);
  });
});

Deno.test("pipeline: truncated .zst and .gz fail naming the source and keep earlier shards", async () => {
  await withTemp(async (dir) => {
    for (const ext of [".jsonl.zst", ".jsonl.gz"]) {
      const good = await writeDocs(dir, `good${ext}`, DOCS.slice(0, 100));
      const bad = await writeDocs(dir, `bad${ext}`, DOCS);
      const bytes = await Deno.readFile(bad);
      await Deno.writeFile(bad, bytes.subarray(0, bytes.length >> 1));
      const out = `${dir}/out${ext}`;
      await assert.rejects(
        buildShards({
          sources: await resolveSources([good, bad]),
          outDir: out,
          shardTokens: 1000,
          workers: 0,
          batchBytes: 1024,
        }),
        new RegExp(
          `Cannot read .*bad${ext.replaceAll(".", "\\.")}: the (gzip|zstd) data ends ` +
            `.*at byte ${bytes.length >> 1}: the file is truncated; download it again`,
        ),
      );
      const m = (await readManifest(out))!;
      assert.ok(m.shards.length >= 5 && !m.complete, `${ext}: ${m.shards.length} shards`);
      for (const s of m.shards) assert.equal((await readShard(`${out}/${s.file}`)).length, 1000);
    }
  });
});

Deno.test("pipeline: an existing folder needs --resume or --overwrite", async () => {
  await withTemp(async (dir) => {
    const path = await writeDocs(dir, "a.jsonl", DOCS.slice(0, 10));
    const sources = await resolveSources([path]);
    await buildShards({ sources, outDir: `${dir}/o`, workers: 0 });
    await assert.rejects(buildShards({ sources, outDir: `${dir}/o`, workers: 0 }), /--resume/);
    await assert.rejects(
      buildShards({ sources, outDir: `${dir}/o`, workers: 0, resume: true, shardTokens: 7 }),
      /Cannot resume .*different sources or settings/,
    );
    const again = await buildShards({ sources, outDir: `${dir}/o`, workers: 0, overwrite: true });
    assert.ok(again.manifest.complete);
  });
});
