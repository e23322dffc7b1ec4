/**
 * Plain float64 CPU reference for matmul and GPT-2's linear layer.
 *
 * @module
 */

/** Shape of a reference matmul, as in src/model/matmul.ts. */
export interface RefMatmulShape {
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
  lda?: number;
  ldb?: number;
  ldc?: number;
}

/**
 * c[m*ldc + n] (+)= sum_k opA(m,k) * opB(k,n) (+ bias[n]), in float64.
 * A is [M,K] or, with transA, [K,M]; B is [K,N] or, with transB, [N,K].
 */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  shape: RefMatmulShape,
  extra: { c?: Float64Array; bias?: ArrayLike<number>; accumulate?: boolean } = {},
): Float64Array {
  const { M, N, K, transA = false, transB = false } = shape;
  const lda = shape.lda ?? (transA ? M : K);
  const ldb = shape.ldb ?? (transB ? K : N);
  const ldc = shape.ldc ?? N;
  const c = extra.c ?? new Float64Array((M - 1) * ldc + N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = extra.bias ? extra.bias[n] : 0;
      for (let k = 0; k < K; k++) {
        const av = transA ? a[k * lda + m] : a[m * lda + k];
        const bv = transB ? b[n * ldb + k] : b[k * ldb + n];
        s += av * bv;
      }
      c[m * ldc + n] = (extra.accumulate ? c[m * ldc + n] : 0) + s;
    }
  }
  return c;
}

/** out[BT,OC] = inp[BT,C] · weight[C,OC] + bias[OC] */
export function linearForwardRef(
  inp: ArrayLike<number>,
  weight: ArrayLike<number>,
  bias: ArrayLike<number> | undefined,
  BT: number,
  C: number,
  OC: number,
): Float64Array {
  return matmulRef(inp, weight, { M: BT, N: OC, K: C }, { bias });
}

/** Gradients of {@linkcode linearForwardRef} given dout[BT,OC]. */
export function linearBackwardRef(
  inp: ArrayLike<number>,
  weight: ArrayLike<number>,
  dout: ArrayLike<number>,
  BT: number,
  C: number,
  OC: number,
): { dinp: Float64Array; dweight: Float64Array; dbias: Float64Array } {
  const dinp = new Float64Array(BT * C);
  const dweight = new Float64Array(C * OC);
  const dbias = new Float64Array(OC);
  for (let t = 0; t < BT; t++) {
    for (let o = 0; o < OC; o++) {
      const d = dout[t * OC + o];
      dbias[o] += d;
      for (let c = 0; c < C; c++) {
        dinp[t * C + c] += d * weight[c * OC + o];
        dweight[c * OC + o] += inp[t * C + c] * d;
      }
    }
  }
  return { dinp, dweight, dbias };
}
