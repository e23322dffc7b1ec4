/**
 * The memory plan of a training setup by category, in every memory mode (src/train/memory_plan.ts's
 * MEMORY_MODES, from fp32 to 16-bit weights and gradients), then one real training step of one
 * mode and the peak the arena allocated, which must agree with the plan.
 *
 * `deno task bench memory --model gpt2-medium-4096 --batch 1 --seq 4096 --mode lean` (`--plan-only`
 * skips the step, which takes minutes on a CPU adapter). `--cards` instead plans every preset
 * from gpt2 to gpt2-xl-4096 at B=1 and its own context in every mode, with the smallest common
 * card (4 to 80 GB, 0.4 GiB left to the driver) each fits.
 *
 * @module
 */

import { formatBytes } from "../src/gpu/arena.ts";
import { createRuntime } from "../src/gpu/runtime.ts";
import { resolveConfig } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import { createOptimizer } from "../src/optim/registry.ts";
import {
  MEMORY_MODES,
  type MemoryMode,
  memoryModeFlags,
  planMemory,
} from "../src/train/memory_plan.ts";
import { LossScaler } from "../src/train/loss_scale.ts";
import { TrainStep } from "../src/train/step.ts";
import type { BenchCase, BenchRow } from "./_harness.ts";

const GiB = 2 ** 30;
const gib = (b: number) => +(b / GiB).toFixed(3);

/** Common cards' memory (GiB), and what the driver and the process keep of it. */
const CARDS_GIB = [4, 6, 8, 12, 16, 24, 40, 48, 80];
const DRIVER_GIB = 0.4;

/** The smallest common card a plan of `bytes` fits, with the driver's share left free. */
export function smallestCard(bytes: number): string {
  const card = CARDS_GIB.find((c) => bytes / GiB <= c - DRIVER_GIB);
  return card ? `${card} GB` : `over ${CARDS_GIB[CARDS_GIB.length - 1]} GB`;
}

/** Every preset at B=1 and its own context, in every memory mode. */
function cardTable(): BenchRow[] {
  const rows: BenchRow[] = [];
  const presets = [
    "gpt2",
    "gpt2-medium",
    "gpt2-medium-4096",
    "gpt2-large",
    "gpt2-xl",
    "gpt2-xl-4096",
  ];
  for (const name of presets) {
    const cfg = resolveConfig(name);
    for (const [mode, m] of Object.entries(MEMORY_MODES)) {
      const b = planMemory(cfg, { B: 1, T: cfg.nCtx, ...m }).bytes;
      rows.push({
        model: name,
        T: cfg.nCtx,
        mode,
        weights_GiB: gib(b.parameters),
        grads_GiB: gib(b.gradients),
        optimizer_GiB: gib(b.optimizer),
        activations_scratch_GiB: gib(b.activations + b.scratch),
        total_GiB: gib(b.total),
        smallest_card: smallestCard(b.total),
      });
    }
  }
  return rows;
}

export const memoryBench: BenchCase = {
  name: "memory",
  args: `--model M --batch B --seq T --mode ${
    Object.keys(MEMORY_MODES).join("|")
  } --plan-only --cards`,
  description: "memory plan by category in every memory mode, then one real step's peak",
  async run({ args, quick, log }) {
    if (args.cards !== undefined) return cardTable();
    const model = args.model ?? (quick ? "gpt2-mini" : "gpt2-medium-4096");
    const cfg = resolveConfig(model);
    const B = Number(args.batch ?? 1), T = Number(args.seq ?? (quick ? 128 : cfg.nCtx));
    const modeName = args.mode ?? "lean";
    const mode: MemoryMode | undefined = MEMORY_MODES[modeName];
    if (!mode) {
      throw new RangeError(`--mode ${modeName}: one of ${Object.keys(MEMORY_MODES).join(", ")}`);
    }
    const rows: BenchRow[] = [];
    const row = (what: string, name: string, b: Record<string, number>) =>
      rows.push({
        what,
        model,
        B,
        T,
        mode: name,
        params_GiB: gib(b.parameters),
        grads_GiB: gib(b.gradients),
        optimizer_GiB: gib(b.optimizer),
        activations_GiB: gib(b.activations),
        scratch_GiB: gib(b.scratch),
        total_GiB: gib(b.total),
      });
    for (const [name, m] of Object.entries(MEMORY_MODES)) {
      row("plan", name, planMemory(cfg, { B, T, ...m }).bytes);
    }
    if (args["plan-only"] !== undefined) return rows;

    const rt = await createRuntime();
    log(`memory: building ${model} B=${B} T=${T}, mode ${modeName}: ${memoryModeFlags(mode)}`);
    const m = await GPT2.create(rt, cfg, {
      B,
      T,
      seed: 1,
      ...mode,
      sharedBlockGrads: mode.optimizerInBackward,
    });
    if (m.precision !== mode.precision) {
      log(`memory: no shader-f16 on this adapter: ${m.precision}`);
    }
    const w = m.weights;
    const opt = await createOptimizer(mode.optimizer, rt, m.layout, {
      params: w.paramParts,
      grads: w.gradParts,
      half: w.halfParts,
    }, { optimizerOffload: mode.optimizerOffload });
    // The training step as a run takes it: loss scale, norm, clip, update.
    const scaler = m.precision === "fp16"
      ? new LossScaler({ init: 1024, window: 2000 })
      : undefined;
    const step = new TrainStep(rt, m, opt, {
      accum: 1,
      scaler,
      inBackward: mode.optimizerInBackward,
    });
    try {
      const tokens = Array.from({ length: B * T }, (_, i) => (i * 7919) % cfg.vocabSize);
      log("memory: one training step (minutes on a CPU adapter at T=4096)");
      const t0 = performance.now();
      // Each position predicts the next token: at init the loss is ~ln(V).
      const r = await step.run(1e-4, () => ({
        inputs: tokens,
        targets: [...tokens.slice(1), tokens[0]],
      }));
      const seconds = (performance.now() - t0) / 1000;
      log(`memory: step took ${seconds.toFixed(1)} s`);
      log(
        `memory: loss ${r.loss.toFixed(4)} (ln(V) = ${Math.log(cfg.vocabSize).toFixed(4)}), ` +
          `gradient norm ${r.norm.toPrecision(5)}, overflow ${r.overflow}`,
      );
      const peak = rt.arena.report().peak;
      row("measured peak", modeName, peak);
      Object.assign(rows[rows.length - 1], {
        loss: r.loss,
        grad_norm: r.norm,
        overflow: r.overflow,
        step_s: +seconds.toFixed(1),
        rss_GiB: gib(Deno.memoryUsage().rss),
      });
      const plan = planMemory(cfg, { B, T, ...mode, precision: m.precision }).bytes;
      log(
        `memory: plan ${formatBytes(plan.total)}, arena peak ${formatBytes(peak.total)} ` +
          `(difference ${
            formatBytes(peak.total - plan.total)
          }: dispatch uniforms and optimizer scratch)`,
      );
    } finally {
      step.destroy();
      opt.destroy();
      m.destroy();
    }
    return rows;
  },
};
