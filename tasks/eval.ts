/**
 * `deno task eval CHECKPOINT [flags]`: HellaSwag accuracy (two scoring styles)
 * and/or validation loss on token shards, for any GPT-2 checkpoint directory.
 *
 * @module
 */

import { flagHelp, parseCheckpointArgs, runMain, tableFlags } from "./_cli.ts";
import { EVAL_CONFIG } from "../src/eval/config.ts";
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

${flagHelp(tableFlags(EVAL_CONFIG))}
  -h, --help            this text

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

/** `deno task eval`: parse, score, print; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const args = parseCheckpointArgs(argv, "eval", EVAL_CONFIG);
  if (args === "help") {
    console.log(HELP);
    return 0;
  }
  const { config: c, dir } = args;
  const { seq, precision } = c;
  // Under mpirun the ranks share the items and the batches; rank 0 prints the result.
  const dist = await initRanks();
  const { rank, size: N } = dist;
  const lead = rank === 0;
  const rt = await createRuntime({ backend: c.backend });
  const result: Record<string, unknown> = { checkpoint: dir };
  const said = new Set<string>(); // the model is opened once per evaluation: say things once
  const notice = (line: string) => {
    if (lead && !said.has(line)) console.error(`notice: ${line}`);
    said.add(line);
  };
  const wantHellaswag = c.hellaswag !== undefined || c.loss === undefined;
  if (wantHellaswag) {
    const path = await hellaswagPath(c.hellaswag ?? "download", c.cacheDir);
    let items = await readHellaSwag(path);
    if (c.limit !== undefined) items = items.slice(0, c.limit);
    // Rows only need the longest item's length: shorter T means less padding work.
    const longest = Math.max(
      ...items.flatMap((it) =>
        (["completion", "harness"] as const).flatMap((st) =>
          itemRows(it, st).map((r) => r.ctx.length + r.end.length - 1)
        )
      ),
    );
    const model = await openCheckpointModel(rt, dir, {
      B: 8 * c.batchItems,
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
  if (c.loss !== undefined) {
    const B = c.batch;
    const model = await openCheckpointModel(rt, dir, { B, T: seq, precision, notice });
    try {
      const shards = await openShards(c.loss, { split: "val" });
      const loader = new TokenLoader(shards, { batchSize: B, seqLen: model.T });
      const n = Math.min(c.lossBatches, loader.batchesPerEpoch);
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
        shards: c.loss,
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
  if (c.json) await Deno.writeTextFile(c.json, text + "\n");
  return 0;
}

if (import.meta.main) await runMain(main);
