// adamw: one AdamW step (decoupled weight decay, Loshchilov & Hutter) on a range of the flat
// parameter buffer: adamw_update (kernels/adamw_update.wgsl) per element.
//
// The gradient scale (loss scale undone, global-norm clip) and the skip flag come from
// gstats, written by the training step; the per-step values from the Step uniform, written
// once per step; the per-range values (n, decay, p0) from the Range uniform, written at setup.
// wd applies only where `decay` is 1 (matrices and embeddings).
//
// store_param: src/optim/kernel_source.ts gives one of two definitions: params[i] = p, or
// (mixed precision, fused) that and half[r.p0 + i] = f16(p), the f16 copy the matmuls read,
// so no separate cast pass runs after the step (half is bound from a 256-byte-aligned element
// r.p0 before the range's start, at binding 7).
//
// Shapes: params, grads, m, v [n] (ranges of the flat buffers).
// Bindings: 0 params, 1 grads, 2 m, 3 v, 4 gstats, 5 step (uniform), 6 range (uniform),
// 7 half (the f16 variant only).
// Geometry: workgroup (64,1,1); grid over n, folded into y.
// Loop bound per invocation: 0 (no loops).

struct Range { n: u32, decay: u32, p0: u32, p1: u32 }

@group(0) @binding(0) var<storage, read_write> params: array<f32>;
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> gstats: GradStats;
@group(0) @binding(5) var<uniform> s: Step;
@group(0) @binding(6) var<uniform> r: Range;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 64u;
  if (i >= r.n || skip_step()) { return; }
  let g = scaled_grad(grads[i]);
  if (!is_finite(g)) { return; } // NaN/Inf: leave p, m, v
  let u = adamw_update(params[i], g, m[i], v[i], r.decay == 1u);
  m[i] = u.m;
  v[i] = u.v;
  store_param(i, u.p);
}
