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
    args: argv,
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

/** A flag's number, or `fallback` when absent; a bad value is a TypeError naming the flag. */
export function numberFlag(
  values: Record<string, unknown>,
  key: string,
  fallback: number,
  rule: "positive-integer" | "non-negative",
): number {
  const raw = values[key];
  if (raw === undefined) return fallback;
  const x = Number(raw);
  const ok = rule === "positive-integer"
    ? Number.isInteger(x) && x > 0
    : Number.isFinite(x) && x >= 0;
  if (!ok) {
    const want = rule === "positive-integer" ? "a positive integer" : "a non-negative number";
    throw new TypeError(`--${key} must be ${want}, got "${raw}"`);
  }
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
