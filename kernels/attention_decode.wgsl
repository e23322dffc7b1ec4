// attention_decode: causal attention of one new token (position t) over a KV cache,
// split over the cache as in flash-decoding.
//
//   out[h,:] = sum_{t2<=t} softmax_t2(q[h,:] . k[t2,h,:] / sqrt(HS)) v[t2,h,:]
//
// partial: a workgroup owns DK = 256 cache rows of one head (grid (splits, NH)): the
//          invocations score a row each (4 rows apiece), the workgroup reduces the max and
//          the sum of exponentials (wg_max, wg_sum: kernels/reduce_tree.wgsl or
//          reduce_subgroup.wgsl, put after this text), then each invocation sums the
//          weighted values of one channel over the chunk. It writes the chunk's
//          unnormalised output, its max and its sum to `partial`. Chunks past t return.
// combine: one workgroup a head; each invocation merges one channel of the chunks 0..t/DK
//          through their maxima (the log-sum-exp trick), in order: deterministic.
//
// Loop bound per invocation: partial DK/64 * (HS + 2) + the two reductions' (2 * 64 at most)
// + ceil(HS/64) * DK (= 648 for HS = 64); combine ceil(HS/64) * 2 * (t/DK + 1) (t < maxT, checked in src/model/ops/attention_decode.ts).
//
// Shapes: q1 [3C] (the new token's q | k | v; only q is read), cache [maxT, 3C] (rows 0..t
// hold q | k | v of every position, row t included), out [C], partial [NH, S, HS + 2] with
// S = ceil(maxT / DK). HS = C / NH at most 128.
// Element types: q1 and cache qkv_t, out out_t (f32 or f16, from the bound buffers); partial
// and the sums are f32.
// Bindings, uniforms (p.t, rewritten before each token, p.C, p.NH, p.S) and HS: declared in
// src/model/ops/attention_decode.ts.
// Geometry: workgroup (64,1,1); partial grid (S, NH, 1), combine grid (NH, 1, 1).

const WG = 64u;
const DK = 256u;
const NEG = -3.0e38;

var<workgroup> w: array<f32, DK>; // scores, then their exponentials
fn slot(h: u32, s: u32) -> u32 { return (h * p.S + s) * (HS + 2u); }

@compute @workgroup_size(64, 1, 1)
fn partial_chunk(@builtin(workgroup_id) wid: vec3u, lane: Lane) {
  let l = lane.lid;
  let s = wid.x;
  let h = wid.y;
  let k0 = s * DK;
  if (k0 > p.t) { return; } // uniform per workgroup
  let n = min(p.t + 1u, k0 + DK) - k0;
  let C3 = 3u * p.C;
  let scale = inverseSqrt(f32(HS));
  var mx = NEG;
  for (var j = l; j < DK; j += WG) {
    var sc = NEG;
    if (j < n) {
      let k = (k0 + j) * C3 + p.C + h * HS;
      var d = 0.0;
      for (var c = 0u; c < HS; c++) { d += f32(q1[h * HS + c]) * f32(cache[k + c]); }
      sc = d * scale;
    }
    w[j] = sc;
    mx = max(mx, sc);
  }
  mx = wg_max(mx, lane);
  var sum = 0.0;
  for (var j = l; j < DK; j += WG) {
    let e = select(0.0, exp(w[j] - mx), j < n);
    w[j] = e;
    sum += e;
  }
  sum = wg_sum(sum, lane); // its barriers also make every w[j] visible below
  let o = slot(h, s);
  for (var c = l; c < HS; c += WG) {
    var acc = 0.0;
    for (var j = 0u; j < n; j++) { acc += w[j] * f32(cache[(k0 + j) * C3 + 2u * p.C + h * HS + c]); }
    partial[o + c] = acc;
  }
  if (l == 0u) {
    partial[o + HS] = mx;
    partial[o + HS + 1u] = sum;
  }
}

@compute @workgroup_size(64, 1, 1)
fn combine(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32) {
  let h = wid.x;
  let ns = p.t / DK + 1u;
  for (var c = l; c < HS; c += WG) {
    var mx = NEG;
    for (var s = 0u; s < ns; s++) { mx = max(mx, partial[slot(h, s) + HS]); }
    var acc = 0.0;
    var sum = 0.0;
    for (var s = 0u; s < ns; s++) {
      let o = slot(h, s);
      let f = exp(partial[o + HS] - mx);
      acc += partial[o + c] * f;
      sum += partial[o + HS + 1u] * f;
    }
    out[h * HS + c] = out_t(acc / sum);
  }
}
