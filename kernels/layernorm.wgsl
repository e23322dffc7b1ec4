// layernorm: y = (x - mean) * rstd * weight + bias over the last dimension, eps 1e-5.
//
// forward:          out [N, C], mean [N], rstd [N] from inp [N, C], weight [C], bias [C]
// backward_input:   dinp [N, C] += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)),
//                   dnorm = weight * dout, norm = (inp - mean) * rstd
// backward_params:  dweight[c] += sum_n norm[n,c] * dout[n,c]; dbias[c] += sum_n dout[n,c]
// forward_no_bias, backward_params_no_bias: the same without bias and dbias (bias=False)
//
// Per-row kernels give one invocation a row, the parameter gradient one
// invocation a channel: no atomics, deterministic sums. backward_params sums rows
// [n0, n1) only; the builder splits N rows into such ranges, one dispatch each, in order,
// so that one invocation's walk stays within the loop budget at any B*T.
//
// Loop bound per invocation: forward 3C; backward_input 2C; backward_params n1 - n0
// (at most 32768, src/model/ops/layernorm.ts).
//
// out's element type is out_t (f32 or f16, from the bound buffer); the statistics and every
// other tensor are f32.
//
// Bindings and uniforms (p.N, p.C, p.n0, p.n1): declared in src/model/ops/layernorm.ts.
// Geometry: workgroup (64,1,1); grid over N rows (forward, backward_input) or C channels
// (backward_params), folded into y.

const EPS = 1e-5;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * 64u;
}

// ---------------------------------------------------------------------------

// The row's mean and rstd (written to mean[n], rstd[n]).
fn row_stats(n: u32) -> vec2f {
  let base = n * p.C;
  var s = 0.0;
  for (var c = 0u; c < p.C; c++) { s += inp[base + c]; }
  let m = s / f32(p.C);
  var v = 0.0;
  for (var c = 0u; c < p.C; c++) {
    let d = inp[base + c] - m;
    v += d * d;
  }
  let r = inverseSqrt(v / f32(p.C) + EPS);
  mean[n] = m;
  rstd[n] = r;
  return vec2f(m, r);
}

@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let n = linear_index(gid, nwg);
  if (n >= p.N) { return; }
  let base = n * p.C;
  let st = row_stats(n);
  for (var c = 0u; c < p.C; c++) {
    out[base + c] = out_t((inp[base + c] - st.x) * st.y * f32(weight[c]) + f32(bias[c]));
  }
}

// Without a bias (nanoGPT's bias=False): no bias binding.
@compute @workgroup_size(64, 1, 1)
fn forward_no_bias(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let n = linear_index(gid, nwg);
  if (n >= p.N) { return; }
  let base = n * p.C;
  let st = row_stats(n);
  for (var c = 0u; c < p.C; c++) {
    out[base + c] = out_t((inp[base + c] - st.x) * st.y * f32(weight[c]));
  }
}

// ---------------------------------------------------------------------------

@compute @workgroup_size(64, 1, 1)
fn backward_input(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let n = linear_index(gid, nwg);
  if (n >= p.N) { return; }
  let base = n * p.C;
  let m = mean[n];
  let r = rstd[n];
  var dnorm_mean = 0.0;
  var dnorm_norm_mean = 0.0;
  for (var c = 0u; c < p.C; c++) {
    let dnorm = f32(weight[c]) * dout[base + c];
    dnorm_mean += dnorm;
    dnorm_norm_mean += dnorm * (inp[base + c] - m) * r;
  }
  dnorm_mean /= f32(p.C);
  dnorm_norm_mean /= f32(p.C);
  for (var c = 0u; c < p.C; c++) {
    let norm = (inp[base + c] - m) * r;
    let dnorm = f32(weight[c]) * dout[base + c];
    dinp[base + c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
  }
}

// ---------------------------------------------------------------------------

// Channel c's sums over rows [n0, n1): x = dweight's, y = dbias's.
fn param_sums(c: u32) -> vec2f {
  var dw = 0.0;
  var db = 0.0;
  for (var n = p.n0; n < p.n1; n++) {
    let d = dout[n * p.C + c];
    dw += (inp[n * p.C + c] - mean[n]) * rstd[n] * d;
    db += d;
  }
  return vec2f(dw, db);
}

@compute @workgroup_size(64, 1, 1)
fn backward_params(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let c = linear_index(gid, nwg);
  if (c >= p.C) { return; }
  let s = param_sums(c);
  dweight[c] = dweight_t(f32(dweight[c]) + s.x);
  dbias[c] = dbias_t(f32(dbias[c]) + s.y);
}

// Without a bias: no dbias binding.
@compute @workgroup_size(64, 1, 1)
fn backward_params_no_bias(
  @builtin(global_invocation_id) gid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let c = linear_index(gid, nwg);
  if (c >= p.C) { return; }
  dweight[c] = dweight_t(f32(dweight[c]) + param_sums(c).x);
}
