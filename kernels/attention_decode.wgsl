// attention_decode: causal attention of one new token (position t) over a KV cache.
//
//   out[h,:] = sum_{t2<=t} softmax_t2(q[h,:] . k[t2,h,:] / sqrt(HS)) v[t2,h,:]
//
// Shapes: q1 [3C] (the new token's q | k | v; only q is read), cache [maxT, 3C]
// (rows 0..t hold q | k | v of every position, row t included), out [C].
// Each invocation owns one head and makes one pass over the cache with an online
// softmax, the weighted sum of values in registers (HS at most 128).
//
// Element types: q1 and cache qkv_t, out out_t (aliases, f32 or f16 through
// src/gpu/dtype.ts); the sums are f32.
// Bindings: 0 q1, 1 cache, 2 out, 3 params (t is rewritten before each token).
// Geometry: workgroup (64,1,1); grid (ceil(NH/64),1,1).

struct Params { t: u32, C: u32, NH: u32, p0: u32 }

alias qkv_t = f32;
alias out_t = f32;

@group(0) @binding(0) var<storage, read> q1: array<qkv_t>;
@group(0) @binding(1) var<storage, read> cache: array<qkv_t>;
@group(0) @binding(2) var<storage, read_write> out: array<out_t>;
@group(0) @binding(3) var<uniform> p: Params;

const MAX_HS = 128u;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let h = gid.x;
  if (h >= p.NH) { return; }
  let HS = p.C / p.NH;
  let C3 = 3u * p.C;
  let scale = inverseSqrt(f32(HS));
  // Online softmax, as in flash_attention's forward: one pass, the sum in registers.
  var acc: array<f32, MAX_HS>;
  var m = -3.0e38;
  var l = 0.0;
  for (var t2 = 0u; t2 <= p.t; t2++) {
    var s = 0.0;
    for (var j = 0u; j < HS; j++) {
      s += f32(q1[h * HS + j]) * f32(cache[t2 * C3 + p.C + h * HS + j]);
    }
    s *= scale;
    let m_new = max(m, s);
    let c = exp(m - m_new);
    let w = exp(s - m_new);
    l = l * c + w;
    for (var j = 0u; j < HS; j++) {
      acc[j] = acc[j] * c + w * f32(cache[t2 * C3 + 2u * p.C + h * HS + j]);
    }
    m = m_new;
  }
  for (var j = 0u; j < HS; j++) { out[h * HS + j] = out_t(acc[j] / l); }
}
