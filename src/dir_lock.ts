/**
 * A folder that one process writes at a time (a training run directory, a shard folder):
 * `lockDir` creates `<dir>/.lock` (pid, host, start time) atomically, takes over a lock
 * whose process is gone (with a message), and refuses one that is alive.
 *
 * It lives at the top of src/ because both ends of the data path take it: `deno task data`
 * (src/data, which may import nothing to its right) and training (src/train).
 *
 * @module
 */

/** The lock file's name inside a locked folder. */
export const LOCK_FILE = ".lock";

interface LockInfo {
  pid: number;
  host: string;
  time: string;
}

/** A held lock; `release` removes the file if it is still ours. */
export interface DirLock {
  path: string;
  /** Set when a stale lock was taken over: a line for the user. */
  notice?: string;
  release(): Promise<void>;
}

/** Whether process `pid` on this machine runs (undefined where that cannot be told). */
export function processAlive(pid: number): boolean | undefined {
  if (Deno.build.os !== "linux") return undefined; // cannot tell: treat as alive
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** How a lock's messages name the folder and what else to do. */
export interface LockWords {
  /** What the folder is: "run directory", "output folder". */
  what: string;
  /** The other way out, for the refusal: "train into another --out". */
  instead: string;
}

/**
 * Takes `<dir>/.lock` for this process (creating `dir`), or throws naming the holder.
 *
 * @example
 * ```ts
 * const lock = await lockDir("out/shards", { what: "output folder", instead: "use another" });
 * try {
 *   // write into out/shards
 * } finally {
 *   await lock.release();
 * }
 * ```
 */
export async function lockDir(dir: string, words: LockWords): Promise<DirLock> {
  await Deno.mkdir(dir, { recursive: true });
  const path = `${dir}/${LOCK_FILE}`;
  const mine: LockInfo = { pid: Deno.pid, host: Deno.hostname(), time: new Date().toISOString() };
  let notice: string | undefined;
  for (let attempt = 0; attempt < 2; attempt++) {
    // Written whole under a private name, then hard-linked into place: the link
    // fails if a lock exists, and a lock that exists is never half-written.
    const tmp = `${path}.${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.writeTextFile(tmp, JSON.stringify(mine) + "\n");
    try {
      await Deno.link(tmp, path);
      return {
        path,
        notice,
        release: async () => {
          const held = await readLock(path);
          if (held?.pid === mine.pid && held.time === mine.time) {
            await Deno.remove(path).catch(() => {});
          }
        },
      };
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    } finally {
      await Deno.remove(tmp).catch(() => {});
    }
    const held = await readLock(path);
    const gone = held && held.host === mine.host && processAlive(held.pid) === false;
    if (!held || gone) {
      notice = held
        ? `${words.what} ${dir}: taking over the lock of process ${held.pid} (started ` +
          `${held.time}), which is no longer running`
        : `${words.what} ${dir}: replacing an unreadable ${LOCK_FILE}`;
      await Deno.remove(path).catch(() => {});
      continue;
    }
    const what = words.what[0].toUpperCase() + words.what.slice(1);
    throw new Error(
      `${what} ${dir} is in use by process ${held.pid} on ${held.host} (started ${held.time}): ` +
        `wait for that run or stop it, or ${words.instead}. If no such run is ` +
        `going on, delete ${path}`,
    );
  }
  throw new Error(`Cannot lock ${dir}: another process keeps taking ${path}`);
}

async function readLock(path: string): Promise<LockInfo | undefined> {
  try {
    const info = JSON.parse(await Deno.readTextFile(path));
    return Number.isInteger(info.pid) ? info : undefined;
  } catch {
    return undefined;
  }
}
