// cast: out[i] = f16(inp[i]), the f16 copy of f32 values (mixed precision's
// weights). Values beyond f16's range (|x| > 65504) become ±Inf, as in PyTorch.
//
// Shapes: inp, out [n] (ranges of flat buffers). Bindings and uniforms (p.n): declared in
// src/model/ops/cast.ts.
// Geometry: workgroup (64,1,1); grid over n, folded into y.
// Loop bound per invocation: 0 (no loops).

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 64u;
  if (i >= p.n) { return; }
  out[i] = f16(inp[i]);
}
