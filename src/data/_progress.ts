/**
 * The `deno task data` progress line on stderr: redrawn in place at most 10 times a second
 * on a terminal, or printed as a plain line every few seconds when stderr is a file or pipe
 * (CI logs stay readable).
 *
 * @module
 */
import type { BuildProgress } from "./pipeline.ts";
import { formatBytes as bytesOf, formatClock } from "../format.ts";

/** Formats a byte count in decimal units (MB = 1e6 bytes), as the MB/s figures are. */
export const formatBytes = (n: number): string => bytesOf(n, "decimal");

const encoder = new TextEncoder();

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

/** Renders {@linkcode BuildProgress} updates to stderr. */
export class ProgressBar {
  #start = performance.now();
  #last = 0;
  #tty: boolean;
  #drawn = false;

  constructor(tty = Deno.stderr.isTerminal()) {
    this.#tty = tty;
  }

  /** Draws `p` if enough time has passed since the last draw. */
  update(p: BuildProgress, force = false): void {
    const now = performance.now();
    if (!force && now - this.#last < (this.#tty ? 100 : 5000)) return;
    this.#last = now;
    const line = this.format(p, (now - this.#start) / 1000);
    const out = this.#tty ? `\r\x1b[2K${line}` : `${line}\n`;
    Deno.stderr.writeSync(encoder.encode(out));
    this.#drawn = true;
  }

  /** Ends the in-place line so later output starts on a fresh one. */
  done(p?: BuildProgress): void {
    if (p) this.update(p, true);
    if (this.#tty && this.#drawn) Deno.stderr.writeSync(encoder.encode("\n"));
  }

  /** The progress line for `p` after `seconds`. */
  format(p: BuildProgress, seconds: number): string {
    const rate = seconds > 0 ? p.textBytes / seconds / 1e6 : 0;
    const parts = [`source ${Math.min(p.source + 1, p.sources)}/${p.sources}`];
    if (p.totalBytes) {
      const frac = Math.min(1, p.rawBytes / p.totalBytes);
      const width = 20;
      const fill = Math.round(frac * width);
      parts.push(
        `[${"#".repeat(fill)}${".".repeat(width - fill)}] ${(frac * 100).toFixed(1)}%`,
        `${formatBytes(p.rawBytes)}/${formatBytes(p.totalBytes)}`,
      );
    } else parts.push(formatBytes(p.rawBytes));
    parts.push(
      `${formatCount(p.documents)} docs`,
      `${formatCount(p.tokens)} tokens`,
      `${rate.toFixed(1)} MB/s`,
    );
    if (p.malformed) parts.push(`${p.malformed} malformed`);
    if (p.totalBytes && p.rawBytes > 0 && seconds > 1) {
      const left = (p.totalBytes - p.rawBytes) * seconds / p.rawBytes;
      parts.push(`ETA ${formatClock(left)}`);
    }
    return parts.join(" | ");
  }
}
