/**
 * Tokenization throughput of the data pipeline: `deno task bench data`, or standalone with
 * `deno run -A bench/data_bench.ts [--quick]`.
 *
 * Inputs: ../shared/data/tinyshakespeare.txt (when present) and a synthetic SlimPajama-like
 * .jsonl.zst made here (Zipf-distributed pseudo-words, so the BPE cache sees a realistic
 * spread of words rather than a tiny vocabulary). Each row runs the whole pipeline (read,
 * decompress, parse, tokenize, write shards) on a warm worker pool.
 * Formulas: mb_per_s = decompressed text bytes / wall seconds / 1e6;
 * tokens_per_s = tokens written / wall seconds. The `inline` row is the tokenizer alone on
 * the main thread, for reference.
 *
 * @module
 */
import { zstdCompressSync } from "node:zlib";
import { tokenizeBatch } from "../src/data/_tokenize_batch.ts";
import { TokenizerPool } from "../src/data/_worker_pool.ts";
import { buildShards } from "../src/data/pipeline.ts";
import { resolveSources } from "../src/data/sources.ts";
import { encodeOrdinary } from "../src/data/tokenizer.ts";
import {
  type BenchCase,
  type BenchOptions,
  type BenchRow,
  formatTable,
  median,
} from "./_harness.ts";

const SHAKESPEARE = new URL("../../shared/data/tinyshakespeare.txt", import.meta.url);

/** Synthetic web-like documents as JSONL bytes, about `bytes` long, deterministic. */
export function syntheticJsonl(bytes: number, seed = 1): Uint8Array {
  let s = seed >>> 0 || 1;
  const random = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
  const syllables = ("ka ri to ne sa mu lo pe di an er in on th st re ch ou ar en al ing ion " +
    "ver pro com con tion ment ness able ship ful less ly ed es ity")
    .split(" ");
  const vocab: string[] = [];
  for (let i = 0; i < 30000; i++) {
    let w = "";
    const n = 1 + Math.floor(random() * 3.5);
    for (let k = 0; k < n; k++) w += syllables[Math.floor(random() * syllables.length)];
    vocab.push(w);
  }
  // Zipf(1) over the vocabulary: rank r is drawn with probability proportional to 1/r.
  const zipf = () =>
    Math.min(vocab.length - 1, Math.floor(Math.exp(random() * Math.log(vocab.length))) - 1);
  const lines: string[] = [];
  let total = 0;
  let doc = 0;
  while (total < bytes) {
    const words = 50 + Math.floor(random() * 600);
    let text = "";
    for (let i = 0; i < words; i++) {
      let w = vocab[zipf()];
      const r = random();
      if (r < 0.08) w = w[0].toUpperCase() + w.slice(1);
      else if (r < 0.1) w = String(Math.floor(random() * 100000));
      text += i === 0 ? w : (r > 0.985 ? "\n\n" : r > 0.93 ? ". " : r > 0.9 ? ", " : " ") + w;
    }
    const set = ["RedPajamaC4", "RedPajamaCommonCrawl", "RedPajamaWikipedia"][doc++ % 3];
    const line = JSON.stringify({ text: text + ".", meta: { redpajama_set_name: set } });
    lines.push(line);
    total += line.length + 1;
  }
  return new TextEncoder().encode(lines.join("\n") + "\n");
}

async function timeBuild(path: string, workers: number, reps: number): Promise<BenchRow> {
  const sources = await resolveSources([path]);
  const times: number[] = [];
  let tokens = 0;
  let textBytes = 0;
  for (let r = 0; r < reps; r++) {
    const out = await Deno.makeTempDir({ prefix: "data_bench_" });
    const pool = new TokenizerPool(workers);
    try {
      // Warm-up: load the BPE tables in every worker before the clock starts.
      await Promise.all(
        Array.from({ length: Math.max(1, workers) }, () =>
          pool.submit({
            kind: "text",
            bytes: new TextEncoder().encode("warm up"),
            docStart: false,
            field: "",
          })),
      );
      const t0 = performance.now();
      const result = await buildShards({ sources, outDir: out, pool });
      times.push((performance.now() - t0) / 1000);
      tokens = result.tokens;
      textBytes = result.textBytes;
    } finally {
      pool.close();
      await Deno.remove(out, { recursive: true });
    }
  }
  const s = median(times);
  return {
    workers,
    mb: +(textBytes / 1e6).toFixed(2),
    tokens,
    seconds: +s.toFixed(3),
    mb_per_s: +(textBytes / s / 1e6).toFixed(2),
    tokens_per_s: Math.round(tokens / s),
  };
}

/** The data bench: pipeline throughput with 1 worker and with every core. */
export const dataBench: BenchCase = {
  name: "data",
  description: "tokenization throughput (MB/s, tokens/s) of deno task data, 1 worker vs all cores",
  args: "--mb N (size of the synthetic .jsonl.zst in MB, default 24)",
  async run(options: BenchOptions): Promise<BenchRow[]> {
    const rows: BenchRow[] = [];
    const dir = await Deno.makeTempDir({ prefix: "data_bench_in_" });
    const cores = navigator.hardwareConcurrency;
    const reps = options.quick ? 1 : 3;
    try {
      const inputs: { input: string; path: string }[] = [];
      if (await Deno.stat(SHAKESPEARE).then(() => true, () => false)) {
        inputs.push({ input: "tinyshakespeare.txt", path: SHAKESPEARE.pathname });
      } else options.log("data bench: tinyshakespeare.txt is absent, skipping it");
      const size = Number(options.args.mb ?? (options.quick ? 4 : 24)) * 1e6;
      const jsonl = syntheticJsonl(size);
      const zst = `${dir}/synthetic.jsonl.zst`;
      await Deno.writeFile(zst, zstdCompressSync(jsonl));
      inputs.push({ input: `synthetic.jsonl.zst`, path: zst });
      for (const { input, path } of inputs) {
        // The tokenizer alone on this thread: the text file as one string, or the JSONL
        // through the same parse-and-encode function the workers run.
        const raw = input.endsWith(".txt") ? await Deno.readFile(path) : jsonl;
        const t0 = performance.now();
        const n = input.endsWith(".txt")
          ? encodeOrdinary(new TextDecoder().decode(raw)).length
          : tokenizeBatch({ kind: "jsonl", bytes: raw, docStart: false, field: "text" }).tokens
            .length;
        const s = (performance.now() - t0) / 1000;
        rows.push({
          input,
          workers: "inline",
          mb: +(raw.length / 1e6).toFixed(2),
          tokens: n,
          seconds: +s.toFixed(3),
          mb_per_s: +(raw.length / s / 1e6).toFixed(2),
          tokens_per_s: Math.round(n / s),
        });
        for (const workers of [...new Set([1, cores])]) {
          options.log(`data bench: ${input} with ${workers} worker(s)`);
          rows.push({ input, ...await timeBuild(path, workers, reps) });
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    return rows;
  },
};

if (import.meta.main) {
  const rows = await dataBench.run({
    args: {},
    quick: Deno.args.includes("--quick"),
    log: (m) => console.error(m),
  });
  console.log(formatTable(rows));
}
