/**
 * The bench harness: every bench in bench/ exports a {@linkcode BenchCase};
 * `deno task bench [NAME] [--json FILE]` (tasks/bench.ts) runs one or all of them,
 * prints a table per bench and optionally writes every row as JSON.
 *
 * A row holds the figures a bench measured, named with their units
 * (`ms`, `gflops`, `tokens_per_s`, ...), so the JSON is self-describing.
 *
 * @module
 */

/** One measured configuration: a label plus named figures. */
export type BenchRow = Record<string, string | number | boolean>;

/** Options every bench receives from the command line. */
export interface BenchOptions {
  /** Free-form `--key value` flags after the bench name, for benches that take them. */
  args: Record<string, string>;
  /** Fewer repetitions and smaller sizes, for a smoke run. */
  quick: boolean;
  /** Report progress of a long bench (stderr). */
  log: (message: string) => void;
}

/** A named benchmark. */
export interface BenchCase {
  name: string;
  description: string;
  /** The `--key value` arguments the bench reads, for `--help`. */
  args?: string;
  run(options: BenchOptions): Promise<BenchRow[]>;
}

/** Median of a non-empty list of numbers. */
export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Formats rows as an aligned text table, columns in first-seen order. */
export function formatTable(rows: BenchRow[]): string {
  const cols: string[] = [];
  for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
  const cell = (v: unknown) =>
    typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : String(v ?? "");
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padStart(widths[i])).join("  ");
  return [
    line(cols),
    line(widths.map((w) => "-".repeat(w))),
    ...rows.map((r) => line(cols.map((c) => cell(r[c])))),
  ].join("\n");
}
