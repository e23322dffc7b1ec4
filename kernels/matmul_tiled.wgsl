// matmul_tiled: C[M,N] (+)= op(A)[M,K] · op(B)[K,N] (+ bias[N]), for GPUs.
//
// op(A) is A stored [M,K] (lda = row stride), or Aᵀ with A stored [K,M] (TRANS_A).
// op(B) is B stored [K,N] (ldb), or Bᵀ with B stored [N,K] (TRANS_B). C is [M,N] (ldc).
// Offsets (a_off, ...) are in elements from the start of each binding. Each operand's
// element type is an alias (f32, or f16 through src/gpu/dtype.ts); sums are f32.
//
// Idea: the classic workgroup-memory tiling. A 16x16 workgroup computes a 64x64 block
// of C; each step stages a 64x16 slice of op(A) and a 16x64 slice of op(B) in
// workgroup memory (coalesced global reads, zero-filled past the edges, so any
// M, N, K work), then each invocation accumulates a 4x4 sub-block in registers.
//
// Loop bound per invocation: ceil(K / 16) * 18: each step of the k0 loop runs the 16-step k
// loop (and one more); the 4-step loops are unrolled (measured on llvmpipe, where K = 65,536
// unsplit stopped at 58,255; tests/loop_budget_test.ts pins it). src/model/matmul.ts splits
// K past the budget (K > 58,254).
// Bindings: 0 A, 1 B, 2 C (read_write), 3 params (uniform), 4 bias (bind any
// buffer when HAS_BIAS is false).
// Geometry: workgroup (16,16,1); grid (ceil(N/64), ceil(M/64), 1).

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;
override ACCUMULATE: bool = false;

const BM = 64u;
const BN = 64u;
const BK = 16u;

struct Params {
  M: u32, N: u32, K: u32, lda: u32, ldb: u32, ldc: u32,
  a_off: u32, b_off: u32, c_off: u32, bias_off: u32, p0: u32, p1: u32,
}

alias a_t = f32;
alias b_t = f32;
alias c_t = f32;
alias bias_t = f32;

@group(0) @binding(0) var<storage, read> A: array<a_t>;
@group(0) @binding(1) var<storage, read> B: array<b_t>;
@group(0) @binding(2) var<storage, read_write> C: array<c_t>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> bias: array<bias_t>;

var<workgroup> As: array<f32, 1024>; // [BK][BM]
var<workgroup> Bs: array<f32, 1024>; // [BK][BN]

fn load_a(m: u32, k: u32) -> f32 {
  if (m >= p.M || k >= p.K) { return 0.0; }
  if (TRANS_A) { return f32(A[p.a_off + k * p.lda + m]); }
  return f32(A[p.a_off + m * p.lda + k]);
}

fn load_b(k: u32, n: u32) -> f32 {
  if (k >= p.K || n >= p.N) { return 0.0; }
  if (TRANS_B) { return f32(B[p.b_off + n * p.ldb + k]); }
  return f32(B[p.b_off + k * p.ldb + n]);
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  let t = lid.y * 16u + lid.x;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < p.K; k0 += BK) {
    // 1024 elements per tile, 4 per invocation. Consecutive invocations walk the
    // operand's contiguous dimension so global reads coalesce.
    for (var r = 0u; r < 4u; r++) {
      let e = r * 256u + t;
      if (TRANS_A) {
        As[(e / BM) * BM + e % BM] = load_a(m0 + e % BM, k0 + e / BM);
      } else {
        As[(e % BK) * BM + e / BK] = load_a(m0 + e / BK, k0 + e % BK);
      }
      if (TRANS_B) {
        Bs[(e % BK) * BN + e / BK] = load_b(k0 + e % BK, n0 + e / BK);
      } else {
        Bs[(e / BN) * BN + e % BN] = load_b(k0 + e / BN, n0 + e % BN);
      }
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) {
        a[i] = As[k * BM + lid.y * 4u + i];
        b[i] = Bs[k * BN + lid.x * 4u + i];
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], b[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + lid.y * 4u + i;
    if (m >= p.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + lid.x * 4u + j;
      if (n >= p.N) { continue; }
      var v = acc[i][j];
      if (HAS_BIAS) { v += f32(bias[p.bias_off + n]); }
      let ci = p.c_off + m * p.ldc + n;
      if (ACCUMULATE) { v += f32(C[ci]); }
      C[ci] = c_t(v);
    }
  }
}
