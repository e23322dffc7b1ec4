// param_store: the value an optimizer writes back to a parameter (src/optim/kernel_source.ts
// puts it before every optimizer kernel). f32 parameters store the new value as it is. 16-bit
// weights (f16 parameters, no f32 master copy: s.round_seed != 0) store it rounded to one of
// its two neighbouring f16 values at random, up with probability (x - lower) / (upper - lower):
// stochastic rounding, so that updates far smaller than an f16 step still move a weight by
// the right amount on average (Zamirai et al. 2020 show it keeps 16-bit-only training within
// ~0.2% of fp32; round-to-nearest would drop every update under half a step). The random
// number is a hash of the element's index in the flat buffer and of s.round_seed (the step),
// so a run and its resume round alike, and every rank of a data-parallel job too.
//
// It reads s.round_seed from the kernel's per-step uniform (AdamW's and Adafactor's Step).
// Loop bound per invocation: 0 (no loops).

// A 32-bit integer hash (Wellons' lowbias32): neighbouring inputs give unrelated outputs.
fn hash32(x: u32) -> u32 {
  var h = x;
  h ^= h >> 16u;
  h *= 0x7feb352du;
  h ^= h >> 15u;
  h *= 0x846ca68bu;
  h ^= h >> 16u;
  return h;
}

// x as parameter e stores it (e: the element's index in the flat parameter buffer).
fn stored_param(x: f32, e: u32) -> f32 {
  if (s.round_seed == 0u) { return x; }
  let a = abs(x);
  if (!(a < 65504.0)) { return clamp(x, -65504.0, 65504.0); } // f16's largest (NaN stays)
  // The gap between neighbouring f16 values around |x|: 2^(exponent - 10); subnormals 2^-24.
  let ex = max(i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127, -14);
  let gap = exp2(f32(ex - 10));
  // u in [0, 1) with 24 random bits; floor(x / gap + u) rounds up with the wanted probability.
  let u = f32(hash32(e ^ hash32(s.round_seed)) >> 8u) * (1.0 / 16777216.0);
  return clamp(floor(x / gap + u) * gap, -65504.0, 65504.0);
}
