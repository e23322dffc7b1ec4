/**
 * Flash attention forward and backward time and GFLOP/s at real shapes (GPT-2 124M's at
 * T=1024, gpt2-medium-4096's at T=4096), fp32 and (with shader-f16) f16 q|k|v.
 *
 * FLOPs: causal pairs t2 <= t times HS times 4 for the forward (q.k and p.v), 14 for the
 * backward (q.k and dout.v recomputed in each of the dq and dk|dv passes, plus dq, dk, dv),
 * so the backward is 3.5 forwards; the delta pass is not counted.
 *
 * @module
 */

import { createRuntime } from "../src/gpu/runtime.ts";
import { type Dispatch, runDispatches } from "../src/gpu/dispatch.ts";
import type { DType } from "../src/gpu/dtype.ts";
import { fillNormal, mulberry32 } from "../src/model/init.ts";
import { flashAttentionBackward, flashAttentionForward } from "../src/model/ops/mod.ts";
import { type BenchCase, type BenchRow, median } from "./_harness.ts";

/** `deno task bench attention [--shapes B,T,NH,C;...] [--reps 3] [--dtype f32,f16]` */
export const attentionBench: BenchCase = {
  name: "attention",
  args: "--shapes 1,1024,12,768;1,4096,16,1024 --reps 3 --dtype f32,f16",
  description: "flash attention forward/backward ms and GFLOP/s at T=1024 and T=4096",
  async run({ args, quick, log }) {
    const rt = await createRuntime();
    const shapes = (args.shapes ?? (quick ? "1,256,12,768" : "1,1024,12,768;1,4096,16,1024"))
      .split(";").map((s) => s.split(",").map(Number));
    const reps = Number(args.reps ?? (quick ? 1 : 3));
    const dtypes = (args.dtype ?? (rt.gpu.features.shaderF16 ? "f32,f16" : "f32"))
      .split(",") as DType[];
    const rows: BenchRow[] = [];
    for (const [B, T, NH, C] of shapes) {
      for (const dtype of dtypes) {
        const s = { B, T, C, NH }, eb = dtype === "f16" ? 2 : 4;
        const made: GPUBuffer[] = [];
        const buf = (label: string, bytes: number, t: DType = "f32") => {
          const b = rt.arena.alloc(label, "scratch", bytes, undefined, t);
          made.push(b);
          return b;
        };
        const qkv = buf("qkv", B * T * 3 * C * eb, dtype), out = buf("out", B * T * C * eb, dtype);
        const lse = buf("lse", B * NH * T * 4), delta = buf("delta", B * NH * T * 4);
        const dout = buf("dout", B * T * C * 4), dqkv = buf("dqkv", B * T * 3 * C * eb, dtype);
        try {
          const x = new Float32Array(B * T * 3 * C);
          fillNormal(x, 1.5, mulberry32(1));
          rt.device.queue.writeBuffer(qkv, 0, dtype === "f16" ? new Float16Array(x) : x);
          rt.device.queue.writeBuffer(dout, 0, x, 0, B * T * C);
          const fwd = await flashAttentionForward(rt, s, { qkv, out, lse });
          const bwd = await flashAttentionBackward(rt, s, { qkv, out, lse, dout, delta, dqkv });
          const time = async (d: Dispatch[]) => {
            const t0 = performance.now();
            await runDispatches(rt.device, d);
            return performance.now() - t0;
          };
          await time(fwd); // compiles and warms
          await time(bwd);
          const f: number[] = [], b: number[] = [];
          for (let r = 0; r < reps; r++) {
            f.push(await time(fwd));
            b.push(await time(bwd));
            log(`attention B=${B} T=${T} NH=${NH} C=${C} ${dtype}: rep ${r + 1}/${reps}`);
          }
          const pairs = B * NH * T * (T + 1) / 2, HS = C / NH;
          const [fm, bm] = [median(f), median(b)];
          rows.push({
            B,
            T,
            NH,
            C,
            dtype,
            dispatches: fwd.length + bwd.length,
            forward_ms: fm,
            forward_gflops: +(4 * HS * pairs / fm / 1e6).toFixed(2),
            backward_ms: bm,
            backward_gflops: +(14 * HS * pairs / bm / 1e6).toFixed(2),
          });
        } finally {
          for (const m of made) rt.arena.free(m);
        }
      }
    }
    return rows;
  },
};
