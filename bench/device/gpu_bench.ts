/**
 * The device bench (run by bench/device/run.sh): the adapter and its features, the
 * autotuner's choices, matmul TFLOP/s for GPT-2's shapes in f32 and f16, and training-step
 * tokens/s and MFU for gpt2 (124M; B=8, T=1024; fp32 and fp16, AdamW) and gpt2-medium-4096
 * (26 layers, 16 heads, 1024 channels; B=1, T=4096; 4-bit AdamW). Given the PyTorch
 * peer's figures from the same run (bench/peers/torch_gpt2.py), every figure also comes as
 * a ratio to PyTorch's. Everything goes to one JSON file.
 *
 * Formulas: matmul TFLOP/s = 2·M·N·K / time. Training FLOPs per token = 6·N + 12·L·C·T
 * (N = parameters without wpe; attention counted as 12·L·C·T, without causal halving, as
 * nanoGPT's estimate_mfu); MFU = tokens/s × FLOPs per token / peak, against the chip's
 * dense FP32 peak (what WGSL can reach: WebGPU has no tensor-core instructions) and its
 * dense BF16 tensor peak (what PyTorch's bf16 can reach).
 *
 * `--plan FILE` writes the shapes and models (the one source both benches read) and
 * exits; `--tiny` shrinks everything so that a CPU adapter (lavapipe) runs it end to end
 * in a few minutes. Not yet timed on a GPU: so far it has run only on lavapipe.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { createRuntime, type Runtime } from "../../src/gpu/runtime.ts";
import { type Dispatch, freeDispatches } from "../../src/gpu/dispatch.ts";
import { type DType, dtypeBytes } from "../../src/gpu/dtype.ts";
import { deviceKey, dispatchTimer, PACKAGE_VERSION, tunerFor } from "../../src/gpu/autotune.ts";
import { formatBytes } from "../../src/gpu/arena.ts";
import { matmul, type MatmulImpl, type MatmulShape } from "../../src/model/ops/matmul.ts";
import { type GPT2Config, paddedVocab, parameterCount, PRESETS } from "../../src/model/config.ts";
import { GPT2 } from "../../src/model/gpt2.ts";
import { mulberry32 } from "../../src/model/init.ts";
import type { Precision } from "../../src/model/plan.ts";
import { ADAMW_DEFAULTS } from "../../src/optim/adamw.ts";
import { createOptimizer } from "../../src/optim/registry.ts";
import { LossScaler } from "../../src/train/loss_scale.ts";
import { TrainStep } from "../../src/train/step.ts";
import { type BenchRow, formatTable, median } from "../_harness.ts";

// ---------------------------------------------------------------------------
// The plan: shapes and models, shared with the PyTorch peer through --plan.

/** One matmul of the plan. */
export interface PlanProduct {
  label: string;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
}

/** One training configuration of the plan. */
export interface PlanTrain {
  name: string;
  config: GPT2Config;
  /** The padded vocabulary both benches use for wte and the logits. */
  Vp: number;
  B: number;
  T: number;
  optimizer: "adamw" | "adamw4bit";
  /** Ours; the peer runs fp32 for fp32 and bf16 autocast for fp16. */
  precisions: Precision[];
}

/** What both benches run. */
export interface Plan {
  tiny: boolean;
  products: PlanProduct[];
  /** Ours; the peer runs fp32 (no TF32) for f32 and bf16 for f16. */
  dtypes: DType[];
  train: PlanTrain[];
  /** Timed steps per training configuration (after two warm-up steps). */
  steps: number;
}

/** GPT-2's products for one layer and the lm-head, forward and backward, at BT rows. */
function gpt2Products(C: number, BT: number, Vp: number): PlanProduct[] {
  const out: PlanProduct[] = [];
  const linear = (name: string, IC: number, OC: number) => {
    out.push({ label: `${name} fwd`, M: BT, N: OC, K: IC, transA: false, transB: false });
    out.push({ label: `${name} dinp`, M: BT, N: IC, K: OC, transA: false, transB: true });
    out.push({ label: `${name} dW`, M: IC, N: OC, K: BT, transA: true, transB: false });
  };
  linear("qkv", C, 3 * C);
  linear("attn_proj", C, C);
  linear("fc", C, 4 * C);
  linear("fc_proj", 4 * C, C);
  out.push({ label: "lm_head fwd", M: BT, N: Vp, K: C, transA: false, transB: true });
  out.push({ label: "lm_head dinp", M: BT, N: C, K: Vp, transA: false, transB: false });
  out.push({ label: "lm_head dW", M: Vp, N: C, K: BT, transA: true, transB: false });
  return out;
}

/** The plan: the real sizes, or `tiny` ones that a CPU adapter runs in minutes. */
export function benchPlan(tiny: boolean, steps = tiny ? 2 : 5): Plan {
  const gpt2 = PRESETS.gpt2, medium = PRESETS["gpt2-medium-4096"];
  const mediumTiny: GPT2Config = { ...medium, nLayer: 2, nHead: 4, nEmbd: 128, nCtx: 256 };
  const train: PlanTrain[] = tiny
    ? [
      { name: "gpt2 (tiny: gpt2-mini)", config: PRESETS["gpt2-mini"], B: 2, T: 64 },
      { name: "gpt2-medium-4096 (tiny: 2x128)", config: mediumTiny, B: 1, T: 256 },
    ].map((t, i) => ({
      ...t,
      Vp: paddedVocab(t.config.vocabSize),
      optimizer: i === 0 ? "adamw" : "adamw4bit",
      precisions: ["fp32", "fp16"],
    }))
    : [
      {
        name: "gpt2",
        config: gpt2,
        Vp: paddedVocab(gpt2.vocabSize),
        B: 8,
        T: 1024,
        optimizer: "adamw",
        precisions: ["fp32", "fp16"],
      },
      {
        name: "gpt2-medium-4096",
        config: medium,
        Vp: paddedVocab(medium.vocabSize),
        B: 1,
        T: 4096,
        optimizer: "adamw4bit",
        precisions: ["fp32", "fp16"],
      },
    ];
  return {
    tiny,
    products: gpt2Products(gpt2.nEmbd, tiny ? 128 : 8 * 1024, paddedVocab(gpt2.vocabSize)),
    dtypes: ["f32", "f16"],
    train,
    steps,
  };
}

/** FLOPs per trained token: 6·N + 12·L·C·T (N without wpe). */
export function flopsPerToken(cfg: GPT2Config, T: number): number {
  const N = parameterCount(cfg) - cfg.nCtx * cfg.nEmbd;
  return 6 * N + 12 * cfg.nLayer * cfg.nEmbd * T;
}

/** Dense peaks in TFLOP/s by adapter name (NVIDIA's data sheets), or undefined. */
function peaks(adapter: string): { fp32: number; bf16: number; chip: string } | undefined {
  if (/H200/i.test(adapter)) return { fp32: 66.9, bf16: 989.4, chip: "H200 SXM" };
  if (/H100.*PCIe/i.test(adapter)) return { fp32: 51.2, bf16: 756, chip: "H100 PCIe" };
  if (/H100/i.test(adapter)) return { fp32: 66.9, bf16: 989.4, chip: "H100 SXM" };
  return undefined;
}

// ---------------------------------------------------------------------------
// The parts.

/** Fills a buffer with small non-zero values (some drivers short-cut zeros). */
function filled(rt: Runtime, label: string, n: number, dtype: DType): GPUBuffer {
  const eb = dtypeBytes(dtype), buf = rt.arena.alloc(label, "scratch", n * eb, undefined, dtype);
  const chunk = 1 << 22;
  for (let o = 0; o < n; o += chunk) {
    const vals = Float32Array.from(
      { length: Math.min(chunk, n - o) },
      (_, i) => (((o + i) * 7919) % 13) * 0.01 - 0.06,
    );
    rt.device.queue.writeBuffer(buf, o * eb, dtype === "f16" ? new Float16Array(vals) : vals);
  }
  return buf;
}

async function timeMatmul(
  rt: Runtime,
  p: PlanProduct,
  dtype: DType,
  impls: MatmulImpl[],
  reps: number,
): Promise<{ kernel: string; ms: number }[]> {
  const a = filled(rt, "bench.a", p.M * p.K, dtype), b = filled(rt, "bench.b", p.K * p.N, dtype);
  const c = rt.arena.alloc("bench.c", "scratch", p.M * p.N * dtypeBytes(dtype), undefined, dtype);
  try {
    const out = [];
    for (const impl of impls) {
      const shape: MatmulShape = { M: p.M, N: p.N, K: p.K, transA: p.transA, transB: p.transB };
      const d: Dispatch[] = await matmul(rt, shape, {
        a: { buffer: a },
        b: { buffer: b },
        c: { buffer: c },
      }, { impl, name: `bench ${p.label}` });
      const timer = dispatchTimer(rt, d, { dispose: () => freeDispatches(rt.arena, d) });
      try {
        await timer.run();
        let ms = Infinity;
        for (let r = 0; r < reps; r++) ms = Math.min(ms, await timer.run());
        const kernel = [...new Set(d.map((x) => x.pipeline.label.replace(/^matmul_/, "")))];
        out.push({ kernel: kernel.join("+"), ms });
      } finally {
        timer.dispose();
      }
    }
    return out;
  } finally {
    for (const x of [a, b, c]) rt.arena.free(x);
  }
}

async function trainSteps(
  rt: Runtime,
  t: PlanTrain,
  precision: Precision,
  steps: number,
  until: number,
): Promise<BenchRow> {
  const { B, T } = t;
  const t0 = performance.now();
  const model = await GPT2.create(rt, t.config, { B, T, seed: 1, precision });
  const opt = await createOptimizer(t.optimizer, rt, model.layout, {
    params: model.params,
    grads: model.grads,
  }, { ...ADAMW_DEFAULTS });
  const scaler = model.precision === "fp16" ? new LossScaler({}) : undefined;
  const step = new TrainStep(rt, model, opt, { accum: 1, scaler });
  const setupS = (performance.now() - t0) / 1000;
  try {
    const u = mulberry32(7);
    const tok = () => Array.from({ length: B * T }, () => Math.floor(u() * t.config.vocabSize));
    const batch = { inputs: tok(), targets: tok() };
    const losses: number[] = [], times: number[] = [];
    for (let s = 0; s < steps + 2; s++) {
      if (s >= 3 && performance.now() > until) break; // budget: at least one timed step
      const t1 = performance.now();
      const r = await step.run(3e-4, () => batch);
      if (s >= 2) times.push(performance.now() - t1);
      losses.push(r.loss);
    }
    const ms = median(times), tokensPerS = (B * T) / (ms / 1000);
    return {
      model: t.name,
      precision: model.precision,
      optimizer: t.optimizer,
      B,
      T,
      params_M: +(parameterCount(t.config) / 1e6).toFixed(1),
      steps_timed: times.length,
      step_ms: ms,
      tokens_per_s: tokensPerS,
      tflops: (tokensPerS * flopsPerToken(t.config, T)) / 1e12,
      setup_s: setupS,
      first_loss: losses[0],
      last_loss: losses[losses.length - 1],
      optimizer_state_MiB: +(opt.stateBytes / 2 ** 20).toFixed(1),
    };
  } finally {
    step.destroy();
    opt.destroy();
    model.destroy();
  }
}

// ---------------------------------------------------------------------------
// Main.

const HELP = `Usage: deno run -A bench/device/gpu_bench.ts [options]

  --tiny            small shapes and models (a CPU adapter runs it in minutes)
  --plan FILE       write the plan (shapes, models) as JSON for the PyTorch peer and exit
  --peer FILE       the peer's results (bench/peers/torch_gpt2.py --json): adds ratios
  --json FILE       write everything as one JSON file (default bench_device.json)
  --budget-s N      stop starting new parts after N seconds (default 330)
  --steps N         timed training steps per configuration (default 5, tiny 2)
  --reps N          timed runs per matmul (best of; default 5)
  --parts LIST      any of matmul,train (default both)
  --peak-fp32 TF    dense FP32 peak in TFLOP/s (default: by adapter name, H100/H200)
  --peak-bf16 TF    dense BF16 peak in TFLOP/s
  --help            this text`;

/** The bench; returns the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args: argv,
    options: {
      tiny: { type: "boolean" },
      plan: { type: "string" },
      peer: { type: "string" },
      json: { type: "string" },
      "budget-s": { type: "string" },
      steps: { type: "string" },
      reps: { type: "string" },
      parts: { type: "string" },
      "peak-fp32": { type: "string" },
      "peak-bf16": { type: "string" },
      help: { type: "boolean" },
    },
    strict: true,
  });
  if (v.help) {
    console.log(HELP);
    return 0;
  }
  const tiny = v.tiny ?? false;
  const plan = benchPlan(tiny, v.steps ? Number(v.steps) : undefined);
  if (v.plan) {
    await Deno.writeTextFile(v.plan, JSON.stringify(plan, null, 1) + "\n");
    console.log(`wrote the plan to ${v.plan}`);
    return 0;
  }
  const start = performance.now();
  const deadline = start + Number(v["budget-s"] ?? 330) * 1000;
  const reps = Number(v.reps ?? 5);
  const parts = (v.parts ?? "matmul,train").split(",");
  const peer = v.peer ? await readPeer(v.peer) : undefined;
  const say = (s: string) => console.log(s);
  const log = (s: string) => console.error(`  ${s}`);

  const rt = await createRuntime();
  const feats = [...rt.device.features].sort();
  const pk = peaks(rt.gpu.name);
  const num = (x: string | number | undefined) => (x === undefined ? undefined : Number(x));
  const peak = { fp32: num(v["peak-fp32"] ?? pk?.fp32), bf16: num(v["peak-bf16"] ?? pk?.bf16) };
  const adapter = {
    name: rt.gpu.name,
    cpu_adapter: rt.gpu.isCpu,
    features: feats,
    // Tensor cores through WebGPU (Dawn): the shapes the adapter lists, and its subgroup size.
    subgroup_matrix_configs: rt.gpu.subgroupMatrixConfigs ?? [],
    subgroup_max_size: rt.gpu.subgroupMaxSize ?? 0,
    limits: rt.gpu.limits,
    tune_key: deviceKey(rt),
    peak_tflops: { ...peak, source: v["peak-fp32"] ? "flag" : pk?.chip ?? "unknown" },
  };
  say(`== adapter: ${rt.gpu.name}${rt.gpu.isCpu ? " (CPU adapter)" : ""}`);
  say(`   features: ${feats.join(", ")}`);
  const sgm = (rt.gpu.subgroupMatrixConfigs ?? []).map((c) =>
    `${c.componentType}->${c.resultComponentType} ${c.M}x${c.N}x${c.K}`
  );
  say(`   subgroup matrices: ${sgm.length ? sgm.join(", ") : "none"}`);
  say(
    `   peaks (dense): fp32 ${peak.fp32 ?? "?"} TFLOP/s, bf16 ${peak.bf16 ?? "?"} TFLOP/s ` +
      `(${adapter.peak_tflops.source}${peak.fp32 ? "" : "; give --peak-fp32 and --peak-bf16"})`,
  );

  if (peer) say(`   peer: ${peer.torch} on ${peer.device}`);
  const dtypes = plan.dtypes.filter((d) => d === "f32" || rt.gpu.features.shaderF16);
  const skipped: string[] = [];
  const mm: BenchRow[] = [], tr: BenchRow[] = [];
  let tuneRows: BenchRow[] = [];
  const out = v.json ?? "bench_device.json";
  // Written after every figure, so that a run cut short still leaves what it measured.
  const flush = async () => {
    const doc = {
      bench: "webgpu-gpt2 device bench",
      package: PACKAGE_VERSION,
      date: new Date().toISOString(),
      deno: Deno.version.deno,
      tiny,
      adapter,
      formulas: {
        matmul_tflops: "2*M*N*K / GPU time (timestamp queries, best of reps)",
        flops_per_token: "6*N + 12*L*C*T (N = parameters without wpe; no causal halving)",
        mfu: "tokens/s * flops_per_token / dense peak (fp32: CUDA cores; bf16: tensor cores)",
        peer_pairs: "ours f32 vs torch fp32 (TF32 off); ours f16/fp16 vs torch bf16",
      },
      plan,
      matmul: mm,
      autotune: tuneRows,
      train: tr,
      memory_peak: formatBytes(rt.arena.report().peak.total),
      peer,
      skipped,
      elapsed_s: (performance.now() - start) / 1000,
    };
    await Deno.writeTextFile(out, JSON.stringify(doc, null, 1) + "\n");
    return doc;
  };
  const tunerRows = async () =>
    Object.entries(await tunerFor(rt).results()).map(([key, r]) => ({
      shape_class: key,
      choice: r.choice,
      why: r.reason,
      candidates_ms: Object.entries(r.ms as Record<string, number>)
        .sort((x, y) => x[1] - y[1]).map(([c, ms]) => `${c} ${ms.toFixed(3)}`).join(", "),
      // Candidates whose numbers were wrong on this device (never timed), and the checks' cost.
      rejected: Object.entries(r.rejected ?? {}).map(([c, why]) => `${c}: ${why}`).join("; "),
      check_ms: r.checkMs ?? 0,
      tune_ms: r.tuneMs ?? 0,
    }));

  // ---- matmul (the autotuner runs on first use of each shape class)
  if (parts.includes("matmul")) {
    const before: MatmulImpl = rt.gpu.isCpu ? "regblock" : "tiled";
    for (const dtype of dtypes) {
      for (const p of plan.products) {
        if (performance.now() > deadline) {
          skipped.push(`matmul ${dtype} ${p.label}`);
          continue;
        }
        log(`matmul ${dtype} ${p.label} ${p.M}x${p.N}x${p.K}`);
        const flops = 2 * p.M * p.N * p.K;
        const [b, a] = await timeMatmul(rt, p, dtype, [before, "auto"], reps);
        const row: BenchRow = {
          product: p.label,
          dtype,
          M: p.M,
          N: p.N,
          K: p.K,
          kernel: a.kernel,
          ms: a.ms,
          tflops: flops / a.ms / 1e9,
          before: b.kernel,
          before_tflops: flops / b.ms / 1e9,
        };
        const q = peer?.matmul.find((x) => x.label === p.label && x.dtype === peerDtype(dtype));
        if (q) {
          row.torch_tflops = q.tflops;
          row.vs_torch = (flops / a.ms / 1e9) / q.tflops;
        }
        mm.push(row);
        tuneRows = await tunerRows();
        await flush();
      }
    }
    say(`\n== matmul (TFLOP/s = 2·M·N·K / GPU time; "before" is ${before}, the pre-tuner default)`);
    say(formatTable(mm));
  }
  tuneRows = await tunerRows();
  say(`\n== autotuner choices (${tunerFor(rt).path ?? "memory only"})`);
  say(tuneRows.length ? formatTable(tuneRows) : "(none timed)");

  // ---- training steps
  if (parts.includes("train")) {
    for (const t of plan.train) {
      for (const precision of t.precisions) {
        if (precision === "fp16" && !rt.gpu.features.shaderF16) continue;
        if (performance.now() > deadline) {
          skipped.push(`train ${t.name} ${precision}`);
          continue;
        }
        log(`train ${t.name} ${precision} B=${t.B} T=${t.T} ${t.optimizer}`);
        try {
          const row = await trainSteps(rt, t, precision, plan.steps, deadline);
          const flops = Number(row.tflops) * 1e12;
          if (peak.fp32) row.mfu_vs_fp32_peak = flops / (peak.fp32 * 1e12);
          if (peak.bf16) row.mfu_vs_bf16_peak = flops / (peak.bf16 * 1e12);
          const q = peer?.train.find((x) =>
            x.model === t.name && x.precision === (precision === "fp16" ? "bf16" : "fp32")
          );
          if (q) {
            row.torch_tokens_per_s = q.tokens_per_s;
            row.vs_torch = Number(row.tokens_per_s) / q.tokens_per_s;
            if (peak.bf16) {
              row.torch_mfu_vs_bf16_peak = (q.tokens_per_s * flopsPerToken(t.config, t.T)) /
                (peak.bf16 * 1e12);
            }
          }
          tr.push(row);
        } catch (e) {
          tr.push({ model: t.name, precision, error: e instanceof Error ? e.message : String(e) });
        }
        tuneRows = await tunerRows();
        await flush();
      }
    }
    say(
      "\n== training step (FLOPs/token = 6N + 12·L·C·T, N without wpe; MFU = tokens/s × " +
        "FLOPs/token / dense peak)",
    );
    say(formatTable(tr));
  }
  if (skipped.length) say(`\nskipped (over the ${v["budget-s"] ?? 330} s budget): ${skipped}`);
  const doc = await flush();
  say(`\nwrote ${out} (${doc.elapsed_s.toFixed(0)} s)`);
  return rt.gpu.errors.length ? 1 : 0;
}

// ---------------------------------------------------------------------------
// The peer's file.

interface PeerResults {
  torch: string;
  device: string;
  matmul: { label: string; dtype: string; tflops: number }[];
  train: { model: string; precision: string; tokens_per_s: number }[];
}

const peerDtype = (d: DType) => (d === "f32" ? "fp32" : "bf16");

async function readPeer(path: string): Promise<PeerResults | undefined> {
  try {
    const p = JSON.parse(await Deno.readTextFile(path)) as PeerResults;
    if (!Array.isArray(p.matmul) || !Array.isArray(p.train)) throw new Error("no results");
    return p;
  } catch (e) {
    console.warn(`warning: no PyTorch figures from ${path} (${e}): printing ours alone`);
    return undefined;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
