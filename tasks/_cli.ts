/**
 * Small helpers the task CLIs share: parsing CHECKPOINT_DIR plus flags, reading
 * numeric and precision flags, and running a main
 * function with the exit codes the tasks use (2 for bad usage, 1 for failure).
 *
 * @module
 */

import { parseArgs } from "node:util";

/** Flag values of a task, by name. */
export type FlagValues = Record<string, string | boolean | undefined>;

/**
 * Parses `TASK CHECKPOINT_DIR [flags]` strictly: `strings` and `booleans` name
 * the flags (plus -h/--help and --precision). Returns "help", or the flags
 * and the one directory; anything else is a TypeError that points to --help.
 */
export function parseCheckpointArgs(
  argv: string[],
  task: string,
  flags: { strings: string[]; booleans?: string[] },
): "help" | { v: FlagValues; dir: string } {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
    precision: { type: "string" },
  };
  for (const k of flags.strings) options[k] = { type: "string" };
  for (const k of flags.booleans ?? []) options[k] = { type: "boolean" };
  const { values, positionals } = parseArgs({
    args: joinNegativeValues(argv, new Set(flags.strings)),
    options,
    allowPositionals: true,
    strict: true,
  });
  if (values.help) return "help";
  if (positionals.length !== 1) {
    throw new TypeError(`Give one CHECKPOINT_DIR: see deno task ${task} --help`);
  }
  return { v: values, dir: positionals[0] };
}

/**
 * Rewrites `--flag -1` as `--flag=-1` for the value flags in `valued`, so that
 * node:util parseArgs reads a negative number as a value (it would call it an
 * ambiguous flag) and the flag's own check can name what is wrong with it.
 */
export function joinNegativeValues(argv: string[], valued: Set<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], next = argv[i + 1];
    if (
      a.startsWith("--") && !a.includes("=") && valued.has(a.slice(2)) && next !== undefined &&
      /^-(\d|\.\d|Infinity)/.test(next)
    ) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/** A flag's number, or `fallback` when absent; a bad value is a TypeError naming the flag. */
export function numberFlag(
  values: Record<string, unknown>,
  key: string,
  fallback: number,
  rule: NumberRule,
): number {
  const raw = values[key];
  if (raw === undefined) return fallback;
  return checkNumber(key, raw, rule);
}

/** What a numeric flag accepts. */
export type NumberRule =
  | "positive-integer"
  | "non-negative-integer"
  | "positive"
  | "non-negative"
  | "fraction" // [0, 1)
  | "probability"; // (0, 1]

const RULES: Record<NumberRule, [string, (x: number) => boolean]> = {
  "positive-integer": ["a positive integer", (x) => Number.isInteger(x) && x > 0],
  "non-negative-integer": ["a whole number, 0 or more", (x) => Number.isInteger(x) && x >= 0],
  positive: ["a number above 0", (x) => Number.isFinite(x) && x > 0],
  "non-negative": ["a number, 0 or more", (x) => Number.isFinite(x) && x >= 0],
  fraction: ["a number in [0, 1)", (x) => x >= 0 && x < 1],
  probability: ["a number in (0, 1]", (x) => x > 0 && x <= 1],
};

/** `raw` as a number that obeys `rule`; otherwise a TypeError naming --`key`. */
export function checkNumber(key: string, raw: unknown, rule: NumberRule): number {
  const x = typeof raw === "string" && raw.trim() === "" ? NaN : Number(raw);
  const [want, ok] = RULES[rule];
  if (!Number.isFinite(x)) throw new TypeError(`--${key} must be a number, got "${raw}"`);
  if (!ok(x)) throw new TypeError(`--${key} must be ${want}, got "${raw}"`);
  return x;
}

/** The --precision flag: fp32 (default) or fp16; anything else is a TypeError. */
export function precisionFlag(values: Record<string, unknown>): "fp32" | "fp16" {
  const raw = values.precision ?? "fp32";
  if (raw !== "fp32" && raw !== "fp16") {
    throw new TypeError(`--precision must be fp32 or fp16, got "${raw}"`);
  }
  return raw;
}

/** Runs `main`, printing errors: usage errors (TypeError) exit 2, others 1. */
export async function runMain(main: (argv: string[]) => Promise<number>): Promise<never> {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(e instanceof TypeError ? 2 : 1);
  }
}
