/**
 * What the device checks of kernel variants share (a variant that no machine here has run is
 * compared with float64 on the device before it is used): the worst element of a result.
 *
 * @module
 */

/**
 * The worst element of `got` against `want`, error over `scale(want[i], i)`: undefined within
 * tol.
 */
export function worstElement(
  name: string,
  got: Float32Array,
  want: Float64Array,
  scale: (w: number, i: number) => number,
  tol: number,
): string | undefined {
  let err = -1, at = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]) / scale(want[i], i);
    const e = Number.isNaN(d) ? Infinity : d;
    if (e > err) [err, at] = [e, i];
  }
  if (err <= tol) return undefined;
  return `worst ${name}[${at}] = ${got[at]} against ${Number(want[at].toPrecision(7))}, ` +
    `off by ${err.toExponential(1)} (tolerance ${tol})`;
}
