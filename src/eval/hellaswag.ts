/**
 * HellaSwag: readers for the official jsonl (rowanz/hellaswag) and llama.cpp's
 * 6-line text format, the two scoring styles, and batched scoring on the GPU.
 *
 * Completion style (nanoGPT, llm.c): context tokens then " " + ending; the
 * prediction is the ending with the lowest summed (acc) or mean (acc_norm)
 * token loss.
 * lm-evaluation-harness style: query = preprocess(activity_label + ": " +
 * ctx_a + " " + capitalised ctx_b), continuation " " + preprocess(ending); the
 * prediction has the highest summed log-likelihood (acc) or log-likelihood per
 * character of the ending (acc_norm). The text format has no ctx_a/ctx_b
 * split, so there the query is preprocess(activity_label + ": " + ctx).
 *
 * @module
 */

import type { GPT2 } from "../model/gpt2.ts";
import { IGNORE_TARGET } from "../model/gpt2.ts";
import { encodeOrdinary } from "../data/tokenizer.ts";

/** One item: a context and four endings, one of them right. */
export interface HellaSwagItem {
  /** Position in the file (0-based) for messages. */
  index: number;
  /** The activity the item is about, e.g. "Removing ice from car" ("" when absent). */
  activityLabel: string;
  /** The whole context the endings continue. */
  ctx: string;
  /** First part of the context; only in the jsonl format. */
  ctxA?: string;
  /** Second part of the context (the harness capitalises it); only in the jsonl format. */
  ctxB?: string;
  /** Index (0-3) of the right ending. */
  label: number;
  /** The four candidate endings. */
  endings: string[];
}

/** Parses the official jsonl; a bad line is an error naming file and line. */
export function parseHellaSwagJsonl(text: string, path: string): HellaSwagItem[] {
  const items: HellaSwagItem[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line) continue;
    const where = `${path}:${i + 1}`;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line);
    } catch (e) {
      throw new SyntaxError(
        `${where}: not valid JSON (${(e as Error).message}): fix or remove the line`,
      );
    }
    const endings = o.endings;
    const label = Number(o.label);
    if (
      typeof o.ctx !== "string" || !Array.isArray(endings) || endings.length !== 4 ||
      !endings.every((e) => typeof e === "string") || !(label >= 0 && label < 4)
    ) {
      throw new TypeError(
        `${where}: expected fields ctx (string), endings (4 strings) and label (0-3): ` +
          "is this hellaswag_val.jsonl?",
      );
    }
    items.push({
      index: items.length,
      activityLabel: String(o.activity_label ?? ""),
      ctx: o.ctx,
      ctxA: typeof o.ctx_a === "string" ? o.ctx_a : undefined,
      ctxB: typeof o.ctx_b === "string" ? o.ctx_b : undefined,
      label,
      endings: endings as string[],
    });
  }
  return items;
}

/** Parses llama.cpp's format: "activity_label: ctx", gold index, four endings. */
export function parseHellaSwagText(text: string, path: string): HellaSwagItem[] {
  const lines = text.split("\n");
  while (lines.length && lines[lines.length - 1].trim() === "") lines.pop();
  if (lines.length % 6 !== 0) {
    throw new SyntaxError(
      `${path}:${lines.length}: ${lines.length} lines is not a multiple of 6: each item is a ` +
        "context line, a gold index and four endings",
    );
  }
  const items: HellaSwagItem[] = [];
  for (let i = 0; i < lines.length; i += 6) {
    const head = lines[i];
    const label = Number(lines[i + 1].trim());
    if (!/^[0-3]$/.test(lines[i + 1].trim())) {
      throw new SyntaxError(`${path}:${i + 2}: gold index "${lines[i + 1]}" is not 0-3`);
    }
    const colon = head.indexOf(": ");
    items.push({
      index: items.length,
      activityLabel: colon >= 0 ? head.slice(0, colon) : "",
      ctx: colon >= 0 ? head.slice(colon + 2) : head,
      label,
      endings: lines.slice(i + 2, i + 6),
    });
  }
  return items;
}

/**
 * Reads either format (by extension: .jsonl, anything else is the text format).
 *
 * @example
 * ```ts
 * import { readHellaSwag } from "@webgpu-gpt2/core";
 *
 * const items = await readHellaSwag("hellaswag_val.jsonl");
 * console.log(items.length, items[0].ctx, items[0].endings[items[0].label]);
 * ```
 */
export async function readHellaSwag(path: string): Promise<HellaSwagItem[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "does not exist"
      : e instanceof Deno.errors.IsADirectory
      ? "is a folder"
      : `cannot be read (${(e as Error).message})`;
    throw new Error(
      `HellaSwag file ${path} ${why}: give hellaswag_val.jsonl (from the HellaSwag ` +
        "repository) or a llama.cpp-style hellaswag_val_full.txt",
    );
  }
  return path.endsWith(".jsonl") ? parseHellaSwagJsonl(text, path) : parseHellaSwagText(text, path);
}

/** lm-evaluation-harness's HellaSwag preprocessing. */
export function harnessPreprocess(text: string): string {
  return text.trim().replaceAll(" [title]", ". ").replace(/\[.*?\]/g, "").replaceAll("  ", " ");
}

const capitalize = (s: string) => s.charAt(0).toUpperCase() + s.slice(1).toLowerCase();

/** The scoring style's context and continuations of an item, as strings. */
export function itemTexts(item: HellaSwagItem, style: "completion" | "harness") {
  if (style === "completion") {
    return {
      context: item.ctx,
      endings: item.endings.map((e) => " " + e),
      lengths: item.endings.map((e) => e.length),
    };
  }
  const ctx = item.ctxA !== undefined && item.ctxB !== undefined
    ? `${item.ctxA} ${capitalize(item.ctxB)}`
    : item.ctx;
  const endings = item.endings.map(harnessPreprocess);
  return {
    context: harnessPreprocess(`${item.activityLabel}: ${ctx}`),
    endings: endings.map((e) => " " + e),
    lengths: endings.map((e) => e.length),
  };
}

/** Token rows for one item and style: context + ending, and where the ending starts. */
export function itemRows(item: HellaSwagItem, style: "completion" | "harness") {
  const t = itemTexts(item, style);
  const ctx = encodeOrdinary(t.context);
  return t.endings.map((e, i) => ({ ctx, end: encodeOrdinary(e), chars: t.lengths[i] }));
}

/** Scores of one item in one style. */
export interface ItemScore {
  /** Summed ending-token loss (nats) per ending. */
  sum: number[];
  /** Mean ending-token loss (nats) per ending. */
  mean: number[];
  /** Ending length in characters (harness acc_norm). */
  chars: number[];
}

/** Predictions from scores: acc uses the sum, acc_norm the style's normalisation. */
export function predict(
  s: ItemScore,
  style: "completion" | "harness",
): { acc: number; accNorm: number } {
  const argmin = (xs: number[]) => xs.reduce((b, x, i) => (x < xs[b] ? i : b), 0);
  const acc = argmin(s.sum); // lowest loss = highest log-likelihood
  const accNorm = style === "completion"
    ? argmin(s.mean)
    : argmin(s.sum.map((x, i) => x / Math.max(1, s.chars[i])));
  return { acc, accNorm };
}

/** Result of an evaluation. */
export interface HellaSwagResult {
  /** Number of items scored. */
  n: number;
  /** Completion style's accuracy (0-1): acc by summed loss, acc_norm by mean token loss. */
  completion: { acc: number; acc_norm: number };
  /**
   * lm-evaluation-harness style's accuracy (0-1): acc by summed log-likelihood, acc_norm by
   * log-likelihood per character of the ending.
   */
  harness: { acc: number; acc_norm: number };
}

/**
 * Scores items with a model whose batch holds whole items: B must be a multiple
 * of 8 (4 endings x 2 styles). Rows longer than T lose context tokens from the
 * left. Returns per-item scores for both styles.
 *
 * @example Accuracy of a checkpoint on the first 100 items
 * ```ts
 * import {
 *   createRuntime,
 *   openCheckpointModel,
 *   readHellaSwag,
 *   scoreItems,
 *   summarize,
 * } from "@webgpu-gpt2/core";
 *
 * const rt = await createRuntime();
 * const model = await openCheckpointModel(rt, "runs/mini/checkpoints/step_00000200", {
 *   B: 16, // two items per forward pass
 *   T: 128,
 * });
 * const items = (await readHellaSwag("hellaswag_val.jsonl")).slice(0, 100);
 * const scores = await scoreItems(model, items, (done) => console.log(`${done}/100`));
 * const r = summarize(items, scores);
 * console.log(`acc_norm ${r.completion.acc_norm} (harness ${r.harness.acc_norm})`);
 * model.destroy();
 * ```
 */
export async function scoreItems(
  model: GPT2,
  items: HellaSwagItem[],
  onProgress?: (done: number, scores: { completion: ItemScore; harness: ItemScore }[]) => void,
): Promise<{ completion: ItemScore; harness: ItemScore }[]> {
  const { B, T } = model;
  if (B % 8 !== 0) throw new RangeError(`HellaSwag scoring needs B a multiple of 8, got ${B}`);
  const perBatch = B / 8;
  const out: { completion: ItemScore; harness: ItemScore }[] = [];
  const tokens = new Int32Array(B * T), targets = new Uint32Array(B * T);
  for (let i0 = 0; i0 < items.length; i0 += perBatch) {
    const batch = items.slice(i0, i0 + perBatch);
    tokens.fill(0);
    targets.fill(IGNORE_TARGET);
    const rows: { start: number; n: number; chars: number }[] = [];
    batch.forEach((item, j) => {
      (["completion", "harness"] as const).forEach((style, k) => {
        itemRows(item, style).forEach((r, e) => {
          const row = j * 8 + k * 4 + e;
          let seq = [...r.ctx, ...r.end];
          if (seq.length > T + 1) seq = seq.slice(seq.length - (T + 1));
          const n = Math.min(r.end.length, seq.length - 1); // ending tokens scored
          for (let p = 0; p < seq.length - 1; p++) {
            tokens[row * T + p] = seq[p];
            if (p >= seq.length - 1 - n) targets[row * T + p] = seq[p + 1];
          }
          rows[row] = { start: seq.length - 1 - n, n, chars: r.chars };
        });
      });
    });
    await model.forward(tokens, targets);
    const losses = await model.readLosses();
    batch.forEach((_, j) => {
      const res = {
        completion: { sum: [], mean: [], chars: [] },
        harness: { sum: [], mean: [], chars: [] },
      } as {
        completion: ItemScore;
        harness: ItemScore;
      };
      (["completion", "harness"] as const).forEach((style, k) => {
        for (let e = 0; e < 4; e++) {
          const row = j * 8 + k * 4 + e, r = rows[row];
          let s = 0;
          for (let p = r.start; p < r.start + r.n; p++) s += losses[row * T + p];
          res[style].sum.push(s);
          res[style].mean.push(s / Math.max(1, r.n));
          res[style].chars.push(r.chars);
        }
      });
      out.push(res);
    });
    onProgress?.(out.length, out);
  }
  return out;
}

/** Accuracy of scored items in both styles. */
export function summarize(
  items: HellaSwagItem[],
  scores: { completion: ItemScore; harness: ItemScore }[],
): HellaSwagResult {
  const tally = (style: "completion" | "harness") => {
    let acc = 0, norm = 0;
    scores.forEach((s, i) => {
      const p = predict(s[style], style);
      if (p.acc === items[i].label) acc++;
      if (p.accNorm === items[i].label) norm++;
    });
    const n = Math.max(1, scores.length);
    return { acc: acc / n, acc_norm: norm / n };
  };
  return { n: scores.length, completion: tally("completion"), harness: tally("harness") };
}
