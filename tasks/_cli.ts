/**
 * Small helpers the task CLIs share: flags read through a configuration table (src/table.ts
 * rows: the parser, its checks and `--help` all come from the rows), CHECKPOINT_DIR plus
 * flags, and running a main function with the exit codes the tasks use (2 for bad usage, 1
 * for failure).
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  checkChoice,
  checkNumber,
  type ConfigRow,
  type ConfigTable,
  type NumberRule,
  withDefaults,
} from "../src/table.ts";

/** Flag values of a task, by name. */
export type FlagValues = Record<string, string | boolean | undefined>;

/** A table's rows that have a flag, with their keys (the specs a task's parser reads). */
export function tableFlags<C>(table: ConfigTable<C>): (FlagSpec & { key: keyof C })[] {
  return (Object.entries(table) as [keyof C, ConfigRow<unknown>][])
    .filter(([, r]) => r.flag !== undefined)
    .map(([key, r]) => ({ key, ...r, flag: r.flag! }));
}

/**
 * Parses `TASK CHECKPOINT_DIR [flags]` strictly through a configuration table: every flag
 * is a row, checked by its rule or choices, and what is not given is the row's default.
 * Returns "help", or the config, the values given and the one directory; anything else is a
 * TypeError that points to --help.
 */
export function parseCheckpointArgs<C>(
  argv: string[],
  task: string,
  table: ConfigTable<C>,
): "help" | { config: C; given: Partial<C>; dir: string } {
  const specs = tableFlags(table);
  const options = flagOptions(specs);
  const valued = new Set(Object.keys(options).filter((k) => options[k].type === "string"));
  const { values, positionals } = parseArgs({
    args: joinNegativeValues(argv, valued),
    options,
    allowPositionals: true,
    strict: true,
  });
  if (values.help) return "help";
  if (positionals.length !== 1) {
    throw new TypeError(`Give one CHECKPOINT_DIR: see deno task ${task} --help`);
  }
  const v = values as FlagValues;
  checkFlags(v, specs);
  const given: Partial<C> = {};
  for (const s of specs) given[s.key] = readFlag(v, s) as C[keyof C];
  return { config: withDefaults(table, given), given, dir: positionals[0] };
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

/** One flag as a table row gives it (src/train/config.ts's ConfigRow, without the key). */
export interface FlagSpec {
  /** The flag, kebab-case. */
  flag: string;
  /** How its value is read. */
  kind: "number" | "string" | "boolean";
  /** Numbers: what they accept. */
  rule?: NumberRule;
  /** Strings: the values allowed. */
  choices?: readonly string[];
  /** Strings: checks and converts a value (throws a TypeError naming what is allowed). */
  parse?: (raw: string) => unknown;
  /** The default shown in the help (undefined: none shown). */
  default?: unknown;
  /** The help line. */
  help?: string;
  /** The value's placeholder (default N for numbers, the choices, or X). */
  arg?: string;
  /** The help section. */
  group?: string;
}

/** node:util parseArgs options for the flags (plus -h/--help). */
export function flagOptions(
  specs: readonly FlagSpec[],
): Record<string, { type: "string" | "boolean"; short?: string }> {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const s of specs) options[s.flag] = { type: s.kind === "boolean" ? "boolean" : "string" };
  return options;
}

/** Checks every given value against its row: number rules and choices (TypeErrors). */
export function checkFlags(values: FlagValues, specs: readonly FlagSpec[]): void {
  for (const s of specs) {
    const raw = values[s.flag];
    if (raw === undefined) continue;
    if (s.kind === "number") checkNumber(s.flag, raw, s.rule ?? "non-negative");
    if (s.choices) checkChoice(s.flag, raw, s.choices);
    if (s.parse) {
      try {
        s.parse(String(raw));
      } catch (e) {
        throw new TypeError(`--${s.flag}: ${(e as Error).message}`);
      }
    }
  }
}

/** A flag's value read by its row: a checked number, a string, or a boolean. */
export function readFlag(values: FlagValues, s: FlagSpec): string | number | boolean | undefined {
  const raw = values[s.flag];
  if (raw === undefined) return undefined;
  if (s.parse) return s.parse(String(raw)) as string | number;
  return s.kind === "number" ? checkNumber(s.flag, raw, s.rule ?? "non-negative") : raw;
}

/** The help's flag lines, by group (in `order`, then as they first appear), wrapped. */
export function flagHelp(specs: readonly FlagSpec[], order: readonly string[] = []): string {
  const groups = [...new Set([...order, ...specs.map((s) => s.group ?? "")])];
  const lines: string[] = [];
  for (const g of groups) {
    const rows = specs.filter((x) => (x.group ?? "") === g);
    if (!rows.length) continue;
    if (g) lines.push(g);
    for (const s of rows) {
      const integer = s.rule?.endsWith("integer") ?? false;
      const arg = s.kind === "boolean"
        ? ""
        : ` ${s.arg ?? (s.choices ? s.choices.join("|") : integer ? "N" : "X")}`;
      const left = `  --${s.flag}${arg}`;
      const text = (s.help ?? "") +
        (s.default === undefined || s.default === "" || s.kind === "boolean" ||
            /\bdefault\b/.test(s.help ?? "")
          ? ""
          : ` (default ${s.default})`);
      const words = text.split(" ");
      const wrapped: string[] = [];
      let line = "";
      for (const w of words) {
        if (line && 24 + line.length + 1 + w.length > 96) {
          wrapped.push(line);
          line = w;
        } else line = line ? `${line} ${w}` : w;
      }
      wrapped.push(line);
      const pad = "".padEnd(24);
      const first = left.length < 23
        ? `${left.padEnd(24)}${wrapped[0]}`
        : `${left}\n${pad}${wrapped[0]}`;
      lines.push(first, ...wrapped.slice(1).map((w) => pad + w));
    }
  }
  return lines.join("\n");
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
