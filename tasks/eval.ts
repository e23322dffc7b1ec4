/**
 * `deno task eval CHECKPOINT [flags]`: HellaSwag accuracy (two scoring styles)
 * and/or validation loss on token shards, for any GPT-2 checkpoint directory.
 *
 * @module
 */

import { numberFlag, parseCheckpointArgs, precisionFlag, runMain } from "./_cli.ts";
import { createRuntime } from "../src/gpu/runtime.ts";
import { openCheckpointModel } from "../src/eval/checkpoint_model.ts";
import { itemRows, readHellaSwag, scoreItems, summarize } from "../src/eval/hellaswag.ts";
import { openShards, TokenLoader } from "../src/data/loader.ts";
import { formatDuration } from "../src/train/log.ts";
import { gatherJson, initRanks } from "../src/parallel/dist.ts";

const HELLASWAG_URL =
  "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl";

const HELP = `Usage: deno task eval CHECKPOINT_DIR [flags]

CHECKPOINT_DIR holds config.json + model.safetensors (ours, or any Hugging Face GPT-2).

  --hellaswag PATH|download   HellaSwag validation: hellaswag_val.jsonl (rowanz/hellaswag) or
                              llama.cpp's 6-line text format; "download" fetches the official
                              jsonl once into --cache-dir (default when --loss is not given)
  --limit N                   score only the first N items
  --batch-items K             items per GPU batch (8 rows each: 4 endings x 2 styles; default 2)
  --seq T                     longest row in tokens (default 192; longer rows lose context)
  --loss DIR                  validation loss on token shards (a folder's val split, or a .bin)
  --loss-batches N            batches for --loss (default 50)
  --batch B                   rows per batch for --loss (default 4, with --seq)
  --precision fp32|fp16       fp16: f16 activations and weights, f32 sums, where the adapter
                              has shader-f16 (default fp32)
  --json FILE                 also write the result as JSON
  --cache-dir DIR             where the downloaded jsonl is kept (default runs/data)
  -h, --help                  this text

Prints {n, completion: {acc, acc_norm}, harness: {acc, acc_norm}} for HellaSwag:
completion = nanoGPT/llm.c style, harness = lm-evaluation-harness style.`;

async function hellaswagPath(arg: string, cacheDir: string): Promise<string> {
  if (arg !== "download") return arg;
  const path = `${cacheDir}/hellaswag_val.jsonl`;
  if (await Deno.stat(path).then(() => true, () => false)) return path;
  console.error(`downloading ${HELLASWAG_URL}`);
  let res: Response;
  try {
    res = await fetch(HELLASWAG_URL);
  } catch (e) {
    throw new Error(
      `Cannot download ${HELLASWAG_URL} (${
        (e as Error).message
      }): pass a local file with --hellaswag PATH`,
    );
  }
  if (!res.ok) {
    throw new Error(`Cannot download ${HELLASWAG_URL}: HTTP ${res.status}; pass --hellaswag PATH`);
  }
  await Deno.mkdir(cacheDir, { recursive: true });
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, await res.text());
  await Deno.rename(tmp, path);
  return path;
}

function progress(label: string, done: number, total: number, t0: number, extra = "") {
  const s = (performance.now() - t0) / 1000;
  const rate = done / Math.max(s, 1e-9);
  const bar = "#".repeat(Math.round((20 * done) / total)).padEnd(20, ".");
  const line = `${label} [${bar}] ${done}/${total} | ${rate.toFixed(2)}/s | ETA ${
    formatDuration((total - done) / rate)
  }${extra}`;
  if (Deno.stderr.isTerminal()) Deno.stderr.writeSync(new TextEncoder().encode(`\r${line}`));
  else if (done === total || done % 50 === 0) console.error(line);
}

export async function main(argv: string[]): Promise<number> {
  const args = parseCheckpointArgs(argv, "eval", {
    strings: [
      "hellaswag",
      "limit",
      "batch-items",
      "seq",
      "loss",
      "loss-batches",
      "batch",
      "json",
      "cache-dir",
    ],
  });
  if (args === "help") {
    console.log(HELP);
    return 0;
  }
  const { v, dir } = args;
  const num = (k: string, d: number) => numberFlag(v, k, d, "positive-integer");
  const seq = num("seq", 192);
  const precision = precisionFlag(v);
  // Under mpirun the ranks share the items and the batches; rank 0 prints the result.
  const dist = await initRanks();
  const { rank, size: N } = dist;
  const lead = rank === 0;
  const rt = await createRuntime();
  const result: Record<string, unknown> = { checkpoint: dir };
  const said = new Set<string>(); // the model is opened once per evaluation: say things once
  const notice = (line: string) => {
    if (lead && !said.has(line)) console.error(`notice: ${line}`);
    said.add(line);
  };
  const wantHellaswag = v.hellaswag !== undefined || v.loss === undefined;
  if (wantHellaswag) {
    const path = await hellaswagPath(
      String(v.hellaswag ?? "download"),
      String(v["cache-dir"] ?? "runs/data"),
    );
    let items = await readHellaSwag(path);
    if (v.limit !== undefined) items = items.slice(0, num("limit", items.length));
    // Rows only need the longest item's length: shorter T means less padding work.
    const longest = Math.max(
      ...items.flatMap((it) =>
        (["completion", "harness"] as const).flatMap((st) =>
          itemRows(it, st).map((r) => r.ctx.length + r.end.length - 1)
        )
      ),
    );
    const model = await openCheckpointModel(rt, dir, {
      B: 8 * num("batch-items", 2),
      T: Math.min(seq, longest),
      precision,
      notice,
    });
    const t0 = performance.now();
    try {
      // Rank r scores items r, r + N, ...; rank 0 puts the scores back in order.
      const mine = items.filter((_, i) => i % N === rank);
      const own = await scoreItems(model, mine, (done, sofar) => {
        if (!lead) return;
        const acc = summarize(mine.slice(0, done), sofar).completion.acc_norm;
        progress("hellaswag", done, mine.length, t0, ` | acc_norm ${acc.toFixed(4)}`);
      });
      const parts = N > 1 ? await gatherJson(dist, own) : [own];
      const scores = parts ? items.map((_, i) => parts[i % N][Math.floor(i / N)]) : [];
      result.hellaswag = {
        file: path,
        ...summarize(items, scores),
        items_per_s: items.length / ((performance.now() - t0) / 1000),
      };
    } finally {
      model.destroy();
    }
    if (Deno.stderr.isTerminal()) console.error();
  }
  if (v.loss !== undefined) {
    const B = num("batch", 4);
    const model = await openCheckpointModel(rt, dir, { B, T: seq, precision, notice });
    try {
      const shards = await openShards(String(v.loss), { split: "val" });
      const loader = new TokenLoader(shards, { batchSize: B, seqLen: model.T });
      const n = Math.min(num("loss-batches", 50), loader.batchesPerEpoch);
      const t0 = performance.now();
      let sum = 0;
      for (let i = 0; i < n; i++) {
        const b = loader.nextBatch(); // every rank walks the batches, each runs its own
        if (i % N === rank) sum += await model.forward(b.inputs, b.targets);
        if (lead) progress("val loss", i + 1, n, t0);
      }
      const total = new Float64Array([sum]);
      await dist.allReduceSum(total);
      sum = total[0];
      result.val_loss = {
        shards: String(v.loss),
        batches: n,
        tokens: n * B * model.T,
        loss: sum / n,
      };
    } finally {
      model.destroy();
    }
    if (Deno.stderr.isTerminal()) console.error();
  }
  if (!lead) return 0;
  if (N > 1) result.ranks = N;
  const text = JSON.stringify(result, null, 2);
  console.log(text);
  if (v.json) await Deno.writeTextFile(String(v.json), text + "\n");
  return 0;
}

if (import.meta.main) await runMain(main);
