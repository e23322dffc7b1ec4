/**
 * Learning-rate schedules as piecewise segments (linear, cosine, constant),
 * so that every named schedule and the reference run's exact one share one
 * evaluator:
 *
 *   constant  lr forever
 *   cosine    linear warmup 0 -> lr, cosine lr -> minLr until `steps`, then minLr
 *   wsd       warmup, stable at lr, linear decay to minLr over the last `decay` steps
 *   piecewise "linear:3000:6e-5:4e-4,cosine:2000:4e-4:9e-5,constant:inf:9e-5"
 *             (constant segments may give one rate: constant:inf:9e-5)
 *             (the gpt2-medium-4096 reference: ramp, slight cosine cool-down, constant)
 *
 * @module
 */

/** One piece: `steps` long (Infinity for the last), from `from` to `to`. */
export interface Segment {
  /** How the rate moves from `from` to `to`: linearly, along half a cosine, or not at all. */
  shape: "linear" | "cosine" | "constant";
  /** Optimizer steps the segment lasts (Infinity for the last). */
  steps: number;
  /** Learning rate at the segment's first step (the rate throughout when constant). */
  from: number;
  /** Learning rate the segment ends at. */
  to: number;
}

/** A schedule is its segments; step 0 is the first optimizer step. */
export type Schedule = Segment[];

/** Options of the named schedules. */
export interface ScheduleOptions {
  /** Peak learning rate, reached at the end of the warmup. */
  lr: number;
  /** Final learning rate of cosine and wsd. */
  minLr: number;
  /** Steps of linear warmup from lr / warmup to lr (0 for none). */
  warmup: number;
  /** Total optimizer steps (cosine end, wsd end). */
  steps: number;
  /** wsd: steps of the final decay. */
  decay?: number;
}

/** The learning rate at optimizer step `step` (0-based). */
export function lrAt(schedule: Schedule, step: number): number {
  let s = step;
  for (const seg of schedule) {
    if (s < seg.steps) {
      const f = s / seg.steps;
      if (seg.shape === "constant") return seg.from;
      if (seg.shape === "linear") return seg.from + (seg.to - seg.from) * f;
      return seg.to + (seg.from - seg.to) * 0.5 * (1 + Math.cos(Math.PI * f));
    }
    s -= seg.steps;
  }
  const last = schedule[schedule.length - 1];
  return last ? last.to : 0;
}

/** A rate as people write it: 0.001, 4e-4, 6e-5. */
function rate(x: number): string {
  const r = Number(x.toPrecision(3));
  return r !== 0 && Math.abs(r) < 1e-3 ? r.toExponential() : String(r);
}

/**
 * A schedule in words, for the start-of-run summary, e.g. "linear warmup over 20 steps from
 * 5e-5 to 0.001, then cosine over 130 steps from 0.001 to 1e-4, then constant 1e-4".
 */
export function describeSchedule(schedule: Schedule): string {
  return schedule.map((s, i) => {
    const first = i === 0 && s.shape === "linear" && schedule.length > 1
      ? "linear warmup"
      : s.shape;
    const over = Number.isFinite(s.steps) ? ` over ${s.steps} steps` : "";
    if (s.shape === "constant" || s.from === s.to) {
      return `${s.shape === "constant" ? "constant" : first} ${rate(s.from)}${over}`;
    }
    return `${first}${over} from ${rate(s.from)} to ${rate(s.to)}`;
  }).join(", then ");
}

/** A named schedule, or a piecewise spec (`shape:steps:from:to,...`). */
export function makeSchedule(kind: string, o: ScheduleOptions): Schedule {
  const warm: Segment[] = o.warmup > 0
    ? [{ shape: "linear", steps: o.warmup, from: o.lr / o.warmup, to: o.lr }]
    : [];
  switch (kind) {
    case "constant":
      return [...warm, { shape: "constant", steps: Infinity, from: o.lr, to: o.lr }];
    case "cosine":
      return [
        ...warm,
        { shape: "cosine", steps: Math.max(1, o.steps - o.warmup), from: o.lr, to: o.minLr },
        { shape: "constant", steps: Infinity, from: o.minLr, to: o.minLr },
      ];
    case "wsd": {
      const decay = o.decay ?? Math.round(0.2 * o.steps);
      return [
        ...warm,
        { shape: "constant", steps: Math.max(0, o.steps - o.warmup - decay), from: o.lr, to: o.lr },
        { shape: "linear", steps: Math.max(1, decay), from: o.lr, to: o.minLr },
        { shape: "constant", steps: Infinity, from: o.minLr, to: o.minLr },
      ];
    }
    default:
      if (kind.includes(":")) return parsePiecewise(kind);
      throw new RangeError(
        `Unknown schedule "${kind}": use constant, cosine, wsd or a piecewise spec such as ` +
          `"linear:3000:6e-5:4e-4,cosine:2000:4e-4:9e-5,constant:inf:9e-5"`,
      );
  }
}

/** Parses `shape:steps:from:to` segments separated by commas. */
export function parsePiecewise(spec: string): Schedule {
  return spec.split(",").map((part, i) => {
    const f = part.trim().split(":");
    const where = `schedule segment ${i + 1} "${part.trim()}"`;
    if (f.length === 3 && f[0] === "constant") f.push(f[2]); // constant:steps:rate
    if (f.length !== 4) throw new RangeError(`Bad ${where}: write shape:steps:from:to`);
    const [shape, stepsRaw, fromRaw, toRaw] = f;
    if (shape !== "linear" && shape !== "cosine" && shape !== "constant") {
      throw new RangeError(`Bad ${where}: shape must be linear, cosine or constant`);
    }
    const steps = stepsRaw === "inf" ? Infinity : Number(stepsRaw);
    const from = Number(fromRaw), to = Number(toRaw);
    if (!(steps > 0) || !Number.isFinite(from) || !Number.isFinite(to)) {
      throw new RangeError(`Bad ${where}: steps must be > 0 (or inf) and rates numbers`);
    }
    return { shape, steps, from, to };
  });
}
