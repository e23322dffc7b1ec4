/**
 * Seeded, reproducible GPT-2 initialisation (as in GPT-2 / nanoGPT / llm.c):
 * weights N(0, 0.02), residual projections (attn.c_proj, mlp.c_proj) scaled by
 * 1/sqrt(2·L), biases 0, LayerNorm weights 1. Each tensor draws from its own
 * stream (seed, tensor index), so values do not depend on the order of work.
 *
 * @module
 */

import type { GPT2Config } from "./config.ts";
import type { TensorView } from "./params.ts";

/** A mulberry32 stream of uniforms in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Fills `out` with N(0, std) samples (Box-Muller). */
export function fillNormal(out: Float32Array, std: number, random: () => number): void {
  for (let i = 0; i < out.length; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - random())) * std;
    const th = 2 * Math.PI * random();
    out[i] = r * Math.cos(th);
    if (i + 1 < out.length) out[i + 1] = r * Math.sin(th);
  }
}

/** The initial values of one tensor (wte: only its first V rows are drawn; padding stays 0). */
export function initTensor(
  cfg: GPT2Config,
  t: TensorView,
  index: number,
  seed: number,
): Float32Array<ArrayBuffer> {
  const out = new Float32Array(t.size);
  if (t.name.endsWith(".bias")) return out;
  if (
    t.name.endsWith("ln_1.weight") || t.name.endsWith("ln_2.weight") || t.name === "ln_f.weight"
  ) {
    return out.fill(1);
  }
  const residual = t.name.endsWith("attn.c_proj.weight") || t.name.endsWith("mlp.c_proj.weight");
  const std = residual ? 0.02 / Math.sqrt(2 * cfg.nLayer) : 0.02;
  const random = mulberry32((seed * 1000003 + index * 7919) >>> 0);
  const n = t.name === "wte.weight" ? cfg.vocabSize * cfg.nEmbd : t.size;
  fillNormal(out.subarray(0, n), std, random);
  return out;
}
