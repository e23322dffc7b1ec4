// adamw4bit: one AdamW step with 4-bit state (Li, Chen and Zhu 2023).
//
// m: blocks of 128, signed dynamic-exponent map (16 codes), absmax per block.
// v: rank-1 (2-D tensors, rows > 0): scale(i,j) = min(row max_i, column max_j) of the updated v,
//    linear map without zero (k/16, k = 1..16); otherwise blocks of 128 with absmax.
// Two codes per byte: 8 per u32, element 8w+k in bits 4k..4k+3.
// The update is adamw_update (kernels/adamw_update.wgsl); codes are found by nearest
// (kernels/lowbit_common.wgsl). A NaN or Inf gradient element leaves its parameter and
// (dequantized) state unchanged; gstats.skip skips the whole step (every entry point returns
// at once). Gradient scale as in kernels/adamw.wgsl.
//
// Entry points, in order each step (rank-1 tensors also need row_max, col_max, commit):
//   row_max:  rows_new[i] = max_j v_new(i,j)        one invocation per row
//   col_max:  cols_new[j] = max_i v_new(i,j)        one invocation per column
//             Both walk only j (or i) in [lo, hi): the builder splits a long walk into
//             dispatches that max into what the first one wrote (first = 1), so that
//             one invocation's loop stays within the budget.
//   update:   dequantize, update, requantize        one workgroup of 16 per block of 128
//   commit:   rows_old, cols_old = rows_new, cols_new
// Shapes: params, grads [n] f32 or f16 (n = rows*cols for rank-1); mq, vq [n/8] u32; mabs [n/128];
// vabs [n/128] (block-wise v only); scales [2*(rows+cols)] = rows_old | cols_old | rows_new | cols_new;
// maps [32] = m map | v map. rows = cols = 0 selects block-wise v (a uniform branch, so
// every binding is used whatever the tensor).
// Bindings (src/optim/lowbit_pieces.ts declares them, and which each entry point uses):
// params, grads, mq, vq, mabs, vabs, scales, maps, gstats, s (uniform); p: n, decay, rows,
// cols, lo, hi, first, e0 (the first element in the flat buffer).
// Loop bound per invocation: row_max, col_max hi - lo (at most 32768, src/optim/lowbit.ts);
// update 2 + 2 * 8 * 5 + 16 (the maps, two passes of 8 codes, 5 halvings each, and the
// block's max over the 16 invocations: wg_max2, log2(16) as a tree, 16 through subgroups);
// commit 0.

// adamw_update (kernels/adamw_update.wgsl), qmap and nearest (kernels/lowbit_common.wgsl) come
// first (src/optim/kernel_source.ts); Lane and wg_max2 (kernels/reduce_tree.wgsl or
// reduce_subgroup.wgsl) come last (src/optim/lowbit_pieces.ts).

const WG = 16u; // update's workgroup: one per block of 128
fn code(words: u32, k: u32) -> u32 {
  return (words >> (4u * k)) & 15u;
}

// The rank-1 scale of element e from the old (which = 0) or new (which = 1) maxima.
fn rank1(e: u32, which: u32) -> f32 {
  let o = which * (p.rows + p.cols);
  return min(scales[o + e / p.cols], scales[o + p.rows + e % p.cols]);
}

// v after this step's update (unchanged where the gradient is not finite).
fn v_next(e: u32) -> f32 {
  let v = maps[16u + code(vq[e / 8u], e % 8u)] * rank1(e, 0u);
  let g = scaled_grad(f32(grads[e]));
  if (!is_finite(g)) { return v; }
  return s.beta2 * v + (1.0 - s.beta2) * g * g;
}

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * 64u;
}

@compute @workgroup_size(64, 1, 1)
fn row_max(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.rows || skip_step()) { return; }
  let o = p.rows + p.cols + i;
  var mx = select(scales[o], 0.0, p.first == 1u);
  for (var j = p.lo; j < p.hi; j++) { mx = max(mx, v_next(i * p.cols + j)); }
  scales[o] = mx;
}

@compute @workgroup_size(64, 1, 1)
fn col_max(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= p.cols || skip_step()) { return; }
  let o = 2u * p.rows + p.cols + j;
  var mx = select(scales[o], 0.0, p.first == 1u);
  for (var i = p.lo; i < p.hi; i++) { mx = max(mx, v_next(i * p.cols + j)); }
  scales[o] = mx;
}

@compute @workgroup_size(64, 1, 1)
fn commit(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.rows + p.cols || skip_step()) { return; }
  scales[i] = scales[p.rows + p.cols + i];
}

@compute @workgroup_size(WG, 1, 1)
fn update(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, l: Lane) {
  let blk = wid.x + wid.y * nwg.x;
  if (blk * 128u >= p.n || skip_step()) { return; } // uniform per workgroup
  load_maps(l.lid, WG, 32u);
  let w = blk * WG + l.lid;
  let mw = mq[w];
  let vw = vq[w];
  let am = mabs[blk];
  let av = vabs[blk];
  let rank1_mode = p.rows > 0u;
  var mv: array<f32, 8>;
  var vv: array<f32, 8>;
  var mmax = 0.0;
  var vmax = 0.0;
  for (var k = 0u; k < 8u; k++) {
    let e = 8u * w + k;
    var m = 0.0;
    var v = 0.0;
    if (e < p.n) {
      m = qmap[code(mw, k)] * am;
      if (rank1_mode) {
        v = qmap[16u + code(vw, k)] * rank1(e, 0u);
      } else {
        v = qmap[16u + code(vw, k)] * av;
      }
      let g = scaled_grad(f32(grads[e]));
      if (is_finite(g)) {
        let u = adamw_update(f32(params[e]), g, m, v, p.decay == 1u);
        m = u.m;
        v = u.v;
        params[e] = params_t(stored_param(u.p, p.e0 + e));
      }
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
  for (var k = 0u; k < 8u; k++) {
    let e = 8u * w + k;
    var sv = nv;
    if (rank1_mode && e < p.n) { sv = rank1(e, 1u); }
    mout |= nearest(0u, 16u, select(0.0, mv[k] / nm, nm > 0.0)) << (4u * k);
    vout |= nearest(16u, 16u, select(0.0, vv[k] / sv, sv > 0.0)) << (4u * k);
  }
  mq[w] = mout;
  vq[w] = vout;
  if (l.lid == 0u) {
    mabs[blk] = nm;
    if (!rank1_mode) { vabs[blk] = nv; }
  }
}
