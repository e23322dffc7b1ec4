// lowbit_common: what the 8-bit and 4-bit AdamW kernels (kernels/adamw8bit.wgsl,
// adamw4bit.wgsl) share, put before them by src/optim/kernel_source.ts: the quantization maps
// in workgroup memory, the nearest code, and the max tree of a block's m and v.
//
// qmap holds the kernel's two maps (8-bit: 256 + 256 codes; 4-bit: 16 + 16), ascending,
// copied from the `maps` binding each of those kernels declares (src/optim/lowbit_pieces.ts).
// Loop bound per invocation: load_maps len / width; nearest 9 (log2(256) + 1 halvings);
// block_max log2(width).

var<workgroup> qmap: array<f32, 512>;
var<workgroup> red_m: array<f32, 256>;
var<workgroup> red_v: array<f32, 256>;

// Copies the maps binding into qmap: invocation l of a workgroup of `width` copies every
// width-th of the first `len` floats.
fn load_maps(l: u32, width: u32, len: u32) {
  for (var i = l; i < len; i += width) { qmap[i] = maps[i]; }
  workgroupBarrier();
}

// Nearest code to x in qmap[base .. base + count): the first code >= x and the one before
// it; the closer wins, ties go low (src/optim/quant_maps.ts's nearestCode).
fn nearest(base: u32, count: u32, x: f32) -> u32 {
  var lo = 0u;
  var hi = count;
  for (var it = 0u; it < 9u && lo < hi; it++) { // log2(count) + 1 halvings reach lo == hi
    let mid = (lo + hi) >> 1u;
    if (qmap[base + mid] < x) { lo = mid + 1u; } else { hi = mid; }
  }
  if (lo == 0u) { return 0u; }
  if (lo == count) { return count - 1u; }
  let dl = x - qmap[base + lo - 1u];
  let dh = qmap[base + lo] - x;
  return select(lo - 1u, lo, dh < dl);
}

// The block's max |m| and max v over a workgroup of `width` (a power of two): a fixed tree.
fn block_max(l: u32, width: u32, mmax: f32, vmax: f32) -> vec2f {
  red_m[l] = mmax;
  red_v[l] = vmax;
  workgroupBarrier();
  for (var h = width / 2u; h > 0u; h >>= 1u) {
    if (l < h) {
      red_m[l] = max(red_m[l], red_m[l + h]);
      red_v[l] = max(red_v[l], red_v[l + h]);
    }
    workgroupBarrier();
  }
  return vec2f(red_m[0], red_v[0]);
}
