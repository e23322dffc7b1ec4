// cast: out[i] = f16(inp[i]), the f16 copy of f32 values (mixed precision's
// weights). Values beyond f16's range (|x| > 65504) become ±Inf, as in PyTorch.
//
// Shapes: inp, out [n] (ranges of flat buffers). Bindings: 0 inp, 1 out, 2 params.
// Geometry: workgroup (64,1,1); grid over n, folded into y.
// Loop bound per invocation: 0 (no loops).

enable f16;

struct Params { n: u32, p0: u32, p1: u32, p2: u32 }

@group(0) @binding(0) var<storage, read> inp: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f16>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * 64u;
  if (i >= p.n) { return; }
  out[i] = f16(inp[i]);
}
