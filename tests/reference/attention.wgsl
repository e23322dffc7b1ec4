// attention: causal multi-head self-attention, plain version (stores att [B, NH, T, T]).
// The long-context issue replaces it with a flash-style kernel.
//
// forward:         out[b,t,h,:] = sum_{t2<=t} att[b,h,t,t2] * v[b,t2,h,:],
//                  att = softmax_{t2<=t}(q[b,t,h,:] . k[b,t2,h,:] / sqrt(HS))
// backward_query:  dpre[b,h,t,t2] = att * (datt - sum_t3 att * datt), datt = dout[b,t,h,:] . v[t2]
//                  dq[b,t,h,:] = scale * sum_{t2<=t} dpre[t,t2] * k[t2]
// backward_kv:     dk[b,t2,h,:] = scale * sum_{t>=t2} dpre[t,t2] * q[t]
//                  dv[b,t2,h,:] = sum_{t>=t2} att[t,t2] * dout[t]
//
// Shapes: qkv/dqkv [B, T, 3C] (q | k | v, head h at channels h*HS..), out/dout [B, T, C],
// att/dpre [B, NH, T, T]. Each invocation owns one (b, t, h) row, so every sum is
// computed in one place: no atomics, deterministic.
//
// Bindings: 0 qkv, 1 out, 2 att, 3 dout, 4 dpre, 5 dqkv, 6 params.
// Geometry: workgroup (64,1,1); grid over B*T*NH invocations, folded into y.
// Loop bound per invocation: T * (2*HS + 4) + HS, which grows with T: this plain version is
// a reference for tests at small T, and src/gpu/kernel.ts refuses it past the budget.

struct Params { B: u32, T: u32, C: u32, NH: u32 }

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> att: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * 64u;
}

// ---------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.B * p.T * p.NH) { return; }
  let h = i % p.NH;
  let t = (i / p.NH) % p.T;
  let b = i / (p.NH * p.T);
  let HS = p.C / p.NH;
  let C3 = 3u * p.C;
  let scale = inverseSqrt(f32(HS));
  let q = (b * p.T + t) * C3 + h * HS;
  let arow = ((b * p.NH + h) * p.T + t) * p.T;
  var maxv = -3.0e38;
  for (var t2 = 0u; t2 <= t; t2++) {
    let k = (b * p.T + t2) * C3 + p.C + h * HS;
    var s = 0.0;
    for (var j = 0u; j < HS; j++) { s += qkv[q + j] * qkv[k + j]; }
    s *= scale;
    att[arow + t2] = s;
    maxv = max(maxv, s);
  }
  var sum = 0.0;
  for (var t2 = 0u; t2 <= t; t2++) {
    let e = exp(att[arow + t2] - maxv);
    att[arow + t2] = e;
    sum += e;
  }
  let inv = 1.0 / sum;
  for (var t2 = 0u; t2 < p.T; t2++) {
    att[arow + t2] = select(0.0, att[arow + t2] * inv, t2 <= t);
  }
  let o = (b * p.T + t) * p.C + h * HS;
  for (var j = 0u; j < HS; j++) {
    var acc = 0.0;
    for (var t2 = 0u; t2 <= t; t2++) {
      acc += att[arow + t2] * qkv[(b * p.T + t2) * C3 + 2u * p.C + h * HS + j];
    }
    out[o + j] = acc;
  }
}

// ---------------------------------------------------------------------------
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> dpre: array<f32>;
@group(0) @binding(5) var<storage, read_write> dqkv: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn backward_query(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.B * p.T * p.NH) { return; }
  let h = i % p.NH;
  let t = (i / p.NH) % p.T;
  let b = i / (p.NH * p.T);
  let HS = p.C / p.NH;
  let C3 = 3u * p.C;
  let scale = inverseSqrt(f32(HS));
  let arow = ((b * p.NH + h) * p.T + t) * p.T;
  let d = (b * p.T + t) * p.C + h * HS;
  // datt into dpre, then the softmax backward in place.
  var dot_sum = 0.0;
  for (var t2 = 0u; t2 <= t; t2++) {
    let v = (b * p.T + t2) * C3 + 2u * p.C + h * HS;
    var s = 0.0;
    for (var j = 0u; j < HS; j++) { s += dout[d + j] * qkv[v + j]; }
    dpre[arow + t2] = s;
    dot_sum += att[arow + t2] * s;
  }
  for (var t2 = 0u; t2 < p.T; t2++) {
    dpre[arow + t2] = select(0.0, att[arow + t2] * (dpre[arow + t2] - dot_sum), t2 <= t);
  }
  let q = (b * p.T + t) * C3 + h * HS;
  for (var j = 0u; j < HS; j++) {
    var acc = 0.0;
    for (var t2 = 0u; t2 <= t; t2++) {
      acc += dpre[arow + t2] * qkv[(b * p.T + t2) * C3 + p.C + h * HS + j];
    }
    dqkv[q + j] = acc * scale;
  }
}

@compute @workgroup_size(64, 1, 1)
fn backward_kv(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.B * p.T * p.NH) { return; }
  let h = i % p.NH;
  let t2 = (i / p.NH) % p.T;
  let b = i / (p.NH * p.T);
  let HS = p.C / p.NH;
  let C3 = 3u * p.C;
  let scale = inverseSqrt(f32(HS));
  let k = (b * p.T + t2) * C3 + p.C + h * HS;
  for (var j = 0u; j < HS; j++) {
    var dk = 0.0;
    var dv = 0.0;
    for (var t = t2; t < p.T; t++) {
      let a = ((b * p.NH + h) * p.T + t) * p.T + t2;
      dk += dpre[a] * qkv[(b * p.T + t) * C3 + h * HS + j];
      dv += att[a] * dout[(b * p.T + t) * p.C + h * HS + j];
    }
    dqkv[k + j] = dk * scale;
    dqkv[k + p.C + j] = dv;
  }
}
