/**
 * The autotuner: on first use of a key (a kernel family and a shape class) it times every
 * candidate on the device, keeps the fastest, and remembers the choice, in memory and in a
 * JSON file on disk keyed by the adapter, its driver and the package version, so later runs
 * start with it. Generic: a caller brings candidate names, a way to time one, and a key
 * (matmul uses it for its kernel variants; any kernel's workgroup size can use it too).
 *
 * Rules:
 * - The first candidate is the incumbent (the choice without tuning); another replaces it
 *   only when faster by more than `margin` (10%), so that timing noise does not flip
 *   choices between runs.
 * - Tunings run one at a time (timings interleaved with other tunings would be noise).
 * - A candidate that fails to build is skipped; one whose warm-up run is over 4 times the
 *   best so far, or whose first timed run is over twice, is not timed further.
 * - Before a candidate is timed, the spec's {@linkcode TuneCheck} runs it on a small problem
 *   on the device (matmul: against the incumbent, itself checked against a float64 product):
 *   one whose numbers are wrong, or that fails to build or run there, is dropped: never
 *   timed, never chosen, never cached. The verdict is remembered per tuner (per process for
 *   the runtime's) under the check's id, so each kernel is checked once whatever the shape.
 *   A choice read back from the cache file is checked too, and tuned afresh when it fails.
 * - The cache file is `$WEBGPU_GPT2_TUNE_CACHE`, else `$XDG_CACHE_HOME/webgpu-gpt2/
 *   autotune.json`, else `~/.cache/webgpu-gpt2/autotune.json` (`WEBGPU_GPT2_TUNE_CACHE=none`:
 *   memory only). It is written whole to a temporary file and renamed; an unreadable or
 *   corrupt one is ignored with a warning (and replaced on the next write).
 * - `DEBUG=1` logs each choice with the times that made it, and each dropped candidate with
 *   what its check found.
 *
 * @module
 */

import { debugLog } from "./debug.ts";
import type { Runtime } from "./runtime.ts";
import denoJson from "../../deno.json" with { type: "json" };

/** The package version that keys the cache (a new version tunes afresh). */
export const PACKAGE_VERSION: string = denoJson.version;

/** Times one prepared candidate. */
export interface TuneTimer {
  /** Runs the candidate once and returns its time in milliseconds. */
  run(): Promise<number>;
  /** Frees what {@linkcode TuneSpec.prepare} made. */
  dispose(): void;
}

/**
 * Checks a candidate's numbers on the device before it is timed: a kernel that has never met
 * this hardware must not win on wrong numbers.
 */
export interface TuneCheck<C extends string> {
  /**
   * What the verdict is remembered under: the kernel the candidate builds with the flags and
   * element types that change its code, not the shape class (one check serves every size),
   * e.g. "matmul NN f32.f32.f32.f32 vec4444 bias rb8_t16x32".
   */
  id(candidate: C): string;
  /**
   * Runs the candidate on a small problem: undefined when its numbers are right, else what is
   * wrong (the problem, the worst element, its error). Throwing counts as wrong.
   */
  run(candidate: C): Promise<string | undefined>;
}

/** What to tune. */
export interface TuneSpec<C extends string> {
  /** The kernel family and shape class, e.g. "matmul NT f32.f32.f32 M1024 N2304 K768". */
  key: string;
  /** Candidate names; the first is the incumbent (the choice when nothing is faster). */
  candidates: readonly C[];
  /** Builds a candidate for timing; throwing means it cannot run here (it is skipped). */
  prepare(candidate: C): Promise<TuneTimer>;
  /** Timed runs per candidate after one warm-up run (default 3). */
  reps?: number;
  /** How much faster than the incumbent a challenger must be (default 0.1: 10%). */
  margin?: number;
  /** Checks each candidate before it is timed (none: every candidate is trusted). */
  check?: TuneCheck<C>;
}

/** A choice and how it was made. */
export interface TuneResult<C extends string> {
  /** The chosen candidate. */
  choice: C;
  /** "cache": remembered (memory or disk); "timed": measured now; "only": one candidate. */
  source: "cache" | "timed" | "only";
  /** Best time of each candidate timed, in ms (from the cache when remembered). */
  ms: Partial<Record<C, number>>;
  /** Why, in words. */
  reason: string;
  /** Candidates dropped because their check failed, with what it found. */
  rejected?: Partial<Record<C, string>>;
  /** Milliseconds this choice spent in checks (0 when every verdict was remembered). */
  checkMs?: number;
  /** Milliseconds this choice took in all: checks, builds (compiles) and timings. */
  tuneMs?: number;
}

interface CacheEntry {
  choice: string;
  ms: Record<string, number>;
  time: string;
}

interface CacheFile {
  format: "webgpu-gpt2-autotune";
  version: 1;
  /** Device key -> tune key -> entry. */
  devices: Record<string, Record<string, CacheEntry>>;
}

/** Options for an {@linkcode Autotuner}. */
export interface AutotunerOptions {
  /** What identifies the device in the cache; see {@linkcode deviceKey}. */
  deviceKey: string;
  /** The cache file; undefined keeps choices in memory only. */
  path?: string;
  /** Where warnings go (default console.warn). */
  warn?: (message: string) => void;
  /** Where the `DEBUG=1` lines go (default stderr, when DEBUG is 1 or more). */
  debug?: (message: string) => void;
}

/**
 * Chooses among candidates by timing them once per key and device.
 *
 * @example
 * ```ts
 * const tuner = tunerFor(rt);
 * const { choice } = await tuner.choose({
 *   key: "softmax T1024",
 *   candidates: ["wg64", "wg128", "wg256"],
 *   prepare: async (c) => dispatchTimer(rt, await buildSoftmax(rt, c)),
 * });
 * ```
 */
export class Autotuner {
  /** The device key choices are stored under. */
  readonly deviceKey: string;
  #path?: string;
  #warn: (message: string) => void;
  #debug: (message: string) => void;
  #verdicts = new Map<string, Promise<string | undefined>>();
  #memo = new Map<string, Promise<TuneResult<string>>>();
  #disk?: Record<string, CacheEntry>;
  #queue: Promise<unknown> = Promise.resolve();

  /** A tuner with an empty memory; the disk cache is read on first use. */
  constructor(options: AutotunerOptions) {
    this.deviceKey = options.deviceKey;
    this.#path = options.path;
    this.#warn = options.warn ?? ((m) => console.warn(`warning: ${m}`));
    this.#debug = options.debug ?? ((m) => debugLog(1, m));
  }

  /** The cache file, when there is one (none after a failed write). */
  get path(): string | undefined {
    return this.#path;
  }

  /** The choice for `spec.key`: remembered, or timed now (one tuning at a time). */
  choose<C extends string>(spec: TuneSpec<C>): Promise<TuneResult<C>> {
    let p = this.#memo.get(spec.key) as Promise<TuneResult<C>> | undefined;
    if (!p) {
      p = this.#queue.then(() => this.#choose(spec));
      this.#queue = p.catch(() => {});
      this.#memo.set(spec.key, p);
      p.catch(() => this.#memo.delete(spec.key));
    }
    return p;
  }

  /** Choices made or loaded so far for this device, by key. */
  async choices(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const [k, r] of Object.entries(await this.results())) out[k] = r.choice;
    return out;
  }

  /** The choices of {@linkcode choices} with their times and reasons. */
  async results(): Promise<Record<string, TuneResult<string>>> {
    const out: Record<string, TuneResult<string>> = {};
    for (const [k, v] of Object.entries(await this.#load())) {
      out[k] = { choice: v.choice, source: "cache", ms: v.ms, reason: `cached ${v.time}` };
    }
    for (const [k, p] of this.#memo) {
      const r = await p.catch(() => undefined);
      if (r) out[k] = r;
    }
    return out;
  }

  async #choose<C extends string>(spec: TuneSpec<C>): Promise<TuneResult<C>> {
    const { key, candidates } = spec;
    if (candidates.length === 0) throw new RangeError(`Autotune "${key}" has no candidates`);
    if (candidates.length === 1) {
      return { choice: candidates[0], source: "only", ms: {}, reason: "the only candidate" };
    }
    const cached = (await this.#load())[key];
    const start = performance.now();
    let checkMs = 0;
    if (cached && candidates.includes(cached.choice as C)) {
      const t0 = performance.now();
      const wrong = await this.#verify(spec, cached.choice as C);
      checkMs = performance.now() - t0;
      if (wrong === undefined) {
        const r: TuneResult<C> = {
          choice: cached.choice as C,
          source: "cache",
          ms: cached.ms as Partial<Record<C, number>>,
          reason: `cached ${cached.time}${this.path ? ` in ${this.path}` : ""}`,
          checkMs,
          tuneMs: performance.now() - start,
        };
        this.#debug(`autotune ${key}: ${r.choice} (${r.reason})`);
        return r;
      }
      this.#debug(`autotune ${key}: cached ${cached.choice} fails its check, tuning again`);
    } else if (cached) {
      this.#debug(`autotune ${key}: cached ${cached.choice} is no candidate now`);
    }
    const out = await this.#time(spec);
    out.checkMs = checkMs + (out.checkMs ?? 0);
    out.tuneMs = performance.now() - start;
    const entry = { choice: out.choice, ms: out.ms as Record<string, number> };
    await this.#store(key, { ...entry, time: new Date().toISOString() });
    const times = Object.entries(out.ms as Record<string, number>)
      .sort((a, b) => a[1] - b[1])
      .map(([c, ms]) => `${c} ${ms.toFixed(3)} ms`).join(", ");
    const checks = spec.check
      ? `; checks ${out.checkMs.toFixed(0)} of ${out.tuneMs.toFixed(0)} ms`
      : "";
    this.#debug(`autotune ${key}: ${times} -> ${out.choice} (${out.reason}${checks})`);
    return out;
  }

  /**
   * The candidate's verdict: undefined when its check passed (or there is none), else what
   * is wrong. Remembered per check id; a check that throws is a failed check.
   */
  #verify<C extends string>(spec: TuneSpec<C>, candidate: C): Promise<string | undefined> {
    const check = spec.check;
    if (!check) return Promise.resolve(undefined);
    const id = check.id(candidate);
    let v = this.#verdicts.get(id);
    if (!v) {
      v = check.run(candidate).catch((e) =>
        `it failed to build or run: ${e instanceof Error ? e.message : e}`
      );
      this.#verdicts.set(id, v);
    }
    return v;
  }

  async #time<C extends string>(spec: TuneSpec<C>): Promise<TuneResult<C>> {
    const reps = spec.reps ?? 3, margin = spec.margin ?? 0.1;
    const ms: Partial<Record<C, number>> = {};
    const failed: string[] = [];
    const rejected: Partial<Record<C, string>> = {};
    let best = Infinity, checkMs = 0;
    for (const c of spec.candidates) {
      const t0 = performance.now();
      const wrong = await this.#verify(spec, c);
      checkMs += performance.now() - t0;
      if (wrong !== undefined) {
        rejected[c] = wrong;
        this.#debug(`autotune ${spec.key}: dropped ${c}: ${wrong}`);
        continue;
      }
      let timer: TuneTimer;
      try {
        timer = await spec.prepare(c);
      } catch (e) {
        failed.push(`${c}: ${e instanceof Error ? e.message : e}`);
        continue;
      }
      try {
        // Warm-up (first-use compilation, caches). Far off the best, one more run: lavapipe
        // compiles at the first dispatch (a big tile: up to two minutes on Mesa 25), and that
        // is not the kernel's time; still far off, that run is the time.
        let t = await timer.run();
        if (t >= 4 * best) t = await timer.run();
        if (t < 4 * best) {
          t = Infinity;
          for (let r = 0; r < reps; r++) {
            t = Math.min(t, await timer.run());
            if (t > 2 * best) break; // cannot win
          }
        }
        ms[c] = t;
        best = Math.min(best, t);
      } finally {
        timer.dispose();
      }
    }
    if (failed.length) this.#debug(`autotune ${spec.key}: skipped ${failed.join("; ")}`);
    const timed = Object.entries(ms) as [C, number][];
    if (timed.length === 0) {
      const why = [
        ...failed,
        ...Object.entries(rejected).map(([c, w]) => `${c}: wrong numbers: ${w}`),
      ];
      throw new Error(`Autotune "${spec.key}": no candidate could run: ${why.join("; ")}`);
    }
    const checked = Object.keys(rejected).length ? { rejected, checkMs } : { checkMs };
    const [fastest, tFast] = timed.reduce((a, b) => (b[1] < a[1] ? b : a));
    const inc = spec.candidates[0], tInc = ms[inc];
    if (tInc === undefined) {
      const why = rejected[inc] !== undefined ? "failed its check" : "failed";
      return {
        choice: fastest,
        source: "timed",
        ms,
        reason: `fastest (the default ${why})`,
        ...checked,
      };
    }
    if (fastest === inc) return { choice: inc, source: "timed", ms, reason: "fastest", ...checked };
    const gain = 1 - tFast / tInc;
    if (gain <= margin) {
      return {
        choice: inc,
        source: "timed",
        ms,
        reason: `the default: ${fastest} is only ${(100 * gain).toFixed(0)}% faster ` +
          `(a challenger needs ${(100 * margin).toFixed(0)}%)`,
        ...checked,
      };
    }
    return {
      choice: fastest,
      source: "timed",
      ms,
      reason: `fastest, ${(100 * gain).toFixed(0)}% faster than the default ${inc}`,
      ...checked,
    };
  }

  /** This device's entries from disk (read once; corrupt or unreadable: none, warned). */
  async #load(): Promise<Record<string, CacheEntry>> {
    if (this.#disk) return this.#disk;
    const file = await this.#readFile(true);
    this.#disk = file?.devices[this.deviceKey] ?? {};
    return this.#disk;
  }

  async #readFile(warn: boolean): Promise<CacheFile | undefined> {
    if (!this.path) return undefined;
    let text: string;
    try {
      text = await Deno.readTextFile(this.path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound) && warn) {
        this.#warn(`cannot read the autotune cache ${this.path}: ${e}: tuning afresh`);
      }
      return undefined;
    }
    const problem = (why: string) => {
      if (warn) {
        this.#warn(
          `ignoring the autotune cache ${this.path}: ${why}: tuning afresh (it is ` +
            "rewritten on the next choice; delete it to silence this)",
        );
      }
      return undefined;
    };
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      return problem(`it is not JSON (${e instanceof Error ? e.message : e})`);
    }
    const d = doc as Partial<CacheFile>;
    if (d?.format !== "webgpu-gpt2-autotune" || d.version !== 1) {
      return problem("unknown format or version");
    }
    if (typeof d.devices !== "object" || d.devices === null) return problem("no devices table");
    for (const entries of Object.values(d.devices)) {
      for (const e of Object.values(entries ?? {})) {
        if (typeof e?.choice !== "string" || typeof e.ms !== "object") {
          return problem("an entry without a choice");
        }
      }
    }
    return d as CacheFile;
  }

  async #store(key: string, entry: CacheEntry): Promise<void> {
    (this.#disk ??= {})[key] = entry;
    const path = this.path;
    if (!path) return;
    const tmp = `${path}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    try {
      // Re-read so that choices other processes made since are kept.
      const file: CacheFile = (await this.#readFile(false)) ??
        { format: "webgpu-gpt2-autotune", version: 1, devices: {} };
      file.devices[this.deviceKey] = { ...file.devices[this.deviceKey], [key]: entry };
      const dir = path.replace(/[/\\][^/\\]*$/, "");
      if (dir && dir !== path) await Deno.mkdir(dir, { recursive: true });
      await Deno.writeTextFile(tmp, JSON.stringify(file, null, 1) + "\n");
      await Deno.rename(tmp, path);
    } catch (e) {
      await Deno.remove(tmp).catch(() => {});
      this.#warn(`cannot write the autotune cache ${path}: ${e}: choices stay in memory`);
      this.#path = undefined;
    }
  }
}

// ---------------------------------------------------------------------------
// The runtime's tuner and its cache key.

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env
  }
}

/**
 * The cache file from the environment: `WEBGPU_GPT2_TUNE_CACHE` (`none` for no file), else
 * under `XDG_CACHE_HOME` or `~/.cache` (`%LOCALAPPDATA%` on Windows); undefined when none
 * can be found.
 */
export function tuneCachePath(): string | undefined {
  const set = env("WEBGPU_GPT2_TUNE_CACHE");
  if (set) return set === "none" ? undefined : set;
  const base = env("XDG_CACHE_HOME") ??
    (Deno.build.os === "windows" ? env("LOCALAPPDATA") : undefined) ??
    (env("HOME") ? `${env("HOME")}/.cache` : undefined);
  return base ? `${base}/webgpu-gpt2/autotune.json` : undefined;
}

/**
 * What identifies a device for cached choices: adapter name and ids, the driver's version
 * where known (Mesa's lavapipe names only its LLVM version in the adapter name), the WebGPU
 * implementation (Deno's, by its version, or Dawn) and the package version.
 */
export function deviceKey(rt: Runtime): string {
  const info = (rt.device as GPUDevice & { adapterInfo?: GPUAdapterInfo }).adapterInfo;
  const ids = info ? `${info.vendor}:${info.architecture}:${info.device}` : "";
  return [
    rt.gpu.name,
    ids,
    rt.gpu.driver,
    rt.gpu.backend === "dawn" ? "dawn (npm:webgpu)" : `deno ${Deno.version.deno}`,
    `webgpu-gpt2 ${PACKAGE_VERSION}`,
  ].join(" | ");
}

const tuners = new WeakMap<GPUDevice, Autotuner>();

/**
 * The runtime's tuner: its own `tuner` when it has one (see {@linkcode withTuner}), else
 * one per device with the cache file from the environment.
 */
export function tunerFor(rt: Runtime): Autotuner {
  const own = (rt as Runtime & { tuner?: Autotuner }).tuner;
  if (own) return own;
  let t = tuners.get(rt.device);
  if (!t) {
    t = new Autotuner({ deviceKey: deviceKey(rt), path: tuneCachePath() });
    tuners.set(rt.device, t);
  }
  return t;
}

/**
 * The same runtime with its own tuner (another cache file, a fresh memory): what tests
 * and programs that keep their choices apart build kernels with.
 *
 * @example
 * ```ts
 * const rt2 = withTuner(rt, new Autotuner({ deviceKey: deviceKey(rt), path: "tune.json" }));
 * const d = await matmul(rt2, shape, operands); // "auto" asks rt2's tuner
 * ```
 */
export function withTuner(rt: Runtime, tuner: Autotuner): Runtime {
  const out: Runtime & { tuner: Autotuner } = { ...rt, tuner };
  return out;
}

export { dispatchTimer, type DispatchTimerOptions } from "./tune_timer.ts";
