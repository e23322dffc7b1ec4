// adafactor: one Adafactor step (Shazeer & Stern 2018; src/optim/adafactor.ts has the
// formulas): the entry points of one step, in order per 2-D tensor: row_sq and col_sq (per
// piece, walks of [lo, hi)), decay2, sum_r, u_rows (per piece), sum_u2, update (per piece);
// per 1-D tensor: decay1, sum_u1, update.
//
// Shapes: params, grads, m [n] (a piece: rows x cols, or the whole 1-D tensor); state: R [trows]
// then C [cols] at so (2-D), V [n] at so (1-D); acc [trows + cols] at ao; sums [2 * tensors]:
// sum(R), sum(U^2) of tensor k at 2k, 2k + 1.
// Bindings (src/optim/adafactor.ts declares them, and which each entry point uses): params,
// grads, m, state, acc, sums, gstats (GradStats), s (Step: lr, beta2t = 1 - t^(-decay), beta1,
// eps1, clip, wd, round_seed; written once per step); p: n, rows, cols, row0 (the piece's first
// row in its tensor), lo, hi, first (the walk starts the sum), so, ao (state and acc offsets),
// k (the tensor's sums slot), decay, trows (the tensor's rows), nel (the tensor's elements),
// e0 (the piece's first element in the flat buffer). params and grads are f32 or f16.
// Geometry: row_sq, u_rows: one invocation per piece row; col_sq: per column; decay2: per
// row and column; decay1, update: per element (64 wide, folded into y); sum_*: one
// workgroup of 64.
// sum_*: the workgroup's wg_sum (kernels/reduce_tree.wgsl or reduce_subgroup.wgsl, put after
// this text by src/optim/adafactor.ts).
// Loop bound per invocation: row_sq, col_sq, u_rows hi - lo (at most WALK_ROWS); sum_r,
// sum_u2 ceil(trows / 64) + 64 (the reduction's, at most); sum_u1 ceil(n / 64) + 64; others 0.

const WG = 64u;

fn is_finite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// The gradient as the update uses it (0 where it is not finite).
fn grad(e: u32) -> f32 {
  let g = f32(grads[e]) * gstats.scale;
  return select(0.0, g, is_finite(g));
}

fn sq(e: u32) -> f32 {
  let g = grad(e);
  return g * g + s.eps1;
}

fn linear(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * 64u;
}

// The factored (2-D) or full (1-D) second moment of element e of the piece.
fn vhat(e: u32) -> f32 {
  if (p.cols == 0u) { return state[p.so + e]; }
  let i = p.row0 + e / p.cols;
  return state[p.so + i] * state[p.so + p.trows + e % p.cols] / sums[2u * p.k];
}

@compute @workgroup_size(64, 1, 1)
fn row_sq(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear(gid, nwg);
  if (i >= p.rows || gstats.skip != 0.0) { return; }
  var x = select(acc[p.ao + p.row0 + i], 0.0, p.first == 1u);
  for (var j = p.lo; j < p.hi; j++) { x += sq(i * p.cols + j); }
  acc[p.ao + p.row0 + i] = x;
}

@compute @workgroup_size(64, 1, 1)
fn col_sq(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear(gid, nwg);
  if (j >= p.cols || gstats.skip != 0.0) { return; }
  var x = select(acc[p.ao + p.trows + j], 0.0, p.first == 1u);
  for (var i = p.lo; i < p.hi; i++) { x += sq(i * p.cols + j); }
  acc[p.ao + p.trows + j] = x;
}

@compute @workgroup_size(64, 1, 1)
fn decay2(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let x = linear(gid, nwg);
  if (x >= p.trows + p.cols || gstats.skip != 0.0) { return; }
  state[p.so + x] = s.beta2t * state[p.so + x] + (1.0 - s.beta2t) * acc[p.ao + x];
}

@compute @workgroup_size(64, 1, 1)
fn decay1(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let e = linear(gid, nwg);
  if (e >= p.n || gstats.skip != 0.0) { return; }
  state[p.so + e] = s.beta2t * state[p.so + e] + (1.0 - s.beta2t) * sq(e);
}

@compute @workgroup_size(64, 1, 1)
fn sum_r(lane: Lane) {
  if (gstats.skip != 0.0) { return; }
  let l = lane.lid;
  var x = 0.0;
  for (var i = l; i < p.trows; i += 64u) { x += state[p.so + i]; }
  let t = wg_sum(x, lane);
  if (l == 0u) { sums[2u * p.k] = t; }
}

@compute @workgroup_size(64, 1, 1)
fn u_rows(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear(gid, nwg);
  if (i >= p.rows || gstats.skip != 0.0) { return; }
  var x = select(acc[p.ao + p.row0 + i], 0.0, p.first == 1u);
  for (var j = p.lo; j < p.hi; j++) {
    let e = i * p.cols + j;
    let g = grad(e);
    x += g * g / vhat(e);
  }
  acc[p.ao + p.row0 + i] = x;
}

@compute @workgroup_size(64, 1, 1)
fn sum_u2(lane: Lane) {
  if (gstats.skip != 0.0) { return; }
  let l = lane.lid;
  var x = 0.0;
  for (var i = l; i < p.trows; i += 64u) { x += acc[p.ao + i]; }
  let t = wg_sum(x, lane);
  if (l == 0u) { sums[2u * p.k + 1u] = t; }
}

@compute @workgroup_size(64, 1, 1)
fn sum_u1(lane: Lane) {
  if (gstats.skip != 0.0) { return; }
  let l = lane.lid;
  var x = 0.0;
  for (var e = l; e < p.n; e += 64u) {
    let g = grad(e);
    x += g * g / state[p.so + e];
  }
  let t = wg_sum(x, lane);
  if (l == 0u) { sums[2u * p.k + 1u] = t; }
}

@compute @workgroup_size(64, 1, 1)
fn update(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let e = linear(gid, nwg);
  if (e >= p.n || gstats.skip != 0.0) { return; }
  let g = f32(grads[e]) * gstats.scale;
  if (!is_finite(g)) { return; } // NaN/Inf: leave p and m
  let rms = sqrt(sums[2u * p.k + 1u] / f32(p.nel));
  var u = g / sqrt(vhat(e)) / max(1.0, rms / s.clip);
  if (s.beta1 > 0.0) {
    u = s.beta1 * m[e] + (1.0 - s.beta1) * u;
    m[e] = u;
  }
  let w = f32(params[e]);
  let wd = select(0.0, s.wd, p.decay == 1u);
  params[e] = params_t(stored_param(w - s.lr * (u + wd * w), p.e0 + e));
}
