/**
 * `deno task train [flags]`: train or fine-tune GPT-2. With no flags it trains
 * gpt2-mini on Moby-Dick (from an npm package) for a few minutes, then prints a
 * sample and the checkpoint's path. `--help` lists every flag.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { createRuntime } from "../src/gpu/runtime.ts";
import { type GPT2Config, resolveConfig } from "../src/model/config.ts";
import { MEMORY_MODES, memoryModeFlags, planMemory } from "../src/train/memory_plan.ts";
import { DEFAULT_TIME_S } from "../src/train/budget.ts";
import { formatDuration } from "../src/format.ts";
import {
  checkFlags,
  flagHelp,
  flagOptions,
  type FlagSpec,
  type FlagValues,
  joinNegativeValues,
  readFlag,
  runMain,
  tableFlags,
} from "./_cli.ts";
import { train } from "../src/train/trainer.ts";
import { resolveTrainConfig, type TrainSettings } from "../src/train/resolve.ts";
import { initRanks } from "../src/parallel/dist.ts";
import { detectLaunch } from "../src/parallel/mpi.ts";
import type { TrainConfig } from "../src/train/config.ts";
import { configDefault, TRAIN_CONFIG } from "../src/train/config_table.ts";

/** TrainConfig keys with a flag, as the CLI reads them. */
const ROWS = tableFlags(TRAIN_CONFIG);

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
    help:
      "gpt2-mini, gpt2, gpt2-medium, gpt2-medium-4096, gpt2-large, gpt2-xl, gpt2-xl-4096; tiny is a " +
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
Moby-Dick for about ${formatDuration(DEFAULT_TIME_S)}.

${flagHelp(FLAGS, ["Model", "Data", "Optimizer and schedule", "Output"])}
  -h, --help            this text

Ctrl-C finishes the current step, saves a checkpoint and exits; --resume continues exactly.

${memoryHelp()}`;

/** Which flags fit which card, from the memory plan (B=1, the model's own context). */
function memoryHelp(): string {
  const gib = (name: string, mode: string) => {
    const cfg = resolveConfig(name);
    const b = planMemory(cfg, { B: 1, T: cfg.nCtx, ...MEMORY_MODES[mode] }).bytes.total;
    return `${(b / 2 ** 30).toFixed(2)} GiB`;
  };
  return `Memory (batch 1 at the model's own context; every preset and mode: deno task bench memory
--cards). The lean mode, 16-bit weights updated with stochastic rounding and 16-bit gradients
(clipping and the fp16 overflow skip stay global):
  ${memoryModeFlags(MEMORY_MODES.lean)}
  4 GB card   gpt2-medium-4096 ${gib("gpt2-medium-4096", "lean")} (${
    gib("gpt2-medium-4096", "lean-4bit")
  } with --optimizer adamw4bit)
  12 GB card  gpt2-xl-4096 (1.5B) ${gib("gpt2-xl-4096", "lean")} (${
    gib("gpt2-xl-4096", "lean-4bit")
  } with --optimizer adamw4bit)
Adding --optimizer-in-backward keeps one block's gradients (exact, about twice the compute):
gpt2-medium-4096 ${gib("gpt2-medium-4096", "lean-fused")}, gpt2-xl-4096 ${
    gib("gpt2-xl-4096", "lean-fused")
  } (a 6 GB card).
With f32 weights and gradients (--precision fp16 --recompute block --optimizer adafactor) they
take ${gib("gpt2-medium-4096", "fp16-adafactor")} and ${gib("gpt2-xl-4096", "fp16-adafactor")}.`;
}

/**
 * Parses flags into the run's TrainConfig: the flags given, then (with --resume) the resumed
 * run's settings, then the table's defaults (the library's resolveTrainConfig). Throws a
 * clear error on a bad flag or value.
 */
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
  const settings: Record<string, unknown> = {};
  for (const r of ROWS) settings[r.key] = readFlag(v, r);
  const shape: Partial<GPT2Config> = {};
  for (const [flag, key] of Object.entries(SHAPE_FLAGS)) {
    if (v[flag] !== undefined) shape[key] = Number(v[flag]);
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
  return await resolveTrainConfig(
    { ...settings, modelName: v.model as string | undefined, model: shape } as TrainSettings,
    { ranks: detectLaunch()?.size ?? 1 }, // under mpirun: one micro-batch per rank by default
  );
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
    const rt = await createRuntime({ backend: config.backend });
    if (dist.rank === 0 && rt.gpu.backendWhy) {
      console.log(`backend: ${rt.gpu.backend} (${rt.gpu.backendWhy})`);
    }
    const r = await train(rt, config, {
      dist: dist.size > 1 ? dist : undefined,
      signal: stop.signal,
      logger: console,
    });
    return got && r.losses.length === 0 ? SIGNAL_EXIT[got] ?? 1 : 0;
  } finally {
    for (const [sig, on] of handlers) Deno.removeSignalListener(sig, on);
  }
}

if (import.meta.main) await runMain(main);
