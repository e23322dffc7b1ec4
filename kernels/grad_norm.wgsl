// grad_norm: the global L2 norm of all gradients, deterministically, and what the training
// step makes of it: the gradient scale (clip factor over the loss scale) and the skip flag
// every optimizer update reads (stats: GradStats, src/optim/optimizer.ts's GRAD_STATS).
//
// partial:  partials[slot + w] = sum of finite g^2 over the w-th block of 4096 elements of
//           one range (one workgroup a block; the workgroup's wg_sum2, kernels/reduce_tree.wgsl
//           or reduce_subgroup.wgsl, put after this text: a fixed order on a device), and
//           partials[total + slot + w] = the number of non-finite elements in the block.
// finish:   stats.norm = sqrt(sum of partials[0..count]), stats.nonfinite = the number of
//           non-finite elements (+1 if the norm itself overflows). One workgroup of 256: invocation l
//           sums partials l, l + 256, ... in order, then a fixed tree adds the 256 sums, so
//           the result is deterministic. (gpt2-medium-4096 has ~94K partials: one invocation
//           walking them all would pass the loop budget.)
// decide:   stats.scale = min(1, max_norm / (norm / S + 1e-6)) / S (1 / S without clipping,
//           S the loss scale), stats.skip = 1 when skip_overflow and anything was non-finite,
//           or when void_after_skip and the step before skipped (stats.skip as it left it: a
//           step begun before that one was read back assumed it would not, so it is void and
//           runs again; src/train/step.ts). Its own dispatch, so that data-parallel ranks can
//           sum their norms in between.
//
// Loop bound per invocation: partial 64 + 64 (the reduction's, at most); finish ceil(count / 256) + 8; decide 0.
// Shapes: grads [n] (a range of the flat gradient buffer), partials [2 * count], stats GradStats.
// Bindings (src/train/grad_norm.ts declares them): grads, partials (rw), stats (rw), clip
// (uniform Clip, written every step: max_norm 0 is no clipping, inv_scale = 1 / S); p: n,
// slot and count (= total) for partial, count for finish.
// Geometry: partial: workgroup (64,1,1), grid (ceil(n / 4096), 1, 1); finish: (256,1,1),
// (1,1,1); decide: (1,1,1), (1,1,1).

const WG = 64u;

@compute @workgroup_size(64, 1, 1)
fn partial(@builtin(workgroup_id) wid: vec3u, l: Lane) {
  let start = wid.x * 4096u;
  var s = 0.0;
  var nb = 0.0;
  for (var k = 0u; k < 64u; k++) {
    let i = start + k * WG + l.lid;
    if (i < p.n) {
      let g = f32(grads[i]);
      // NaN and Inf elements are counted, and skipped here and by the optimizers' updates.
      if ((bitcast<u32>(g) & 0x7f800000u) != 0x7f800000u) { s += g * g; } else { nb += 1.0; }
    }
  }
  let t = wg_sum2(vec2f(s, nb), l);
  if (l.lid == 0u) {
    partials[p.slot + wid.x] = t.x;
    partials[p.count + p.slot + wid.x] = t.y;
  }
}

var<workgroup> fin_s: array<f32, 256>;
var<workgroup> fin_b: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn finish(@builtin(local_invocation_index) l: u32) {
  var s = 0.0;
  var nb = 0.0;
  for (var i = l; i < p.count; i += 256u) {
    s += partials[i];
    nb += partials[p.count + i];
  }
  fin_s[l] = s;
  fin_b[l] = nb;
  workgroupBarrier();
  for (var w = 128u; w > 0u; w >>= 1u) {
    if (l < w) {
      fin_s[l] += fin_s[l + w];
      fin_b[l] += fin_b[l + w];
    }
    workgroupBarrier();
  }
  if (l == 0u) {
    let norm = sqrt(fin_s[0]);
    stats.norm = norm;
    stats.nonfinite = fin_b[0] +
      select(1.0, 0.0, (bitcast<u32>(norm) & 0x7f800000u) != 0x7f800000u);
  }
}

@compute @workgroup_size(1, 1, 1)
fn decide() {
  // The loss scale is undone first: clipping uses the true norm.
  let norm = stats.norm * clip.inv_scale;
  var c = 1.0;
  if (clip.max_norm > 0.0) { c = min(1.0, clip.max_norm / (norm + 1e-6)); }
  stats.scale = c * clip.inv_scale;
  let overflow = clip.skip_overflow != 0u && stats.nonfinite > 0.0;
  let void_step = clip.void_after_skip != 0u && stats.skip > 0.0;
  stats.skip = select(0.0, 1.0, overflow || void_step);
}
