/**
 * The GPT-2 tokenizer files a Hugging Face `from_pretrained` call reads beside
 * the weights (vocab.json, merges.txt, tokenizer_config.json,
 * special_tokens_map.json), made from the rank table of the tokenizer package
 * the data pipeline already uses.
 *
 * vocab.json spells each token's bytes with GPT-2's byte-to-unicode table
 * (openai/gpt-2 encoder.py `bytes_to_unicode`). merges.txt lists, for every
 * merged token in rank order, the two tokens it was made from: running BPE on
 * the token's own bytes with only lower-ranked merges ends in exactly that pair.
 *
 * @module
 */

import table from "npm:gpt-tokenizer@4.0.0/bpeRanks/r50k_base";

const EOT_TEXT = "<|endoftext|>";

/** GPT-2's printable stand-in for each byte value. */
function byteToUnicode(): string[] {
  const bs: number[] = [];
  const range = (a: number, b: number) => {
    for (let i = a; i <= b; i++) bs.push(i);
  };
  range(0x21, 0x7e);
  range(0xa1, 0xac);
  range(0xae, 0xff);
  const out: string[] = [];
  for (const b of bs) out[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (out[b] === undefined) out[b] = String.fromCharCode(256 + n++);
  return out;
}

/** Each token's bytes (one char code 0-255 per byte), by id. */
function tokenBytes(): string[] {
  const utf8 = new TextEncoder();
  const out: string[] = [];
  for (let rank = 0; rank < table.length; rank++) {
    const v = table[rank];
    if (v === undefined) continue;
    const bytes = typeof v === "string" ? utf8.encode(v) : v;
    out[rank] = String.fromCharCode(...bytes);
  }
  return out;
}

/** The pair of tokens that merged into `token` (rank `rank`), by BPE on its bytes. */
function lastMerge(token: string, rank: number, ranks: Map<string, number>): [string, string] {
  let parts = [...token];
  while (parts.length > 2) {
    let best = -1, bestRank = Infinity;
    for (let i = 0; i + 1 < parts.length; i++) {
      const r = ranks.get(parts[i] + parts[i + 1]);
      if (r !== undefined && r < rank && r < bestRank) [best, bestRank] = [i, r];
    }
    if (best < 0) throw new Error(`BPE table: token ${rank} is not made by a merge`);
    parts = [...parts.slice(0, best), parts[best] + parts[best + 1], ...parts.slice(best + 2)];
  }
  return [parts[0], parts[1]];
}

/**
 * The tokenizer files of GPT-2 (50,257 tokens), by file name, for a model of
 * context `nCtx`.
 *
 * @example
 * ```ts
 * for (const [name, text] of Object.entries(gpt2TokenizerFiles(1024))) {
 *   await Deno.writeTextFile(`out/hf/${name}`, text);
 * }
 * ```
 */
export function gpt2TokenizerFiles(nCtx: number): Record<string, string> {
  const u = byteToUnicode();
  const spell = (bytes: string) => Array.from(bytes, (ch) => u[ch.charCodeAt(0)]).join("");
  const bytes = tokenBytes();
  const ranks = new Map<string, number>();
  bytes.forEach((b, i) => ranks.set(b, i));
  const vocab: Record<string, number> = {};
  bytes.forEach((b, i) => (vocab[spell(b)] = i));
  vocab[EOT_TEXT] = bytes.length;
  const merges = ["#version: 0.2"];
  for (let rank = 256; rank < bytes.length; rank++) {
    const [a, b] = lastMerge(bytes[rank], rank, ranks);
    merges.push(`${spell(a)} ${spell(b)}`);
  }
  const special = { bos_token: EOT_TEXT, eos_token: EOT_TEXT, unk_token: EOT_TEXT };
  return {
    "vocab.json": JSON.stringify(vocab),
    "merges.txt": merges.join("\n") + "\n",
    "tokenizer_config.json": JSON.stringify(
      {
        tokenizer_class: "GPT2Tokenizer",
        model_max_length: nCtx,
        add_prefix_space: false,
        ...special,
      },
      null,
      2,
    ) + "\n",
    "special_tokens_map.json": JSON.stringify(special, null, 2) + "\n",
  };
}
