/**
 * Flash attention's check for the autotuner (src/gpu/autotune.ts `TuneCheck`): before a
 * rows-per-invocation candidate is timed, its forward pass runs on a small random problem
 * with the same element types and head size, and its output and log-sum-exp must match a
 * float64 causal attention computed here on the CPU.
 *
 * - Small: B = 1, NH = 2, T = 300 (not a multiple of any row block, 64 to 256 rows), in
 *   chunks of 64 · rows keys, so the split-KV merge runs too. ~10^7 multiply-adds in float64:
 *   tens of ms on the CPU, once per kind.
 * - Values uniform in [-1, 1), rounded to qkv's type before the reference reads them.
 * - Tolerance: out is a convex combination of rows of v (|v| < 1), so its error is taken
 *   against 1: {@linkcode ATTENTION_CHECK_TOLERANCE} by out's type (as matmul's, see
 *   src/model/ops/matmul_check.ts); lse's against max(1, |lse|), the f32 one.
 * - The backward passes take the forward's choice; they are not run here.
 *
 * @module
 */

import { worstElement } from "./device_check.ts";
import { type Dispatch, freeDispatches, runDispatches } from "../../gpu/dispatch.ts";
import { type DType, dtypeBytes, roundToF16 } from "../../gpu/dtype.ts";
import { readValues, type Runtime } from "../../gpu/runtime.ts";
import type { TuneCheck } from "../../gpu/autotune.ts";
import { mulberry32 } from "../init.ts";
import { type AttentionShape, flashAttentionForward, type FlashRows } from "./attention.ts";

/** Largest error allowed by out's element type (lse, f32 always, takes f32's). */
export const ATTENTION_CHECK_TOLERANCE: Record<DType, number> = { f32: 1e-4, f16: 4e-3 };

/** out [B,T,C] and lse [B,NH,T] of causal attention over qkv [B,T,3C], in float64. */
function attentionRef(qkv: Float32Array, s: AttentionShape) {
  const { B, T, C, NH } = s, HS = C / NH, scale = 1 / Math.sqrt(HS);
  const out = new Float64Array(B * T * C), lse = new Float64Array(B * NH * T);
  const p = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      for (let t = 0; t < T; t++) {
        const q = (b * T + t) * 3 * C + h * HS;
        let max = -Infinity;
        for (let t2 = 0; t2 <= t; t2++) {
          const k = (b * T + t2) * 3 * C + C + h * HS;
          let dot = 0;
          for (let i = 0; i < HS; i++) dot += qkv[q + i] * qkv[k + i];
          p[t2] = dot * scale;
          max = Math.max(max, p[t2]);
        }
        let sum = 0;
        for (let t2 = 0; t2 <= t; t2++) sum += p[t2] = Math.exp(p[t2] - max);
        lse[(b * NH + h) * T + t] = max + Math.log(sum);
        for (let i = 0; i < HS; i++) {
          let o = 0;
          for (let t2 = 0; t2 <= t; t2++) {
            o += p[t2] * qkv[(b * T + t2) * 3 * C + 2 * C + h * HS + i];
          }
          out[(b * T + t) * C + h * HS + i] = o / sum;
        }
      }
    }
  }
  return { out, lse };
}

/**
 * A {@linkcode TuneCheck} for flash attention's rows candidates ("1", "2", "4") on a head
 * size and element types, and `dispose` to free its buffers.
 */
export function flashRowsCheck(
  rt: Runtime,
  HS: number,
  o: {
    types: { qkv: DType; out: DType };
    /** Builds a candidate's forward (default flashAttentionForward; `rows` set in `s`). */
    build?: (
      s: AttentionShape,
      ops: { qkv: GPUBuffer; out: GPUBuffer; lse: GPUBuffer },
    ) => Promise<Dispatch[]>;
  },
): TuneCheck<string> & { dispose(): void } {
  const { types } = o;
  const build = o.build ?? ((shape, ops) => flashAttentionForward(rt, shape, ops));
  const s: AttentionShape = { B: 1, T: 300, C: 2 * HS, NH: 2 };
  const kind = `${types.qkv}.${types.out} HS${HS}`;
  const buffers: GPUBuffer[] = [];
  let setup: { qkv: GPUBuffer; ref: ReturnType<typeof attentionRef> } | undefined;
  const make = () => {
    const random = mulberry32(0x666c6173);
    let x = Float32Array.from({ length: s.B * s.T * 3 * s.C }, () => 2 * random() - 1);
    if (types.qkv === "f16") x = roundToF16(x);
    const data = types.qkv === "f16" ? new Float16Array(x) : x;
    const qkv = rt.arena.allocWith("attention.check.qkv", "scratch", data, undefined, types.qkv);
    buffers.push(qkv);
    return { qkv, ref: attentionRef(x, s) };
  };
  return {
    id: (c) => `flash forward ${kind} rows ${c}`,
    async run(c) {
      setup ??= make();
      const rows = Number(c) as FlashRows;
      const n = s.B * s.T * s.C;
      const out = rt.arena.alloc(
        "attention.check.out",
        "scratch",
        n * dtypeBytes(types.out),
        undefined,
        types.out,
      );
      const lse = rt.arena.alloc("attention.check.lse", "scratch", s.B * s.NH * s.T * 4);
      try {
        const d = await build({ ...s, rows, chunkRows: 64 * rows }, {
          qkv: setup.qkv,
          out,
          lse,
        });
        try {
          await runDispatches(rt.device, d);
        } finally {
          freeDispatches(rt.arena, d);
        }
        const tol = ATTENTION_CHECK_TOLERANCE[types.out];
        const wrong =
          worstElement("out", await readValues(rt.device, out, 0, n), setup.ref.out, () =>
            1, tol) ??
            worstElement(
              "lse",
              await readValues(rt.device, lse, 0, s.B * s.NH * s.T),
              setup.ref.lse,
              (w) =>
                Math.max(1, Math.abs(w)),
              ATTENTION_CHECK_TOLERANCE.f32,
            );
        return wrong &&
          `differs from the float64 attention on B=1 T=${s.T} NH=2 ${kind}: ${wrong}`;
      } finally {
        rt.arena.free(out);
        rt.arena.free(lse);
      }
    },
    dispose() {
      for (const b of buffers.splice(0)) rt.arena.free(b);
      setup = undefined;
    },
  };
}
