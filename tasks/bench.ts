/**
 * `deno task bench [NAME ...] [--json FILE] [--quick] [--key value ...]`
 *
 * Runs the named benches (all when none is named), prints a table for each and,
 * with --json, writes every row to FILE.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { BENCHES } from "../bench/all.ts";
import { type BenchRow, formatTable } from "../bench/_harness.ts";
import { backendChoice } from "../src/gpu/backend.ts";

const HELP = `Usage: deno task bench [NAME ...] [options] [--key value ...]

Runs benchmarks and prints a table per bench. Benches:
${
  BENCHES.map((b) =>
    `  ${b.name.padEnd(10)} ${b.description}` +
    (b.args ? `\n  ${"".padEnd(10)} args: ${b.args}` : "")
  ).join("\n")
}

Options:
  --json FILE   also write all rows as JSON to FILE
  --quick       fewer repetitions and smaller sizes (a smoke run)
  --backend B   WebGPU implementation: deno (default), dawn or auto (sets WEBGPU_GPT2_BACKEND)
  --help        show this help
Other --key value pairs go to the benches (e.g. matmul --bt 1024 --impl tiled).`;

export async function main(argv: string[]): Promise<number> {
  const { values, tokens } = parseArgs({
    args: argv,
    options: {
      json: { type: "string" },
      quick: { type: "boolean" },
      backend: { type: "string" },
      help: { type: "boolean" },
    },
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  // Unknown --key value pairs are bench arguments; a bare word after one is its value.
  const args: Record<string, string> = {};
  const names: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (t.kind === "option" && !["json", "quick", "backend", "help"].includes(t.name)) {
      const next = tokens[i + 1];
      if (t.value !== undefined) args[t.name] = t.value;
      else if (next?.kind === "positional") {
        args[t.name] = next.value;
        i++;
      } else args[t.name] = "true";
    } else if (t.kind === "positional") names.push(t.value);
  }
  const unknown = names.filter((n) => !BENCHES.some((b) => b.name === n));
  if (unknown.length) {
    console.error(
      `Unknown bench "${unknown[0]}": choose from ${BENCHES.map((b) => b.name).join(", ")}`,
    );
    return 2;
  }
  // Every bench builds its runtime through createRuntime(), which reads the variable.
  if (typeof values.backend === "string") {
    Deno.env.set("WEBGPU_GPT2_BACKEND", backendChoice(values.backend));
  }
  const selected = names.length ? BENCHES.filter((b) => names.includes(b.name)) : BENCHES;
  const results: { bench: string; rows: BenchRow[] }[] = [];
  for (const bench of selected) {
    console.log(`\n== ${bench.name}: ${bench.description}`);
    const rows = await bench.run({
      args,
      quick: values.quick === true,
      log: (m) => console.error(`  ${m}`),
    });
    console.log(formatTable(rows));
    results.push({ bench: bench.name, rows });
  }
  if (typeof values.json === "string") {
    const doc = {
      date: new Date().toISOString(),
      deno: Deno.version.deno,
      backend: backendChoice(),
      results,
    };
    await Deno.writeTextFile(values.json, JSON.stringify(doc, null, 2) + "\n");
    console.log(`\nwrote ${values.json}`);
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
