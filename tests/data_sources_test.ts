import assert from "node:assert/strict";
import { zstdCompressSync } from "node:zlib";
import { ZstdFrameTracker } from "../src/data/_zstd_frames.ts";
import { isHuggingFace } from "../src/data/_http.ts";
import {
  classify,
  globToRegExp,
  resolveSources,
  selectSubset,
  slimpajamaSources,
  unitHash,
} from "../src/data/sources.ts";
import { ProgressBar } from "../src/data/_progress.ts";
import { HELP, main, parseCount } from "../tasks/data.ts";
import { runData } from "./fixtures/data/_fixtures.ts";

Deno.test("sources: slimpajama expands to the hub's chunk URLs, offline", () => {
  const all = slimpajamaSources();
  assert.equal(all.length, 10 * 5912);
  assert.equal(
    all[0].location,
    "https://huggingface.co/datasets/cerebras/SlimPajama-627B/resolve/main/train/chunk1/example_train_0.jsonl.zst",
  );
  assert.equal(all.at(-1)!.key, "train/chunk10/example_train_5911.jsonl.zst");
  assert.deepEqual([all[0].format, all[0].compression], ["jsonl", "zstd"]);
  const mirror = slimpajamaSources({
    chunks: [3],
    filesPerChunk: 2,
    base: "http://127.0.0.1:9/sp/",
  });
  assert.deepEqual(mirror.map((s) => s.location), [
    "http://127.0.0.1:9/sp/train/chunk3/example_train_0.jsonl.zst",
    "http://127.0.0.1:9/sp/train/chunk3/example_train_1.jsonl.zst",
  ]);
  // The key ignores the mirror, so a subset picks the same files from any mirror.
  assert.equal(mirror[0].key, "train/chunk3/example_train_0.jsonl.zst");
});

Deno.test("sources: subsets are deterministic, sized, and disjoint for disjoint ranges", () => {
  const all = slimpajamaSources();
  const first = selectSubset(all, { fraction: 0.5, seed: 42 });
  const again = selectSubset(all, { fraction: 0.5, seed: 42 });
  assert.deepEqual(first, again);
  assert.ok(Math.abs(first.length / all.length - 0.5) < 0.01, `${first.length}`);
  const other = selectSubset(all, { fraction: 0.3, from: 0.5, seed: 42 });
  assert.ok(Math.abs(other.length / all.length - 0.3) < 0.01, `${other.length}`);
  const keys = new Set(first.map((s) => s.key));
  assert.equal(other.filter((s) => keys.has(s.key)).length, 0);
  // Another seed picks a different half; the whole range keeps everything, in order.
  const reseeded = selectSubset(all, { fraction: 0.5, seed: 43 });
  assert.notDeepEqual(reseeded.slice(0, 20), first.slice(0, 20));
  assert.deepEqual(selectSubset(all, { fraction: 1 }), all);
  assert.throws(() => selectSubset(all, { fraction: 0.6, from: 0.5 }), /must not exceed 1/);
  assert.throws(() => selectSubset(all, { fraction: 0 }), /Invalid subset fraction/);
});

Deno.test("sources: unitHash spreads evenly over [0, 1)", () => {
  const bins = new Array(10).fill(0);
  for (let i = 0; i < 20000; i++) {
    const u = unitHash(1, `train/chunk1/example_train_${i}.jsonl.zst`);
    assert.ok(u >= 0 && u < 1);
    bins[Math.floor(u * 10)]++;
  }
  for (const b of bins) assert.ok(b > 1800 && b < 2200, `${bins}`);
});

Deno.test("sources: files, folders and globs resolve sorted, with formats", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/a/b`, { recursive: true });
    for (const f of ["a/x.jsonl.zst", "a/b/y.jsonl.gz", "a/z.txt", "a/skip.md", "w.jsonl"]) {
      await Deno.writeTextFile(`${dir}/${f}`, "");
    }
    const folder = await resolveSources([`${dir}/a`]);
    assert.deepEqual(folder.map((s) => s.location.slice(dir.length)), [
      "/a/b/y.jsonl.gz",
      "/a/x.jsonl.zst",
      "/a/z.txt",
    ]);
    assert.deepEqual(folder.map((s) => s.compression), ["gzip", "zstd", "none"]);
    const glob = await resolveSources([`${dir}/**/*.jsonl*`]);
    assert.deepEqual(glob.map((s) => s.location.slice(dir.length)), [
      "/a/b/y.jsonl.gz",
      "/a/x.jsonl.zst",
      "/w.jsonl",
    ]);
    const url = await resolveSources(["http://127.0.0.1:1/d/f.jsonl.zst?download=1"]);
    assert.deepEqual([url[0].format, url[0].compression], ["jsonl", "zstd"]);
    await assert.rejects(resolveSources([`${dir}/a/skip.md`]), /Unsupported source/);
    await assert.rejects(resolveSources([`${dir}/nope.txt`]), /Source not found/);
    await assert.rejects(resolveSources([`${dir}/*.nothing`]), /No files match/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sources: glob and extension rules", () => {
  assert.ok(globToRegExp("data/**/*.zst").test("data/x/y/z.zst"));
  assert.ok(globToRegExp("data/**/*.zst").test("data/z.zst"));
  assert.ok(!globToRegExp("data/*.zst").test("data/x/z.zst"));
  assert.ok(globToRegExp("c[0-9].txt").test("c7.txt"));
  assert.equal(classify("a.md"), undefined);
  assert.ok(isHuggingFace("https://huggingface.co/datasets/x"));
  assert.ok(!isHuggingFace("https://example.com/huggingface.co"));
});

Deno.test("sources: the zstd frame tracker spots truncation at any byte", () => {
  const data = new TextEncoder().encode("some text that compresses ".repeat(5000));
  const z = zstdCompressSync(data);
  const whole = new ZstdFrameTracker();
  whole.push(z.subarray(0, 100));
  whole.push(z.subarray(100));
  assert.ok(whole.atBoundary());
  for (const cut of [1, 4, 5, 20, z.length >> 1, z.length - 1]) {
    const t = new ZstdFrameTracker();
    t.push(z.subarray(0, cut));
    assert.ok(!t.atBoundary(), `cut at ${cut}`);
  }
  const two = new ZstdFrameTracker();
  two.push(new Uint8Array([...z, ...z]));
  assert.ok(two.atBoundary());
  assert.throws(() => new ZstdFrameTracker().push(new Uint8Array([1, 2, 3, 4])), /not zstd/);
});

Deno.test("cli: counts, help, unknown flags and a dry run of a subset", async () => {
  assert.equal(parseCount("100M", "--x"), 100_000_000);
  assert.equal(parseCount("1e8", "--x"), 100_000_000);
  assert.equal(parseCount("2.5k", "--x"), 2500);
  assert.throws(() => parseCount("lots", "--shard-tokens"), /Invalid --shard-tokens/);
  for (const flag of ["--subset", "--subset-from", "--subset-seed", "--resume", "--strict"]) {
    assert.ok(HELP.includes(flag), flag);
  }
  await assert.rejects(main(["--bogus"]), /bogus/);
  const lines: string[] = [];
  const log = console.log;
  console.log = (m: string) => lines.push(m);
  try {
    const rc = await main([
      "--source",
      "slimpajama",
      "--slimpajama-chunks",
      "1-2",
      "--slimpajama-files",
      "100",
      "--subset",
      "0.25",
      "--subset-seed",
      "5",
      "--dry-run",
    ]);
    assert.equal(rc, 0);
  } finally {
    console.log = log;
  }
  assert.match(lines[0], /^data: config .*"of":200/);
  const urls = lines.slice(1);
  assert.ok(urls.length > 30 && urls.length < 70, `${urls.length}`);
  assert.ok(urls.every((u) => u.startsWith("https://huggingface.co/") && u.endsWith(".jsonl.zst")));
});

Deno.test("cli: a folder's files of other types are named in a warning, or an error if all are", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/docs/sub`, { recursive: true });
    const names = ["a.jsonl", "README.md", "notes.md", "x.md", "LICENSE", "sub/b.parquet"];
    for (const f of names) await Deno.writeTextFile(`${dir}/docs/${f}`, "");
    const r = await runData([`${dir}/docs`, "--dry-run"]);
    assert.equal(r.error, undefined);
    assert.deepEqual(r.err, [
      `warning: Skipped 5 files of other types under ${dir}/docs: 3 .md (README.md, notes.md, ` +
      "...), 1 with no extension (LICENSE), 1 .parquet (sub/b.parquet); only .txt, .txt.gz, " +
      ".txt.zst, .jsonl, .jsonl.gz, .jsonl.zst, .json.gz, .json.zst files are read",
    ]);
    assert.deepEqual(r.out.slice(1), [`${dir}/docs/a.jsonl`]);

    await Deno.remove(`${dir}/docs/a.jsonl`);
    const none = await runData([`${dir}/docs`, "--out", `${dir}/out`]);
    assert.equal(
      none.error,
      `No files to read under ${dir}/docs: it holds only 5 files of other types: 3 .md ` +
        "(README.md, notes.md, ...), 1 with no extension (LICENSE), 1 .parquet (sub/b.parquet); " +
        "give a folder of .txt, .txt.gz, .txt.zst, .jsonl, .jsonl.gz, .jsonl.zst, .json.gz, " +
        ".json.zst files",
    );
    // Nothing was written.
    assert.equal(await Deno.stat(`${dir}/out`).then(() => true, () => false), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: the progress line shows bytes, documents, tokens, MB/s and ETA", () => {
  const bar = new ProgressBar(false);
  const p = {
    rawBytes: 25e6,
    totalBytes: 100e6,
    textBytes: 80e6,
    documents: 12345,
    tokens: 20e6,
    malformed: 2,
    source: 3,
    sources: 10,
  };
  const line = bar.format(p, 8);
  for (const part of ["source 4/10", "25.0%", "25.0 MB/100.0 MB", "12.3k docs", "20.00M tokens"]) {
    assert.ok(line.includes(part), `${part} in ${line}`);
  }
  assert.match(line, /10\.0 MB\/s .*2 malformed .*ETA 0:24/);
  assert.ok(!bar.format({ ...p, totalBytes: undefined }, 8).includes("ETA"));
});
