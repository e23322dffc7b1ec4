// residual: out = a + b, elementwise (the residual stream's forward).
// Its backward is the identity: gradients flow on through dresidual unchanged.
//
// Shapes: [N] flat. Bindings and uniforms (p.N): declared in src/model/ops/residual.ts.
// Geometry: workgroup (64,1,1); grid over N, folded into y.
// Loop bound per invocation: 0 (no loops).

@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 64u;
  if (i >= p.N) { return; }
  out[i] = a[i] + b[i];
}
