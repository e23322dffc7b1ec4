// flash_attention: causal multi-head attention as FlashAttention-2, tiled, no T x T matrix.
//
// forward:   out[b,t,h,:] = sum_{t2<=t} P(t,t2) v[b,t2,h,:], lse[b,h,t] = log-sum-exp of the
//            scaled scores s(t,t2) = q[t] . k[t2] / sqrt(HS), saved for the backward.
// backward (P = exp(s - lse) recomputed, never stored):
//   delta:   D[b,h,t] = dout[b,t,h,:] . out[b,t,h,:]
//   dq:      dq[t]  = scale * sum_{t2<=t} dS(t,t2) k[t2],  dS = P (dout[t] . v[t2] - D[t])
//   dkv:     dk[t2] = scale * sum_{t>=t2} dS(t,t2) q[t],   dv[t2] = sum_{t>=t2} P(t,t2) dout[t]
//
// Tiling: a workgroup of 64 owns 64 * ROWS consecutive rows of one (b, h) -- queries in
// forward and dq, keys in dkv -- ROWS rows per invocation (rows l, l + 64, ...), held in
// registers. The other side streams through workgroup memory in tiles of BK rows (K|V for
// forward and dq, Q|dout for dkv), loaded by all 64 invocations with consecutive addresses;
// every invocation then reads the same tile element at once (a broadcast on GPUs).
// The forward's online softmax rescales once per 4 keys, with the max over those 4.
// dq and dk|dv are separate passes that each compute the scores once: WGSL has no float
// atomics, so FA2's single-pass dq (atomicAdd) would be either racy or non-deterministic.
//
// Split-KV: the key range (forward, dq) or query range (dkv) is cut into chunks of KC rows,
// one dispatch a chunk, in order (src/model/ops/attention.ts picks KC from the loop bound below).
// Dispatch 0 writes; each later one merges into what is there: the forward combines its
// partial softmax with the stored (out, lse) through log-sum-exp, dq and dk|dv add. So the
// combine step needs no partial buffers and the sums keep one fixed order: deterministic.
// Workgroups whose rows cannot see a chunk are not dispatched (p.blk0 skips them).
//
// Rows of the streamed side are taken 4 at a time (scores as a vec4, one rescale per 4 keys):
// four independent dot products per step keep the FMA units busy (1.2-1.5x on llvmpipe
// over one key a step), so BK is a multiple of 4. ROWS (1, 2 or 4) is register blocking:
// each element read from workgroup memory feeds ROWS rows. CPU adapters run 4 (llvmpipe
// pays for every memory load; 1.9x over 1 there), GPUs 1 (HS4 * ROWS vec4 registers of
// each kind per invocation; the autotuner is to choose per device). KC is a multiple of
// 64 * ROWS, so a row block never straddles two chunks.
//
// Loop bound per invocation (every loop iteration counted, none assumed unrolled), with
// HS4 = ceil(HS/4), NT = KC/BK tiles, L = ceil(BK*HS4/64) staging iterations:
//   all three: NT * (1 + L + (BK/4) * (1 + 2*HS4*(1 + R) + R)) + R * (1 + E*HS4)
//   with R = ROWS and E = 2 (forward), 6 (dq), 11 (dkv) for the loads and stores of a row
//   delta:   HS
// (src/model/ops/attention.ts computes the same formulas and keeps them under the budget.)
//
// Shapes: qkv/dqkv [B, T, 3C] (q | k | v, head h at channels h*HS..), out/dout [B, T, C],
// lse/delta [B, NH, T]. HS = C / NH at most 128 (GPT-2's is 64); BK * HS4 <= 512.
// Element types: qkv qkv_t, out out_t, dqkv dqkv_t (f32 or f16, from the bound buffers); lse,
// dout, delta and all arithmetic are f32.
// Bindings (qkv, out, lse, dout, delta, dqkv): declared in src/model/ops/attention.ts.
// Geometry: forward, dq, dkv: workgroup (64,1,1), grid (blocks of 64*ROWS rows from blk0,
// B*NH, 1);
// delta: workgroup (64,1,1), grid over B*T*NH invocations, folded into y.

// Uniforms (declared in src/model/ops/attention.ts): p.B, p.T, p.C, p.NH; p.k0..p.k1: this
// dispatch's chunk (keys for forward and dq, queries for dkv); p.blk0: the first row block in
// the grid; p.first: 1 for the dispatch that writes instead of merging. Override constants HS,
// BK, ROWS (defaults 64, 32, 1).

const WG = 64u;
const MAX_HS4 = 32u;
const MAX_ROWS = 4u;
const NEG = -3.0e38;

var<workgroup> tile_a: array<vec4f, 512>; // [BK][HS4]: k (forward, dq) or q (dkv)
var<workgroup> tile_b: array<vec4f, 512>; // [BK][HS4]: v (forward, dq) or dout (dkv)

fn hs4() -> u32 { return (HS + 3u) / 4u; }
fn q_at(b: u32, t: u32, h: u32) -> u32 { return (b * p.T + t) * 3u * p.C + h * HS; }
fn k_at(b: u32, t: u32, h: u32) -> u32 { return q_at(b, t, h) + p.C; }
fn v_at(b: u32, t: u32, h: u32) -> u32 { return q_at(b, t, h) + 2u * p.C; }
fn o_at(b: u32, t: u32, h: u32) -> u32 { return (b * p.T + t) * p.C + h * HS; }
fn stat_at(b: u32, t: u32, h: u32) -> u32 { return (b * p.NH + h) * p.T + t; }

// A function-scope `var` declared inside a loop is initialised explicitly below: naga does
// not re-zero a bare `var x: T;` on each iteration (found as wrong results on llvmpipe).
alias Rows4 = array<vec4f, MAX_ROWS>;
alias RowsHS = array<array<vec4f, MAX_HS4>, MAX_ROWS>;

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

// Tile rows j..j+3 at vec4 column i, as the columns of a matrix: x * m gives the four dot
// products of x with them, m * w their sum weighted by w.
fn rows_a(j: u32, i: u32) -> mat4x4f {
  let n4 = hs4();
  return mat4x4f(tile_a[j * n4 + i], tile_a[(j + 1u) * n4 + i], tile_a[(j + 2u) * n4 + i],
    tile_a[(j + 3u) * n4 + i]);
}

fn rows_b(j: u32, i: u32) -> mat4x4f {
  let n4 = hs4();
  return mat4x4f(tile_b[j * n4 + i], tile_b[(j + 1u) * n4 + i], tile_b[(j + 2u) * n4 + i],
    tile_b[(j + 3u) * n4 + i]);
}

// Adds to sa[r] the dot products of x[r] with tile_a's rows j..j+3 and to sb[r] those of y[r]
// with tile_b's: the scores and dout . v (dq), or the scores and v . dout (dkv).
fn tile_dots(
  x: ptr<function, RowsHS>,
  y: ptr<function, RowsHS>,
  j: u32,
  sa: ptr<function, Rows4>,
  sb: ptr<function, Rows4>,
) {
  for (var i = 0u; i < hs4(); i++) {
    let ma = rows_a(j, i);
    let mb = rows_b(j, i);
    for (var r = 0u; r < ROWS; r++) {
      (*sa)[r] += (*x)[r][i] * ma;
      (*sb)[r] += (*y)[r][i] * mb;
    }
  }
}

// ---------------------------------------------------------------------------
@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32) {
  let n4 = hs4();
  let b = wid.y / p.NH;
  let h = wid.y % p.NH;
  let row0 = (p.blk0 + wid.x) * ROWS * WG;
  let scale = inverseSqrt(f32(HS));
  var t: array<u32, MAX_ROWS>;
  var q: RowsHS;
  var acc: RowsHS;
  var m: array<f32, MAX_ROWS>;
  var lsum: array<f32, MAX_ROWS>;
  for (var r = 0u; r < ROWS; r++) {
    t[r] = row0 + r * WG + l; // may be >= T in the last block: computed on row T-1, not stored
    let qa = q_at(b, min(t[r], p.T - 1u), h);
    for (var i = 0u; i < n4; i++) { q[r][i] = qkv4(qa, 4u * i) * scale; }
    m[r] = NEG;
  }
  let kend = min(p.k1, min(p.T, row0 + ROWS * WG)); // uniform: the block's last row + 1
  for (var kt = p.k0; kt < kend; kt += BK) {
    workgroupBarrier();
    stage_kv(b, h, kt, kend, l);
    workgroupBarrier();
    for (var j = 0u; j < BK; j += 4u) {
      var d = Rows4();
      for (var i = 0u; i < n4; i++) {
        let kj = rows_a(j, i);
        for (var r = 0u; r < ROWS; r++) { d[r] += q[r][i] * kj; }
      }
      let kk = vec4u(kt + j) + vec4u(0u, 1u, 2u, 3u);
      var c = array<f32, MAX_ROWS>();
      var w = Rows4();
      for (var r = 0u; r < ROWS; r++) {
        let ok = (kk <= vec4u(min(t[r], p.T - 1u))) & (kk < vec4u(kend));
        let s = select(vec4f(NEG), d[r], ok);
        let mt = max(m[r], max(max(s.x, s.y), max(s.z, s.w)));
        c[r] = exp(m[r] - mt); // rescales what was accumulated under the old max
        w[r] = select(vec4f(0.0), exp(s - mt), ok);
        lsum[r] = lsum[r] * c[r] + (w[r].x + w[r].y) + (w[r].z + w[r].w);
        m[r] = mt;
      }
      for (var i = 0u; i < n4; i++) {
        let vj = rows_b(j, i);
        for (var r = 0u; r < ROWS; r++) { acc[r][i] = acc[r][i] * c[r] + vj * w[r]; }
      }
    }
  }
  for (var r = 0u; r < ROWS; r++) {
    // A row before this chunk saw no key here (lsum = 0): what earlier chunks wrote stands.
    if (t[r] >= p.T || lsum[r] == 0.0) { continue; }
    let o = o_at(b, t[r], h);
    let st = stat_at(b, t[r], h);
    let lse_c = m[r] + log(lsum[r]);
    var lse_new = lse_c;
    var w_old = 0.0;
    var w_new = 1.0 / lsum[r];
    if (p.first == 0u) {
      let lse_old = lse[st];
      let mx = max(lse_old, lse_c);
      lse_new = mx + log(exp(lse_old - mx) + exp(lse_c - mx));
      w_old = exp(lse_old - lse_new);
      w_new = exp(lse_c - lse_new) / lsum[r];
    }
    for (var i = 0u; i < n4; i++) {
      var v = acc[r][i] * w_new;
      if (p.first == 0u) { v += out4(o, 4u * i) * w_old; }
      store_out4(o, 4u * i, v);
    }
    lse[st] = lse_new;
  }
}

// ---------------------------------------------------------------------------
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
  let row0 = (p.blk0 + wid.x) * ROWS * WG;
  let scale = inverseSqrt(f32(HS));
  var t: array<u32, MAX_ROWS>;
  var q: RowsHS;
  var g: RowsHS; // dout[t]
  var dq: RowsHS;
  var lse_t: array<f32, MAX_ROWS>;
  var d_t: array<f32, MAX_ROWS>;
  for (var r = 0u; r < ROWS; r++) {
    t[r] = row0 + r * WG + l;
    let tc = min(t[r], p.T - 1u);
    let qa = q_at(b, tc, h);
    let oa = o_at(b, tc, h);
    for (var i = 0u; i < n4; i++) {
      q[r][i] = qkv4(qa, 4u * i) * scale;
      g[r][i] = dout4(oa, 4u * i);
    }
    let st = stat_at(b, tc, h);
    lse_t[r] = lse[st];
    d_t[r] = delta[st];
  }
  let kend = min(p.k1, min(p.T, row0 + ROWS * WG));
  for (var kt = p.k0; kt < kend; kt += BK) {
    workgroupBarrier();
    stage_kv(b, h, kt, kend, l);
    workgroupBarrier();
    for (var j = 0u; j < BK; j += 4u) {
      var sv = Rows4();
      var dp = Rows4();
      tile_dots(&q, &g, j, &sv, &dp);
      let kk = vec4u(kt + j) + vec4u(0u, 1u, 2u, 3u);
      var ds = Rows4();
      for (var r = 0u; r < ROWS; r++) {
        let ok = (kk <= vec4u(min(t[r], p.T - 1u))) & (kk < vec4u(kend));
        ds[r] = select(vec4f(0.0), exp(sv[r] - lse_t[r]) * (dp[r] - d_t[r]), ok);
      }
      for (var i = 0u; i < n4; i++) {
        let kj = rows_a(j, i);
        for (var r = 0u; r < ROWS; r++) { dq[r][i] += kj * ds[r]; }
      }
    }
  }
  for (var r = 0u; r < ROWS; r++) {
    if (t[r] >= p.T) { continue; }
    let qa = q_at(b, t[r], h);
    for (var i = 0u; i < n4; i++) { store_d4(qa, 4u * i, dq[r][i] * scale, p.first == 0u); }
  }
}

// Rows r0..r0+BK of q into tile_a and of dout into tile_b; rows at or past `end` are zero.
// (Apart from stage_kv: a shared function would make the forward use `dout` statically, and
// its "auto" layout would then need binding 3.)
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
  let row0 = (p.blk0 + wid.x) * ROWS * WG; // key rows
  let scale = inverseSqrt(f32(HS));
  var t2: array<u32, MAX_ROWS>;
  var k: RowsHS;
  var v: RowsHS;
  var dk: RowsHS;
  var dv: RowsHS;
  for (var r = 0u; r < ROWS; r++) {
    t2[r] = row0 + r * WG + l;
    let ka = k_at(b, min(t2[r], p.T - 1u), h);
    for (var i = 0u; i < n4; i++) {
      k[r][i] = qkv4(ka, 4u * i) * scale;
      v[r][i] = qkv4(ka + p.C, 4u * i);
    }
  }
  let qend = min(p.k1, p.T);
  for (var qt = max(p.k0, row0); qt < qend; qt += BK) { // queries before row0 see no key here
    workgroupBarrier();
    stage_qdo(b, h, qt, qend, l);
    workgroupBarrier();
    for (var j = 0u; j < BK; j += 4u) {
      var sv = Rows4();
      var dp = Rows4();
      tile_dots(&k, &v, j, &sv, &dp);
      let tq = vec4u(qt + j) + vec4u(0u, 1u, 2u, 3u);
      let live = tq < vec4u(qend);
      let tqc = min(tq, vec4u(p.T - 1u));
      let st = vec4u(stat_at(b, tqc.x, h), stat_at(b, tqc.y, h), stat_at(b, tqc.z, h),
        stat_at(b, tqc.w, h));
      let lse4 = vec4f(lse[st.x], lse[st.y], lse[st.z], lse[st.w]);
      let d4 = vec4f(delta[st.x], delta[st.y], delta[st.z], delta[st.w]);
      var pr = Rows4();
      var ds = Rows4();
      for (var r = 0u; r < ROWS; r++) {
        let ok = (tq >= vec4u(min(t2[r], p.T - 1u))) & live;
        pr[r] = select(vec4f(0.0), exp(sv[r] - lse4), ok);
        ds[r] = pr[r] * (dp[r] - d4);
      }
      for (var i = 0u; i < n4; i++) {
        let qj = rows_a(j, i);
        let gj = rows_b(j, i);
        for (var r = 0u; r < ROWS; r++) {
          dv[r][i] += gj * pr[r];
          dk[r][i] += qj * ds[r];
        }
      }
    }
  }
  // KC is a multiple of 64 * ROWS, so a key block lies inside one chunk: the first chunk that
  // holds queries at or after its keys is the one that starts at or before row0.
  let add = row0 < p.k0;
  for (var r = 0u; r < ROWS; r++) {
    if (t2[r] >= p.T) { continue; }
    let ka = k_at(b, t2[r], h);
    for (var i = 0u; i < n4; i++) {
      store_d4(ka, 4u * i, dk[r][i] * scale, add);
      store_d4(ka + p.C, 4u * i, dv[r][i], add);
    }
  }
}
