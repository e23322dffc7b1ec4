// adamw: one AdamW step (decoupled weight decay, Loshchilov & Hutter) on a range
// of the flat parameter buffer, with global-norm gradient clipping applied on the way.
//
//   g  = grad / S * clip,  clip = min(1, max_norm / (norm / S + 1e-6)), norm from stats (set
//        by grad_norm), S the loss scale (1 unless mixed precision)
//   m  = beta1 m + (1 - beta1) g
//   v  = beta2 v + (1 - beta2) g^2
//   p -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + wd * p)   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
//
// A NaN or Inf gradient element leaves its parameter, m and v unchanged; with skip_overflow
// (mixed precision) one such element anywhere skips the whole step.
//
// The per-step values (lr, beta1, beta2, eps, bc1, bc2, max_norm) live in one uniform
// buffer written once per step; the per-range values (n, decay) in another, written
// at setup. wd applies only where `decay` is 1 (matrices and embeddings).
//
// Mixed precision, fused: with HALF_COPY (src/optim/adamw.ts's adamwHalfKernel) the kernel
// also writes f16(p) into half[r.p0 + i], the f16 copy the matmuls read, so no separate cast
// pass runs after the step (half is bound from a 256-byte-aligned element r.p0 before the
// range's start).
//
// Shapes: params, grads, m, v [n] (ranges of the flat buffers). stats [2] = (loss, norm).
// Bindings: 0 params, 1 grads, 2 m, 3 v, 4 stats, 5 step (uniform), 6 range (uniform),
// 7 half (HALF_COPY only).
// Geometry: workgroup (64,1,1); grid over n, folded into y.
// Loop bound per invocation: 0 (no loops).

// Step, is_finite, grad_mul and skip_step: kernels/adamw_step.wgsl (prepended).
struct Range { n: u32, decay: u32, p0: u32, p1: u32 }

@group(0) @binding(0) var<storage, read_write> params: array<f32>;
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<uniform> s: Step;
@group(0) @binding(6) var<uniform> r: Range;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 64u;
  if (i >= r.n || skip_step()) { return; }
  let g = grads[i] * grad_mul();
  if (!is_finite(g)) { return; } // NaN/Inf: leave p, m, v
  let mi = s.beta1 * m[i] + (1.0 - s.beta1) * g;
  let vi = s.beta2 * v[i] + (1.0 - s.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  let p = params[i];
  let wd = select(0.0, s.wd, r.decay == 1u);
  let np = p - s.lr * ((mi / s.bc1) / (sqrt(vi / s.bc2) + s.eps) + wd * p);
  params[i] = np;
  // HALF_COPY: half[r.p0 + i] = f16(np);
}
