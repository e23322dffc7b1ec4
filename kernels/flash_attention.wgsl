// flash_attention: causal multi-head attention that never stores a T x T matrix.
//
// forward:   out[b,t,h,:] = sum_{t2<=t} P(t,t2) v[b,t2,h,:] with an online softmax
//            (running max and sum, rescaling the accumulator), and lse[b,h,t] = log-sum-exp
//            of the scaled scores s(t,t2) = q[t] . k[t2] / sqrt(HS), saved for the backward.
// backward (FlashAttention-2, recomputing P = exp(s - lse) instead of storing it):
//   delta:   D[b,h,t] = dout[b,t,h,:] . out[b,t,h,:]
//   dq:      dq[t] = scale * sum_{t2<=t} P(t,t2) (dout[t] . v[t2] - D[t]) k[t2]
//   dkv:     dk[t2] = scale * sum_{t>=t2} P(t,t2) (dout[t] . v[t2] - D[t]) q[t]
//            dv[t2] = sum_{t>=t2} P(t,t2) dout[t]
// Each invocation owns one row (a query for forward/dq, a key for dkv), so every sum is
// computed in one place: deterministic, no atomics. Memory beyond q|k|v and out: lse and D,
// [B, NH, T] each.
//
// Shapes: qkv/dqkv [B, T, 3C] (q | k | v, head h at channels h*HS..), out/dout [B, T, C].
// HS = C / NH must be at most 128 (GPT-2's is 64).
// Element types: qkv qkv_t, out out_t, dqkv dqkv_t (aliases, f32 or f16 through
// src/gpu/dtype.ts); lse, dout, delta and all arithmetic are f32.
// Bindings: 0 qkv, 1 out, 2 lse, 3 dout, 4 delta, 5 dqkv, 6 params.
// Geometry: workgroup (64,1,1); grid over B*T*NH invocations, folded into y.

struct Params { B: u32, T: u32, C: u32, NH: u32 }

alias qkv_t = f32;
alias out_t = f32;
alias dqkv_t = f32;

@group(0) @binding(0) var<storage, read> qkv: array<qkv_t>;
@group(0) @binding(1) var<storage, read_write> out: array<out_t>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

const MAX_HS = 128u;

struct Row { b: u32, t: u32, h: u32, valid: bool }

fn row_of(gid: vec3u, nwg: vec3u) -> Row {
  let i = gid.x + gid.y * nwg.x * 64u;
  return Row(i / (p.NH * p.T), (i / p.NH) % p.T, i % p.NH, i < p.B * p.T * p.NH);
}

fn q_at(b: u32, t: u32, h: u32) -> u32 { return (b * p.T + t) * 3u * p.C + h * (p.C / p.NH); }
fn k_at(b: u32, t: u32, h: u32) -> u32 { return q_at(b, t, h) + p.C; }
fn v_at(b: u32, t: u32, h: u32) -> u32 { return q_at(b, t, h) + 2u * p.C; }
fn o_at(b: u32, t: u32, h: u32) -> u32 { return (b * p.T + t) * p.C + h * (p.C / p.NH); }
fn stat_at(b: u32, t: u32, h: u32) -> u32 { return (b * p.NH + h) * p.T + t; }

// ---------------------------------------------------------------------------
@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = row_of(gid, nwg);
  if (!r.valid) { return; }
  let HS = p.C / p.NH;
  let scale = inverseSqrt(f32(HS));
  let q = q_at(r.b, r.t, r.h);
  var acc: array<f32, MAX_HS>;
  var m = -3.0e38;
  var l = 0.0;
  for (var t2 = 0u; t2 <= r.t; t2++) {
    let k = k_at(r.b, t2, r.h);
    var s = 0.0;
    for (var j = 0u; j < HS; j++) { s += f32(qkv[q + j]) * f32(qkv[k + j]); }
    s *= scale;
    let m_new = max(m, s);
    let c = exp(m - m_new); // rescales what was accumulated under the old max
    let w = exp(s - m_new);
    l = l * c + w;
    let v = v_at(r.b, t2, r.h);
    for (var j = 0u; j < HS; j++) { acc[j] = acc[j] * c + w * f32(qkv[v + j]); }
    m = m_new;
  }
  let o = o_at(r.b, r.t, r.h);
  for (var j = 0u; j < HS; j++) { out[o + j] = out_t(acc[j] / l); }
  lse[stat_at(r.b, r.t, r.h)] = m + log(l);
}

// ---------------------------------------------------------------------------
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> delta: array<f32>;
@group(0) @binding(5) var<storage, read_write> dqkv: array<dqkv_t>;

@compute @workgroup_size(64, 1, 1)
fn backward_delta(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = row_of(gid, nwg);
  if (!r.valid) { return; }
  let o = o_at(r.b, r.t, r.h);
  var d = 0.0;
  for (var j = 0u; j < p.C / p.NH; j++) { d += dout[o + j] * f32(out[o + j]); }
  delta[stat_at(r.b, r.t, r.h)] = d;
}

// P(t, t2) and dS(t, t2) = P (dout[t] . v[t2] - D[t]), recomputed from q, k, v.
fn probs(b: u32, t: u32, t2: u32, h: u32, scale: f32) -> vec2f {
  let HS = p.C / p.NH;
  let q = q_at(b, t, h);
  let k = k_at(b, t2, h);
  let v = v_at(b, t2, h);
  let o = o_at(b, t, h);
  var s = 0.0;
  var dp = 0.0;
  for (var j = 0u; j < HS; j++) {
    s += f32(qkv[q + j]) * f32(qkv[k + j]);
    dp += dout[o + j] * f32(qkv[v + j]);
  }
  let st = stat_at(b, t, h);
  let pr = exp(s * scale - lse[st]);
  return vec2f(pr, pr * (dp - delta[st]));
}

@compute @workgroup_size(64, 1, 1)
fn backward_dq(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = row_of(gid, nwg);
  if (!r.valid) { return; }
  let HS = p.C / p.NH;
  let scale = inverseSqrt(f32(HS));
  var acc: array<f32, MAX_HS>;
  for (var t2 = 0u; t2 <= r.t; t2++) {
    let ds = probs(r.b, r.t, t2, r.h, scale).y;
    let k = k_at(r.b, t2, r.h);
    for (var j = 0u; j < HS; j++) { acc[j] += ds * f32(qkv[k + j]); }
  }
  let q = q_at(r.b, r.t, r.h);
  for (var j = 0u; j < HS; j++) { dqkv[q + j] = dqkv_t(acc[j] * scale); }
}

@compute @workgroup_size(64, 1, 1)
fn backward_dkv(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = row_of(gid, nwg); // r.t is the key position t2 here
  if (!r.valid) { return; }
  let HS = p.C / p.NH;
  let scale = inverseSqrt(f32(HS));
  var dk: array<f32, MAX_HS>;
  var dv: array<f32, MAX_HS>;
  for (var t = r.t; t < p.T; t++) {
    let pd = probs(r.b, t, r.t, r.h, scale);
    let q = q_at(r.b, t, r.h);
    let o = o_at(r.b, t, r.h);
    for (var j = 0u; j < HS; j++) {
      dk[j] += pd.y * f32(qkv[q + j]);
      dv[j] += pd.x * dout[o + j];
    }
  }
  let k = k_at(r.b, r.t, r.h);
  for (var j = 0u; j < HS; j++) {
    dqkv[k + j] = dqkv_t(dk[j] * scale);
    dqkv[k + p.C + j] = dqkv_t(dv[j]);
  }
}
