// layernorm_rows: LayerNorm's forward and input backward with a workgroup per row and its sums
// through subgroups, for GPUs (kernels/layernorm.wgsl gives an invocation a row, which suits a
// CPU adapter and leaves a GPU's lanes idle and its reads uncoalesced). The math is
// layernorm.wgsl's; only the order of the f32 sums differs.
//
// forward:         out [N, C], mean [N], rstd [N] from inp [N, C], weight [C], bias [C]
// forward_no_bias: the same without bias
// backward_input:  dinp [N, C] += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
//
// A row's sum: each lane adds its strided share of the row, subgroupAdd sums a subgroup, and
// each subgroup's first lane posts that at its own slot of `partial` (the other lanes post 0),
// which every lane then adds up in the same order. Nothing assumes a subgroup size (8 on
// lavapipe, 32 on NVIDIA, 32 or 64 on AMD) or how lanes are grouped into subgroups.
//
// Loop bound per invocation: forward 3 ceil(C / 64) + 2 * 64; backward_input 2 ceil(C / 64) +
// 2 * 64.
//
// Bindings and uniforms (p.N, p.C): declared in src/model/ops/layernorm.ts.
// Geometry: workgroup (64,1,1), one per row; the grid over N rows folded into y.

const EPS = 1e-5;
const WG = 64u;

var<workgroup> partial: array<f32, 64>;

// The builtins every entry point takes: the workgroup's (uniform across it: a struct holding
// a lane's index too would make the row non-uniform to the uniformity analysis) and the lane's.
struct Row {
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
}
struct Lane {
  @builtin(local_invocation_index) lid: u32,
  @builtin(subgroup_invocation_id) sid: u32,
}

// The workgroup's total of `v` (called by every lane, in uniform control flow).
fn row_sum(v: f32, l: Lane) -> f32 {
  let s = subgroupAdd(v);
  partial[l.lid] = select(0.0, s, l.sid == 0u);
  workgroupBarrier();
  var t = 0.0;
  for (var i = 0u; i < WG; i++) { t += partial[i]; }
  workgroupBarrier(); // `partial` is written again by the next sum
  return t;
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
  let m = row_sum(s, l) / f32(p.C);
  var v = 0.0;
  for (var c = l.lid; c < p.C; c += WG) {
    let d = inp[base + c] - m;
    v += d * d;
  }
  let r = inverseSqrt(row_sum(v, l) / f32(p.C) + EPS);
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
  let dnorm_mean = row_sum(a, l) / f32(p.C);
  let dnorm_norm_mean = row_sum(b, l) / f32(p.C);
  for (var c = l.lid; c < p.C; c += WG) {
    let norm = (inp[base + c] - m) * r;
    let dnorm = f32(weight[c]) * dout[base + c];
    dinp[base + c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
  }
}
