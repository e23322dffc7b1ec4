// adamw: one AdamW step (decoupled weight decay, Loshchilov & Hutter) on a range of the flat
// parameter buffer: adamw_update (kernels/adamw_update.wgsl) per element.
//
// The gradient scale (loss scale undone, global-norm clip) and the skip flag come from
// gstats, written by the training step; the per-step values from the Step uniform s, written
// once per step; the per-range values (n, decay, p0) from the uniform p, written at setup.
// wd applies only where `decay` is 1 (matrices and embeddings).
//
// Entry points: main writes the f32 parameters; main_f16copy (mixed precision, fused) also
// writes half[p.p0 + i] = f16(p), the f16 copy the matmuls read, so no cast pass runs after
// the step (half is bound from a 256-byte-aligned element p.p0 before the range's start).
//
// Shapes: params, grads, m, v [n] (ranges of the flat buffers); half [p0 + n] f16.
// Bindings (src/optim/adamw.ts declares them): params, grads, m, v, gstats, s (uniform),
// half (main_f16copy only); p: n, decay, p0, e0 (the range's first element in the flat buffer).
// Geometry: workgroup (64,1,1); grid over n, folded into y.
// Loop bound per invocation: 0 (no loops).

// The new parameter of element i after its AdamW step (m, v and params written); done is
// false where the element is left alone: out of the range, a skipped step, a NaN or Inf
// gradient.
struct Stepped { done: bool, param: f32 }

fn step_element(i: u32) -> Stepped {
  if (i >= p.n || skip_step()) { return Stepped(false, 0.0); }
  let g = scaled_grad(f32(grads[i]));
  if (!is_finite(g)) { return Stepped(false, 0.0); } // NaN/Inf: leave p, m, v
  let u = adamw_update(f32(params[i]), g, m[i], v[i], p.decay == 1u);
  m[i] = u.m;
  v[i] = u.v;
  let w = stored_param(u.p, p.e0 + i);
  params[i] = params_t(w);
  return Stepped(true, w);
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  _ = step_element(gid.x + gid.y * nwg.x * 64u);
}

@compute @workgroup_size(64, 1, 1)
fn main_f16copy(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 64u;
  let r = step_element(i);
  if (r.done) { half[p.p0 + i] = half_t(r.param); }
}
