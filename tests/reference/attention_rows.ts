/**
 * Float64 causal attention for one head (b, h) at any T, for checking sampled rows at real
 * sizes: the full reference (gpt2.ts) stores B x NH x T x T probabilities, which is 2 GiB at
 * T = 4096. Shapes as in kernels/flash_attention.wgsl: qkv [B, T, 3C], dout [B, T, C].
 *
 * @module
 */

/** One head's forward: lse [T], out [T, HS], and D [T] = dout . out for the backward. */
export interface HeadForward {
  lse: Float64Array;
  out: Float64Array;
  delta: Float64Array;
}

function at(T: number, C: number, HS: number, b: number, h: number) {
  return {
    q: (t: number) => (b * T + t) * 3 * C + h * HS,
    k: (t: number) => (b * T + t) * 3 * C + C + h * HS,
    v: (t: number) => (b * T + t) * 3 * C + 2 * C + h * HS,
    o: (t: number) => (b * T + t) * C + h * HS,
  };
}

function score(qkv: ArrayLike<number>, q: number, k: number, HS: number): number {
  let s = 0;
  for (let i = 0; i < HS; i++) s += qkv[q + i] * qkv[k + i];
  return s / Math.sqrt(HS);
}

/** Every row of head (b, h): O(T^2 HS). */
export function headForward(
  qkv: ArrayLike<number>,
  dout: ArrayLike<number>,
  shape: { T: number; C: number; NH: number },
  b: number,
  h: number,
): HeadForward {
  const { T, C, NH } = shape, HS = C / NH, ix = at(T, C, HS, b, h);
  const lse = new Float64Array(T), out = new Float64Array(T * HS), delta = new Float64Array(T);
  const s = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let max = -Infinity;
    for (let t2 = 0; t2 <= t; t2++) {
      s[t2] = score(qkv, ix.q(t), ix.k(t2), HS);
      max = Math.max(max, s[t2]);
    }
    let sum = 0;
    for (let t2 = 0; t2 <= t; t2++) sum += s[t2] = Math.exp(s[t2] - max);
    lse[t] = max + Math.log(sum);
    for (let t2 = 0; t2 <= t; t2++) {
      const p = s[t2] / sum, v = ix.v(t2);
      for (let i = 0; i < HS; i++) out[t * HS + i] += p * qkv[v + i];
    }
    for (let i = 0; i < HS; i++) delta[t] += dout[ix.o(t) + i] * out[t * HS + i];
  }
  return { lse, out, delta };
}

/** P(t, t2) and dS(t, t2) = P (dout[t] . v[t2] - D[t]) / sqrt(HS), from the forward's lse, D. */
function probGrad(
  qkv: ArrayLike<number>,
  dout: ArrayLike<number>,
  ix: ReturnType<typeof at>,
  HS: number,
  fwd: HeadForward,
  t: number,
  t2: number,
): { p: number; ds: number } {
  const p = Math.exp(score(qkv, ix.q(t), ix.k(t2), HS) - fwd.lse[t]);
  let dp = 0;
  for (let i = 0; i < HS; i++) dp += dout[ix.o(t) + i] * qkv[ix.v(t2) + i];
  return { p, ds: p * (dp - fwd.delta[t]) / Math.sqrt(HS) };
}

/** dq of query row t of head (b, h): O(T HS). */
export function headDq(
  qkv: ArrayLike<number>,
  dout: ArrayLike<number>,
  shape: { T: number; C: number; NH: number },
  fwd: HeadForward,
  b: number,
  h: number,
  t: number,
): Float64Array {
  const { T, C, NH } = shape, HS = C / NH, ix = at(T, C, HS, b, h);
  const dq = new Float64Array(HS);
  for (let t2 = 0; t2 <= t; t2++) {
    const { ds } = probGrad(qkv, dout, ix, HS, fwd, t, t2);
    for (let i = 0; i < HS; i++) dq[i] += ds * qkv[ix.k(t2) + i];
  }
  return dq;
}

/** dk and dv of key row t2 of head (b, h): O(T HS). */
export function headDkv(
  qkv: ArrayLike<number>,
  dout: ArrayLike<number>,
  shape: { T: number; C: number; NH: number },
  fwd: HeadForward,
  b: number,
  h: number,
  t2: number,
): { dk: Float64Array; dv: Float64Array } {
  const { T, C, NH } = shape, HS = C / NH, ix = at(T, C, HS, b, h);
  const dk = new Float64Array(HS), dv = new Float64Array(HS);
  for (let t = t2; t < T; t++) {
    const { p, ds } = probGrad(qkv, dout, ix, HS, fwd, t, t2);
    for (let i = 0; i < HS; i++) {
      dk[i] += ds * qkv[ix.q(t) + i];
      dv[i] += p * dout[ix.o(t) + i];
    }
  }
  return { dk, dv };
}
