// encoder: token + position embedding, forward and backward.
//
// forward:       out[b,t,:] = wte[tokens[b,t],:] + wpe[pos0 + t,:]  (pos0 > 0 when decoding)
// backward_wpe:  dwpe[t,:] += sum_b dout[b,t,:]
// backward_wte:  dwte[v,:] += sum of dout[b,t,:] over positions with tokens[b,t] == v
//
// Shapes: tokens [BT] u32, wte [Vp, C] (bound as the rows [v0, v1) when the table is
// over the binding limit; then one dispatch per row range, `first` set on the
// first so it writes and later ones add), wpe [maxT, C], out/dout [BT, C].
// backward_wte is deterministic without atomics: `order` [BT] lists positions
// sorted by token (made on the CPU with the batch); an invocation at the start of
// a run of equal tokens sums that run for one channel. It walks only the sorted slots
// [s0, s1): the builder cuts BT into such ranges, one dispatch each, in order, so that a
// long run (a batch of one repeated token) never takes one invocation past the loop
// budget; a run that crosses a cut is summed in two parts, one per dispatch.
//
// Loop bound per invocation: forward 0; backward_wpe B; backward_wte s1 - s0 (at most
// 32768, src/model/ops/encoder.ts).
//
// Bindings and uniforms (p.BT, p.T, p.C, p.v0, p.v1, p.first, p.pos0, p.s0, p.s1): declared in
// src/model/ops/encoder.ts.
// Geometry: workgroup (64,1,1); forward and backward_wte over BT*C invocations,
// backward_wpe over T*C; grids folded into y past 65535 workgroups.

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * 64u;
}

// ---------------------------------------------------------------------------
@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.BT * p.C) { return; }
  let bt = i / p.C;
  let c = i % p.C;
  let tok = tokens[bt];
  var v = 0.0;
  if (tok >= p.v0 && tok < p.v1) { v = f32(wte[(tok - p.v0) * p.C + c]); }
  if (p.first == 1u) {
    out[i] = f32(wpe[(p.pos0 + bt % p.T) * p.C + c]) + v;
  } else {
    out[i] += v;
  }
}

// ---------------------------------------------------------------------------
@compute @workgroup_size(64, 1, 1)
fn backward_wpe(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.T * p.C) { return; }
  let B = p.BT / p.T;
  var s = 0.0;
  for (var b = 0u; b < B; b++) { s += dout[b * p.T * p.C + i]; }
  dwpe[i] = dwpe_t(f32(dwpe[i]) + s);
}

// ---------------------------------------------------------------------------
@compute @workgroup_size(64, 1, 1)
fn backward_wte(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= (p.s1 - p.s0) * p.C) { return; }
  let s = p.s0 + i / p.C;
  let c = i % p.C;
  let tok = tokens[order[s]];
  if (tok < p.v0 || tok >= p.v1) { return; }
  if (s > p.s0 && tokens[order[s - 1u]] == tok) { return; } // not the start of a run
  var sum = 0.0;
  for (var r = s; r < p.s1 && tokens[order[r]] == tok; r++) {
    sum += dout[order[r] * p.C + c];
  }
  let w = (tok - p.v0) * p.C + c;
  dwte[w] = dwte_t(f32(dwte[w]) + sum);
}
