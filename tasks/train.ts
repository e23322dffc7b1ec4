/**
 * `deno task train [flags]`: train or fine-tune GPT-2. With no flags it trains
 * gpt2-mini on Moby-Dick (from an npm package) for a few minutes, then prints a
 * sample and the checkpoint's path. `--help` lists every flag.
 *
 * @module
 */

import { basename } from "node:path";
import { parseArgs } from "node:util";
import { createRuntime } from "../src/gpu/runtime.ts";
import { type GPT2Config, resolveConfig } from "../src/model/config.ts";
import { latestResumable, resumeProblem } from "../src/io/checkpoint.ts";
import { matchTensors } from "../src/model/weights.ts";
import {
  checkFlags,
  flagHelp,
  flagOptions,
  type FlagSpec,
  type FlagValues,
  joinNegativeValues,
  readFlag,
  runMain,
} from "./_cli.ts";
import { train } from "../src/train/trainer.ts";
import { initRanks } from "../src/parallel/dist.ts";
import { detectLaunch } from "../src/parallel/mpi.ts";
import type { ConfigRow, TrainConfig } from "../src/train/config.ts";
import { configDefault, TRAIN_CONFIG } from "../src/train/config_table.ts";

/** TrainConfig keys with a flag, as the CLI reads them. */
const ROWS = (Object.entries(TRAIN_CONFIG) as [keyof TrainConfig, ConfigRow<unknown>][])
  .filter(([, r]) => r.flag !== undefined)
  .map(([key, r]) => ({ key, ...r, flag: r.flag! }));

/** The flags that override a preset's shape, and the GPT2Config field each sets. */
const SHAPE_FLAGS = {
  "n-layer": "nLayer",
  "n-head": "nHead",
  "n-embd": "nEmbd",
  "n-ctx": "nCtx",
} as const;

/** Flags that are not TrainConfig keys: the preset and its shape overrides. */
const MODEL_FLAGS: FlagSpec[] = [
  {
    flag: "model",
    kind: "string",
    arg: "NAME",
    group: "Model",
    default: configDefault("modelName"),
    help: "gpt2-mini, gpt2, gpt2-medium, gpt2-medium-4096, gpt2-large, gpt2-xl; tiny is a " +
      "test model with a 101-token vocabulary, not for text",
  },
  ...Object.keys(SHAPE_FLAGS).map((flag): FlagSpec => ({
    flag,
    kind: "number",
    rule: "positive-integer",
    group: "Model",
    help: "override the preset's size",
  })),
];

const FLAGS: FlagSpec[] = [...MODEL_FLAGS, ...ROWS];

const HELP = `Usage: deno task train [flags]

Trains GPT-2 on token shards and writes Hugging Face checkpoints. With no flags: gpt2-mini on
Moby-Dick for ${configDefault("steps")} steps (minutes on a CPU adapter).

${flagHelp(FLAGS, ["Model", "Data", "Optimizer and schedule", "Output"])}
  -h, --help            this text

Ctrl-C finishes the current step, saves a checkpoint and exits; --resume continues exactly.`;

/** Parses flags into a TrainConfig (throws a clear error on a bad flag or value). */
export async function parseTrainArgs(argv: string[]): Promise<TrainConfig | "help"> {
  const options = flagOptions(FLAGS);
  let parsed;
  try {
    const valued = new Set(Object.keys(options).filter((k) => options[k].type === "string"));
    parsed = parseArgs({
      args: joinNegativeValues(argv, valued),
      options,
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    throw new TypeError(`${(e as Error).message}: see deno task train --help`);
  }
  const v = parsed.values as FlagValues;
  if (v.help) return "help";
  checkFlags(v, FLAGS);
  // With --init and no --model the model is the checkpoint's: name it after the directory.
  const initName = v.init !== undefined && v.model === undefined
    ? `init:${basename(String(v.init)).replace(/\.bin$/i, "")}`
    : undefined;
  const modelName = String(v.model ?? initName ?? configDefault("modelName"));
  const out = String(v.out ?? `runs/${modelName.replace(/^init:/, "")}`);
  // Resume: the saved run's settings are the base; flags given now override them.
  let base: Partial<TrainConfig> = {};
  let resume = v.resume as string | undefined;
  const notices: string[] = [];
  if (resume === "latest") {
    const root = `${out}/checkpoints`;
    const found = await latestResumable(root, matchTensors);
    for (const why of found.skipped) notices.push(`warning: skipping ${why}`);
    if (!found.dir) {
      throw new Error(
        found.skipped.length
          ? `--resume latest: no intact checkpoint under ${root} (${found.skipped.join("; ")})`
          : `--resume latest: no checkpoints under ${root}`,
      );
    }
    resume = found.dir;
  }
  if (resume) {
    const problem = await resumeProblem(resume, matchTensors);
    if (problem) throw new Error(`Cannot resume from ${resume}: ${problem}`);
    const st = JSON.parse(await Deno.readTextFile(`${resume}/trainer_state.json`));
    base = st.config as Partial<TrainConfig>;
  }
  const overrides: Partial<GPT2Config> = {};
  for (const [flag, key] of Object.entries(SHAPE_FLAGS)) {
    if (v[flag] !== undefined) overrides[key] = Number(v[flag]);
  }
  const shapeFlags = Object.keys(SHAPE_FLAGS).filter((f) => v[f] !== undefined);
  if (v.init !== undefined && shapeFlags.length) {
    throw new TypeError(
      `--init ${v.init} takes its shape from the checkpoint, so ${
        shapeFlags.map((f) => `--${f}`).join(", ")
      } would be ignored: drop ${shapeFlags.length > 1 ? "them" : "it"} (weights of one ` +
        "shape cannot start a model of another)",
    );
  }
  if (base.model) {
    // A resumed model keeps its shape: a flag that asks for another is an error.
    // --model names a preset's shape only when it is not the run's own model name.
    const preset = v.model !== undefined && v.model !== base.modelName
      ? resolveConfig(String(v.model))
      : {};
    const want: GPT2Config = { ...base.model, ...preset, ...overrides };
    const diff = (Object.keys(base.model) as (keyof typeof base.model)[])
      .filter((k) => want[k] !== base.model![k])
      .map((k) => `${k} ${want[k]} (the checkpoint has ${base.model![k]})`);
    if (diff.length) {
      throw new TypeError(
        `--resume ${resume}: ${diff.join(", ")}: a resumed run keeps its model's shape; drop ` +
          "the shape flags, or start a new run from these weights with --init " + resume,
      );
    }
  }
  // Every row: the flag, else (unless fresh) the resumed run's value, else the default.
  const config = {} as Record<keyof TrainConfig, unknown>;
  for (const r of ROWS) {
    const given = readFlag(v, r);
    const inherited = r.resume === "fresh" ? undefined : base[r.key];
    config[r.key] = given ?? inherited ?? r.default;
  }
  const c = config as unknown as TrainConfig;
  // --init: the preset is replaced by the checkpoint's config.
  c.model = base.model ??
    resolveConfig(initName ? configDefault("modelName") : modelName, overrides);
  c.modelName = (v.model as string) ?? base.modelName ?? modelName;
  c.out = v.out !== undefined ? out : (base.out ?? out);
  c.resume = resume;
  // Under mpirun the default total batch is one micro-batch on every rank.
  c.totalBatch ||= c.batch * c.seq * (detectLaunch()?.size ?? 1);
  // "constant" means constant: no warmup unless asked for.
  if (v.warmup === undefined && base.warmup === undefined && c.schedule === "constant") {
    c.warmup = 0;
  }
  if (resume) {
    for (const r of ROWS.filter((r) => r.resume === "fixed")) {
      const was = base[r.key] ?? r.default;
      if (v[r.flag] !== undefined && c[r.key] !== was) {
        throw new TypeError(
          `--resume ${resume}: --${r.flag} ${c[r.key]} differs from the checkpoint's ${was}; ` +
            "its optimizer state cannot be converted: drop the flag",
        );
      }
    }
    // Flags that may change are printed as changes.
    for (const r of ROWS) {
      if (v[r.flag] === undefined || r.resume === "fresh" || r.key === "out") continue;
      const was = base[r.key], now = c[r.key];
      if (was !== undefined && JSON.stringify(was) !== JSON.stringify(now)) {
        notices.push(`resume: --${r.flag} ${JSON.stringify(now)} (was ${JSON.stringify(was)})`);
      }
    }
  }
  c.notices = notices;
  return c;
}

/** Exit statuses of a run stopped by a signal before it trained a step (128 + the signal). */
const SIGNAL_EXIT: Partial<Record<Deno.Signal, number>> = { SIGINT: 130, SIGTERM: 143 };

/**
 * `deno task train`: parse, then train (usage errors exit 2, failures 1). Ctrl-C or SIGTERM,
 * from the start: the run stops after the current step and saves (exit 0), or, before its
 * first step, writes nothing (exit 130 or 143); a second one exits at once without saving
 * (the next run removes what an unfinished save left).
 */
export async function main(argv: string[]): Promise<number> {
  const config = await parseTrainArgs(argv);
  if (config === "help") {
    console.log(HELP);
    return 0;
  }
  const stop = new AbortController();
  let got: Deno.Signal | undefined;
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const handlers = signals.map((sig) => {
    const on = () => {
      if (got) {
        console.log(
          `\n${sig} again: exiting without saving; the checkpoints under ${config.out} are ` +
            "intact (the next run removes a save this one left unfinished)",
        );
        Deno.exit(SIGNAL_EXIT[sig] ?? 1);
      }
      got = sig;
      console.log(
        `\n${sig}: stopping after this step and saving a checkpoint (${
          sig === "SIGINT" ? "Ctrl-C" : sig
        } again to exit without saving)`,
      );
      stop.abort();
    };
    Deno.addSignalListener(sig, on);
    return [sig, on] as const;
  });
  try {
    // Under mpirun: one rank per process, each on its own GPU (set before the adapter exists).
    const dist = await initRanks();
    if (dist.rank === 0) {
      console.log(
        `starting: ${config.modelName} into ${config.out}: data, kernels and tuning first ` +
          "(minutes on a CPU adapter the first time; Ctrl-C stops)",
      );
    }
    const rt = await createRuntime();
    const r = await train(rt, config, {
      dist: dist.size > 1 ? dist : undefined,
      signal: stop.signal,
    });
    return got && r.losses.length === 0 ? SIGNAL_EXIT[got] ?? 1 : 0;
  } finally {
    for (const [sig, on] of handlers) Deno.removeSignalListener(sig, on);
  }
}

if (import.meta.main) await runMain(main);
