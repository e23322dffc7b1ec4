/**
 * Configuration tables: one row per setting ({flag, kind, check, default, help}) from which
 * a task's types, its flag parser, `--help`, the library's defaults and the saved run config
 * are all derived. The training run's table is src/train/config_table.ts; sampling and
 * evaluation are src/eval/config.ts; export is src/io/export_config.ts.
 *
 * @module
 */

/** What a numeric value accepts. */
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

/** A string value from a fixed list; otherwise a TypeError naming --`key` and the list. */
export function checkChoice(key: string, raw: unknown, choices: readonly string[]): string {
  if (typeof raw !== "string" || !choices.includes(raw)) {
    const list = choices.length === 2
      ? choices.join(" or ")
      : `${choices.slice(0, -1).join(", ")} or ${choices[choices.length - 1]}`;
    throw new TypeError(`--${key} must be ${list}, got "${raw}"`);
  }
  return raw;
}

/** One row of a configuration table. */
export interface ConfigRow<V> {
  /** The command-line flag (kebab-case); none for keys only the library or the parser sets. */
  flag?: string;
  /** How the flag's value is read. */
  kind: "number" | "string" | "boolean";
  /** Numbers: what they accept. */
  rule?: NumberRule;
  /** Strings: the values allowed (the help lists them). */
  choices?: readonly string[];
  /** Strings: checks and converts a value (a TypeError names what is allowed). */
  parse?: (raw: string) => unknown;
  /** The value when neither the flag nor a resumed run gives one. */
  default: V;
  /** The help line; `arg` names the value (N, X, DIR). */
  help?: string;
  /** The value's placeholder in the help. */
  arg?: string;
  /** The section of the help. */
  group?: string;
  /**
   * On resume: `inherit` (the checkpoint's value unless the flag is given; a given flag that
   * differs is printed as a change), `fixed` (the saved optimizer state has it: a differing
   * flag is an error) or `fresh` (never taken from the checkpoint). Default inherit.
   */
  resume?: "inherit" | "fixed" | "fresh";
}

/** A table with exactly one row per key of `C`, each default of its key's type. */
export type ConfigTable<C> = { [K in keyof C]-?: ConfigRow<C[K]> };

/** The table's defaults: a complete config where every row has one. */
export function tableDefaults<C>(table: ConfigTable<C>): C {
  const out = {} as Record<keyof C, unknown>;
  for (const k of Object.keys(table) as (keyof C)[]) out[k] = table[k].default;
  return out as C;
}

/** `given`'s values where set (not undefined), the table's defaults elsewhere. */
export function withDefaults<C>(table: ConfigTable<C>, given: Partial<C>): C {
  const out = tableDefaults(table) as Record<keyof C, unknown>;
  for (const [k, v] of Object.entries(given)) if (v !== undefined) out[k as keyof C] = v;
  return out as C;
}
