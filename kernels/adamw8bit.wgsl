// adamw8bit: one AdamW step with 8-bit block-wise state (Dettmers et al. 2022).
//
// Per block of BLOCK = 4*WG elements: dequantize m and v with the block's old absmax
// (m: signed dynamic map, v: unsigned), update as kernels/adamw.wgsl does, then
// requantize each to the nearest code with a fresh absmax. A NaN or Inf gradient
// element leaves its parameter and its (dequantized) m and v unchanged; with skip_overflow
// one anywhere skips the whole step. Loss scale and clipping as in kernels/adamw.wgsl.
//
// Shapes: params, grads [n] f32; mq, vq [ceil(n/4)] u32 (4 codes, low byte first);
// mabs, vabs [ceil(n/BLOCK)] f32; maps [512] f32 (signed then unsigned, ascending).
// Bindings: 0 params, 1 grads, 2 mq, 3 vq, 4 mabs, 5 vabs, 6 maps, 7 stats, 8 step, 9 range.
// Geometry: workgroup (WG,1,1), one workgroup per block; grid folded into y.
// Loop bound per invocation: 512/WG (map load) + 2 * 4 * 9 (two passes of 4 codes, 9
// halvings each) + log2(WG) (the tree): 88 for WG = 32, whatever n.

override WG: u32 = 64;

// Step, is_finite, grad_mul and skip_step: kernels/adamw_step.wgsl (prepended).
struct Range { n: u32, decay: u32, p0: u32, p1: u32 }

@group(0) @binding(0) var<storage, read_write> params: array<f32>;
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> mq: array<u32>;
@group(0) @binding(3) var<storage, read_write> vq: array<u32>;
@group(0) @binding(4) var<storage, read_write> mabs: array<f32>;
@group(0) @binding(5) var<storage, read_write> vabs: array<f32>;
@group(0) @binding(6) var<storage, read> maps: array<f32>;
@group(0) @binding(7) var<storage, read> stats: array<f32>;
@group(0) @binding(8) var<uniform> s: Step;
@group(0) @binding(9) var<uniform> r: Range;

var<workgroup> smap: array<f32, 512>;
var<workgroup> red_m: array<f32, 256>;
var<workgroup> red_v: array<f32, 256>;

// Nearest code in smap[base .. base+256): the first code >= x and the one before; ties go low.
fn nearest(base: u32, x: f32) -> u32 {
  var lo = 0u;
  var hi = 256u;
  for (var it = 0u; it < 9u && lo < hi; it++) { // log2(256) + 1 halvings reach lo == hi
    let mid = (lo + hi) >> 1u;
    if (smap[base + mid] < x) { lo = mid + 1u; } else { hi = mid; }
  }
  if (lo == 0u) { return 0u; }
  if (lo == 256u) { return 255u; }
  let dl = x - smap[base + lo - 1u];
  let dh = smap[base + lo] - x;
  return select(lo - 1u, lo, dh < dl);
}

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) l: u32) {
  let blk = wid.x + wid.y * nwg.x;
  if (blk * 4u * WG >= r.n || skip_step()) { return; } // uniform per workgroup
  for (var i = l; i < 512u; i += WG) { smap[i] = maps[i]; }
  workgroupBarrier();
  let am = mabs[blk];
  let av = vabs[blk];
  let clip = grad_mul();
  let w = blk * WG + l;
  let mw = mq[w];
  let vw = vq[w];
  var mv: array<f32, 4>;
  var vv: array<f32, 4>;
  var mmax = 0.0;
  var vmax = 0.0;
  for (var k = 0u; k < 4u; k++) {
    let e = 4u * w + k;
    var m = smap[(mw >> (8u * k)) & 255u] * am;
    var v = smap[256u + ((vw >> (8u * k)) & 255u)] * av;
    if (e < r.n) {
      let g = grads[e] * clip;
      if (is_finite(g)) {
        m = s.beta1 * m + (1.0 - s.beta1) * g;
        v = s.beta2 * v + (1.0 - s.beta2) * g * g;
        let p = params[e];
        let wd = select(0.0, s.wd, r.decay == 1u);
        params[e] = p - s.lr * ((m / s.bc1) / (sqrt(v / s.bc2) + s.eps) + wd * p);
      }
    } else {
      m = 0.0;
      v = 0.0;
    }
    mv[k] = m;
    vv[k] = v;
    mmax = max(mmax, abs(m));
    vmax = max(vmax, v);
  }
  red_m[l] = mmax;
  red_v[l] = vmax;
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h >>= 1u) {
    if (l < h) {
      red_m[l] = max(red_m[l], red_m[l + h]);
      red_v[l] = max(red_v[l], red_v[l + h]);
    }
    workgroupBarrier();
  }
  let nm = red_m[0];
  let nv = red_v[0];
  var mout = 0u;
  var vout = 0u;
  for (var k = 0u; k < 4u; k++) {
    let qm = nearest(0u, select(0.0, mv[k] / nm, nm > 0.0));
    let qv = nearest(256u, select(0.0, vv[k] / nv, nv > 0.0));
    mout |= qm << (8u * k);
    vout |= qv << (8u * k);
  }
  mq[w] = mout;
  vq[w] = vout;
  if (l == 0u) {
    mabs[blk] = nm;
    vabs[blk] = nv;
  }
}
