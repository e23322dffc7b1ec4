// layernorm_rows: LayerNorm's forward and input backward with a workgroup per row and its sums
// through subgroups, for GPUs (kernels/layernorm.wgsl gives an invocation a row, which suits a
// CPU adapter and leaves a GPU's lanes idle and its reads uncoalesced). The math is
// layernorm.wgsl's; only the order of the f32 sums differs.
//
// forward:         out [N, C], mean [N], rstd [N] from inp [N, C], weight [C], bias [C]
// forward_no_bias: the same without bias
// backward_input:  dinp [N, C] += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
//
// A row's sum: each lane adds its strided share of the row, then wg_sum adds the lanes' through
// subgroups (kernels/reduce_subgroup.wgsl, put after this text by src/model/ops/layernorm.ts):
// nothing assumes a subgroup size (8 on lavapipe, 32 on NVIDIA, 32 or 64 on AMD) or how lanes
// are grouped into subgroups.
//
// Loop bound per invocation: forward 3 ceil(C / 64) + 2 * 64; backward_input 2 ceil(C / 64) + 64.
//
// Bindings and uniforms (p.N, p.C): declared in src/model/ops/layernorm.ts.
// Geometry: workgroup (64,1,1), one per row; the grid over N rows folded into y.

const EPS = 1e-5;
const WG = 64u;

// The workgroup's builtins (uniform across it: a struct holding a lane's index too would make
// the row non-uniform to the uniformity analysis); the lane's are reduce_subgroup's `Lane`.
struct Row {
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
}

// The workgroup's row (the whole workgroup returns together when it is past N).
fn row_of(r: Row) -> u32 {
  return r.wid.x + r.wid.y * r.nwg.x;
}

// The row's mean and rstd (lane 0 writes them to mean[n], rstd[n]).
fn row_stats(n: u32, l: Lane) -> vec2f {
  let base = n * p.C;
  var s = 0.0;
  for (var c = l.lid; c < p.C; c += WG) { s += inp[base + c]; }
  let m = wg_sum(s, l) / f32(p.C);
  var v = 0.0;
  for (var c = l.lid; c < p.C; c += WG) {
    let d = inp[base + c] - m;
    v += d * d;
  }
  let r = inverseSqrt(wg_sum(v, l) / f32(p.C) + EPS);
  if (l.lid == 0u) {
    mean[n] = m;
    rstd[n] = r;
  }
  return vec2f(m, r);
}

@compute @workgroup_size(64, 1, 1)
fn forward(row: Row, l: Lane) {
  let n = row_of(row);
  if (n >= p.N) { return; }
  let base = n * p.C;
  let st = row_stats(n, l);
  for (var c = l.lid; c < p.C; c += WG) {
    out[base + c] = out_t((inp[base + c] - st.x) * st.y * f32(weight[c]) + f32(bias[c]));
  }
}

@compute @workgroup_size(64, 1, 1)
fn forward_no_bias(row: Row, l: Lane) {
  let n = row_of(row);
  if (n >= p.N) { return; }
  let base = n * p.C;
  let st = row_stats(n, l);
  for (var c = l.lid; c < p.C; c += WG) {
    out[base + c] = out_t((inp[base + c] - st.x) * st.y * f32(weight[c]));
  }
}

@compute @workgroup_size(64, 1, 1)
fn backward_input(row: Row, l: Lane) {
  let n = row_of(row);
  if (n >= p.N) { return; }
  let base = n * p.C;
  let m = mean[n];
  let r = rstd[n];
  var a = 0.0;
  var b = 0.0;
  for (var c = l.lid; c < p.C; c += WG) {
    let dnorm = f32(weight[c]) * dout[base + c];
    a += dnorm;
    b += dnorm * (inp[base + c] - m) * r;
  }
  let means = wg_sum2(vec2f(a, b), l) / f32(p.C);
  let dnorm_mean = means.x;
  let dnorm_norm_mean = means.y;
  for (var c = l.lid; c < p.C; c += WG) {
    let norm = (inp[base + c] - m) * r;
    let dnorm = f32(weight[c]) * dout[base + c];
    dinp[base + c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
  }
}
