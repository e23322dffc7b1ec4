/**
 * A run directory belongs to one training process at a time: `lockRunDir` takes its
 * `.lock` (see src/dir_lock.ts, shared with `deno task data`); `setAside` keeps condemned
 * checkpoints out of `--resume latest`.
 *
 * @module
 */
import { type DirLock, lockDir } from "../dir_lock.ts";
import { stepDirName } from "../io/checkpoint.ts";

export { type DirLock as RunLock, LOCK_FILE } from "../dir_lock.ts";

/** Takes `<dir>/.lock` for this training process (creating `dir`), or throws naming the holder. */
export function lockRunDir(dir: string): Promise<DirLock> {
  return lockDir(dir, { what: "run directory", instead: "train into another --out" });
}

/**
 * Moves `<checkpoints>/step_N` aside as `diverged_step_N` (replacing an older one), so that
 * `--resume latest` never picks weights the divergence guard condemned. Returns the new path.
 */
export async function setAside(checkpoints: string, step: number): Promise<string> {
  const aside = `${checkpoints}/diverged_${stepDirName(step)}`;
  await Deno.remove(aside, { recursive: true }).catch(() => {});
  await Deno.rename(`${checkpoints}/${stepDirName(step)}`, aside);
  return aside;
}

/**
 * Cleans up after a run that died while saving (a second Ctrl-C, a kill, a crash): removes
 * `.tmp-step_N-*` (incomplete), and puts back `.old-step_N-*` (a complete checkpoint moved
 * aside while its replacement was renamed in) where `step_N` is missing, else removes it.
 * Call it holding the run's lock. Returns a line per thing done, for the log.
 */
export async function recoverCheckpoints(checkpoints: string): Promise<string[]> {
  const done: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(checkpoints));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return done;
    throw e;
  }
  for (const e of entries) {
    const m = /^\.(tmp|old)-(step_\d+)-[0-9a-f]+$/.exec(e.name);
    if (!m) continue;
    const path = `${checkpoints}/${e.name}`, final = `${checkpoints}/${m[2]}`;
    if (m[1] === "old" && !(await Deno.stat(final).then(() => true, () => false))) {
      await Deno.rename(path, final);
      done.push(`recovered ${final} (an interrupted save had moved it aside)`);
    } else {
      await Deno.remove(path, { recursive: true });
      done.push(`removed ${path}, left by an interrupted save`);
    }
  }
  return done;
}
