/**
 * Seeded, reproducible GPT-2 initialisation (as in GPT-2 / nanoGPT / llm.c):
 * weights N(0, 0.02), residual projections (attn.c_proj, mlp.c_proj) scaled by
 * 1/sqrt(2·L), biases 0, LayerNorm weights 1. Each tensor draws from its own
 * stream (seed, tensor index), so values do not depend on the order of work.
 *
 * @module
 */

import type { GPT2Config } from "./config.ts";
import { modelParams, type ParamInit } from "./block_spec.ts";
import type { TensorView } from "./params.ts";

const inits = new WeakMap<GPT2Config, Map<string, ParamInit>>();

/** A tensor's init kind from the block spec (the table is built once per config). */
function initOf(cfg: GPT2Config, name: string): ParamInit {
  let m = inits.get(cfg);
  if (!m) inits.set(cfg, m = new Map(modelParams(cfg).map((p) => [p.name, p.init])));
  const init = m.get(name);
  if (!init) throw new RangeError(`Unknown parameter "${name}"`);
  return init;
}

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
  const init = initOf(cfg, t.name);
  if (init === "zeros") return out;
  if (init === "ones") return out.fill(1);
  const std = init === "residual" ? 0.02 / Math.sqrt(2 * cfg.nLayer) : 0.02;
  const random = mulberry32((seed * 1000003 + index * 7919) >>> 0);
  const n = t.name === "wte.weight" ? cfg.vocabSize * cfg.nEmbd : t.size;
  fillNormal(out.subarray(0, n), std, random);
  return out;
}
