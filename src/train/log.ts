/**
 * What a user watches during training: a progress line per step, log.jsonl
 * in the run directory, and a loss-curve SVG kept up to date beside it.
 *
 * @module
 */

import { formatBytes, formatDuration } from "../format.ts";

export { formatDuration };

/** Appends JSON lines to a file (created on first write). */
export class JsonlLog {
  readonly path: string;
  constructor(path: string) {
    this.path = path;
  }
  async write(record: Record<string, unknown>): Promise<void> {
    await Deno.writeTextFile(this.path, JSON.stringify(record) + "\n", { append: true });
  }

  /**
   * Drops every record of a step after `step` (what a crashed or stopped run
   * logged past the checkpoint a resume starts from), rewriting the file through
   * a temporary name. Returns the records kept; a missing file keeps none. With
   * `rewrite: false` the file is left alone (another process owns it).
   */
  async truncateAfter(step: number, rewrite = true): Promise<Record<string, unknown>[]> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    const kept: Record<string, unknown>[] = [], lines: string[] = [];
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line);
      } catch {
        continue; // a line cut short by a crash
      }
      if (typeof rec.step === "number" && rec.step > step) continue;
      kept.push(rec);
      lines.push(line);
    }
    if (!rewrite) return kept;
    const tmp = `${this.path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.writeTextFile(tmp, lines.map((l) => l + "\n").join(""));
    await Deno.rename(tmp, this.path);
    return kept;
  }
}

/** A series of (step, value) points. */
export type Series = { name: string; color: string; points: [number, number][] };

/** An SVG line chart of loss against step, with axes and a legend. */
export function lossCurveSvg(series: Series[], title = "loss"): string {
  const W = 640, H = 400, L = 60, R = 20, T = 30, B = 40;
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) {
    return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}"/>`;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]).filter(Number.isFinite);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-6) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const px = (x: number) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y: number) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="14">${title}</text>`,
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>`,
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`,
    `<text x="${W / 2}" y="${H - 8}" text-anchor="middle">step</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4, x = x0 + ((x1 - x0) * i) / 4;
    out.push(
      `<text x="${L - 6}" y="${py(y) + 4}" text-anchor="end">${y.toFixed(2)}</text>`,
      `<line x1="${L}" y1="${py(y)}" x2="${W - R}" y2="${py(y)}" stroke="#eee"/>`,
      `<text x="${px(x)}" y="${H - B + 16}" text-anchor="middle">${Math.round(x)}</text>`,
    );
  }
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p[1]));
    if (pts.length) {
      const d = pts.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" ");
      out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="1.5" points="${d}"/>`);
      if (pts.length === 1) {
        out.push(`<circle cx="${px(pts[0][0])}" cy="${py(pts[0][1])}" r="3" fill="${s.color}"/>`);
      }
    }
    out.push(
      `<rect x="${W - R - 110}" y="${T + 6 + i * 18}" width="12" height="3" fill="${s.color}"/>`,
      `<text x="${W - R - 92}" y="${T + 10 + i * 18}">${s.name}</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** What one step prints: loss, learning rate, norm, throughput, MFU, memory, ETA. */
export interface StepLine {
  step: number;
  /** The run's steps; undefined while a time budget has not decided them. */
  steps?: number;
  loss: number;
  lr: number;
  norm: number;
  tokensPerS: number;
  /** Achieved FLOP/s (the MFU formula's numerator). */
  flops: number;
  /** The device's peak TFLOP/s; 0 when unknown. */
  peakTflops: number;
  memBytes: number;
  etaS: number;
  /** fp16: the step overflowed; the scale went from `scale` to `newScale`. */
  overflow?: { scale: number; newScale: number };
}

/** The progress line of one optimizer step. */
export function formatStepLine(s: StepLine): string {
  const mfu = s.peakTflops > 0 ? `${((100 * s.flops) / (s.peakTflops * 1e12)).toFixed(1)}%` : "n/a";
  const of = s.steps === undefined ? "" : `/${s.steps}`;
  return `step ${String(s.step).padStart(String(s.steps ?? "").length)}${of} | loss ${
    s.loss.toFixed(4)
  } | lr ${s.lr.toExponential(2)} | norm ${s.norm.toFixed(3)} | ${s.tokensPerS.toFixed(0)} ` +
    `tok/s | ${(s.flops / 1e9).toFixed(1)} GFLOP/s | MFU ${mfu} | mem ${
      formatBytes(s.memBytes)
    } | ` +
    `ETA ${formatDuration(s.etaS)}` +
    (s.overflow
      ? ` | overflow: step skipped, loss scale ${s.overflow.scale} -> ${s.overflow.newScale}`
      : "");
}

/** A run directory's log.jsonl and loss.svg, with the points the curve is drawn from. */
export class RunLog {
  /** log.jsonl. */
  readonly log: JsonlLog;
  /** (step, loss) of every logged step. */
  readonly train: [number, number][] = [];
  /** (step, validation loss). */
  readonly val: [number, number][] = [];
  readonly #dir: string;
  readonly #title: string;
  readonly #writable: boolean;

  /**
   * The log of the run in `dir`; the curve is titled after `modelName`. A log that is not
   * `writable` (a data-parallel rank other than 0) reads the file and writes nothing.
   */
  constructor(dir: string, modelName: string, writable = true) {
    this.#writable = writable;
    this.#dir = dir;
    this.#title = `${modelName} loss`;
    this.log = new JsonlLog(`${dir}/log.jsonl`);
  }

  /**
   * A resumed run continues the log from `step` (what a crash logged past it goes, and the
   * curve's points are rebuilt from what stays); a new run starts a new log.
   */
  async open(resumeStep?: number): Promise<void> {
    if (resumeStep === undefined) {
      if (this.#writable) await Deno.remove(this.log.path).catch(() => {});
      return;
    }
    for (const r of await this.log.truncateAfter(resumeStep, this.#writable)) {
      if (typeof r.step !== "number") continue;
      if (typeof r.loss === "number") this.train.push([r.step, r.loss]);
      if (typeof r.val_loss === "number") this.val.push([r.step, r.val_loss]);
    }
  }

  /** Appends a record. */
  async write(record: Record<string, unknown>): Promise<void> {
    if (this.#writable) await this.log.write(record);
  }

  /** Rewrites loss.svg. */
  async writeCurve(): Promise<void> {
    if (!this.#writable) return;
    await Deno.writeTextFile(
      `${this.#dir}/loss.svg`,
      lossCurveSvg([
        { name: "train", color: "#1f77b4", points: this.train },
        { name: "val", color: "#d62728", points: this.val },
      ], this.#title),
    );
  }
}

/** The lines printed at the end of a run: what it did and what to run next. */
export function formatSummary(
  c: { out: string; steps: number; totalBatch: number; stopped: boolean },
  losses: number[],
  ran: number,
  t0: number,
  valLoss: number | undefined,
  at: { checkpoint: string; dataDir: string },
): string {
  const secs = (performance.now() - t0) / 1000;
  // An interrupted run finishes what it was asked for (its steps are saved with it); a
  // finished one goes further only with a new total.
  const resume = `deno task train --out ${c.out} --resume latest`;
  return [
    `summary: ${ran} steps in ${formatDuration(secs)}, ${
      (ran * c.totalBatch).toLocaleString("en-US")
    } tokens; train loss ${losses[0].toFixed(3)} -> ${losses[losses.length - 1].toFixed(3)}` +
    (valLoss !== undefined ? `, val loss ${valLoss.toFixed(3)}` : ""),
    `  checkpoint  ${at.checkpoint}`,
    `  loss curve  ${c.out}/loss.svg`,
    c.stopped
      ? `  continue    ${resume}   (finishes the ${c.steps} steps)`
      : `  go further  ${resume} --steps ${2 * c.steps}   (a new total; the schedule is ` +
        "recomputed for it)",
    `  evaluate    deno task eval ${at.checkpoint} --loss ${at.dataDir}`,
    `  sample      deno task sample ${at.checkpoint} --prompt "The whale"`,
  ].join("\n");
}
