// matmul_bias_backward: dbias[N] (+)= sum over rows m of dout[M, N] (row stride ldd).
//
// Each invocation owns one column and walks the rows, so reads of a row are
// contiguous across the workgroup and no atomics are needed. GPT-2's column
// counts (C .. 4C) give enough invocations; M is the number of tokens B·T.
//
// Loop bound per invocation: ceil(M / 4) + 3; src/model/matmul.ts sums at most 131072 rows
// per dispatch (later dispatches accumulate), so at most 32771.
// Element types dout_t, dbias_t: f32 or f16, from the bound buffers; sums are f32.
// Bindings (dout, dbias rw), uniforms (p.M, p.N, p.ldd, p.d_off, p.bias_off) and ACCUMULATE:
// declared in src/model/ops/matmul.ts.
// Geometry: workgroup (64,1,1); grid (ceil(N/64), 1, 1).

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let n = gid.x;
  if (n >= p.N) { return; }
  // Four partial sums break the dependency chain of one long running sum.
  var s = vec4f(0.0);
  var m = 0u;
  for (; m + 4u <= p.M; m += 4u) {
    let base = p.d_off + m * p.ldd + n;
    s += vec4f(
      f32(dout[base]),
      f32(dout[base + p.ldd]),
      f32(dout[base + 2u * p.ldd]),
      f32(dout[base + 3u * p.ldd]),
    );
  }
  for (; m < p.M; m++) { s.x += f32(dout[p.d_off + m * p.ldd + n]); }
  var total = s.x + s.y + s.z + s.w;
  if (ACCUMULATE) { total += f32(dbias[p.bias_off + n]); }
  dbias[p.bias_off + n] = dbias_t(total);
}
