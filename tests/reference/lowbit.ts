/**
 * CPU reference of the 8-bit and 4-bit AdamW steps, following the WGSL kernels'
 * headers: dequantize with the old scale, update (skipping non-finite
 * gradients), requantize to the nearest code with fresh scales.
 *
 * @module
 */

import { dynamicMap, linearMapNoZero, nearestCode } from "../../src/optim/quant_maps.ts";
import type { RefAdamWStep } from "./adamw.ts";

/** Quantized state of one tensor piece. */
export interface RefQuantState {
  mCodes: Uint8Array;
  vCodes: Uint8Array;
  mAbs: Float32Array;
  /** Block absmax of v (8-bit, 4-bit 1-D) or rank-1 [rows | cols] maxima (4-bit 2-D). */
  vAbs: Float32Array;
}

const f = Math.fround;

/** A fresh (all-zero) state for n elements. */
export function refQuantState(
  n: number,
  bits: 8 | 4,
  block: number,
  rows = 0,
  cols = 0,
): RefQuantState {
  const vLen = bits === 4 && rows ? rows + cols : Math.ceil(n / block);
  return {
    mCodes: new Uint8Array(n),
    vCodes: new Uint8Array(n),
    mAbs: new Float32Array(Math.ceil(n / block)),
    vAbs: new Float32Array(vLen),
  };
}

/**
 * One step on p (float32, updated in place) with grads g. `rows`/`cols` select
 * rank-1 normalisation of v (4-bit only).
 */
export function lowbitStepRef(
  p: Float32Array,
  g: Float32Array,
  st: RefQuantState,
  bits: 8 | 4,
  block: number,
  decay: boolean,
  norm: number,
  h: RefAdamWStep,
  rows = 0,
  cols = 0,
): void {
  const mMap = bits === 8 ? dynamicMap(true, 8) : dynamicMap(true, 4);
  const vMap = bits === 8 ? dynamicMap(false, 8) : linearMapNoZero(4);
  const n = p.length;
  const clip = h.gradClip > 0 ? Math.min(1, f(h.gradClip / f(norm + 1e-6))) : 1;
  const bc1 = f(1 - h.beta1 ** h.t), bc2 = f(1 - h.beta2 ** h.t);
  const b1 = f(h.beta1), b2 = f(h.beta2); // the kernel's f32 uniforms
  const rank1 = bits === 4 && rows > 0;
  const oldScale = (i: number) =>
    rank1
      ? Math.min(st.vAbs[Math.floor(i / cols)], st.vAbs[rows + (i % cols)])
      : st.vAbs[Math.floor(i / block)];
  const m = new Float64Array(n), v = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let mi = f(mMap[st.mCodes[i]] * st.mAbs[Math.floor(i / block)]);
    let vi = f(vMap[st.vCodes[i]] * oldScale(i));
    const gi = f(g[i] * clip);
    if (Number.isFinite(gi)) {
      mi = f(f(b1 * mi) + f(f(1 - b1) * gi));
      vi = f(f(b2 * vi) + f(f(f(1 - b2) * gi) * gi));
      const wd = decay ? h.weightDecay : 0;
      p[i] = f(p[i] - h.lr * (mi / bc1 / (Math.sqrt(vi / bc2) + h.eps) + wd * p[i]));
    }
    m[i] = mi;
    v[i] = vi;
  }
  // fresh scales
  const mAbs = new Float32Array(st.mAbs.length), vAbs = new Float32Array(st.vAbs.length);
  for (let i = 0; i < n; i++) {
    const b = Math.floor(i / block);
    mAbs[b] = Math.max(mAbs[b], Math.abs(m[i]));
    if (rank1) {
      vAbs[Math.floor(i / cols)] = Math.max(vAbs[Math.floor(i / cols)], v[i]);
      vAbs[rows + (i % cols)] = Math.max(vAbs[rows + (i % cols)], v[i]);
    } else vAbs[b] = Math.max(vAbs[b], v[i]);
  }
  for (let i = 0; i < n; i++) {
    const am = mAbs[Math.floor(i / block)];
    const sv = rank1
      ? Math.min(vAbs[Math.floor(i / cols)], vAbs[rows + (i % cols)])
      : vAbs[Math.floor(i / block)];
    st.mCodes[i] = nearestCode(mMap, am > 0 ? f(m[i] / am) : 0);
    st.vCodes[i] = nearestCode(vMap, sv > 0 ? f(v[i] / sv) : 0);
  }
  st.mAbs.set(mAbs);
  st.vAbs.set(vAbs);
}

/** Unpacks codes from u32 words (8-bit: 4 per word, 4-bit: 8 per word). */
export function unpackCodes(words: Uint32Array, n: number, bits: 8 | 4): Uint8Array {
  const per = 32 / bits, mask = (1 << bits) - 1;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (words[Math.floor(i / per)] >>> (bits * (i % per))) & mask;
  return out;
}
