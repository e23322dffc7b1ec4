// adamw_update: the AdamW update of one element, the one definition that kernels/adamw.wgsl,
// adamw8bit.wgsl and adamw4bit.wgsl call (src/optim/kernel_source.ts puts it before each of
// them). It reads two bindings each of those kernels declares (src/optim/kernel_source.ts's
// ADAMW_BINDINGS): gstats (GradStats, src/optim/optimizer.ts's GRAD_STATS, storage, read) and
// s (Step, src/optim/adamw_common.ts's ADAMW_STEP: the per-step values, a uniform written
// once per step).
//
//   g  = stored gradient * gstats.scale   (clip factor over loss scale: the training step's)
//   m  = beta1 m + (1 - beta1) g
//   v  = beta2 v + (1 - beta2) g^2
//   p -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + wd * p)   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
//
// A NaN or Inf g leaves its element (p, m, v) unchanged; gstats.skip skips the whole step.
//
// Loop bound per invocation: 0 (no loops).

fn is_finite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// The whole step is skipped (parameters and state unchanged) on overflow.
fn skip_step() -> bool {
  return gstats.skip != 0.0;
}

// A stored gradient as the update uses it: the loss scale undone, clipped.
fn scaled_grad(x: f32) -> f32 {
  return x * gstats.scale;
}

// m, v and the parameter after one AdamW step with the finite gradient g.
struct Adam { m: f32, v: f32, p: f32 }

fn adamw_update(param: f32, g: f32, m: f32, v: f32, decay: bool) -> Adam {
  let mi = s.beta1 * m + (1.0 - s.beta1) * g;
  let vi = s.beta2 * v + (1.0 - s.beta2) * g * g;
  let wd = select(0.0, s.wd, decay);
  return Adam(mi, vi, param - s.lr * ((mi / s.bc1) / (sqrt(vi / s.bc2) + s.eps) + wd * param));
}
