// reduce_check: what src/model/ops/reduce.ts runs on a device before kernels use a reduction
// form there (kernels/reduce_tree.wgsl or reduce_subgroup.wgsl, put after this text).
//
// Row r of inp [R, n] (one workgroup a row) gives out[4r .. 4r + 4) =
//   (sum of the row, max of the row, WG counted by wg_sum2's second half, WG - 1: the largest
//    local index through wg_max2's second half).
// Loop bound per invocation: ceil(n / 64) + the four calls' (4 * 64 at most).
// Bindings (inp, out) and uniforms (p.n): declared in src/model/ops/reduce.ts.
// Geometry: workgroup (64,1,1), grid (R,1,1).

const WG = 64u;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3u, l: Lane) {
  let base = wid.x * p.n;
  var s = 0.0;
  var m = -3.0e38;
  for (var i = l.lid; i < p.n; i += WG) {
    s += inp[base + i];
    m = max(m, inp[base + i]);
  }
  let sum = wg_sum(s, l);
  let mx = wg_max(m, l);
  let count = wg_sum2(vec2f(s, 1.0), l).y;
  let last = wg_max2(vec2f(m, f32(l.lid)), l).y;
  if (l.lid == 0u) {
    out[4u * wid.x] = sum;
    out[4u * wid.x + 1u] = mx;
    out[4u * wid.x + 2u] = count;
    out[4u * wid.x + 3u] = last;
  }
}
