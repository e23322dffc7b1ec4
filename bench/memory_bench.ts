/**
 * The memory plan of a training setup, by category, for every optimizer,
 * recompute setting and precision; then one real training step of the chosen
 * setting and the peak the arena allocated, which must agree with the plan.
 *
 * `deno task bench memory --model gpt2-medium-4096 --batch 1 --seq 4096 --optimizer adamw4bit`
 * (add --recompute block, --precision fp16, or --plan-only to skip the step, which takes long
 * on a CPU adapter). `--cards` instead plans every preset from gpt2 to gpt2-xl-4096 at B=1 and
 * its own context in the modes that take the least memory, with the smallest common card
 * (4 to 80 GB, 0.4 GiB left to the driver) each fits.
 *
 * @module
 */

import { formatBytes } from "../src/gpu/arena.ts";
import { createRuntime, readF32 } from "../src/gpu/runtime.ts";
import { resolveConfig } from "../src/model/config.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import type { Precision, Recompute } from "../src/model/plan.ts";
import { AdamW, type Optimizer } from "../src/optim/adamw.ts";
import { LowBitAdamW } from "../src/optim/lowbit.ts";
import { planMemory } from "../src/train/memory_plan.ts";
import { GradNorm } from "../src/train/grad_norm.ts";
import type { BenchCase, BenchRow } from "./_harness.ts";

type Kind = "adamw" | "adamw8bit" | "adamw4bit";
const GiB = 2 ** 30;

/** Common cards' memory (GiB), and what the driver and the process keep of it. */
const CARDS_GIB = [4, 6, 8, 12, 16, 24, 40, 48, 80];
const DRIVER_GIB = 0.4;

/** The smallest common card a plan of `bytes` fits, with the driver's share left free. */
export function smallestCard(bytes: number): string {
  const card = CARDS_GIB.find((c) => bytes / GiB <= c - DRIVER_GIB);
  return card ? `${card} GB` : `over ${CARDS_GIB[CARDS_GIB.length - 1]} GB`;
}

/** The presets at their own context, B=1, in the modes that take the least memory today. */
function cardTable(): BenchRow[] {
  const modes = [
    { optimizer: "adamw", recompute: "none", precision: "fp32" },
    { optimizer: "adamw4bit", recompute: "block", precision: "fp16" },
    { optimizer: "adafactor", recompute: "block", precision: "fp16" },
    { optimizer: "adamw4bit", recompute: "block", precision: "fp16", optimizerOffload: true },
  ] as const;
  const rows: BenchRow[] = [];
  for (
    const name of [
      "gpt2",
      "gpt2-medium",
      "gpt2-medium-4096",
      "gpt2-large",
      "gpt2-xl",
      "gpt2-xl-4096",
    ]
  ) {
    const cfg = resolveConfig(name);
    for (const m of modes) {
      const b = planMemory(cfg, { B: 1, T: cfg.nCtx, ...m }).bytes;
      rows.push({
        model: name,
        T: cfg.nCtx,
        optimizer: m.optimizer + ("optimizerOffload" in m ? "+offload" : ""),
        recompute: m.recompute,
        precision: m.precision,
        weights_grads_GiB: +((b.parameters + b.gradients) / GiB).toFixed(2),
        optimizer_GiB: +(b.optimizer / GiB).toFixed(2),
        activations_scratch_GiB: +((b.activations + b.scratch) / GiB).toFixed(2),
        total_GiB: +(b.total / GiB).toFixed(2),
        smallest_card: smallestCard(b.total),
      });
    }
  }
  return rows;
}

export const memoryBench: BenchCase = {
  name: "memory",
  args:
    "--model M --batch B --seq T --optimizer adamw|adamw8bit|adamw4bit --recompute none|mlp|block " +
    "--precision fp32|fp16 --plan-only --cards",
  description:
    "memory plan by category (every optimizer x recompute x precision), then one real step's peak",
  async run({ args, quick, log }) {
    // --cards: which card each preset fits (B=1, its own context) in today's leanest modes.
    if (args.cards !== undefined) return cardTable();
    const model = args.model ?? (quick ? "gpt2-mini" : "gpt2-medium-4096");
    const cfg = resolveConfig(model);
    const B = Number(args.batch ?? 1), T = Number(args.seq ?? (quick ? 128 : cfg.nCtx));
    const optimizer = (args.optimizer ?? "adamw4bit") as Kind;
    const recompute = (args.recompute ?? "block") as Recompute;
    const precision = (args.precision ?? "fp32") as Precision;
    const rows: BenchRow[] = [];
    const row = (
      what: string,
      o: { optimizer: Kind; recompute: Recompute; offload?: boolean; precision: Precision },
      b: Record<string, number>,
    ) =>
      rows.push({
        what,
        model,
        B,
        T,
        optimizer: o.optimizer + (o.offload ? "+offload" : ""),
        recompute: o.recompute,
        precision: o.precision,
        params_GiB: +(b.parameters / GiB).toFixed(3),
        grads_GiB: +(b.gradients / GiB).toFixed(3),
        optimizer_GiB: +(b.optimizer / GiB).toFixed(3),
        activations_GiB: +(b.activations / GiB).toFixed(3),
        scratch_GiB: +(b.scratch / GiB).toFixed(3),
        total_GiB: +(b.total / GiB).toFixed(3),
      });
    for (const p of ["fp32", "fp16"] as const) {
      for (const o of ["adamw", "adamw8bit", "adamw4bit"] as const) {
        for (const r of ["none", "mlp", "block"] as const) {
          row(
            "plan",
            { optimizer: o, recompute: r, precision: p },
            planMemory(cfg, { B, T, optimizer: o, recompute: r, precision: p }).bytes,
          );
        }
      }
      row(
        "plan",
        { optimizer: "adamw4bit", recompute: "block", offload: true, precision: p },
        planMemory(cfg, {
          B,
          T,
          optimizer: "adamw4bit",
          recompute: "block",
          optimizerOffload: true,
          precision: p,
        }).bytes,
      );
    }
    if (args["plan-only"] !== undefined) return rows;

    const rt = await createRuntime();
    log(`memory: building ${model} B=${B} T=${T} ${optimizer} recompute=${recompute} ${precision}`);
    const m = await GPT2.create(rt, cfg, { B, T, seed: 1, recompute, precision });
    if (m.precision !== precision) log(`memory: no shader-f16 on this adapter: ${m.precision}`);
    const opt: Optimizer = optimizer === "adamw"
      ? await AdamW.create(rt, m.layout, m)
      : await LowBitAdamW.create(rt, m.layout, m, { bits: optimizer === "adamw8bit" ? 8 : 4 });
    // The training step's gradient statistics, as TrainStep builds them.
    const norm = await GradNorm.create(rt, m.layout, m.grads, opt.gradStats);
    try {
      const tokens = Array.from({ length: B * T }, (_, i) => (i * 7919) % cfg.vocabSize);
      log("memory: one training step (minutes on a CPU adapter at T=4096)");
      const t0 = performance.now();
      // Each position predicts the next token: at init the loss is ~ln(V).
      m.setBatch(tokens, [...tokens.slice(1), tokens[0]]);
      const enc = rt.device.createCommandEncoder();
      m.encodeTrain(enc);
      rt.device.queue.submit([enc.finish()]);
      const enc2 = rt.device.createCommandEncoder();
      norm.setStep({ gradClip: 1 });
      opt.setStep(1, 1e-4);
      norm.encodeNorm(enc2);
      norm.encodeDecide(enc2);
      opt.encodeUpdate(enc2);
      rt.device.queue.submit([enc2.finish()]);
      await rt.device.queue.onSubmittedWorkDone();
      log(`memory: step took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      // The step must also be right: at init the loss is ~ln(V) and the norm finite.
      const losses = await m.readLosses();
      const loss = losses.reduce((x, y) => x + y, 0) / losses.length;
      const stats = await readF32(rt.device, norm.stats);
      log(
        `memory: loss ${loss.toFixed(4)} (ln(V) = ${Math.log(cfg.vocabSize).toFixed(4)}), ` +
          `gradient norm ${stats[1].toPrecision(5)}, non-finite gradients ${stats[2]}`,
      );
      const peak = rt.arena.report().peak;
      row("measured peak", { optimizer, recompute, precision: m.precision }, peak);
      Object.assign(rows[rows.length - 1], { loss, grad_norm: stats[1], nonfinite: stats[2] });
      const plan = planMemory(cfg, { B, T, optimizer, recompute, precision: m.precision }).bytes;
      log(
        `memory: plan ${formatBytes(plan.total)}, arena peak ${formatBytes(peak.total)} ` +
          `(difference ${
            formatBytes(peak.total - plan.total)
          }: dispatch uniforms and optimizer scratch)`,
      );
    } finally {
      norm.destroy();
      opt.destroy();
      m.destroy();
    }
    return rows;
  },
};
