/**
 * Quantization maps for the low-bit optimizers, sorted ascending.
 *
 * dynamicMap: bitsandbytes' dynamic (exponent + fraction) map
 * (`create_dynamic_map`, Dettmers et al. 2022): for each exponent i the
 * midpoints of linspace(0.1, 1) scaled by 10^(i - (E - 1)), mirrored for the
 * signed map, plus 0 and 1. 8 bits: 256 codes; 4 bits: the signed
 * dynamic-exponent map of Li et al. 2023 (16 codes).
 * linearMapNoZero: k / 2^bits for k = 1..2^bits (second moment of 4-bit AdamW).
 *
 * Nearest-code search is defined once here for the CPU and mirrored in WGSL:
 * the first code >= x and the one before it; the closer wins, ties go low.
 *
 * @module
 */

/** bitsandbytes' dynamic map with `bits` bits (max_exponent_bits = bits - 1). */
export function dynamicMap(signed: boolean, bits: number): Float32Array {
  const E = bits - 1; // exponent bits; non-sign bits = bits - 1 in both cases
  const data: number[] = [];
  for (let i = 0; i < E; i++) {
    const items = signed ? 2 ** i + 1 : 2 ** (i + 1) + 1;
    const scale = 10 ** (-(E - 1) + i);
    for (let k = 0; k < items - 1; k++) {
      const lo = 0.1 + (0.9 * k) / (items - 1), hi = 0.1 + (0.9 * (k + 1)) / (items - 1);
      const mean = (lo + hi) / 2;
      data.push(scale * mean);
      if (signed) data.push(-scale * mean);
    }
  }
  data.push(0, 1);
  while (data.length < 2 ** bits) data.push(0);
  return Float32Array.from(data.sort((a, b) => a - b));
}

/** k / 2^bits for k = 1..2^bits. */
export function linearMapNoZero(bits: number): Float32Array {
  const n = 2 ** bits;
  return Float32Array.from({ length: n }, (_, k) => (k + 1) / n);
}

/** Index of the code nearest to x (f32 arithmetic, ties to the lower code). */
export function nearestCode(map: Float32Array, x: number): number {
  let lo = 0, hi = map.length; // first index with map[i] >= x
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (map[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  if (lo === 0) return 0;
  if (lo === map.length) return map.length - 1;
  const dl = Math.fround(x - map[lo - 1]), dh = Math.fround(map[lo] - x);
  return dh < dl ? lo : lo - 1;
}
