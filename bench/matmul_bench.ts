/**
 * Matmul throughput (GFLOP/s = 2·M·N·K / time) for 1024³ and for GPT-2-shaped products,
 * forward and backward layouts, on whatever adapter runs it: each product with the
 * kernel the package used before the autotuner (regblock on CPU adapters, tiled on GPUs)
 * and with the autotuner's choice ("auto", or the kernel `--impl` forces), timed in
 * alternation so both see the same noise. The tuner's choices and their timings follow
 * as rows of their own, with the ms its checks took (check_ms) of the whole tuning (tune_ms).
 *
 * @module
 */

import { runDispatches } from "../src/gpu/dispatch.ts";
import type { Dispatch } from "../src/gpu/dispatch.ts";
import { freeDispatches } from "../src/gpu/dispatch.ts";
import { type DType, dtypeBytes } from "../src/gpu/dtype.ts";
import { createRuntime, type Runtime } from "../src/gpu/runtime.ts";
import { tunerFor } from "../src/gpu/autotune.ts";
import {
  matmul,
  type MatmulImpl,
  type MatmulShape,
  parseMatmulImpl,
} from "../src/model/ops/matmul.ts";
import { type BenchCase, type BenchRow, median } from "./_harness.ts";

/** Operand buffers for a product, filled with non-zero values (some drivers skip zeros). */
function operands(rt: Runtime, s: MatmulShape, dtype: DType) {
  const { M, N, K } = s, eb = dtypeBytes(dtype);
  const mk = (label: string, n: number) => {
    const buf = rt.arena.alloc(label, "scratch", n * eb, undefined, dtype);
    const chunk = 1 << 22;
    for (let o = 0; o < n; o += chunk) {
      const m = Math.min(chunk, n - o);
      const vals = Float32Array.from({ length: m }, (_, i) => ((o + i) % 7) * 0.1 - 0.3);
      rt.device.queue.writeBuffer(buf, o * eb, dtype === "f16" ? new Float16Array(vals) : vals);
    }
    return buf;
  };
  return { a: mk("bench.a", M * K), b: mk("bench.b", K * N), c: mk("bench.c", M * N) };
}

/**
 * Times several dispatch lists of one product in alternation: a warm-up each, then
 * submissions sized to about 0.3 s (the ~10 ms fixed cost of a submit and wait fades).
 */
async function timeTogether(rt: Runtime, lists: Dispatch[][], reps: number): Promise<number[]> {
  const inner: number[] = [];
  for (const d of lists) {
    const t0 = performance.now();
    await runDispatches(rt.device, d);
    await runDispatches(rt.device, d);
    inner.push(Math.max(1, Math.min(50, Math.round(300 / ((performance.now() - t0) / 2)))));
  }
  const times: number[][] = lists.map(() => []);
  for (let r = 0; r < reps; r++) {
    for (let i = 0; i < lists.length; i++) {
      const batch = Array.from({ length: inner[i] }, () => lists[i]).flat();
      const t1 = performance.now();
      await runDispatches(rt.device, batch);
      times[i].push((performance.now() - t1) / inner[i]);
    }
  }
  return times.map(median);
}

/** GPT-2's products for n_embd C over BT tokens: [label, shape]. */
export function gpt2Products(C: number, BT: number): [string, MatmulShape][] {
  const Vp = 50304;
  return [
    [`qkv fwd   BTxCx3C`, { M: BT, N: 3 * C, K: C }],
    [`qkv dinp  BTx3CxC`, { M: BT, N: C, K: 3 * C, transB: true }],
    [`qkv dW    Cx3CxBT`, { M: C, N: 3 * C, K: BT, transA: true }],
    [`mlp fwd   BTxCx4C`, { M: BT, N: 4 * C, K: C }],
    [`mlp dW    Cx4CxBT`, { M: C, N: 4 * C, K: BT, transA: true }],
    [`lm_head   BTxCxVp`, { M: BT, N: Vp, K: C, transB: true }],
  ];
}

/** The kernel a dispatch list runs, from its pipelines' labels. */
function kernelOf(d: Dispatch[]): string {
  return [...new Set(d.map((x) => x.pipeline.label.replace(/^matmul_/, "")))].join("+");
}

/** `deno task bench matmul [--bt 1024] [--impl auto|regblock|tiled|wg...] [--dtype f32,f16]` */
export const matmulBench: BenchCase = {
  name: "matmul",
  args: "--bt N (rows of the GPT-2 products, default 1024), --impl auto|regblock|tiled|" +
    "wgBMxBNxBK_tTMxTN (the 'after' kernel, default auto), --dtype f32,f16",
  description: "matmul GFLOP/s before/after the autotuner: 1024^3 and GPT-2-shaped products",
  async run({ args, quick, log }) {
    const rt = await createRuntime();
    const reps = quick ? 1 : 3;
    const BT = Number(args.bt ?? (quick ? 256 : 1024));
    const before: MatmulImpl = rt.gpu.isCpu ? "regblock" : "tiled";
    const after = parseMatmulImpl(args.impl ?? "auto");
    const dtypes = (args.dtype ?? "f32").split(",") as DType[];
    if (dtypes.includes("f16") && !rt.gpu.features.shaderF16) {
      throw new TypeError(`--dtype f16 needs shader-f16, which ${rt.gpu.name} lacks: use f32`);
    }
    const shapes: [string, MatmulShape][] = [["square 1024^3", { M: 1024, N: 1024, K: 1024 }]];
    if (!quick) shapes.push(["square 1024^3 NT", { M: 1024, N: 1024, K: 1024, transB: true }]);
    for (const C of quick ? [768] : [768, 1024]) {
      for (const [label, shape] of gpt2Products(C, BT)) {
        if (quick && label.startsWith("lm_head")) continue;
        shapes.push([`C=${C} ${label}`, shape]);
      }
    }
    const rows: BenchRow[] = [];
    for (const dtype of dtypes) {
      for (const [label, shape] of shapes) {
        const bufs = operands(rt, shape, dtype);
        const lists: Dispatch[][] = [];
        try {
          for (const impl of [before, after]) {
            log(`matmul ${dtype} ${label} (${impl})`);
            lists.push(
              await matmul(rt, shape, {
                a: { buffer: bufs.a },
                b: { buffer: bufs.b },
                c: { buffer: bufs.c },
              }, { impl }),
            );
          }
          const [t0, t1] = await timeTogether(rt, lists, reps);
          const gflops = (ms: number) => (2 * shape.M * shape.N * shape.K) / ms / 1e6;
          rows.push({
            product: label,
            dtype,
            M: shape.M,
            N: shape.N,
            K: shape.K,
            before: kernelOf(lists[0]),
            before_ms: t0,
            before_gflops: gflops(t0),
            after: `${after === "auto" ? "auto: " : ""}${kernelOf(lists[1])}`,
            after_ms: t1,
            after_gflops: gflops(t1),
            speedup: t0 / t1,
          });
        } finally {
          for (const d of lists) freeDispatches(rt.arena, d);
          for (const x of Object.values(bufs)) rt.arena.free(x);
        }
      }
    }
    const tuner = tunerFor(rt);
    for (const [key, r] of Object.entries(await tuner.results())) {
      const times = Object.entries(r.ms as Record<string, number>)
        .sort((a, b) => a[1] - b[1])
        .map(([c, ms]) => `${c} ${ms.toFixed(2)}`).join(", ");
      rows.push({
        product: `tuned: ${key}`,
        after: r.choice,
        why: r.reason,
        timed_ms: times,
        // What checking the candidates before timing them cost, of the whole tuning.
        check_ms: r.checkMs ?? 0,
        tune_ms: r.tuneMs ?? 0,
      });
    }
    for (const r of rows) r.adapter = rt.gpu.name;
    return rows;
  },
};
