// gelu: GPT-2's tanh approximation, elementwise, forward and backward.
//
// forward:   out = 0.5 x (1 + tanh(s (x + 0.044715 x^3))), s = sqrt(2 / pi)
// backward:  dinp = dout * d(out)/dx
//
// Element types: inp inp_t, out out_t, dinp dinp_t (f32 or f16, from the bound buffers);
// dout and all arithmetic are f32.
//
// Shapes: [N] flat. Bindings and uniforms (p.N): declared in src/model/ops/gelu.ts.
// Geometry: workgroup (64,1,1); grid over N, folded into y.
// Loop bound per invocation: 0 (no loops).

const S = 0.7978845608028654;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * 64u;
}

// tanh through exp of a non-positive argument: never overflows (WGSL's tanh
// may return NaN for large |x| on some drivers).
fn safe_tanh(u: f32) -> f32 {
  let e = exp(-2.0 * abs(u));
  return sign(u) * (1.0 - e) / (1.0 + e);
}

@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.N) { return; }
  let x = f32(inp[i]);
  out[i] = out_t(0.5 * x * (1.0 + safe_tanh(S * (x + 0.044715 * x * x * x))));
}

@compute @workgroup_size(64, 1, 1)
fn backward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.N) { return; }
  let x = f32(inp[i]);
  let u = S * (x + 0.044715 * x * x * x);
  let th = safe_tanh(u);
  let sech2 = 1.0 - th * th;
  let local = 0.5 * (1.0 + th) + 0.5 * x * sech2 * S * (1.0 + 3.0 * 0.044715 * x * x);
  dinp[i] = dinp_t(local * dout[i]);
}
