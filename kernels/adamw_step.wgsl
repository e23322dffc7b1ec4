// adamw_step: what the AdamW kernels (adamw, adamw8bit, adamw4bit) share, prepended to each
// of them by src/optim/adamw.ts (withStep). Each kernel declares `stats` (storage, read:
// [loss, grad norm, non-finite count, 0] from grad_norm) and `s: Step` (uniform) at its own
// binding numbers.
//
// Step: the per-step values, written once per step. inv_scale undoes the loss scale (mixed
// precision; 1 otherwise); skip_overflow skips the whole step when grad_norm counted a
// non-finite gradient.
//
// Loop bound per invocation: 0 (no loops).

struct Step {
  lr: f32, beta1: f32, beta2: f32, eps: f32, bc1: f32, bc2: f32, wd: f32, max_norm: f32,
  inv_scale: f32, skip_overflow: u32, p0: u32, p1: u32,
}

fn is_finite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// The factor that turns a stored gradient into the clipped true gradient: the loss scale is
// undone first, and clipping uses the true norm.
fn grad_mul() -> f32 {
  let norm = stats[1] * s.inv_scale;
  var clip = 1.0;
  if (s.max_norm > 0.0) { clip = min(1.0, s.max_norm / (norm + 1e-6)); }
  return clip * s.inv_scale;
}

// The whole step is skipped (parameters and state unchanged) on overflow.
fn skip_step() -> bool {
  return s.skip_overflow != 0u && stats[2] > 0.0;
}
