// flash_attention: causal multi-head attention as FlashAttention-2, tiled, no T x T matrix.
//
// forward:   out[b,t,h,:] = sum_{t2<=t} P(t,t2) v[b,t2,h,:], lse[b,h,t] = log-sum-exp of the
//            scaled scores s(t,t2) = q[t] . k[t2] / sqrt(HS), saved for the backward.
// backward (P = exp(s - lse) recomputed, never stored):
//   delta:   D[b,h,t] = dout[b,t,h,:] . out[b,t,h,:]
//   dq:      dq[t]  = scale * sum_{t2<=t} dS(t,t2) k[t2],  dS = P (dout[t] . v[t2] - D[t])
//   dkv:     dk[t2] = scale * sum_{t>=t2} dS(t,t2) q[t],   dv[t2] = sum_{t>=t2} P(t,t2) dout[t]
//
// Tiling: a workgroup of 64 owns 64 consecutive rows of one (b, h) -- queries in forward and
// dq, keys in dkv -- one row per invocation, held in registers. The other side streams
// through workgroup memory in tiles of BK rows (K|V for forward and dq, Q|dout for dkv),
// loaded by all 64 invocations with consecutive addresses; every invocation then reads the
// same tile element at once (a broadcast on GPUs, one uniform load on CPU adapters).
// The forward takes the max over a whole tile before rescaling (FA2's online softmax).
// dq and dk|dv are separate passes that each compute the scores once: WGSL has no float
// atomics, so FA2's single-pass dq (atomicAdd) would be either racy or non-deterministic.
//
// Split-KV: the key range (forward, dq) or query range (dkv) is cut into chunks of KC rows,
// one dispatch a chunk, in order (src/model/ops.ts picks KC from the loop bound below).
// Dispatch 0 writes; each later one merges into what is there: the forward combines its
// partial softmax with the stored (out, lse) through log-sum-exp, dq and dk|dv add. So the
// combine step needs no partial buffers and the sums keep one fixed order: deterministic.
// Workgroups whose rows cannot see a chunk are not dispatched (p.blk0 skips them).
//
// Rows of the streamed side are taken 4 at a time (scores as a vec4, one rescale per 4 keys):
// four independent dot products per step keep the FMA units busy (1.2-1.5x on llvmpipe
// over one key a step), so BK is a multiple of 4.
//
// Loop bound per invocation (every loop iteration counted, none assumed unrolled), with
// HS4 = ceil(HS/4), NT = KC/BK tiles, L = ceil(BK*HS4/64) staging iterations:
//   forward: NT * (1 + L + (BK/4) * (1 + 2*HS4)) + 2*HS4
//   dq:      NT * (1 + L + (BK/4) * (1 + 2*HS4)) + 6*HS4
//   dkv:     NT * (1 + L + (BK/4) * (1 + 2*HS4)) + 11*HS4
//   delta:   HS
// (src/model/ops.ts computes the same formulas and keeps them under the budget.)
//
// Shapes: qkv/dqkv [B, T, 3C] (q | k | v, head h at channels h*HS..), out/dout [B, T, C],
// lse/delta [B, NH, T]. HS = C / NH at most 128 (GPT-2's is 64); BK * HS4 <= 512.
// Element types: qkv qkv_t, out out_t, dqkv dqkv_t (aliases, f32 or f16 through
// src/gpu/dtype.ts); lse, dout, delta and all arithmetic are f32.
// Bindings: 0 qkv, 1 out, 2 lse, 3 dout, 4 delta, 5 dqkv, 6 params.
// Geometry: forward, dq, dkv: workgroup (64,1,1), grid (row blocks from blk0, B*NH, 1);
// delta: workgroup (64,1,1), grid over B*T*NH invocations, folded into y.

// k0..k1: this dispatch's chunk (keys for forward and dq, queries for dkv); blk0: the first
// row block in the grid; first: 1 for the dispatch that writes instead of merging.
struct Params { B: u32, T: u32, C: u32, NH: u32, k0: u32, k1: u32, blk0: u32, first: u32 }

override HS: u32 = 64u;
override BK: u32 = 32u;

alias qkv_t = f32;
alias out_t = f32;
alias dqkv_t = f32;

@group(0) @binding(0) var<storage, read> qkv: array<qkv_t>;
@group(0) @binding(1) var<storage, read_write> out: array<out_t>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

const WG = 64u;
const MAX_HS4 = 32u;
const NEG = -3.0e38;

var<workgroup> tile_a: array<vec4f, 512>; // [BK][HS4]: k (forward, dq) or q (dkv)
var<workgroup> tile_b: array<vec4f, 512>; // [BK][HS4]: v (forward, dq) or dout (dkv)

fn hs4() -> u32 { return (HS + 3u) / 4u; }
fn q_at(b: u32, t: u32, h: u32) -> u32 { return (b * p.T + t) * 3u * p.C + h * HS; }
fn k_at(b: u32, t: u32, h: u32) -> u32 { return q_at(b, t, h) + p.C; }
fn v_at(b: u32, t: u32, h: u32) -> u32 { return q_at(b, t, h) + 2u * p.C; }
fn o_at(b: u32, t: u32, h: u32) -> u32 { return (b * p.T + t) * p.C + h * HS; }
fn stat_at(b: u32, t: u32, h: u32) -> u32 { return (b * p.NH + h) * p.T + t; }

// Elements c..c+3 of a head's row as a vec4, zero past HS (c is a multiple of 4 below HS).
fn qkv4(base: u32, c: u32) -> vec4f {
  return vec4f(
    f32(qkv[base + c]),
    select(0.0, f32(qkv[base + min(c + 1u, HS - 1u)]), c + 1u < HS),
    select(0.0, f32(qkv[base + min(c + 2u, HS - 1u)]), c + 2u < HS),
    select(0.0, f32(qkv[base + min(c + 3u, HS - 1u)]), c + 3u < HS),
  );
}

fn out4(base: u32, c: u32) -> vec4f {
  return vec4f(
    f32(out[base + c]),
    select(0.0, f32(out[base + min(c + 1u, HS - 1u)]), c + 1u < HS),
    select(0.0, f32(out[base + min(c + 2u, HS - 1u)]), c + 2u < HS),
    select(0.0, f32(out[base + min(c + 3u, HS - 1u)]), c + 3u < HS),
  );
}

fn store_out4(base: u32, c: u32, v: vec4f) {
  out[base + c] = out_t(v.x);
  if (c + 1u < HS) { out[base + c + 1u] = out_t(v.y); }
  if (c + 2u < HS) { out[base + c + 2u] = out_t(v.z); }
  if (c + 3u < HS) { out[base + c + 3u] = out_t(v.w); }
}

// Rows r0..r0+BK of k (or q) into tile_a and of v into tile_b; rows at or past `end` are zero.
fn stage_kv(b: u32, h: u32, r0: u32, end: u32, l: u32) {
  let n4 = hs4();
  for (var e = l; e < BK * n4; e += WG) {
    let r = r0 + e / n4;
    let c = 4u * (e % n4);
    var x = vec4f(0.0);
    var y = vec4f(0.0);
    if (r < end) {
      x = qkv4(k_at(b, r, h), c);
      y = qkv4(v_at(b, r, h), c);
    }
    tile_a[e] = x;
    tile_b[e] = y;
  }
}

// ---------------------------------------------------------------------------
@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32) {
  let n4 = hs4();
  let b = wid.y / p.NH;
  let h = wid.y % p.NH;
  let row0 = (p.blk0 + wid.x) * WG;
  let t = row0 + l; // may be >= T in the last block: computed on row T-1, never stored
  let tc = min(t, p.T - 1u);
  let scale = inverseSqrt(f32(HS));
  var q: array<vec4f, MAX_HS4>;
  let qa = q_at(b, tc, h);
  for (var i = 0u; i < n4; i++) { q[i] = qkv4(qa, 4u * i) * scale; }
  var acc: array<vec4f, MAX_HS4>;
  var m = NEG;
  var lsum = 0.0;
  let kend = min(p.k1, min(p.T, row0 + WG)); // uniform: the block's last row + 1
  for (var kt = p.k0; kt < kend; kt += BK) {
    workgroupBarrier();
    stage_kv(b, h, kt, kend, l);
    workgroupBarrier();
    for (var j = 0u; j < BK; j += 4u) {
      var d = vec4f(0.0);
      for (var i = 0u; i < n4; i++) {
        let qi = q[i];
        d += vec4f(
          dot(qi, tile_a[j * n4 + i]),
          dot(qi, tile_a[(j + 1u) * n4 + i]),
          dot(qi, tile_a[(j + 2u) * n4 + i]),
          dot(qi, tile_a[(j + 3u) * n4 + i]),
        );
      }
      let kk = vec4u(kt + j) + vec4u(0u, 1u, 2u, 3u);
      let ok = (kk <= vec4u(tc)) & (kk < vec4u(kend));
      let sv = select(vec4f(NEG), d, ok);
      let mt = max(m, max(max(sv.x, sv.y), max(sv.z, sv.w)));
      let c = exp(m - mt);
      let w = select(vec4f(0.0), exp(sv - mt), ok);
      lsum = lsum * c + (w.x + w.y) + (w.z + w.w);
      for (var i = 0u; i < n4; i++) {
        acc[i] = acc[i] * c + w.x * tile_b[j * n4 + i] + w.y * tile_b[(j + 1u) * n4 + i] +
          w.z * tile_b[(j + 2u) * n4 + i] + w.w * tile_b[(j + 3u) * n4 + i];
      }
      m = mt;
    }
  }
  // A row before this chunk saw no key here (lsum = 0): what earlier chunks wrote stands.
  if (t >= p.T || lsum == 0.0) { return; }
  let o = o_at(b, t, h);
  let st = stat_at(b, t, h);
  let lse_c = m + log(lsum);
  var lse_new = lse_c;
  var w_old = 0.0;
  var w_new = 1.0 / lsum;
  if (p.first == 0u) {
    let lse_old = lse[st];
    let mx = max(lse_old, lse_c);
    lse_new = mx + log(exp(lse_old - mx) + exp(lse_c - mx));
    w_old = exp(lse_old - lse_new);
    w_new = exp(lse_c - lse_new) / lsum;
  }
  for (var i = 0u; i < n4; i++) {
    var v = acc[i] * w_new;
    if (p.first == 0u) { v += out4(o, 4u * i) * w_old; }
    store_out4(o, 4u * i, v);
  }
  lse[st] = lse_new;
}

// ---------------------------------------------------------------------------
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> delta: array<f32>;
@group(0) @binding(5) var<storage, read_write> dqkv: array<dqkv_t>;

fn dout4(base: u32, c: u32) -> vec4f {
  return vec4f(
    dout[base + c],
    select(0.0, dout[base + min(c + 1u, HS - 1u)], c + 1u < HS),
    select(0.0, dout[base + min(c + 2u, HS - 1u)], c + 2u < HS),
    select(0.0, dout[base + min(c + 3u, HS - 1u)], c + 3u < HS),
  );
}

// dqkv[base+c..] = v, or += v when `add`.
fn store_d4(base: u32, c: u32, v: vec4f, add: bool) {
  for (var e = 0u; e < 4u; e++) {
    if (c + e < HS) {
      var x = v[e];
      if (add) { x += f32(dqkv[base + c + e]); }
      dqkv[base + c + e] = dqkv_t(x);
    }
  }
}

@compute @workgroup_size(64, 1, 1)
fn backward_delta(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 64u;
  if (i >= p.B * p.T * p.NH) { return; }
  let b = i / (p.NH * p.T);
  let t = (i / p.NH) % p.T;
  let h = i % p.NH;
  let o = o_at(b, t, h);
  var d = 0.0;
  for (var j = 0u; j < HS; j++) { d += dout[o + j] * f32(out[o + j]); }
  delta[stat_at(b, t, h)] = d;
}

@compute @workgroup_size(64, 1, 1)
fn backward_dq(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32) {
  let n4 = hs4();
  let b = wid.y / p.NH;
  let h = wid.y % p.NH;
  let row0 = (p.blk0 + wid.x) * WG;
  let t = row0 + l;
  let tc = min(t, p.T - 1u);
  let scale = inverseSqrt(f32(HS));
  var q: array<vec4f, MAX_HS4>;
  var g: array<vec4f, MAX_HS4>; // dout[t]
  let qa = q_at(b, tc, h);
  let oa = o_at(b, tc, h);
  for (var i = 0u; i < n4; i++) {
    q[i] = qkv4(qa, 4u * i) * scale;
    g[i] = dout4(oa, 4u * i);
  }
  let st = stat_at(b, tc, h);
  let lse_t = lse[st];
  let d_t = delta[st];
  var dq: array<vec4f, MAX_HS4>;
  let kend = min(p.k1, min(p.T, row0 + WG));
  for (var kt = p.k0; kt < kend; kt += BK) {
    workgroupBarrier();
    stage_kv(b, h, kt, kend, l);
    workgroupBarrier();
    for (var j = 0u; j < BK; j += 4u) {
      var sv = vec4f(0.0);
      var dp = vec4f(0.0);
      for (var i = 0u; i < n4; i++) {
        let qi = q[i];
        let gi = g[i];
        sv += vec4f(
          dot(qi, tile_a[j * n4 + i]),
          dot(qi, tile_a[(j + 1u) * n4 + i]),
          dot(qi, tile_a[(j + 2u) * n4 + i]),
          dot(qi, tile_a[(j + 3u) * n4 + i]),
        );
        dp += vec4f(
          dot(gi, tile_b[j * n4 + i]),
          dot(gi, tile_b[(j + 1u) * n4 + i]),
          dot(gi, tile_b[(j + 2u) * n4 + i]),
          dot(gi, tile_b[(j + 3u) * n4 + i]),
        );
      }
      let kk = vec4u(kt + j) + vec4u(0u, 1u, 2u, 3u);
      let ok = (kk <= vec4u(tc)) & (kk < vec4u(kend));
      let ds = select(vec4f(0.0), exp(sv - lse_t) * (dp - d_t), ok);
      for (var i = 0u; i < n4; i++) {
        dq[i] += ds.x * tile_a[j * n4 + i] + ds.y * tile_a[(j + 1u) * n4 + i] +
          ds.z * tile_a[(j + 2u) * n4 + i] + ds.w * tile_a[(j + 3u) * n4 + i];
      }
    }
  }
  if (t >= p.T) { return; }
  for (var i = 0u; i < n4; i++) { store_d4(qa, 4u * i, dq[i] * scale, p.first == 0u); }
}

// Rows r0..r0+BK of q into tile_a and of dout into tile_b; rows at or past `end` are zero.
fn stage_qdo(b: u32, h: u32, r0: u32, end: u32, l: u32) {
  let n4 = hs4();
  for (var e = l; e < BK * n4; e += WG) {
    let r = r0 + e / n4;
    let c = 4u * (e % n4);
    var x = vec4f(0.0);
    var y = vec4f(0.0);
    if (r < end) {
      x = qkv4(q_at(b, r, h), c);
      y = dout4(o_at(b, r, h), c);
    }
    tile_a[e] = x;
    tile_b[e] = y;
  }
}

@compute @workgroup_size(64, 1, 1)
fn backward_dkv(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32) {
  let n4 = hs4();
  let b = wid.y / p.NH;
  let h = wid.y % p.NH;
  let row0 = (p.blk0 + wid.x) * WG; // key rows
  let t2 = row0 + l;
  let tc = min(t2, p.T - 1u);
  let scale = inverseSqrt(f32(HS));
  var k: array<vec4f, MAX_HS4>;
  var v: array<vec4f, MAX_HS4>;
  let ka = k_at(b, tc, h);
  for (var i = 0u; i < n4; i++) {
    k[i] = qkv4(ka, 4u * i) * scale;
    v[i] = qkv4(ka + p.C, 4u * i);
  }
  var dk: array<vec4f, MAX_HS4>;
  var dv: array<vec4f, MAX_HS4>;
  let qend = min(p.k1, p.T);
  for (var qt = max(p.k0, row0); qt < qend; qt += BK) { // queries before row0 see no key here
    workgroupBarrier();
    stage_qdo(b, h, qt, qend, l);
    workgroupBarrier();
    for (var j = 0u; j < BK; j += 4u) {
      var sv = vec4f(0.0);
      var dp = vec4f(0.0);
      for (var i = 0u; i < n4; i++) {
        let ki = k[i];
        let vi = v[i];
        sv += vec4f(
          dot(ki, tile_a[j * n4 + i]),
          dot(ki, tile_a[(j + 1u) * n4 + i]),
          dot(ki, tile_a[(j + 2u) * n4 + i]),
          dot(ki, tile_a[(j + 3u) * n4 + i]),
        );
        dp += vec4f(
          dot(vi, tile_b[j * n4 + i]),
          dot(vi, tile_b[(j + 1u) * n4 + i]),
          dot(vi, tile_b[(j + 2u) * n4 + i]),
          dot(vi, tile_b[(j + 3u) * n4 + i]),
        );
      }
      let tq = vec4u(qt + j) + vec4u(0u, 1u, 2u, 3u);
      let ok = (tq >= vec4u(tc)) & (tq < vec4u(qend));
      let st = vec4u(stat_at(b, min(tq.x, p.T - 1u), h), stat_at(b, min(tq.y, p.T - 1u), h),
        stat_at(b, min(tq.z, p.T - 1u), h), stat_at(b, min(tq.w, p.T - 1u), h));
      let pr = select(vec4f(0.0), exp(sv - vec4f(lse[st.x], lse[st.y], lse[st.z], lse[st.w])), ok);
      let ds = pr * (dp - vec4f(delta[st.x], delta[st.y], delta[st.z], delta[st.w]));
      for (var i = 0u; i < n4; i++) {
        dv[i] += pr.x * tile_b[j * n4 + i] + pr.y * tile_b[(j + 1u) * n4 + i] +
          pr.z * tile_b[(j + 2u) * n4 + i] + pr.w * tile_b[(j + 3u) * n4 + i];
        dk[i] += ds.x * tile_a[j * n4 + i] + ds.y * tile_a[(j + 1u) * n4 + i] +
          ds.z * tile_a[(j + 2u) * n4 + i] + ds.w * tile_a[(j + 3u) * n4 + i];
      }
    }
  }
  if (t2 >= p.T) { return; }
  // KC is a multiple of 64, so a key block lies inside one chunk: the first chunk that
  // holds queries at or after its keys is the one that starts at or before row0.
  let add = row0 < p.k0;
  for (var i = 0u; i < n4; i++) {
    store_d4(ka, 4u * i, dk[i] * scale, add);
    store_d4(ka + p.C, 4u * i, dv[i], add);
  }
}
