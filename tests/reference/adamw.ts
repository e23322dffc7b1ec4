/**
 * Float64 reference of one AdamW step with global-norm clipping, as the
 * kernels/adamw.wgsl header states it.
 *
 * @module
 */

/** Hyperparameters of one step. */
export interface RefAdamWStep {
  lr: number;
  t: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  gradClip: number;
}

/** Global L2 norm of all finite gradient elements. */
export function gradNormRef(grads: ArrayLike<number>[]): number {
  let s = 0;
  for (const g of grads) {
    for (let i = 0; i < g.length; i++) if (Number.isFinite(g[i])) s += g[i] * g[i];
  }
  return Math.sqrt(s);
}

/** Updates p, m, v in place for one tensor; `norm` is the global gradient norm. */
export function adamwRef(
  p: Float64Array,
  g: ArrayLike<number>,
  m: Float64Array,
  v: Float64Array,
  decay: boolean,
  norm: number,
  h: RefAdamWStep,
): void {
  const clip = h.gradClip > 0 ? Math.min(1, h.gradClip / (norm + 1e-6)) : 1;
  const bc1 = 1 - h.beta1 ** h.t, bc2 = 1 - h.beta2 ** h.t;
  const wd = decay ? h.weightDecay : 0;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i] * clip;
    if (!Number.isFinite(gi)) continue; // NaN/Inf: parameter and state unchanged
    m[i] = h.beta1 * m[i] + (1 - h.beta1) * gi;
    v[i] = h.beta2 * v[i] + (1 - h.beta2) * gi * gi;
    p[i] -= h.lr * (m[i] / bc1 / (Math.sqrt(v[i] / bc2) + h.eps) + wd * p[i]);
  }
}
