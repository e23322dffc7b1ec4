// reduce_subgroup: a workgroup's sum and max through subgroups, for GPUs that have them
// (src/gpu/reductions.ts picks it where it agreed with float64 on the device). The interface
// is kernels/reduce_tree.wgsl's: Lane, wg_sum, wg_max, wg_sum2, wg_max2, every invocation
// calling them together in uniform control flow, `const WG` declared by the kernel.
//
// A subgroup reduces its lanes (subgroupAdd, subgroupMax), one lane of each posts the result at
// its subgroup's slot, and every invocation adds (or maxes) the num_subgroups slots in order:
// two barriers per call where the tree takes log2(WG) + 1. Nothing assumes a subgroup size (8 on
// lavapipe, 32 on NVIDIA, 32 or 64 on AMD) or which invocations share a subgroup; the lane that
// posts is the subgroup's lowest active one, so a partly filled subgroup posts too.
// Loop bound per call: WG (num_subgroups is at most WG).

struct Lane {
  @builtin(local_invocation_index) lid: u32,
  @builtin(subgroup_invocation_id) sid: u32,
  @builtin(subgroup_id) sg: u32,
  @builtin(num_subgroups) nsg: u32,
}

var<workgroup> wg_red: array<vec2f, WG>;

// Posts v at the subgroup's slot (from one lane), then waits for every subgroup's.
fn wg_post(v: vec2f, l: Lane) {
  if (l.sid == subgroupMin(l.sid)) { wg_red[l.sg] = v; }
  workgroupBarrier();
}

fn wg_sum2(v: vec2f, l: Lane) -> vec2f {
  wg_post(subgroupAdd(v), l);
  var t = wg_red[0];
  for (var i = 1u; i < l.nsg; i++) { t += wg_red[i]; }
  workgroupBarrier(); // wg_red is written again by the next call
  return t;
}

fn wg_max2(v: vec2f, l: Lane) -> vec2f {
  wg_post(subgroupMax(v), l);
  var t = wg_red[0];
  for (var i = 1u; i < l.nsg; i++) { t = max(t, wg_red[i]); }
  workgroupBarrier();
  return t;
}

fn wg_sum(x: f32, l: Lane) -> f32 { return wg_sum2(vec2f(x, 0.0), l).x; }
fn wg_max(x: f32, l: Lane) -> f32 { return wg_max2(vec2f(x, 0.0), l).x; }
