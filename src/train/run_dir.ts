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
