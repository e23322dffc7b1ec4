// lowbit_common: what the 8-bit and 4-bit AdamW kernels (kernels/adamw8bit.wgsl,
// adamw4bit.wgsl) share, put before them by src/optim/kernel_source.ts: the quantization maps
// in workgroup memory and the nearest code. (A block's max |m| and max v is their workgroup's
// wg_max2: kernels/reduce_tree.wgsl or reduce_subgroup.wgsl, put after them.)
//
// qmap holds the kernel's two maps (8-bit: 256 + 256 codes; 4-bit: 16 + 16), ascending,
// copied from the `maps` binding each of those kernels declares (src/optim/lowbit_pieces.ts).
// Loop bound per invocation: load_maps len / width; nearest 9 (log2(256) + 1 halvings).

var<workgroup> qmap: array<f32, 512>;

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
