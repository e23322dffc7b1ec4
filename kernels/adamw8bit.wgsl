// adamw8bit: one AdamW step with 8-bit block-wise state (Dettmers et al. 2022).
//
// Per block of BLOCK = 4*WG elements: dequantize m and v with the block's old absmax
// (m: signed dynamic map, v: unsigned), update with adamw_update (kernels/adamw_update.wgsl),
// then requantize each to the nearest code (kernels/lowbit_common.wgsl) with a fresh absmax.
// A NaN or Inf gradient element leaves its parameter and its (dequantized) m and v
// unchanged; gstats.skip skips the whole step. Gradient scale as in kernels/adamw.wgsl.
//
// Shapes: params, grads [n] f32 or f16; mq, vq [ceil(n/4)] u32 (4 codes, low byte first);
// mabs, vabs [ceil(n/BLOCK)] f32; maps [512] f32 (signed then unsigned, ascending).
// Bindings (src/optim/lowbit_pieces.ts declares them): params, grads, mq, vq, mabs, vabs, maps,
// gstats, s (uniform); p: n, decay, e0 (the first element in the flat buffer). Override WG (the block size over 4).
// Geometry: workgroup (WG,1,1), one workgroup per block; grid folded into y.
// Loop bound per invocation: 512/WG (map load) + 2 * 4 * 9 (two passes of 4 codes, 9
// halvings each) + the block's max (wg_max2: log2(WG) as a tree, WG through subgroups),
// whatever n.

// adamw_update (kernels/adamw_update.wgsl), qmap and nearest (kernels/lowbit_common.wgsl) come
// first (src/optim/kernel_source.ts); Lane and wg_max2 (kernels/reduce_tree.wgsl or
// reduce_subgroup.wgsl) come last (src/optim/lowbit_pieces.ts).

@compute @workgroup_size(WG, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, l: Lane) {
  let blk = wid.x + wid.y * nwg.x;
  if (blk * 4u * WG >= p.n || skip_step()) { return; } // uniform per workgroup
  load_maps(l.lid, WG, 512u);
  let am = mabs[blk];
  let av = vabs[blk];
  let w = blk * WG + l.lid;
  let mw = mq[w];
  let vw = vq[w];
  var mv: array<f32, 4>;
  var vv: array<f32, 4>;
  var mmax = 0.0;
  var vmax = 0.0;
  for (var k = 0u; k < 4u; k++) {
    let e = 4u * w + k;
    var m = qmap[(mw >> (8u * k)) & 255u] * am;
    var v = qmap[256u + ((vw >> (8u * k)) & 255u)] * av;
    if (e < p.n) {
      let g = scaled_grad(f32(grads[e]));
      if (is_finite(g)) {
        let u = adamw_update(f32(params[e]), g, m, v, p.decay == 1u);
        m = u.m;
        v = u.v;
        params[e] = params_t(stored_param(u.p, p.e0 + e));
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
  let mx = wg_max2(vec2f(mmax, vmax), l);
  let nm = mx.x;
  let nv = mx.y;
  var mout = 0u;
  var vout = 0u;
  for (var k = 0u; k < 4u; k++) {
    let qm = nearest(0u, 256u, select(0.0, mv[k] / nm, nm > 0.0));
    let qv = nearest(256u, 256u, select(0.0, vv[k] / nv, nv > 0.0));
    mout |= qm << (8u * k);
    vout |= qv << (8u * k);
  }
  mq[w] = mout;
  vq[w] = vout;
  if (l.lid == 0u) {
    mabs[blk] = nm;
    vabs[blk] = nv;
  }
}
