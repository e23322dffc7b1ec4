// attention_decode: causal attention of one new token (position t) over a KV cache.
//
//   out[h,:] = sum_{t2<=t} softmax_t2(q[h,:] . k[t2,h,:] / sqrt(HS)) v[t2,h,:]
//
// Shapes: q1 [3C] (the new token's q | k | v; only q is read), cache [maxT, 3C]
// (rows 0..t hold q | k | v of every position, row t included), out [C].
// Each invocation owns one head: two passes over the cache (max, then exp-sum
// with the value accumulation in registers would need HS registers, so the
// second pass writes the weighted sum straight into out).
//
// Bindings: 0 q1, 1 cache, 2 out, 3 params (t is rewritten before each token).
// Geometry: workgroup (64,1,1); grid (ceil(NH/64),1,1).

struct Params { t: u32, C: u32, NH: u32, p0: u32 }

@group(0) @binding(0) var<storage, read> q1: array<f32>;
@group(0) @binding(1) var<storage, read> cache: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let h = gid.x;
  if (h >= p.NH) { return; }
  let HS = p.C / p.NH;
  let C3 = 3u * p.C;
  let scale = inverseSqrt(f32(HS));
  var maxv = -3.0e38;
  for (var t2 = 0u; t2 <= p.t; t2++) {
    var s = 0.0;
    for (var j = 0u; j < HS; j++) { s += q1[h * HS + j] * cache[t2 * C3 + p.C + h * HS + j]; }
    maxv = max(maxv, s * scale);
  }
  var sum = 0.0;
  for (var j = 0u; j < HS; j++) { out[h * HS + j] = 0.0; }
  for (var t2 = 0u; t2 <= p.t; t2++) {
    var s = 0.0;
    for (var j = 0u; j < HS; j++) { s += q1[h * HS + j] * cache[t2 * C3 + p.C + h * HS + j]; }
    let w = exp(s * scale - maxv);
    sum += w;
    for (var j = 0u; j < HS; j++) { out[h * HS + j] += w * cache[t2 * C3 + 2u * p.C + h * HS + j]; }
  }
  for (var j = 0u; j < HS; j++) { out[h * HS + j] /= sum; }
}
