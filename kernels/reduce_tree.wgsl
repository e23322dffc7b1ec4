// reduce_tree: a workgroup's sum and max through a fixed tree in workgroup memory, put before
// the kernels that reduce across their workgroup (src/gpu/reductions.ts); every adapter runs
// it. kernels/reduce_subgroup.wgsl is the same interface through subgroups.
//
//   struct Lane      the entry point's per-invocation builtins; l.lid is the local index
//   wg_sum(x, l)     the workgroup's sum of x (f32), in every invocation
//   wg_max(x, l)     its max
//   wg_sum2(v, l)    two sums at once (vec2f)
//   wg_max2(v, l)    two maxes at once
// Every invocation of the workgroup calls them together, in uniform control flow. The kernel
// declares `const WG`, its workgroup size, a power of two.
//
// The order of a sum is fixed: halves added pairwise, WG/2 apart first (the same bits on every
// adapter that rounds f32 adds correctly).
// Loop bound per call: log2(WG).

struct Lane {
  @builtin(local_invocation_index) lid: u32,
}

var<workgroup> wg_red: array<vec2f, WG>;

fn wg_sum2(v: vec2f, l: Lane) -> vec2f {
  wg_red[l.lid] = v;
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h >>= 1u) {
    if (l.lid < h) { wg_red[l.lid] += wg_red[l.lid + h]; }
    workgroupBarrier();
  }
  let r = wg_red[0];
  workgroupBarrier(); // wg_red is written again by the next call
  return r;
}

fn wg_max2(v: vec2f, l: Lane) -> vec2f {
  wg_red[l.lid] = v;
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h >>= 1u) {
    if (l.lid < h) { wg_red[l.lid] = max(wg_red[l.lid], wg_red[l.lid + h]); }
    workgroupBarrier();
  }
  let r = wg_red[0];
  workgroupBarrier();
  return r;
}

fn wg_sum(x: f32, l: Lane) -> f32 { return wg_sum2(vec2f(x, 0.0), l).x; }
fn wg_max(x: f32, l: Lane) -> f32 { return wg_max2(vec2f(x, 0.0), l).x; }
