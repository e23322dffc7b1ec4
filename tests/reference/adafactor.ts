/**
 * Float64 reference of one Adafactor step (Shazeer & Stern 2018, Algorithms 4 and 5) for one
 * tensor, as src/optim/adafactor.ts states it: factored second moment from row and column sums
 * of g^2 + eps1 for 2-D tensors (full for 1-D), decay 1 - t^(-c), update clipping by RMS with
 * threshold d, optional first moment, the run's learning rate, decoupled weight decay.
 *
 * @module
 */

/** Hyperparameters of one step. */
export interface RefAdafactorStep {
  /** Learning rate (alpha_t: relative step size off). */
  lr: number;
  /** Step, 1-based. */
  t: number;
  /** First-moment decay; 0: no first moment. */
  beta1: number;
  /** c in beta2_t = 1 - t^(-c). */
  decay: number;
  /** Update clipping threshold d. */
  clip: number;
  /** Added to every g^2. */
  eps1: number;
  /** Decoupled weight decay (applied where the tensor decays). */
  weightDecay: number;
}

/** The state of one tensor: r [rows] and c [cols] for 2-D, v [n] for 1-D, m [n] if beta1. */
export interface RefAdafactorState {
  r?: Float64Array;
  c?: Float64Array;
  v?: Float64Array;
  m?: Float64Array;
}

/** Zero state for a tensor of `shape` (2-D and up: rows = product of all but the last). */
export function adafactorRefState(shape: number[], beta1: number): RefAdafactorState {
  const n = shape.reduce((a, b) => a * b, 1);
  const st: RefAdafactorState = {};
  if (shape.length >= 2) {
    const cols = shape[shape.length - 1];
    st.r = new Float64Array(n / cols);
    st.c = new Float64Array(cols);
  } else st.v = new Float64Array(n);
  if (beta1 > 0) st.m = new Float64Array(n);
  return st;
}

/**
 * Updates p and the state in place for one step with gradient g (the clipped, unscaled one:
 * finite). Returns RMS(U) before update clipping, so a test can see the clip act.
 */
export function adafactorRef(
  p: Float64Array,
  g: ArrayLike<number>,
  st: RefAdafactorState,
  decayed: boolean,
  h: RefAdafactorStep,
): number {
  const n = p.length;
  const b2 = 1 - h.t ** -h.decay;
  const vhat = new Float64Array(n);
  if (st.r && st.c) {
    // [rows, cols]: R = b2 R + (1 - b2) rowsum(g^2 + eps1), C likewise over columns
    const rows = st.r.length, cols = st.c.length;
    const rs = new Float64Array(rows), cs = new Float64Array(cols);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const q = g[i * cols + j] ** 2 + h.eps1;
        rs[i] += q;
        cs[j] += q;
      }
    }
    for (let i = 0; i < rows; i++) st.r[i] = b2 * st.r[i] + (1 - b2) * rs[i];
    for (let j = 0; j < cols; j++) st.c[j] = b2 * st.c[j] + (1 - b2) * cs[j];
    const sumR = st.r.reduce((a, b) => a + b, 0);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) vhat[i * cols + j] = (st.r[i] * st.c[j]) / sumR;
    }
  } else {
    const v = st.v!;
    for (let e = 0; e < n; e++) vhat[e] = v[e] = b2 * v[e] + (1 - b2) * (g[e] ** 2 + h.eps1);
  }
  const u = Float64Array.from({ length: n }, (_, e) => g[e] / Math.sqrt(vhat[e]));
  const rms = Math.sqrt(u.reduce((a, x) => a + x * x, 0) / n);
  const denom = Math.max(1, rms / h.clip);
  const wd = decayed ? h.weightDecay : 0;
  for (let e = 0; e < n; e++) {
    let step = u[e] / denom;
    if (st.m) step = st.m[e] = h.beta1 * st.m[e] + (1 - h.beta1) * step;
    p[e] -= h.lr * (step + wd * p[e]);
  }
  return rms;
}
