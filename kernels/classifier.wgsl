// classifier: softmax + cross-entropy + its gradient, fused, in place.
//
// For each row n of logits [N, Vp] (only the first V columns are real):
//   loss[n]   = logsumexp(logits[n, :V]) - logits[n, tgt[n]]
//   with WRITE_GRAD, logits[n, v] is overwritten by
//   dlogits   = (softmax(logits[n, :V])[v] - (v == target)) * dloss * loss_scale, and 0 for
//   v >= V. loss_scale (mixed precision's dynamic loss scale) is written once per step.
// The logits are never copied: the gradient replaces them in the same buffer.
// A tgt of 0xFFFFFFFF marks a position without a loss (loss 0, gradient 0).
//
// Bindings (logits rw, targets [N] u32, losses [N], loss_scale: the uniform's x), uniforms
// (p.N, p.V, p.Vp, p.dloss) and WRITE_GRAD: declared in src/model/ops/classifier.ts.
// A row's max and sum: wg_max and wg_sum (kernels/reduce_tree.wgsl or reduce_subgroup.wgsl,
// put after this text by src/model/ops/reduce.ts).
// Geometry: workgroup (64,1,1), one workgroup per row; grid (N,1,1) folded into y.
// Loop bound per invocation: 2 * ceil(V/64) + ceil(Vp/64) + the two reductions' (2 * 64 at
// most; 2,486 for GPT-2's V).

const WG = 64u;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, l: Lane) {
  let n = wid.x + wid.y * nwg.x;
  if (n >= p.N) { return; } // uniform per workgroup: barriers stay uniform
  let base = n * p.Vp;
  let tgt = targets[n];
  var m = -3.0e38;
  for (var v = l.lid; v < p.V; v += WG) { m = max(m, logits[base + v]); }
  m = wg_max(m, l);
  var s = 0.0;
  for (var v = l.lid; v < p.V; v += WG) { s += exp(logits[base + v] - m); }
  s = wg_sum(s, l);
  let valid = tgt < p.V;
  if (l.lid == 0u) {
    losses[n] = select(0.0, log(s) + m - logits[base + min(tgt, p.V - 1u)], valid);
  }
  if (WRITE_GRAD) {
    workgroupBarrier(); // the tgt logit is read above before it is overwritten
    let scale = select(0.0, p.dloss * loss_scale.x, valid);
    for (var v = l.lid; v < p.Vp; v += WG) {
      var g = 0.0;
      if (v < p.V) {
        g = (exp(logits[base + v] - m) / s - select(0.0, 1.0, v == tgt)) * scale;
      }
      logits[base + v] = g;
    }
  }
}
