/**
 * The debug switch: `DEBUG=1` logs steps, `DEBUG=2` also dumps every compiled
 * WGSL kernel, `DEBUG=3` times every dispatch with timestamp queries (without
 * the WGSL dump, which would bury the timings).
 *
 * @module
 */

let cached: number | undefined;

/** The DEBUG level from the environment (0 when unset, unreadable or not a number). */
export function debugLevel(): number {
  if (cached !== undefined) return cached;
  let raw: string | undefined;
  try {
    raw = Deno.env.get("DEBUG");
  } catch {
    raw = undefined; // no --allow-env: debugging stays off
  }
  const n = Number(raw ?? 0);
  cached = Number.isFinite(n) ? n : 0;
  return cached;
}

/** Writes a debug line to stderr when the DEBUG level is at least `level`. */
export function debugLog(level: number, message: string): void {
  if (debugLevel() >= level) console.error(`[debug${level}] ${message}`);
}
