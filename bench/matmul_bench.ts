/**
 * Matmul throughput (GFLOP/s = 2·M·N·K / time) for 1024³ and for GPT-2-shaped
 * products, forward and backward layouts, on whatever adapter runs it.
 *
 * @module
 */

import { runDispatches } from "../src/gpu/dispatch.ts";
import { createRuntime, type Runtime } from "../src/gpu/runtime.ts";
import { matmul, type MatmulImpl, type MatmulShape } from "../src/model/ops/matmul.ts";
import { type BenchCase, type BenchRow, median } from "./_harness.ts";

async function timeProduct(
  rt: Runtime,
  shape: MatmulShape,
  impl: MatmulImpl,
  reps: number,
): Promise<{ ms: number; gflops: number; dispatches: number }> {
  const { M, N, K, transA, transB } = shape;
  const a = rt.arena.alloc("bench.a", "scratch", M * K * 4);
  const b = rt.arena.alloc("bench.b", "scratch", K * N * 4);
  const c = rt.arena.alloc("bench.c", "scratch", M * N * 4);
  try {
    // Non-zero inputs: some drivers short-cut zeros.
    const fill = (buf: GPUBuffer, n: number) =>
      rt.device.queue.writeBuffer(buf, 0, new Float32Array(n).map((_, i) => (i % 7) * 0.1 - 0.3));
    fill(a, M * K);
    fill(b, K * N);
    const d = await matmul(rt, { M, N, K, transA, transB }, {
      a: { buffer: a },
      b: { buffer: b },
      c: { buffer: c },
    }, { impl });
    // Warm-up (shader compile, caches), then size each timed submission to take
    // about 0.3 s so the fixed cost of a submit and wait (~10 ms here) fades.
    const t0 = performance.now();
    await runDispatches(rt.device, d);
    await runDispatches(rt.device, d);
    const once = (performance.now() - t0) / 2;
    const inner = Math.max(1, Math.min(50, Math.round(300 / once)));
    const batch = Array.from({ length: inner }, () => d).flat();
    const times: number[] = [];
    for (let r = 0; r < reps; r++) {
      const t1 = performance.now();
      await runDispatches(rt.device, batch);
      times.push((performance.now() - t1) / inner);
    }
    const ms = median(times);
    return { ms, gflops: (2 * M * N * K) / ms / 1e6, dispatches: d.length };
  } finally {
    for (const x of [a, b, c]) rt.arena.free(x);
  }
}

/** GPT-2's products for n_embd C over BT tokens: [label, shape]. */
function gpt2Products(C: number, BT: number): [string, MatmulShape][] {
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

/** `deno task bench matmul [--bt 1024] [--impl regblock|tiled]` */
export const matmulBench: BenchCase = {
  name: "matmul",
  args: "--bt N (rows of the GPT-2 products, default 1024), --impl regblock|tiled",
  description: "matmul GFLOP/s: 1024^3 for each kernel, and GPT-2-shaped products (C=768, 1024)",
  async run({ args, quick, log }) {
    const rt = await createRuntime();
    const reps = quick ? 1 : 3;
    const BT = Number(args.bt ?? (quick ? 256 : 1024));
    const defaultImpl: MatmulImpl = rt.gpu.isCpu ? "regblock" : "tiled";
    const impl = (args.impl ?? defaultImpl) as MatmulImpl;
    const rows: BenchRow[] = [];
    const add = async (label: string, shape: MatmulShape, which: MatmulImpl) => {
      log(`matmul ${label} (${which})`);
      const r = await timeProduct(rt, shape, which, reps);
      rows.push({
        product: label,
        M: shape.M,
        N: shape.N,
        K: shape.K,
        impl: which,
        ms: r.ms,
        gflops: r.gflops,
      });
    };
    const sq = { M: 1024, N: 1024, K: 1024 };
    for (const which of ["regblock", "tiled"] as const) await add("square 1024^3", sq, which);
    if (!quick) await add("square 1024^3 NT", { ...sq, transB: true }, impl);
    for (const C of quick ? [768] : [768, 1024]) {
      for (const [label, shape] of gpt2Products(C, BT)) {
        if (quick && label.startsWith("lm_head")) continue;
        await add(`C=${C} ${label}`, shape, impl);
      }
    }
    for (const r of rows) r.adapter = rt.gpu.name;
    return rows;
  },
};
