// residual: out = a + b, elementwise (the residual stream's forward).
// Its backward is the identity: gradients flow on through dresidual unchanged.
//
// Shapes: [N] flat. Bindings: 0 a, 1 b, 2 out, 3 params.
// Geometry: workgroup (64,1,1); grid over N, folded into y.
// Loop bound per invocation: 0 (no loops).

struct Params { N: u32, p0: u32, p1: u32, p2: u32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 64u;
  if (i >= p.N) { return; }
  out[i] = a[i] + b[i];
}
