/**
 * The workgroup reductions' two forms side by side (src/model/ops/reduce.ts): the tree in
 * workgroup memory against subgroup operations, in the kernels that reduce across a
 * workgroup, at real shapes, alternated rep by rep on the same buffers. LayerNorm compares its
 * invocation-per-row form with its workgroup-per-row subgroup form (kernels/layernorm_rows.wgsl).
 *
 * Rows: the kernel, its shape, the median ms of each form, GB/s read by each, and
 * tree_over_subgroup (above 1: subgroups are faster). Needs an adapter with subgroups.
 *
 * @module
 */

import { type Dispatch, runDispatches } from "../src/gpu/dispatch.ts";
import { createRuntime, type Runtime } from "../src/gpu/runtime.ts";
import { fillNormal, mulberry32 } from "../src/model/init.ts";
import {
  attentionDecode,
  classifier,
  decodePartialBytes,
  layernormBackward,
  layernormForward,
  setDecodePosition,
} from "../src/model/ops/mod.ts";
import { gradNormDispatches, gradNormPartials } from "../src/train/grad_norm.ts";
import { type BenchCase, type BenchRow, median } from "./_harness.ts";

/** Builds a kernel's dispatches in one form (subgroups or not) over buffers it owns. */
interface ReduceCase {
  name: string;
  shape: string;
  /** Bytes a run reads (for GB/s). */
  bytes: number;
  build(subgroups: boolean): Promise<Dispatch[]>;
}

/** `deno task bench reduce [--reps 5] [--rows 1024]` */
export const reduceBench: BenchCase = {
  name: "reduce",
  args: "--reps 5 --rows 1024",
  description: "workgroup reductions: tree against subgroups, side by side, at real shapes",
  async run({ args, quick, log }) {
    const rt = await createRuntime();
    if (!rt.gpu.features.subgroups) {
      throw new Error(`${rt.gpu.name} has no subgroups: nothing to compare the tree with`);
    }
    const reps = Number(args.reps ?? (quick ? 2 : 5));
    const rows = Number(args.rows ?? (quick ? 64 : 1024));
    const made: GPUBuffer[] = [];
    const buf = (label: string, floats: number, usage?: number) => {
      const b = rt.arena.alloc(label, "scratch", floats * 4, usage);
      made.push(b);
      return b;
    };
    const fill = (b: GPUBuffer, floats: number, seed: number) => {
      const x = new Float32Array(floats);
      fillNormal(x, 2, mulberry32(seed));
      rt.device.queue.writeBuffer(b, 0, x);
    };
    try {
      const out: BenchRow[] = [];
      for (const c of cases(rt, rows, quick, buf, fill)) {
        const forms = { tree: await c.build(false), subgroup: await c.build(true) };
        const ms = { tree: [] as number[], subgroup: [] as number[] };
        for (const f of ["tree", "subgroup"] as const) await runDispatches(rt.device, forms[f]);
        for (let r = 0; r < reps; r++) {
          for (const f of ["tree", "subgroup"] as const) {
            const t0 = performance.now();
            await runDispatches(rt.device, forms[f]);
            ms[f].push(performance.now() - t0);
          }
          log(`reduce ${c.name} ${c.shape}: rep ${r + 1}/${reps}`);
        }
        const [t, s] = [median(ms.tree), median(ms.subgroup)];
        out.push({
          kernel: c.name,
          shape: c.shape,
          tree_ms: t,
          subgroup_ms: s,
          tree_gbs: +(c.bytes / t / 1e6).toFixed(2),
          subgroup_gbs: +(c.bytes / s / 1e6).toFixed(2),
          tree_over_subgroup: +(t / s).toFixed(3),
        });
      }
      return out;
    } finally {
      for (const b of made) rt.arena.free(b);
    }
  },
};

/** The kernels that reduce across a workgroup, at GPT-2's shapes. */
function cases(
  rt: Runtime,
  N: number,
  quick: boolean,
  buf: (label: string, floats: number, usage?: number) => GPUBuffer,
  fill: (b: GPUBuffer, floats: number, seed: number) => void,
): ReduceCase[] {
  const V = 50257, Vp = 50304, C = 1024;
  const logits = buf("logits", N * Vp), targets = buf("targets", N), losses = buf("losses", N);
  const lossScale = buf("loss_scale", 4, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  rt.device.queue.writeBuffer(lossScale, 0, new Float32Array([1, 0, 0, 0]));
  rt.device.queue.writeBuffer(targets, 0, Uint32Array.from({ length: N }, (_, i) => i * 7 % V));
  fill(logits, N * Vp, 1);
  const x = buf("ln.inp", N * C), w = buf("ln.w", C), b = buf("ln.b", C);
  const lnOut = buf("ln.out", N * C), mean = buf("ln.mean", N), rstd = buf("ln.rstd", N);
  const dout = buf("ln.dout", N * C), dinp = buf("ln.dinp", N * C);
  const dw = buf("ln.dw", C), db = buf("ln.db", C);
  for (const [i, t] of [x, w, b, dout].entries()) fill(t, t.size / 4, 10 + i);
  const n = quick ? 1 << 20 : 124 << 20; // gpt2's gradients, about
  const per = Math.floor(rt.gpu.limits.maxStorageBufferBindingSize / 4 / 4096) * 4096;
  const ranges: { offset: number; size: number }[] = [];
  for (let o = 0; o < n; o += per) ranges.push({ offset: o, size: Math.min(per, n - o) });
  const grads = buf("grads", n), partials = buf("partials", gradNormPartials(ranges));
  const stats = buf("stats", 4);
  fill(grads, n, 20);
  const maxT = 4096, NH = 16;
  const cache = buf("cache", maxT * 3 * C), q1 = buf("q1", 3 * C), att = buf("att.out", C);
  const partial = buf("att.partial", decodePartialBytes({ maxT, C, NH }) / 4);
  fill(cache, maxT * 3 * C, 30);
  fill(q1, 3 * C, 31);
  return [
    {
      name: "classifier",
      shape: `N=${N} V=${V}`,
      bytes: 2 * N * Vp * 4, // read twice (max, sum); the gradient pass not counted
      build: (subgroups) =>
        classifier(rt, { N, V, Vp, dloss: 1 / N, writeGrad: false }, {
          logits,
          targets: { buffer: targets },
          losses: { buffer: losses },
          lossScale,
        }, { subgroups }),
    },
    {
      name: "layernorm fwd+bwd",
      shape: `N=${N} C=${C}`,
      bytes: 6 * N * C * 4,
      build: async (subgroups) => [
        await layernormForward(rt, { N, C }, {
          inp: x,
          weight: { buffer: w, offset: 0, size: C },
          bias: { buffer: b, offset: 0, size: C },
          out: lnOut,
          mean,
          rstd,
        }, { subgroups }),
        ...await layernormBackward(rt, { N, C }, {
          inp: x,
          weight: { buffer: w, offset: 0, size: C },
          mean,
          rstd,
          dout,
          dinp,
          dweight: { buffer: dw, offset: 0, size: C },
          dbias: { buffer: db, offset: 0, size: C },
        }, { subgroups }),
      ],
    },
    {
      name: "grad norm",
      shape: `n=${n}`,
      bytes: n * 4,
      build: (subgroups) => gradNormDispatches(rt, ranges, grads, partials, stats, { subgroups }),
    },
    {
      name: "decode attention",
      shape: `t=${maxT - 1} NH=${NH} C=${C}`,
      bytes: maxT * 2 * C * 4, // k and v of every cached row
      build: async (subgroups) => {
        const d = await attentionDecode(rt, { maxT, C, NH }, { q1, cache, out: att, partial }, {
          subgroups,
        });
        setDecodePosition(rt.device.queue, d, maxT - 1);
        return d;
      },
    },
  ];
}
