/**
 * HellaSwag throughput: items per second (both scoring styles, 8 rows per
 * item) on a small model, and sampling tokens per second with the KV cache.
 *
 * @module
 */

import { createRuntime } from "../src/gpu/runtime.ts";
import { resolveConfig } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { Decoder } from "../src/model/decode.ts";
import { generateCached } from "../src/eval/generate.ts";
import {
  type HellaSwagItem,
  itemRows,
  parseHellaSwagText,
  scoreItems,
} from "../src/eval/hellaswag.ts";
import type { BenchCase, BenchRow } from "./_harness.ts";

const SHARED = new URL("../../shared/data/hellaswag_val_full.txt", import.meta.url);

/** Real items when ../shared/data has them, otherwise made-up ones of similar length. */
async function benchItems(n: number): Promise<{ items: HellaSwagItem[]; source: string }> {
  try {
    const items = parseHellaSwagText(await Deno.readTextFile(SHARED), SHARED.pathname);
    return { items: items.slice(0, n), source: "hellaswag_val_full.txt" };
  } catch {
    const ctx = "A man is standing in a kitchen holding a large knife and a cutting board. He";
    const items = Array.from({ length: n }, (_, i) => ({
      index: i,
      activityLabel: "Cooking",
      ctx,
      label: i % 4,
      endings: ["cuts the onions.", "walks away.", "sings a song loudly.", "paints the wall blue."],
    }));
    return { items, source: "synthetic" };
  }
}

/** `deno task bench eval [--model gpt2-mini] [--items 16]` */
export const evalBench: BenchCase = {
  name: "eval",
  args: "--model gpt2-mini --items 16",
  description: "HellaSwag items/s and KV-cache sampling tokens/s on a small model",
  async run({ args, quick, log }) {
    const rt = await createRuntime();
    const name = args.model ?? "gpt2-mini";
    const cfg = resolveConfig(name);
    const { items, source } = await benchItems(Number(args.items ?? (quick ? 4 : 16)));
    const T = Math.min(
      cfg.nCtx,
      Math.max(
        ...items.flatMap((it) =>
          itemRows(it, "completion").map((r) => r.ctx.length + r.end.length)
        ),
      ),
    );
    const rows: BenchRow[] = [];
    const model = await GPT2.create(rt, cfg, { B: 16, T, seed: 1, inference: true });
    try {
      log(`eval: scoring ${items.length} ${source} items with ${name}, T=${T}`);
      await scoreItems(model, items.slice(0, 2)); // warm-up
      const t0 = performance.now();
      await scoreItems(model, items);
      const s = (performance.now() - t0) / 1000;
      rows.push({
        what: "hellaswag",
        model: name,
        items: items.length,
        T,
        seconds: s,
        per_s: items.length / s,
        source,
      });
      const dec = await Decoder.create(rt, model, Math.min(cfg.nCtx, 256));
      try {
        const n = quick ? 16 : 64;
        await generateCached(dec, [50256], { maxTokens: 4, temperature: 0 });
        const t1 = performance.now();
        await generateCached(dec, [50256], { maxTokens: n, temperature: 0 });
        const s1 = (performance.now() - t1) / 1000;
        rows.push({
          what: "sample (KV cache)",
          model: name,
          items: n,
          T: dec.T,
          seconds: s1,
          per_s: n / s1,
          source: "-",
        });
      } finally {
        dec.destroy();
      }
    } finally {
      model.destroy();
    }
    for (const r of rows) r.adapter = rt.gpu.name;
    return rows;
  },
};
